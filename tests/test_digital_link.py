"""`labels --payload digital-link`: the QR holds a GS1 Digital Link URI a retail scanner reads
(checked with biip, after decoding the rendered label with zxing-cpp) and a phone opens on the
activation service, which activates the device once, as with the compact payload."""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from biip import parse

from provision.registry import Registry
from tests.helpers import decode_pdf, write_csv

GTIN = "04012345000016"
SERIALS = ["serial", "device_type", "model", "gtin"]
BASE = "https://act.example.com"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def register(run_cli: Any, tmp_path: Path, rows: list[list[str]], batch: str = "dl") -> None:
    f = write_csv(tmp_path / f"{batch}.csv", SERIALS, rows)
    out = run_cli("register", str(f), "--batch", batch)
    assert out.exit_code == 0, out.output


def render(run_cli: Any, batch: str, template: str, *extra: str) -> Any:
    return run_cli(
        "--base-url", BASE, "labels", batch, "--template", template, "--payload",
        "digital-link", "--json", *extra,
    )  # fmt: skip


def test_a_digital_link_label_scans_at_a_till_and_activates_once(
    run_cli: Any, registry: Registry, tmp_path: Path, keyring_path: Path
) -> None:
    register(
        run_cli, tmp_path, [["DL-0001", "sensor", "S-1", GTIN], ["DL/0002", "sensor", "S-1", GTIN]]
    )
    out = render(run_cli, "dl", "thermal-50x30")
    assert out.exit_code == 0, out.output
    pdf = Path(json.loads(out.stdout)["pdf"])
    assert json.loads(pdf.with_suffix(".json").read_text())["payload"] == "digital-link"
    texts = sorted(t for page in decode_pdf(pdf, dpi=203) for t in page)
    assert len(texts) == 2
    for text in texts:
        link = parse(text).gs1_digital_link_uri
        assert link is not None, text
        values = {e.ai.ai: e.value for e in link.element_strings}
        assert values["01"] == GTIN and link.element_strings[0].gtin is not None
        assert values["21"] in ("DL-0001", "DL/0002")
        assert text.startswith(f"{BASE}/01/{GTIN}/21/")
    first = next(t for t in texts if "DL-0001" in t)

    ok = run_cli("verify", first, "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["valid"] is True
    # The signature covers the GTIN and the serial: another of either is forged.
    other = first.replace(f"/01/{GTIN}/", "/01/00000096385074/")
    assert json.loads(run_cli("verify", other, "--json").stdout)["reason"] == "forged"
    swapped = first.replace("DL-0001", "DL-0003")
    assert json.loads(run_cli("verify", swapped, "--json").stdout)["reason"] == "forged"

    done = run_cli("activate", first, "--user", "ada@example.com", "--json")
    assert done.exit_code == 0, done.output
    again = run_cli("activate", first, "--user", "eve@example.com", "--json")
    assert again.exit_code != 0 and "already_activated" in again.output


def test_the_activation_service_opens_a_digital_link(
    run_cli: Any,
    registry: Registry,
    tmp_path: Path,
    keyring_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from provision.keys import load_keyring
    from provision.web import WebSettings, create_app

    register(run_cli, tmp_path, [["WEB/0001", "sensor", "S-1", GTIN]], batch="web")
    out = render(run_cli, "web", "thermal-50x30")
    [[text]] = decode_pdf(Path(json.loads(out.stdout)["pdf"]), dpi=203)
    keyring = load_keyring(keyring_path)
    settings = WebSettings(
        db_url=registry.url, keyring_path=str(keyring_path), base_url=BASE,
        rate_limit="1000 per minute",
    )  # fmt: skip
    client = create_app(settings, registry=registry, keyring=keyring).test_client()
    parts = urllib.parse.urlsplit(text)
    caplog.set_level("INFO", logger="provision.web")
    page = client.get(f"{parts.path}?{parts.query}")
    assert page.status_code == 200, page.text
    token = CSRF_RE.search(page.text)
    assert token is not None and "Activate this device" in page.text
    posted = client.post(
        f"{parts.path}?{parts.query}",
        data={"user": "ada@example.com", "csrf_token": token.group(1)},
    )
    assert posted.status_code == 200 and 'id="activation-token"' in posted.text
    twice = client.post(
        f"{parts.path}?{parts.query}",
        data={"user": "eve@example.com", "csrf_token": token.group(1)},
    )
    assert twice.status_code == 409
    api = client.post("/api/v1/activations", json={"payload": text, "user": "eve@example.com"})
    assert api.status_code == 409 and api.json["error"]["reason"] == "already_activated"
    assert client.get(f"{parts.path}?s=AAAA").status_code == 400  # malformed
    # The access log shows neither the serial nor the signature.
    assert f"GET /01/{GTIN}/21/<serial> 200" in caplog.text
    assert "WEB" not in caplog.text and parts.query.removeprefix("s=") not in caplog.text


def test_every_built_in_template_holds_the_link_or_names_one_that_does(
    run_cli: Any, registry: Registry, tmp_path: Path
) -> None:
    """At 203 dpi each built-in template's label either decodes and parses as a GS1 Digital
    Link, or is refused before anything is written, naming templates that fit."""
    from provision.labels.templates import list_templates

    register(run_cli, tmp_path, [["FIT-" + "X" * 16, "sensor", "S-1", GTIN]], batch="fit")
    refused = []
    for template in list_templates():
        out = render(run_cli, "fit", template.name)
        if out.exit_code != 0:
            message = out.stderr.strip()
            assert "templates that fit: " in message, message
            fit = message.split("templates that fit: ")[1].rstrip(")").split(", ")
            assert fit and template.name not in fit
            refused.append(template.name)
            continue
        pages = decode_pdf(Path(json.loads(out.stdout)["file"]), dpi=203)
        [text] = [t for page in pages for t in page]
        link = parse(text).gs1_digital_link_uri
        assert link is not None, (template.name, text)
    # Avery 5167 (80 a sheet, 1.75 x 0.5 in) is too small for a version 5 code; the rest hold it.
    assert refused == ["avery-5167"]


def test_digital_link_needs_a_gtin_for_every_device(
    run_cli: Any, registry: Registry, tmp_path: Path
) -> None:
    register(
        run_cli, tmp_path, [["NG-1", "sensor", "S-1", GTIN], ["NG-2", "sensor", "S-1", ""]], "ng"
    )
    out = render(run_cli, "ng", "thermal-50x30")
    assert out.exit_code != 0
    assert "batch 'ng': 1 device without a GTIN; --payload digital-link needs one" in out.stderr
    assert not list((tmp_path / "output").glob("ng*.pdf"))


@pytest.mark.parametrize("where", ["job", "station"])
def test_job_files_and_stations_choose_the_payload(
    run_cli: Any, registry: Registry, tmp_path: Path, where: str
) -> None:
    write_csv(tmp_path / "s.csv", SERIALS, [["JS-1", "sensor", "S-1", GTIN]])
    job = tmp_path / "job.toml"
    text = 'batch = "js"\nserials = "s.csv"\ntemplate = "thermal-50x30"\n'
    env: dict[str, str] = {}
    if where == "job":
        text += 'payload = "digital-link"\n'
    else:
        stations = tmp_path / "stations.toml"
        env["PROVISION_STATIONS"] = str(stations)
        made = run_cli("stations", "set", "dock", "--payload", "digital-link", env=env)
        assert made.exit_code == 0, made.output
        text += 'station = "dock"\n'
    job.write_text(text)
    out = run_cli("--base-url", BASE, "run", str(job), "--json", env=env)
    assert out.exit_code == 0, out.output
    [[scanned]] = decode_pdf(Path(json.loads(out.stdout)["labels"]["pdf"]), dpi=203)
    assert scanned.startswith(f"{BASE}/01/{GTIN}/21/JS-1?s=")
