"""`provision stats` and `provision alerts`: how the fleet is doing, and what looks wrong."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from typing import Any

import click

from provision.cli.common import (
    DATE,
    ProvisionGroup,
    Settings,
    emit,
    format_option,
    json_option,
    operator,
    pass_settings,
    typed_day,
)
from provision.errors import FailOnHit, NotifyFailed
from provision.text import escape_control, formula_safe, plural


@click.command("stats")
@click.option(
    "--by",
    type=click.Choice(["batch", "model", "type", "line", "manufacturer", "week", "month"]),
    default="batch",
    show_default=True,
    help="What a group is: a device column, or the ISO week or month of registration.",
)
@click.option("--since", type=DATE, help="Only devices registered at or after DATE (UTC).")
@click.option(
    "--until",
    type=DATE,
    help="Only devices registered before the end of DATE (UTC); usage is counted up to it.",
)
@format_option("table", "csv", "json")
@json_option
@pass_settings
def stats(
    settings: Settings,
    by: str,
    since: datetime | None,
    until: datetime | None,
    fmt: str,
    as_json: bool,
) -> None:
    """How the fleet is doing, by batch, model, type, line, manufacturer, week or month.

    Each group: registered, activated, revoked, the activation rate, days from registration to
    activation (p50, p90), activation attempts by result and reason, and usage: devices active
    in the last 7 and 30 days, actions per active device per day, the top action types.
    --json is the same as --format json.

    \b
    Example:
      provision stats --by month --since 2026-01-01
      provision stats --by model --format csv > models.csv
    """
    import csv

    from provision.stats import CSV_COLUMNS, csv_row, fleet_stats

    result = fleet_stats(settings.registry(), by, since=typed_day(since), until=typed_day(until))
    fmt = "json" if as_json else fmt
    if fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    rows = [csv_row(g) for g in [*result.groups, result.totals]]
    if fmt == "csv":
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(CSV_COLUMNS)
        out.writerows([formula_safe(r[c]) for c in CSV_COLUMNS] for r in rows)
        return

    def cell(value: Any) -> str:
        return "-" if value is None else str(value)

    lines = [
        f"{'GROUP':<24} {'REGISTERED':>10} {'ACTIVATED':>9} {'REVOKED':>7} {'RATE':>6} "
        f"{'P50 D':>6} {'P90 D':>6} {'SCANS':>7} {'ACT 7D':>7} {'ACT 30D':>7} {'A/DEV/D':>7} "
        "TOP ACTIONS"
    ]
    for r in rows:
        lines.append(
            f"{escape_control(str(r['group'])):<24} {r['registered']:>10,} {r['activated']:>9,} "
            f"{r['revoked']:>7,} {cell(r['activation_rate']):>6} "
            f"{cell(r['days_to_activation_p50']):>6} {cell(r['days_to_activation_p90']):>6} "
            f"{r['scans']:>7,} {r['active_7d']:>7,} {r['active_30d']:>7,} "
            f"{cell(r['actions_per_active_device_per_day']):>7} "
            f"{escape_control(r['top_action_types']) or '-'}"
        )
    if result.unattached_scans:
        junk = ", ".join(f"{k} {n:,}" for k, n in sorted(result.unattached_scans.items()))
        lines.append(f"Attempts naming no device: {junk}")
    click.echo("\n".join(lines))


NOTIFY_BACKOFF = "PROVISION_NOTIFY_BACKOFF"
"""Seconds before the first retry of a webhook delivery (default 1; then 2, 4)."""


@click.group("alerts", cls=ProvisionGroup, invoke_without_command=True)
@click.option(
    "--since",
    type=DATE,
    help="Evaluate the events from DATE on (a full pass over them) and list the alerts seen "
    "since; without it, only what came after the last run is read.",
)
@click.option("--full", is_flag=True, help="Evaluate every rule over all history.")
@format_option("table", "json")
@click.option(
    "--fail-on",
    type=click.Choice(["warning", "critical"]),
    help="Exit 3 when an open alert is this severe or more (warning includes critical).",
)
@click.option(
    "--rules",
    "rules_file",
    type=click.Path(dir_okay=False),
    envvar="PROVISION_ALERTS",
    show_envvar=True,
    help="TOML file that changes the rules' thresholds (see the README).",
)
@click.option(
    "--notify",
    "notify_url",
    metavar="URL",
    help="POST each new or reopened alert once, as signed JSON (header X-Provision-Signature).",
)
@json_option
@click.pass_context
def alerts(
    ctx: click.Context,
    since: datetime | None,
    full: bool,
    fmt: str,
    fail_on: str | None,
    rules_file: str | None,
    notify_url: str | None,
    as_json: bool,
) -> None:
    """Evaluate the alert rules, store what they find, list the open alerts.

    \b
    Rules (default thresholds; a --rules file changes them):
      cloned_label                    critical  scanned after activation from 3 addresses
                                                or fingerprints within 24 h
      forgery_burst                   warning   20 forged, malformed or unknown_key scans
                                                from one address within 10 min
      mass_activation                 warning   one address or user activates 20 devices
                                                within 1 h
      revoked_device_activity         critical  an attempt to activate, or log actions for,
                                                a revoked device
      activation_before_registration  critical  activated before registered or made
      audit_chain_broken              critical  `audit verify` found a broken chain
      dormant_batch                   info      over half of a batch's activated devices
                                                (20 or more) idle for 30 days

    An acknowledged alert (`alerts ack`) stays quiet until new evidence arrives. Exit code 3
    with --fail-on when an open alert is that severe; 1 when a notification was not delivered
    (it is sent again by the next run).

    \b
    Example (cron, every 5 minutes):
      */5 * * * *  provision alerts --fail-on critical --notify https://ops.example.com/hook
    """
    if ctx.invoked_subcommand is not None:
        return
    from provision.alerts import evaluate_alerts, load_rules, notify, safe_url, severity_at_least

    settings: Settings = ctx.obj
    rules = load_rules(rules_file)
    if notify_url:
        from provision.alerts import check_webhook_url

        check_webhook_url(notify_url)
    registry, keyring = settings.registry_with_keyring()
    run = evaluate_alerts(registry, keyring, rules=rules, full=full, since=typed_day(since))
    failed: list[str] = []
    delivered = 0
    if notify_url:
        try:
            backoff = float(os.environ.get(NOTIFY_BACKOFF, "1"))
        except ValueError:
            backoff = 1.0
        for d in notify(registry, keyring, notify_url, backoff=max(0.0, backoff)):
            if d.ok:
                delivered += 1
            else:
                failed.append(
                    f"alert {d.alert_id}: {d.error} after {plural(d.attempts, 'attempt')}"
                )
    if as_json or fmt == "json":
        data = run.to_json() | {"notified": delivered, "notify_failed": failed}
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(_alerts_table(run))
        if notify_url and delivered:
            click.echo(f"Notified {safe_url(notify_url)}: {plural(delivered, 'alert')}")
    undelivered = (
        f"{plural(len(failed), 'alert')} not delivered to {safe_url(notify_url or '')}; "
        "the next run sends them again"
    )
    for line in failed:
        click.echo(f"notify: {escape_control(line)}", err=True)
    hits = [a for a in run.alerts if fail_on and severity_at_least(a.severity, fail_on)]
    if hits:
        # Exit 3 first, webhook down or not: the cron job that pages on it must still page.
        if failed:
            click.echo(f"Error: {undelivered}", err=True)
        raise FailOnHit(
            f"{plural(len(hits), 'open alert')} at {fail_on} or above (--fail-on {fail_on})"
        )
    if failed:
        raise NotifyFailed(undelivered)


def _alerts_table(run: Any) -> str:
    lines = []
    if run.alerts:
        lines.append(
            f"{'ID':<16}  {'SEVERITY':<8}  {'RULE':<30}  {'SUBJECT':<28}  {'COUNT':>6}  "
            f"{'FIRST SEEN (UTC)':<16}  LAST SEEN (UTC)"
        )
        for a in run.alerts:
            subject = escape_control(f"{a.subject_kind} {a.subject}")
            if len(subject) > 28:
                subject = subject[:27] + "…"
            lines.append(
                f"{a.id:<16}  {a.severity:<8}  {a.rule:<30}  {subject:<28}  {a.count:>6,}  "
                f"{a.first_seen:%Y-%m-%d %H:%M}  {a.last_seen:%Y-%m-%d %H:%M}"
            )
    counts = ", ".join(f"{n} {s}" for s, n in run.counts().items() if n)
    nouns = {
        "pairing_events": ("pairing event", "pairing events"),
        "actions": ("action", "actions"),
        "audit_runs": ("audit run", "audit runs"),
        "devices_verified": ("device verified", "devices verified"),
    }
    read = ", ".join(plural(n, *nouns.get(k, (k, k))) for k, n in run.read.items())
    lines.append(
        f"{plural(len(run.alerts), 'open alert')}" + (f" ({counts})" if counts else "")
        + f"; {len(run.raised)} new, {len(run.reopened)} reopened; {run.mode} run"
        + (f" (read {read})" if read else "")
    )  # fmt: skip
    lines += [f"note: {n}" for n in run.notes]
    return "\n".join(lines)


@alerts.command("ack")
@click.argument("alert_id")
@click.option("--note", required=True, help="What was checked or done (kept with the alert).")
@click.option("--by", "by", help="Who acknowledges it [default: the login name].")
@json_option
@pass_settings
def alerts_ack(settings: Settings, alert_id: str, note: str, by: str | None, as_json: bool) -> None:
    """Acknowledge an alert (its id, or a unique start of it): it stays quiet until new
    evidence arrives.

    \b
    Example:
      provision alerts ack 5c1f0e9a2b7d4c33 --note "reseller in Lyon, confirmed by phone"
    """
    from provision.alerts import acknowledge, alert_json

    alert = acknowledge(settings.registry(), alert_id, by or operator(), note)
    emit(
        as_json,
        alert_json(alert),
        f"Acknowledged {alert.id} ({alert.rule}, {alert.subject_kind} {alert.subject}) "
        f"by {alert.acked_by}",
    )


@alerts.command("show")
@click.argument("alert_id")
@json_option
@pass_settings
def alerts_show(settings: Settings, alert_id: str, as_json: bool) -> None:
    """One alert, open or acknowledged, with its evidence (the ids of the events that show
    it; `history DEVICE` shows them in context).

    \b
    Example:
      provision alerts show 5c1f0e9a
    """
    from provision.alerts import alert_json, find_alert

    alert = find_alert(settings.registry(), alert_id)
    data = alert_json(alert)
    text = [
        f"Alert {alert.id}: {alert.rule} ({alert.severity}), {alert.status}",
        f"Subject: {alert.subject_kind} {alert.subject}",
        f"Seen: {alert.count:,} times, {alert.first_seen:%Y-%m-%d %H:%M:%S} to "
        f"{alert.last_seen:%Y-%m-%d %H:%M:%S} UTC",
    ]
    for kind, ids in sorted(alert.evidence.items()):
        text.append(f"Evidence, {kind.replace('_', ' ')}: {', '.join(map(str, ids))}")
    if alert.acked_by:
        text.append(f"Acknowledged by {alert.acked_by} at {alert.acked_at:%Y-%m-%d %H:%M:%S}")
        text.append(f"Note: {alert.ack_note}")
    if alert.notified_at:
        text.append(f"Notified at {alert.notified_at:%Y-%m-%d %H:%M:%S}")
    emit(as_json, data, "\n".join(text))


@alerts.command("webhook-secret")
@json_option
@pass_settings
def alerts_webhook_secret(settings: Settings, as_json: bool) -> None:
    """Print the key that signs --notify bodies (hex), for the receiver's configuration.

    The receiver checks `X-Provision-Signature: t=UNIX,v1=HEX`: HEX is HMAC-SHA256 under this
    key over `UNIX.` followed by the body, and UNIX is recent. It is derived from the keyring:
    keep it as secret as the keyring.

    \b
    Example (the receiver's configuration):
      provision alerts webhook-secret > /etc/ops-hooks/provision.key
    """
    from provision.alerts import webhook_secret

    secret = webhook_secret(settings.keyring()).hex()
    emit(as_json, {"secret": secret, "algorithm": "HMAC-SHA256"}, secret)
