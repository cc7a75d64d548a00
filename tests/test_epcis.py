"""GS1: GTINs in the serials manifest, and `provision export epcis` checked with GS1's own
tools: the official EPCIS 2.0 JSON Schema and JSON-LD context (vendored in tests/data/gs1 with
their SOURCE.txt and LICENSE), and every eventID against GS1's reference event hash
(epcis-event-hash-generator); on both databases."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator, FormatChecker

from provision.epcis import (
    EPCIS_CONTEXT,
    DeviceStory,
    EpcisSettings,
    device_events,
    document_chunks,
)
from provision.gs1 import check_digit, gtin_problem
from provision.registry import Registry
from provision.serials import GS1_AI82
from tests.helpers import with_payload, write_csv

GS1 = Path(__file__).parent / "data" / "gs1"
GTIN = "04012345000016"
SERIALS = ["serial", "device_type", "model", "manufactured_at", "gtin"]
COMPONENTS = ["serial", "component_type", "component_spec", "component_serial", "supplier", "lot"]
SHIPMENTS = ["serial", "shipped_at", "order_id", "customer", "destination", "carrier"]


def reference_hashes(document: Path) -> list[str]:
    """GS1's reference implementation of the event hash, over a whole document."""
    from epcis_event_hash_generator import events_from_file_reader, hash_generator

    events = events_from_file_reader.event_list_from_file(str(document))
    return list(hash_generator.epcis_hashes_from_events(events))


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads((GS1 / "EPCIS-JSON-Schema.json").read_text())
    validator = Draft7Validator(schema, format_checker=FormatChecker())
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def expanded(document: dict[str, Any]) -> Any:
    """The document expanded as JSON-LD with GS1's official context (served from the vendored
    copy: no network)."""
    from pyld import jsonld

    context = json.loads((GS1 / "epcis-context.jsonld").read_text())

    def loader(url: str, options: Any = None) -> dict[str, Any]:
        assert url == EPCIS_CONTEXT, url
        return {"contextUrl": None, "documentUrl": url, "document": context}

    return jsonld.expand(document, {"documentLoader": loader})


def test_gtin_check_digits() -> None:
    assert gtin_problem(GTIN) is None and gtin_problem("4012345000016") is None
    assert gtin_problem("96385074") is None  # GTIN-8
    assert gtin_problem("04012345000017") == "check digit is 7, should be 6"
    assert gtin_problem("401234500001") == "check digit is 1, should be 5"
    assert gtin_problem("40123450000") == "a GTIN has 8, 12, 13 or 14 digits, not 11"
    assert gtin_problem("4012345O00016") == "a GTIN has digits only"
    assert check_digit("0401234500001") == 6


def test_a_bad_gtin_is_named_by_file_line_and_column(run_cli: Any, tmp_path: Path) -> None:
    rows = [
        ["GT1", "sensor", "S-1", "", GTIN],
        ["GT2", "sensor", "S-1", "", "04012345000017"],
        ["GT3-" + "X" * 17, "sensor", "S-1", "", GTIN],  # 21 characters: too long for AI 21
        ["GT4-" + "X" * 30, "sensor", "S-1", "", ""],  # fine without a GTIN
    ]
    f = write_csv(tmp_path / "s.csv", SERIALS, rows)
    out = run_cli("register", str(f), "--batch", "gt")
    assert out.exit_code != 0
    assert f"{f}:3: gtin: check digit is 7, should be 6" in out.stderr
    assert f"{f}:4: serial: a serial with a gtin is a GS1 AI 21 serial number" in out.stderr
    assert ":5:" not in out.stderr
    assert "Registered" not in out.stdout


@pytest.fixture
def story_registry(
    run_cli: Any, registry: Registry, keyring_path: Path, tmp_path: Path
) -> dict[str, Any]:
    """A batch with and without GTINs, components, stored shipments, an activation and a
    revocation."""
    from provision.activation import activate
    from provision.audit import revoke
    from provision.keys import load_keyring
    from provision.payload import payload_url
    from provision.pipeline import register_batch
    from provision.serials import device_id

    keyring = load_keyring(keyring_path)
    serials = write_csv(
        tmp_path / "s.csv",
        SERIALS,
        [
            ["EP-1", "sensor", "S-1", "2026-10-30", GTIN],
            ["EP.2_b", "sensor", "S-1", "2026-10-30", "4012345000016"],
            ["EP/3", "sensor", "S-1", "", GTIN],  # percent-encoded in its Digital Link
            ["NOGTIN4", "sensor", "S-2", "", ""],
        ],
    )
    comps = write_csv(
        tmp_path / "c.csv",
        COMPONENTS,
        [
            ["EP-1", "board", "B-2", "PCB-0001", "Acme", "L7"],
            ["EP-1", "battery", "CR2032", "BAT-9", "Cell", "0042"],
            ["EP-1", "case", "C-1", "", "Moulds", "L1"],  # no serial: no child EPC
        ],
    )
    register_batch(
        registry, keyring, serials, components_path=comps, batch="nov30",
        now=datetime(2026, 11, 30, 22, 0, tzinfo=UTC),
    )  # fmt: skip
    ship = write_csv(
        tmp_path / "ship.csv",
        SHIPMENTS,
        [
            ["EP-1", "2026-12-01T09:00:00Z", "SO-77", "Acme Retail", "Lyon", "DHL"],
            ["NOGTIN4", "2026-12-01", "", "", "", ""],
        ],
    )
    assert run_cli("shipments", "import", str(ship)).exit_code == 0

    def device(serial: str) -> Any:
        found = registry.devices.get(device_id(keyring.pepper, serial))
        assert found is not None
        return found

    url = payload_url("http://x", with_payload(keyring, device("EP-1"))["payload"])
    activate(
        registry, keyring, url, "ada@example.com", ip="198.51.100.7",
        now=datetime(2026, 12, 3, 18, 30, 15, 123456, tzinfo=UTC),
    )  # fmt: skip
    revoke(
        registry, keyring, device("NOGTIN4"), "lost in transit", "security",
        now=datetime(2027, 1, 4, 9, 0, tzinfo=UTC),
    )  # fmt: skip
    return {"keyring": keyring, "device": device}


def test_the_export_is_valid_epcis_with_reference_event_hashes(
    run_cli: Any, story_registry: dict[str, Any], tmp_path: Path
) -> None:
    out_file = tmp_path / "export.jsonld"
    out = run_cli(
        "export", "epcis", "--output", str(out_file), "--read-point",
        "urn:epc:id:sgln:4012345.00001.0", "--biz-location", "urn:epc:id:sgln:4012345.00001.7",
        "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert summary["devices"] == 4
    assert summary["events"] == {
        "commissioning": 4, "AggregationEvent": 1, "shipping": 2, "accepting": 1, "holding": 1,
    }  # fmt: skip
    doc = json.loads(out_file.read_text())
    assert doc["type"] == "EPCISDocument" and doc["schemaVersion"] == "2.0"
    assert doc["@context"][0] == EPCIS_CONTEXT
    assert schema_errors(doc) == []
    events = doc["epcisBody"]["eventList"]
    assert [e["eventID"] for e in events] == reference_hashes(out_file)

    device = story_registry["device"]
    ep1 = [e for e in events if e.get("epcList") == [f"https://id.gs1.org/01/{GTIN}/21/EP-1"]]
    assert [e["bizStep"] for e in ep1] == ["commissioning", "shipping", "accepting"]
    made, shipped, activated = ep1
    assert made["action"] == "ADD" and made["disposition"] == "active"
    assert made["ilmd"] == {"cbvmda:lotNumber": "nov30", "provision:manufacturedAt": "2026-10-30"}
    assert made["readPoint"] == {"id": "urn:epc:id:sgln:4012345.00001.0"}
    assert shipped["bizTransactionList"] == [
        {"type": "po", "bizTransaction": "urn:provision:order:erp:SO-77"}
    ]
    assert (activated["eventTime"], activated["disposition"]) == (
        "2026-12-03T18:30:15.123Z", "retail_sold",
    )  # fmt: skip
    assert "readPoint" not in activated  # the customer's place is not the factory's
    [assembly] = [e for e in events if e["type"] == "AggregationEvent"]
    assert assembly["parentID"] == f"https://id.gs1.org/01/{GTIN}/21/EP-1"
    assert sorted(assembly["childEPCs"]) == [
        "urn:provision:component:battery:BAT-9", "urn:provision:component:board:PCB-0001",
    ]  # fmt: skip
    epcs = {e for ev in events for e in ev.get("epcList", [])}
    assert f"https://id.gs1.org/01/{GTIN}/21/EP%2F3" in epcs
    assert f"https://id.gs1.org/01/{GTIN}/21/EP.2_b" in epcs  # a GTIN-13 given: 14 digits
    private = f"urn:provision:device:{device('NOGTIN4').device_id}"
    assert [e["bizStep"] for e in events if e.get("epcList") == [private]] == [
        "commissioning", "shipping", "holding",
    ]  # fmt: skip
    assert "NOGTIN4" not in out_file.read_text()  # no GTIN: its serial stays out

    # The JSON-LD context defines every term: expansion keeps each event whole, the
    # vocabulary as GS1's web URIs.
    [body] = expanded(doc)[0]["https://ref.gs1.org/epcis/epcisBody"]
    expanded_events = body["https://ref.gs1.org/epcis/eventList"]
    assert len(expanded_events) == len(events)
    steps = {s["@id"] for e in expanded_events for s in e["https://ref.gs1.org/epcis/bizStep"]}
    assert "https://ref.gs1.org/cbv/BizStep-commissioning" in steps
    ilmd = expanded_events[0]["https://ref.gs1.org/epcis/ilmd"][0]
    assert set(ilmd) == {"urn:epcglobal:cbv:mda:lotNumber", "urn:provision:epcis:manufacturedAt"}


def test_export_periods_batches_and_stdout(
    run_cli: Any, story_registry: dict[str, Any], tmp_path: Path
) -> None:
    out = run_cli("export", "epcis", "--since", "2026-12-02", "--until", "2026-12-31")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)  # the document on standard output, the summary on stderr
    # December's events: the activation; not the shipments of Dec 1, nor January's revocation.
    assert [e["bizStep"] for e in doc["epcisBody"]["eventList"]] == ["accepting"]
    assert "4 devices, 1 events (1 accepting)" in out.stderr
    one = run_cli("export", "epcis", "--batch", "nov30", "--until", "2026-11-30")
    assert one.exit_code == 0, one.output
    made = [e["bizStep"] for e in json.loads(one.stdout)["epcisBody"]["eventList"]]
    # Registered on Nov 30: the four devices, and EP-1's assembly from the same run.
    assert made == [
        "commissioning",
        "assembling",
        "commissioning",
        "commissioning",
        "commissioning",
    ]
    assert run_cli("export", "epcis", "--batch", "nope").exit_code != 0
    bad = run_cli("export", "epcis", "--read-point", "urn:epc:id:sgln:12.3.0", "--output", "x")
    assert bad.exit_code != 0 and "12 digits" in bad.stderr
    assert not Path("x").exists()
    assert run_cli("export", "epcis", "--json").exit_code != 0  # --json needs --output


def random_serial(rng: random.Random) -> str:
    alphabet = GS1_AI82 if rng.random() < 0.3 else "ABCXYZ0123456789-._"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20)))


def test_event_ids_match_the_reference_for_random_devices(tmp_path: Path) -> None:
    """Hundreds of devices with random serials (any GS1 AI 82 character), lots that look
    like numbers, GTINs or none, another Digital Link domain, components, shipments, times
    with and without milliseconds: every eventID is the reference implementation's."""
    rng = random.Random(20261201)
    settings = EpcisSettings(
        "https://dl.example.com",
        "urn:epc:id:sgln:4012345.00001.0",
        "https://dl.example.com/414/4012345000016",
    )
    base = datetime(2026, 11, 1, tzinfo=UTC)
    events = []
    for i in range(300):
        made = base + timedelta(seconds=rng.randint(0, 10**6), microseconds=rng.randint(0, 999999))
        story = DeviceStory(
            f"{i:016x}",
            random_serial(rng),
            rng.choice([GTIN, "00000096385074", None]),
            rng.choice(["nov30", "0042", "1e3", "12.50", "lot 7", "L-1"]),
            rng.choice([None, "2026-10-30", "2026-10-30T08:00:00Z"]),
            made,
            made + timedelta(days=3) if rng.random() < 0.5 else None,
            made + timedelta(days=9) if rng.random() < 0.2 else None,
            [("board", random_serial(rng), made)] if rng.random() < 0.3 else [],
            [(made + timedelta(days=1), rng.choice([None, "SO 1/2"]), "erp")],
        )
        events.extend(device_events(story, settings))
    path = tmp_path / "random.jsonld"
    path.write_text("".join(document_chunks(iter(events))))
    assert schema_errors(json.loads(path.read_text())) == []
    assert [e["eventID"] for e in events] == reference_hashes(path)


def test_a_job_file_gives_each_model_its_gtin(
    run_cli: Any, registry: Registry, keyring_path: Path, tmp_path: Path
) -> None:
    from provision.keys import load_keyring
    from provision.serials import device_id

    pepper = load_keyring(keyring_path).pepper
    rows = [
        ["JOB1", "sensor", "S-1", "", ""],  # the model's GTIN
        ["JOB2", "sensor", "S-1", "", "96385074"],  # its own gtin cell wins
        ["JOB3", "sensor", "S-9", "", ""],  # a model the table does not name: none
    ]
    write_csv(tmp_path / "s.csv", SERIALS, rows)
    job = tmp_path / "job.toml"
    job.write_text(f'batch = "j1"\nserials = "s.csv"\n[gtin]\n"S-1" = "{GTIN}"\n')
    out = run_cli("run", str(job))
    assert out.exit_code == 0, out.output
    gtins = [registry.devices.get(device_id(pepper, s[0])) for s in rows]
    assert [d.gtin if d else "missing" for d in gtins] == [GTIN, "00000096385074", None]

    job.write_text('batch = "j2"\nserials = "s.csv"\n[gtin]\n"S-1" = "04012345000017"\n')
    bad = run_cli("run", str(job))
    assert bad.exit_code != 0
    assert f'{job}: `gtin."S-1"`: check digit is 7, should be 6' in bad.stderr
    long = write_csv(tmp_path / "long.csv", SERIALS, [["L" * 21, "sensor", "S-1", "", ""]])
    job.write_text(f'batch = "j3"\nserials = "long.csv"\n[gtin]\n"S-1" = "{GTIN}"\n')
    too_long = run_cli("run", str(job))
    assert too_long.exit_code != 0
    assert f"{long}:2: serial: a serial with a gtin is a GS1 AI 21" in too_long.stderr
    assert registry.batches.id_of("j3") is None
