"""Alerts: rules over the pairing events, the action log and the registry; stored, acknowledged
and sent to a webhook.

Each rule finds, for one subject (a device, an address, a user, a batch), the events that show
a situation: the scans of a cloned label, a burst of forged payloads from one address. The
alert's id is a keyed hash of rule and subject, so the same situation is the same alert on every
run; its count is the number of events that show it, and grows as new ones arrive.

A full run evaluates every rule over all history (or the events since a date); the database
finds the candidate subjects (provision.registry.alerts). An incremental run reads only the
rows after the marks the last run left, and recomputes the subjects they touch from those
subjects' whole history, so it finds what a full run would. It also verifies the chains of the
devices it touched (a broken one raises audit_chain_broken at once); `audit verify` records
each run it makes, and the rule reads those records. dormant_batch is a state, not an event:
an incremental run evaluates it at most once a day.

An acknowledged alert stays quiet until new evidence arrives (an event newer than any it has
seen, a chain break it has not named); then it is open again, and notified again.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import math
import re
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from provision.errors import AlertError, ConfigError
from provision.keys import Keyring
from provision.periods import moment
from provision.registry import Registry, utcnow
from provision.registry.alerts import AlertRecord, Finding, NewRows
from provision.states import AlertSeverity, AlertStatus, PairingResult, Reason, SystemAction

__all__ = [
    "DEFAULT_RULES",
    "RULES",
    "AlertRecord",
    "AlertRun",
    "Delivery",
    "Rules",
    "acknowledge",
    "alert_json",
    "evaluate_alerts",
    "load_rules",
    "notify",
    "record_audit_run",
    "webhook_secret",
]

RULES = (
    "cloned_label",
    "forgery_burst",
    "mass_activation",
    "revoked_device_activity",
    "activation_before_registration",
    "audit_chain_broken",
    "dormant_batch",
)

DEFAULT_RULES: dict[str, dict[str, Any]] = {
    # After activation, the same device scanned from MIN_SOURCES addresses or fingerprints
    # within WINDOW: its label has been copied.
    "cloned_label": {"severity": "critical", "min_sources": 3, "window": "24h"},
    # MIN_SCANS payloads that do not verify, from one address within WINDOW: someone is
    # forging or guessing payloads.
    "forgery_burst": {
        "severity": "warning",
        "min_scans": 20,
        "window": "10m",
        "reasons": [Reason.FORGED.value, Reason.MALFORMED.value, Reason.UNKNOWN_KEY.value],
    },
    # One address or one user activating MIN_DEVICES devices within WINDOW: a reseller, a
    # script, or stolen labels.
    "mass_activation": {"severity": "warning", "min_devices": 20, "window": "1h"},
    # An attempt to activate a revoked device, or an action its token tried to log.
    "revoked_device_activity": {"severity": "critical"},
    # activated_at before the device was registered or made: a clock, or a forged row.
    "activation_before_registration": {"severity": "critical"},
    # `audit verify` (or the chains an alerts run verifies) found a broken chain or seal.
    "audit_chain_broken": {"severity": "critical"},
    # More than MAX_DORMANT_RATE of a batch's activated devices (at least MIN_ACTIVATED of
    # them) have logged nothing for IDLE_DAYS.
    "dormant_batch": {
        "severity": "info",
        "idle_days": 30,
        "max_dormant_rate": 0.5,
        "min_activated": 20,
    },
}

EVIDENCE_KEPT = 50  # newest event ids an alert keeps as evidence, per kind
MAX_VERIFIED = 5000  # touched devices an incremental run verifies; more: run `audit verify`
OVERLAP = timedelta(minutes=2)  # an incremental run also rereads this much before its marks
_KINDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# -- rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    enabled: bool
    severity: AlertSeverity
    params: Mapping[str, Any]

    def seconds(self, key: str = "window") -> float:
        return float(self.params[key])


@dataclass(frozen=True)
class Rules:
    """Every rule with its thresholds (DEFAULT_RULES, changed by a settings file)."""

    rules: Mapping[str, Rule]
    source: str | None = None

    def __getitem__(self, name: str) -> Rule:
        return self.rules[name]

    def enabled(self, name: str) -> bool:
        return self.rules[name].enabled

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rules": {
                n: {"enabled": r.enabled, "severity": r.severity, **_params_json(r.params)}
                for n, r in self.rules.items()
            },
        }


def _params_json(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}


def load_rules(path: str | Path | None = None) -> Rules:
    """The rules: DEFAULT_RULES, with what the TOML file PATH changes.

    One table per rule, e.g. `[forgery_burst]` with `min_scans = 50` and `window = "5m"`.
    Durations are seconds, or text with s, m, h or d; `enabled = false` turns a rule off;
    `severity` is info, warning or critical. An unknown rule or key is an error naming it.
    """
    raw: dict[str, Any] = {}
    where = str(path) if path is not None else None
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the alert rules: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    unknown = sorted(set(raw) - set(RULES))
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: no such rule; the rules are {', '.join(RULES)}")
    rules: dict[str, Rule] = {}
    for name in RULES:
        given = raw.get(name, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{where}: {name}: must be a table ([{name}])")
        values = dict(DEFAULT_RULES[name]) | {"enabled": True}
        for key, value in given.items():
            if key not in values:
                keys = ", ".join(sorted(values))
                raise ConfigError(f"{where}: {name}.{key}: no such setting; {name} has {keys}")
            values[key] = _check(where, name, key, value)
        severity = AlertSeverity(_check(where, name, "severity", values.pop("severity")))
        enabled = bool(values.pop("enabled"))
        params = {k: _check(where, name, k, v) for k, v in values.items()}
        rules[name] = Rule(name, enabled, severity, params)
    return Rules(rules, where)


def _check(where: str | None, rule: str, key: str, value: Any) -> Any:
    def bad(reason: str) -> ConfigError:
        return ConfigError(f"{where}: {rule}.{key}: {reason}")

    if key == "enabled":
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return value
    if key == "severity":
        if value not in {s.value for s in AlertSeverity}:
            raise bad(f"{value!r}: choose info, warning or critical")
        return str(value)
    if key in ("window",):
        return _duration(value, bad)
    if key in ("min_sources", "min_scans", "min_devices", "idle_days", "min_activated"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(f"{value!r}: must be a whole number of at least 1")
        if key in ("min_sources", "min_scans", "min_devices") and value < 2:
            raise bad(f"{value!r}: must be at least 2 (one event is no pattern)")
        return value
    if key == "max_dormant_rate":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise bad(f"{value!r}: must be a rate from 0 to below 1 (0.5 is half)")
        return float(value)
    if key == "reasons":
        known = {r.value for r in Reason}
        if (
            not isinstance(value, list | tuple)
            or not value
            or any(not isinstance(v, str) or v not in known for v in value)
        ):
            raise bad(f"must be a list of reason codes from: {', '.join(sorted(known))}")
        return tuple(value)
    raise bad("no such setting")  # pragma: no cover - the keys come from DEFAULT_RULES


def _duration(value: Any, bad: Callable[[str], ConfigError]) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        unit = text[-1:] if text[-1:] in _KINDS else "s"
        number = text[:-1] if text[-1:] in _KINDS else text
        try:
            seconds = float(number) * _KINDS[unit]
        except ValueError:
            seconds = 0.0
        if 0 < seconds < math.inf:
            return seconds
    raise bad(f'{value!r}: must be a duration such as 600, "10m", "24h" or "2d"')


# -- the run ------------------------------------------------------------------------------------


@dataclass
class AlertRun:
    """What one evaluation did: its mode, what it read, the alerts it raised or reopened, and
    the open alerts after it (most recent first)."""

    mode: str
    evaluated_at: datetime
    since: datetime | None
    rules: Rules
    read: dict[str, int]
    raised: list[str]
    reopened: list[str]
    alerts: list[AlertRecord]
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        by = Counter(a.severity for a in self.alerts)
        return {s.value: by.get(s.value, 0) for s in reversed(AlertSeverity)}

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "evaluated_at": self.evaluated_at.isoformat(),
            "since": self.since.isoformat() if self.since else None,
            "read": self.read,
            "new": self.raised,
            "reopened": self.reopened,
            "counts": self.counts(),
            "notes": self.notes,
            "alerts": [alert_json(a) for a in self.alerts],
        }


def alert_json(a: AlertRecord) -> dict[str, Any]:
    return {
        "id": a.id,
        "rule": a.rule,
        "severity": a.severity,
        "subject": a.subject,
        "subject_kind": a.subject_kind,
        "first_seen": a.first_seen.isoformat(),
        "last_seen": a.last_seen.isoformat(),
        "count": a.count,
        "evidence": a.evidence,
        "status": a.status,
        "acked_by": a.acked_by,
        "acked_at": a.acked_at.isoformat() if a.acked_at else None,
        "ack_note": a.ack_note,
        "notified_at": a.notified_at.isoformat() if a.notified_at else None,
    }


def evaluate_alerts(
    registry: Registry,
    keyring: Keyring,
    *,
    rules: Rules | None = None,
    full: bool = False,
    since: datetime | date | None = None,
    now: datetime | None = None,
) -> AlertRun:
    """Evaluate the rules and store what they find; the open alerts after it.

    Incremental (only the rows after the last run's marks, and the subjects they touch) unless
    FULL, SINCE or no run before. SINCE (a date is its midnight, UTC) limits a full run to the
    events from then on; the alerts listed are then those seen since.
    """
    rules = rules or load_rules(None)
    now = now or utcnow()
    start = moment(since)
    marks = registry.alerts.marks()
    ev = _Evaluator(registry, keyring, rules, now, start)
    if full or start is not None or not marks:
        top = registry.alerts.top_ids()
        findings = ev.full()
        mode = "full"
    else:
        new = registry.alerts.new_rows(marks, overlap_from=_overlap(marks))
        findings = ev.incremental(new, marks)
        top = new.top
        mode = "incremental"
    top = dict(top) | {"audit_runs": max(top["audit_runs"], ev.recorded_run)}
    next_marks = top | {"ran_at": int(now.timestamp())}
    if ev.dormant_done:
        next_marks["dormant_day"] = now.date().toordinal()
    saved = registry.alerts.save(findings, next_marks, now)
    listed = registry.alerts.listed(status=AlertStatus.OPEN, since=start)
    listed.sort(key=lambda a: (-_RANK[AlertSeverity(a.severity)], -a.last_seen.timestamp(), a.id))
    return AlertRun(
        mode, now, start, rules, ev.read, saved.raised, saved.reopened, listed, ev.notes
    )


_RANK = {AlertSeverity.INFO: 0, AlertSeverity.WARNING: 1, AlertSeverity.CRITICAL: 2}


def severity_at_least(severity: str, level: str) -> bool:
    return _RANK[AlertSeverity(severity)] >= _RANK[AlertSeverity(level)]


def _overlap(marks: Mapping[str, int]) -> datetime | None:
    """Rows committed out of id order (concurrent transactions on PostgreSQL) would hide below
    a mark: the run also rereads the last OVERLAP before the previous run (recomputing a
    subject twice finds the same)."""
    ran = marks.get("ran_at")
    return datetime.fromtimestamp(ran, UTC) - OVERLAP if ran else None


def break_key(problem: Mapping[str, Any]) -> str:
    """What makes a chain break the same break on every run: its chain, the entry (not for a
    checkpoint's, whose numbers are live counts) and its kind of problem, numbers left out (a
    rolled-back chain that keeps logging is one break, not a new one each night)."""
    chain = problem.get("chain")
    seq = "-" if chain == "checkpoint" else problem.get("seq")
    return f"{chain}#{seq}: {re.sub(r'[0-9]+', 'N', str(problem.get('problem')))}"


class _Evaluator:
    def __init__(
        self, registry: Registry, keyring: Keyring, rules: Rules, now: datetime,
        since: datetime | None,
    ) -> None:  # fmt: skip
        self.registry = registry
        self.reads = registry.alerts
        self.keyring = keyring
        self.rules = rules
        self.now = now
        self.since = since
        self.read: dict[str, int] = {}
        self.notes: list[str] = []
        self.recorded_run = 0
        self.dormant_done = False
        self._id_key = hmac.new(keyring.pepper, b"provision alert ids v1", hashlib.sha256).digest()

    # -- modes

    def full(self) -> list[Finding]:
        r, since, out = self.reads, self.since, []
        if self.rules.enabled("cloned_label"):
            n = int(self.rules["cloned_label"].params["min_sources"])
            out += self._cloned(r.cloned_candidates(n, since))
        if self.rules.enabled("forgery_burst"):
            rule = self.rules["forgery_burst"]
            reasons = list(rule.params["reasons"])
            ips = r.burst_ips(None, reasons, int(rule.params["min_scans"]), rule.seconds(), since)
            out += self._forgery(ips)
        if self.rules.enabled("mass_activation"):
            rule = self.rules["mass_activation"]
            n, w = int(rule.params["min_devices"]), rule.seconds()
            out += self._mass_ips(r.burst_ips(PairingResult.ACCEPTED, None, n, w, since))
            out += self._mass_users(r.burst_users(n, w, since))
        if self.rules.enabled("revoked_device_activity"):
            out += self._revoked(r.revoked_pks())
        if self.rules.enabled("activation_before_registration"):
            out += self._early(r.early_activations())
        if self.rules.enabled("audit_chain_broken"):
            runs = r.audit_runs(0, since)
            self.read["audit_runs"] = len(runs)
            out += self._broken(runs, {})
        if self.rules.enabled("dormant_batch"):
            out += self._dormant()
        return out

    def incremental(self, new: NewRows, marks: Mapping[str, int]) -> list[Finding]:
        self.read = {
            "pairing_events": len(new.pairings),
            "actions": len(new.actions),
            "audit_runs": len(new.audit_runs),
        }
        junk = set(self.rules["forgery_burst"].params["reasons"])
        touched: set[int] = set()
        cloned: set[int] = set()
        revoked: set[int] = set()
        accepted_pks: set[int] = set()
        junk_ips: set[str] = set()
        accepted_ips: set[str] = set()
        users: set[str] = set()
        for _id, pk, ip, user, result, reason in new.pairings:
            if pk is not None:
                touched.add(pk)
            if reason == Reason.ALREADY_ACTIVATED and pk is not None:
                cloned.add(pk)
            if reason == Reason.REVOKED_DEVICE and pk is not None:
                revoked.add(pk)
            if reason in junk and ip:
                junk_ips.add(ip)
            if result == PairingResult.ACCEPTED:
                if ip:
                    accepted_ips.add(ip)
                if user:
                    users.add(user)
                if pk is not None:
                    accepted_pks.add(pk)
        for _id, pk, action_type in new.actions:
            touched.add(pk)
            if action_type == SystemAction.ACTION_REFUSED:
                revoked.add(pk)
        out: list[Finding] = []
        if self.rules.enabled("cloned_label") and cloned:
            out += self._cloned(sorted(cloned))
        if self.rules.enabled("forgery_burst") and junk_ips:
            out += self._forgery(sorted(junk_ips))
        if self.rules.enabled("mass_activation"):
            out += self._mass_ips(sorted(accepted_ips)) if accepted_ips else []
            out += self._mass_users(sorted(users)) if users else []
        if self.rules.enabled("revoked_device_activity") and revoked:
            out += self._revoked(sorted(revoked))
        if self.rules.enabled("activation_before_registration") and accepted_pks:
            out += self._early(self.reads.early_activations(sorted(accepted_pks)))
        if self.rules.enabled("audit_chain_broken"):
            runs = list(new.audit_runs)
            verified = self._verify_touched(sorted(touched))
            if verified is not None:
                runs.append(verified)
            named = {p["device_id"] for run in runs for p in run[3].get("problems", [])}
            ids = [self._id("audit_chain_broken", "device", did) for did in named]
            out += self._broken(runs, self.reads.get(ids))
        last_day = marks.get("dormant_day", 0)
        if self.rules.enabled("dormant_batch") and last_day < self.now.date().toordinal():
            out += self._dormant()
        return out

    # -- rules

    def _id(self, rule: str, kind: str, subject: str) -> str:
        mac = hmac.new(self._id_key, f"{rule}\0{kind}\0{subject}".encode(), hashlib.sha256)
        return mac.hexdigest()[:16]

    def _finding(
        self, rule: str, kind: str, subject: str, times: Sequence[datetime],
        evidence: Mapping[str, Iterable[Any]], count: int | None = None,
    ) -> Finding:  # fmt: skip
        kept = {k: sorted(v)[-EVIDENCE_KEPT:] for k, v in evidence.items()}
        return Finding(
            self._id(rule, kind, subject),
            rule,
            self.rules[rule].severity,
            kind,
            subject,
            min(times),
            max(times),
            len(times) if count is None else count,
            {k: v for k, v in kept.items() if v},
        )

    def _cloned(self, pks: Sequence[int]) -> list[Finding]:
        rule = self.rules["cloned_label"]
        n, window = int(rule.params["min_sources"]), rule.seconds()
        scans = self.reads.scans_after_activation(pks, self.since)
        out = []
        for did, rows in _grouped(scans, key=lambda r: r[2]):
            hits = _qualifying(
                [r[3] for r in rows], window, n, [[r[4] for r in rows], [r[5] for r in rows]]
            )
            if hits:
                picked = [rows[i] for i in hits]
                out.append(
                    self._finding(
                        "cloned_label",
                        "device",
                        did,
                        [r[3] for r in picked],
                        {"pairing_events": [r[0] for r in picked]},
                    )
                )
        return out

    def _forgery(self, ips: Sequence[str]) -> list[Finding]:
        rule = self.rules["forgery_burst"]
        reasons = list(rule.params["reasons"])
        rows = self.reads.attempts_from(ips, None, reasons, self.since)
        return self._bursts("forgery_burst", "ip", rows, int(rule.params["min_scans"]), rule)

    def _mass_ips(self, ips: Sequence[str]) -> list[Finding]:
        rule = self.rules["mass_activation"]
        rows = self.reads.attempts_from(ips, PairingResult.ACCEPTED, None, self.since)
        return self._bursts("mass_activation", "ip", rows, int(rule.params["min_devices"]), rule)

    def _mass_users(self, users: Sequence[str]) -> list[Finding]:
        rule = self.rules["mass_activation"]
        rows = self.reads.activations_by(users, self.since)
        return self._bursts("mass_activation", "user", rows, int(rule.params["min_devices"]), rule)

    def _bursts(
        self, name: str, kind: str, rows: Sequence[tuple[Any, ...]], n: int, rule: Rule
    ) -> list[Finding]:
        """Rows are (event id, subject, time, device pk), by subject and time."""
        out = []
        for subject, group in _grouped(rows, key=lambda r: r[1]):
            # Distinct devices for activations (one each); distinct events for the rest.
            keys = [[r[3] for r in group]] if name == "mass_activation" else [[r[0] for r in group]]
            hits = _qualifying([r[2] for r in group], rule.seconds(), n, keys)
            if hits:
                picked = [group[i] for i in hits]
                out.append(
                    self._finding(
                        name,
                        kind,
                        subject,
                        [r[2] for r in picked],
                        {"pairing_events": [r[0] for r in picked]},
                    )
                )
        return out

    def _revoked(self, pks: Sequence[int]) -> list[Finding]:
        rows = self.reads.revoked_activity(pks, self.since)
        out = []
        for did, group in _grouped(rows, key=lambda r: r[0]):
            evidence: dict[str, list[int]] = {}
            for _, kind, i, _t in group:
                evidence.setdefault(kind, []).append(i)
            out.append(
                self._finding(
                    "revoked_device_activity", "device", did, [r[3] for r in group], evidence
                )
            )
        return out

    def _early(self, rows: Sequence[tuple[Any, ...]]) -> list[Finding]:
        early = []
        for pk, did, created, made, activated in rows:
            activated = _utc(activated)
            if self.since is not None and activated < self.since:
                continue
            before = activated < _utc(created)
            made_at = _made_at(made)
            if before or (made_at is not None and activated < made_at):
                early.append((pk, did, activated))
        accepted = self.reads.accepted_ids([r[0] for r in early]) if early else {}
        return [
            self._finding(
                "activation_before_registration",
                "device",
                did,
                [at],
                {"pairing_events": [accepted[pk]] if pk in accepted else []},
            )
            for pk, did, at in early
        ]

    def _broken(
        self, runs: Sequence[tuple[Any, ...]], stored: Mapping[str, AlertRecord]
    ) -> list[Finding]:
        """audit_chain_broken: one alert per device a run found broken. Its count is the number
        of distinct breaks found (chain, entry, problem), so a nightly `audit verify` finding
        the same break again is no new evidence; its evidence, the runs and the breaks."""
        per: dict[str, list[tuple[int, datetime, str]]] = {}
        for run_id, ran_at, _ok, doc in runs:
            for p in doc.get("problems", []):
                per.setdefault(p["device_id"], []).append((run_id, _utc(ran_at), break_key(p)))
        out = []
        for did, found in sorted(per.items()):
            kind = "device"
            old = stored.get(self._id("audit_chain_broken", kind, did))
            times = [t for _, t, _ in found]
            ids = {i for i, _, _ in found}
            keys = {k for _, _, k in found}
            if old is not None:
                times += [old.first_seen, old.last_seen]
                ids |= set(old.evidence.get("audit_runs", []))
                keys |= set(old.evidence.get("problems", []))
            out.append(
                self._finding(
                    "audit_chain_broken",
                    kind,
                    did,
                    times,
                    {"audit_runs": ids, "problems": keys},
                    count=len(keys),
                )
            )
        return out

    def _verify_touched(self, pks: Sequence[int]) -> tuple[Any, ...] | None:
        """Verify the chains of the devices this run's rows touched; a run record when any
        is broken (recorded like an `audit verify` run, scope "touched")."""
        from provision.audit import verify_devices

        if not pks:
            return None
        if len(pks) > MAX_VERIFIED:
            self.notes.append(
                f"{len(pks):,} devices touched since the last run: more than {MAX_VERIFIED:,}, "
                "so their chains were not verified here; run `provision audit verify`"
            )
            return None
        report = verify_devices(self.registry, self.keyring, pks)
        self.read["devices_verified"] = report.devices
        # A break already alerted on is not recorded again by every run that touches the
        # device (or rereads it in the overlap); a new break on the same device is.
        named = {p.device_id for p in report.problems}
        known = self.reads.get(self._id("audit_chain_broken", "device", d) for d in named)
        seen = {(a.subject, k) for a in known.values() for k in a.evidence.get("problems", [])}
        report.problems = [
            p for p in report.problems if (p.device_id, break_key(p.to_json())) not in seen
        ]
        if report.ok:
            return None
        run_id = record_audit_run(self.registry, report, "touched", now=self.now)
        self.recorded_run = run_id
        return (run_id, self.now, False, _problems_doc(report, "touched"))

    def _dormant(self) -> list[Finding]:
        self.dormant_done = True
        rule = self.rules["dormant_batch"]
        idle = self.now - timedelta(days=int(rule.params["idle_days"]))
        rate, least = float(rule.params["max_dormant_rate"]), int(rule.params["min_activated"])
        out = []
        for name, activated, dormant, sample in self.reads.dormant_batches(idle):
            if activated >= least and dormant / activated > rate:
                out.append(
                    self._finding(
                        "dormant_batch",
                        "batch",
                        name,
                        [self.now],
                        {"devices": sample},
                        count=dormant,
                    )
                )
        return out


def _grouped(rows: Sequence[Any], key: Callable[[Any], Any]) -> Iterable[tuple[Any, list[Any]]]:
    """Consecutive rows with the same key (the reads come sorted by it)."""
    group: list[Any] = []
    current: Any = None
    for row in rows:
        k = key(row)
        if group and k != current:
            yield current, group
            group = []
        current = k
        group.append(row)
    if group:
        yield current, group


def _qualifying(
    times: Sequence[datetime], window: float, n: int, keys: Sequence[Sequence[Any]]
) -> list[int]:
    """Indexes of the events (sorted by time) that lie in some window of WINDOW seconds in
    which one of KEYS (addresses, fingerprints, devices, event ids) takes N distinct values.

    Two pointers: for each first event i, the window runs to the last event j within WINDOW of
    it; when it holds N distinct values of a key, events i..j all qualify (a difference array
    marks the ranges, so the whole pass is linear)."""
    size = len(times)
    if size < n:
        return []
    secs = [t.timestamp() for t in times]
    marks = [0] * (size + 1)
    counters = [Counter[Any]() for _ in keys]
    j = 0  # the window is [i, j)
    for i in range(size):
        while j < size and secs[j] - secs[i] <= window:
            for c, values in zip(counters, keys, strict=True):
                if values[j] is not None:
                    c[values[j]] += 1
            j += 1
        if any(len(c) >= n for c in counters):
            marks[i] += 1
            marks[j] -= 1
        for c, values in zip(counters, keys, strict=True):
            v = values[i]
            if v is not None:
                c[v] -= 1
                if not c[v]:
                    del c[v]
    out, running = [], 0
    for i in range(size):
        running += marks[i]
        if running > 0:
            out.append(i)
    return out


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _made_at(text: str | None) -> datetime | None:
    """A manufacture date (its midnight, UTC) or date-time (UTC when it names no offset)."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return _utc(value).astimezone(UTC)


# -- audit runs, acknowledgement --------------------------------------------------------------

MAX_PROBLEMS_KEPT = 1000
MIN_ALERT_PREFIX = 6  # as for device ids


def _problems_doc(report: Any, scope: str) -> dict[str, Any]:
    return {
        "scope": scope,
        "total": len(report.problems),
        "problems": [p.to_json() for p in report.problems[:MAX_PROBLEMS_KEPT]],
    }


def record_audit_run(
    registry: Registry, report: Any, scope: str, *, now: datetime | None = None
) -> int:
    """Store what a verification found (an AuditReport): scope "all", "device" or "touched".
    The audit_chain_broken rule reads these records."""
    return registry.alerts.record_audit_run(
        report.ok,
        report.devices,
        report.entries,
        report.events,
        _problems_doc(report, scope),
        now or utcnow(),
    )


def find_alert(registry: Registry, alert_id: str) -> AlertRecord:
    text = alert_id.strip().lower()
    if not text or any(c not in "0123456789abcdef" for c in text):
        raise AlertError(f"{alert_id!r} is not an alert id (16 hexadecimal characters)")
    if len(text) < MIN_ALERT_PREFIX:
        raise AlertError(
            f"alert id {alert_id!r} is too short: give at least {MIN_ALERT_PREFIX} of its 16 "
            "characters"
        )
    found = registry.alerts.by_prefix(text)
    if not found:
        raise AlertError(f"no alert {text}")
    if len(found) > 1:
        raise AlertError(f"{text} is the start of more than one alert id; give more of it")
    return found[0]


def acknowledge(
    registry: Registry, alert_id: str, by: str, note: str, *, now: datetime | None = None
) -> AlertRecord:
    """Mark the alert acknowledged, by whom, when and why; it stays quiet until new evidence."""
    if not note.strip():
        raise AlertError("--note: say why (what was checked, what was done)")
    if len(note) > 1000:
        raise AlertError("--note: at most 1,000 characters")
    alert = find_alert(registry, alert_id)
    done = registry.alerts.acknowledge(alert.id, by, note.strip(), now or utcnow())
    assert done is not None
    return done


# -- notification ------------------------------------------------------------------------------


SIGNATURE_HEADER = "X-Provision-Signature"


def webhook_secret(keyring: Keyring) -> bytes:
    """The key that signs webhook bodies, derived from the keyring (the receiver needs it:
    `provision alerts webhook-secret`)."""
    return hmac.new(keyring.pepper, b"provision alerts webhook v1", hashlib.sha256).digest()


def sign_body(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header's value: `t=UNIX,v1=HEX`, HEX being HMAC-SHA256 over
    `UNIX.BODY` (the time is signed too, so an old body cannot be replayed as new)."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclass(frozen=True)
class Delivery:
    """One alert's delivery: delivered or not, after how many attempts, and why not."""

    alert_id: str
    ok: bool
    attempts: int
    error: str | None = None
    unreachable: bool = False


def notify(
    registry: Registry,
    keyring: Keyring,
    url: str,
    *,
    attempts: int = 4,
    backoff: float = 1.0,
    timeout: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Delivery]:
    """POST each open alert not yet delivered, once, as signed JSON.

    A network error, a 429 or a 5xx is retried with backoff (BACKOFF, then twice that, ...).
    An alert is claimed before it is sent, so two overlapping runs never send it twice; a
    delivered alert is not sent again until it is reopened, and one that failed is released
    for the next run. When the receiver cannot be reached at all, the alerts after it are not
    tried (each would wait out the same timeouts): they count as failed, for the next run.
    """
    check_webhook_url(url)
    secret = webhook_secret(keyring)
    pending = [a for a in registry.alerts.listed(status=AlertStatus.OPEN) if a.notified_at is None]
    pending.sort(key=lambda a: (a.first_seen, a.id))
    out: list[Delivery] = []
    down: str | None = None
    for alert in pending:
        if down is not None:
            out.append(Delivery(alert.id, False, 0, f"not tried: {down}"))
            continue
        if not registry.alerts.claim_delivery(alert.id, utcnow()):
            continue  # another run is sending it, or has sent it
        event = "alert.reopened" if alert.acked_at is not None else "alert.raised"
        body = json.dumps(
            {"event": event, "alert": alert_json(alert), "sent_at": utcnow().isoformat()},
            sort_keys=True,
        ).encode()
        try:
            delivery = _post(url, body, secret, alert.id, event, attempts, backoff, timeout, sleep)
        except BaseException:
            registry.alerts.release_delivery(alert.id)  # interrupted: the next run sends it
            raise
        if not delivery.ok:
            registry.alerts.release_delivery(alert.id)
            if delivery.unreachable:
                down = "the receiver was unreachable"
        out.append(delivery)
    return out


def check_webhook_url(url: str) -> str:
    """URL, if it is one a webhook can be POSTed to (http or https, a host, a valid port)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ConfigError("--notify: not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--notify {safe_url(url)!r}: give an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"--notify {safe_url(url)!r}: a user or password in the URL is not sent; the "
            "receiver checks the X-Provision-Signature header instead"
        )
    return url


def safe_url(url: str) -> str:
    """URL without its user, password or query (which may carry a token), for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(not a valid URL)"
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, "", ""))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook answering with a redirect has not taken the body: a failure, not a GET."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _post(
    url: str, body: bytes, secret: bytes, alert_id: str, event: str, attempts: int,
    backoff: float, timeout: float, sleep: Callable[[float], None],
) -> Delivery:  # fmt: skip
    error = ""
    delivery = str(uuid.uuid4())
    for attempt in range(1, attempts + 1):
        stamp = int(time.time())
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "provision-alerts",
                SIGNATURE_HEADER: sign_body(secret, body, stamp),
                "X-Provision-Event": event,
                "X-Provision-Delivery": delivery,
            },
        )
        retry = True
        unreachable = False
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                if 200 <= response.status < 300:
                    return Delivery(alert_id, True, attempt)
                error = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
            retry = exc.code == 429 or exc.code >= 500
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            error = f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason
            unreachable = True
        except (http.client.HTTPException, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            retry = False
        if not retry:
            return Delivery(alert_id, False, attempt, error)
        if attempt < attempts:
            sleep(backoff * 2 ** (attempt - 1))
    return Delivery(alert_id, False, attempts, error, unreachable)
