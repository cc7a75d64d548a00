"""Nothing traps the line engineer: guarded key revocation, re-signing, clear re-runs, exit codes,
base URLs, missing registries, support look-ups, history text, busy ports, progress bars."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from provision.keys import load_keyring
from provision.registry import Registry
from provision.serials import device_id
from tests.conftest import RunCLI
from tests.helpers import decode_pdf, serials_csv, write_csv

BASE = "https://act.example.com"


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def last_line(result: Result) -> str:
    return result.stderr.strip().splitlines()[-1]


def device_of(run_cli: RunCLI, url: str) -> str:
    """The device id a label's payload names, as `verify` reads it."""
    return str(json.loads(run_cli("verify", url, "--json").stdout)["device_id"])


def pending_payloads(run_cli: RunCLI, output_dir: Path, batch: str) -> list[str]:
    """What a scanner reads off the batch's newest label file."""
    summary = json.loads((output_dir / f"{batch}.json").read_text())
    return [u for page in decode_pdf(output_dir / summary["pdf"]) for u in page]


# -- keys: revoke asks, retire, resign -----------------------------------------------------


def test_revoke_names_the_batches_it_breaks_and_asks_first(
    run_cli: RunCLI, tmp_path: Path, keyring_path: Path
) -> None:
    ok(run_cli("register", str(serials_csv(tmp_path / "a.csv", 3, prefix="A")), "--batch", "a"))
    ok(run_cli("register", str(serials_csv(tmp_path / "b.csv", 2, prefix="B")), "--batch", "b"))
    ok(run_cli("keys", "rotate"))
    refused = run_cli("keys", "revoke", "1", input="n\n")
    assert refused.exit_code == 1
    assert "Key 1 signed the payloads of 5 pending devices: a (3), b (2)." in refused.stderr
    assert load_keyring(keyring_path).get(1).state == "verify-only"  # type: ignore[union-attr]
    done = run_cli("keys", "revoke", "1", "--json", input="y\n")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["pending_devices"] == {"a": 3, "b": 2}
    assert load_keyring(keyring_path).get(1).state == "revoked"  # type: ignore[union-attr]


def test_retire_stops_signing_and_keeps_verifying(
    run_cli: RunCLI, tmp_path: Path, keyring_path: Path, output_dir: Path
) -> None:
    ok(run_cli("register", str(serials_csv(tmp_path / "a.csv", 2)), "--batch", "a"))
    ok(run_cli("labels", "a"))
    retired = ok(run_cli("keys", "retire", "1", "--json"))
    assert json.loads(retired.stdout)["key_id"] == 2
    keyring = load_keyring(keyring_path)
    assert (keyring.get(1).state, keyring.active.id) == ("verify-only", 2)  # type: ignore[union-attr]
    for url in pending_payloads(run_cli, output_dir, "a"):
        assert ok(run_cli("verify", url)).stdout.startswith("valid: ")
    again = run_cli("keys", "retire", "1")
    assert again.exit_code == 1 and "not the active key" in last_line(again)


def test_labels_under_a_revoked_key_name_resign_and_resign_gives_a_new_revision(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path, db_url: str, keyring_path: Path
) -> None:
    ok(run_cli("register", str(serials_csv(tmp_path / "a.csv", 4)), "--batch", "a"))
    ok(run_cli("labels", "a", "--template", "avery-5160"))
    old = pending_payloads(run_cli, output_dir, "a")
    keyring = load_keyring(keyring_path)
    first = device_id(keyring.pepper, "SN000000")
    [first_url] = [u for u in old if device_of(run_cli, u) == first]
    ok(run_cli("activate", first_url, "--user", "first@example.com"))  # activated already
    ok(run_cli("keys", "rotate"))
    ok(run_cli("keys", "revoke", "1", "--yes"))

    refused = run_cli("labels", "a")
    assert refused.exit_code == 1
    assert "run `provision resign a`" in last_line(refused)
    assert sorted(p.name for p in output_dir.iterdir()) == ["a.json", "a.pdf"]

    resigned = run_cli("resign", "a", "--json", input="y\n")
    assert resigned.exit_code == 0, resigned.output
    data = json.loads(resigned.stdout)
    assert (data["resigned"], data["key_id"]) == (3, 2)
    assert (data["labels"]["revision"], Path(data["labels"]["file"]).name) == (2, "a.r2.pdf")
    assert data["labels"]["template"] == "avery-5160"  # the batch's last print settings
    new = pending_payloads(run_cli, output_dir, "a")
    # The 3 pending devices, under new payloads; the activated one is in use, its key gone:
    # it needs no label, and its payload cannot be signed again.
    assert len(new) == 3 and not set(new) & set(old)
    assert first not in {device_of(run_cli, u) for u in new}
    for url in new:
        did = device_of(run_cli, url)
        history = json.loads(ok(run_cli("history", did, "--json")).stdout)
        assert [a["action_type"] for a in history["actions"]] == ["resigned"]
        assert history["actions"][0]["metadata"] == {"from_key_id": 1, "key_id": 2}
    untouched = json.loads(ok(run_cli("history", first, "--json")).stdout)
    assert [a["action_type"] for a in untouched["actions"]] == ["activated"]
    assert untouched["device"]["key_id"] == 1
    fresh = new[0]
    ok(run_cli("activate", fresh, "--user", "second@example.com"))
    stale = next(u for u in old if u != first_url)
    refused = run_cli("activate", stale, "--user", "mallory@example.com")
    assert refused.exit_code == 1 and "revoked_key" in last_line(refused)
    assert ok(run_cli("audit", "verify")).stdout.endswith("all chains and seals intact\n")


# -- re-runs, rejects, exit codes ---------------------------------------------------------------


def test_a_rerun_under_a_new_batch_name_says_where_the_devices_are(
    run_cli: RunCLI, tmp_path: Path, db_url: str
) -> None:
    manifest = serials_csv(tmp_path / "serials.csv", 25)
    job = tmp_path / "job.toml"
    job.write_text(f'batch = "line1-{{date:%Y%m%d}}"\nserials = "{manifest.name}"\n')
    ok(run_cli("run", str(job)))
    job.write_text(f'batch = "line1-tomorrow"\nserials = "{manifest.name}"\n')
    again = run_cli("run", str(job))
    assert again.exit_code == 1
    today = Registry(db_url).batches.names()
    assert today != [] and "line1-tomorrow" not in today  # no empty batch row
    assert last_line(again) == (
        f"Error: batch 'line1-tomorrow' has no devices: all 25 rows of {manifest} are "
        f"registered in other batches already: {today[0]} (25)"
    )


def test_register_warns_once_with_counts_and_at_most_ten_examples(
    run_cli: RunCLI, tmp_path: Path
) -> None:
    ok(run_cli("register", str(serials_csv(tmp_path / "s.csv", 25)), "--batch", "first"))
    result = ok(run_cli("register", str(tmp_path / "s.csv"), "--batch", "second"))
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "warning: 25 rows of this manifest are registered in other batches already, "
        "skipped: first (25)"
    )
    assert len([line for line in lines if "already registered in batch" in line]) == 10
    assert lines[-1] == "warning: and 15 more"
    assert len(lines) == 12


def test_run_with_rejected_rows_exits_4_and_names_the_reject_file(
    run_cli: RunCLI, tmp_path: Path
) -> None:
    manifest = write_csv(
        tmp_path / "s.csv", ["serial", "device_type"], [["OK-1", "x"], ["BAD 2", "x"]]
    )
    job = tmp_path / "job.toml"
    job.write_text(f'batch = "b"\nserials = "{manifest.name}"\nreject_file = "rejects.csv"\n')
    result = run_cli("run", str(job))
    assert result.exit_code == 4, result.output
    assert f"1 rejected (see {tmp_path / 'rejects.csv'})" in result.stdout
    assert (
        f"Warning: 1 row rejected, written to {tmp_path / 'rejects.csv'}; "
        "the other rows are registered"
    ) in result.stderr.splitlines()


# -- base URL ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["act.example.com", "ftp://act.example.com", "https://", "https://a b.com", "http://x:99999"],
)
def test_a_base_url_without_scheme_or_host_is_a_usage_error(
    run_cli: RunCLI, tmp_path: Path, url: str
) -> None:
    ok(run_cli("register", str(serials_csv(tmp_path / "s.csv", 1)), "--batch", "b"))
    result = run_cli("--base-url", url, "labels", "b")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: --base-url {url!r}: ")
    assert result.stderr.count("\n") == 1


def test_labels_run_and_resign_warn_about_a_loopback_base_url(
    run_cli: RunCLI, tmp_path: Path
) -> None:
    ok(run_cli("register", str(serials_csv(tmp_path / "s.csv", 1)), "--batch", "b"))
    warned = ok(run_cli("labels", "b"))  # the fixture's base URL is http://localhost:5001
    assert "warning: the labels point at http://localhost:5001" in warned.stderr
    assert "cannot reach" not in ok(run_cli("--base-url", BASE, "labels", "b")).stderr
    for url in ("http://127.0.0.1:5001", "http://[::1]/x"):
        result = ok(run_cli("--base-url", url, "resign", "b", "--yes"))
        assert "cannot reach" in result.stderr


# -- a missing registry -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("history", "0123456789abcdef"),
        ("labels", "b"),
        ("audit", "verify"),
        ("log", "0123456789abcdef", "reboot"),
        ("reconcile", "s.csv"),
    ],
)
def test_commands_that_read_do_not_create_a_registry(
    run_cli: RunCLI, tmp_path: Path, args: tuple[str, ...]
) -> None:
    path = tmp_path / "nowhere" / "provision.db"
    result = run_cli(*args, env={"PROVISION_DB_URL": f"sqlite:///{path}"})
    assert result.exit_code == 1
    assert last_line(result) == f"Error: no registry at {path} (set PROVISION_DB_URL or --db)"
    assert not path.exists()


def test_register_creates_the_registry(run_cli: RunCLI, tmp_path: Path) -> None:
    path = tmp_path / "new" / "provision.db"
    env = {"PROVISION_DB_URL": f"sqlite:///{path}"}
    ok(run_cli("register", str(serials_csv(tmp_path / "s.csv", 1)), env=env))
    assert path.exists()


# -- support look-ups --------------------------------------------------------------------------


def test_a_serial_in_the_wrong_case_gets_a_did_you_mean(run_cli: RunCLI, tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "s.csv", ["serial", "device_type"], [["TH200-2611-X1", "t"]])
    ok(run_cli("register", str(manifest)))
    for typed in ("th200-2611-x1", " TH200 - 2611-X1 ", "Th200-2611-x1"):
        result = run_cli("history", "--serial", typed)
        assert result.exit_code == 1
        assert last_line(result) == (
            "Error: no device registered with that serial; did you mean 'TH200-2611-X1'? "
            "(serials are compared exactly: case and spaces count)"
        )
    assert "did you mean" not in run_cli("history", "--serial", "TH200-2611-X9").stderr


def test_a_device_id_is_taken_as_printed_and_as_a_unique_prefix(
    run_cli: RunCLI, tmp_path: Path, keyring_path: Path
) -> None:
    ok(run_cli("register", str(serials_csv(tmp_path / "s.csv", 40))))
    keyring = load_keyring(keyring_path)
    ids = sorted(device_id(keyring.pepper, f"SN{i:06d}") for i in range(40))
    did = ids[0]
    for typed in (f"ID {did}", f"id {did.upper()}", did[:6], f"ID {did[:8]}"):
        result = ok(run_cli("history", typed, "--json"))
        assert json.loads(result.stdout)["device"]["device_id"] == did, typed
    ok(run_cli("log", f"ID {did}", "reboot"))
    ok(run_cli("audit", "verify", did[:7]))
    short = run_cli("history", did[:5])
    assert short.exit_code == 1 and "give at least 6 of its 16 characters" in last_line(short)


def test_an_ambiguous_prefix_asks_for_more_characters(
    run_cli: RunCLI, tmp_path: Path, keyring_path: Path
) -> None:
    keyring = load_keyring(keyring_path)
    # Find two serials whose ids share 6 hex characters (a 1-in-16M chance per pair: search).
    seen: dict[str, str] = {}
    pair = None
    for i in range(200_000):
        serial = f"AMB{i}"
        prefix = device_id(keyring.pepper, serial)[:6]
        if prefix in seen:
            pair = (seen[prefix], serial, prefix)
            break
        seen[prefix] = serial
    assert pair is not None
    manifest = write_csv(
        tmp_path / "s.csv", ["serial", "device_type"], [[pair[0], "t"], [pair[1], "t"]]
    )
    ok(run_cli("register", str(manifest)))
    result = run_cli("history", pair[2])
    assert result.exit_code == 1
    assert "fits several devices" in last_line(result)


# -- history text, activate without a user, generate with another type --------------------------


def test_text_history_shows_every_field_and_n_of_total(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    ok(run_cli("register", str(serials_csv(tmp_path / "s.csv", 1)), "--batch", "b"))
    ok(run_cli("labels", "b"))
    [url] = pending_payloads(run_cli, output_dir, "b")
    ok(run_cli("activate", url, "--user", "alice", "--ip", "198.51.100.4", "--user-agent", "Ph/1"))
    for n in range(3):
        run_cli("activate", url, "--user", f"late{n}", "--ip", "203.0.113.9")
    did = device_of(run_cli, url)
    ok(run_cli("log", did, "reboot", "--ip", "10.1.2.3"))
    text = ok(run_cli("history", did, "--limit", "2")).stdout.splitlines()
    assert "Components (0 of 0):" in text
    assert "Pairing events (2 of 4):" in text
    assert "Actions (2 of 2):" in text
    late = [line for line in text if "late2" in line]
    assert late and "ip=203.0.113.9 user_agent=provision-cli fingerprint=-" in late[0]
    assert "  reboot  " in text[-1] and text[-1].endswith(" ip=10.1.2.3")
    assert " actor=" in text[-1] and " actor=-" not in text[-1]  # the operator who logged it


def test_activate_without_a_user_links_no_one_and_history_says_so(
    run_cli: RunCLI, tmp_path: Path, output_dir: Path
) -> None:
    ok(run_cli("register", str(serials_csv(tmp_path / "s.csv", 1)), "--batch", "b"))
    ok(run_cli("labels", "b"))
    [url] = pending_payloads(run_cli, output_dir, "b")
    done = ok(run_cli("activate", url))
    assert "with no user linked" in done.stdout
    did = device_of(run_cli, url)
    history = ok(run_cli("history", did))
    assert any(
        "activated " in line and "with no user linked" in line
        for line in history.stdout.splitlines()
    )
    assert json.loads(ok(run_cli("history", did, "--json")).stdout)["device"]["user"] is None


def test_generate_warns_when_the_serial_has_another_type(run_cli: RunCLI) -> None:
    ok(run_cli("generate", "SN-TYPE-1", "sensor"))
    again = ok(run_cli("generate", "SN-TYPE-1", "gateway"))
    assert "registered as 'sensor'" in again.stderr and "not 'gateway'" in again.stderr
    assert "registered as" not in ok(run_cli("generate", "SN-TYPE-1", "sensor")).stderr


# -- serve on a busy port; progress on a terminal ---------------------------------------------


def provision_env(db_url: str, keyring_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    return env | {"PROVISION_DB_URL": db_url, "PROVISION_KEYRING": str(keyring_path)} | extra


def test_serve_on_a_busy_port_is_one_line_and_exit_1(
    sqlite_url: str, keyring_path: Path, run_cli: RunCLI
) -> None:
    Registry(sqlite_url).close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "provision", "serve", "--port", str(port)],
            env=provision_env(sqlite_url, keyring_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"Error: port {port} is in use"
    assert "Traceback" not in proc.stderr


def run_in_pty(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run ARGV with stderr (and stdin, stdout) on a pseudo-terminal; its exit code and output."""
    leader, follower = pty.openpty()
    # A terminal of 100 x 30, as a real one has a size (a new pseudo-terminal's is 0 x 0).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_register_on_a_terminal_shows_progress_and_not_in_a_pipe(
    sqlite_url: str, keyring_path: Path, tmp_path: Path
) -> None:
    manifest = serials_csv(tmp_path / "s.csv", 12_000)
    # The bar appears for stages longer than PROVISION_PROGRESS_DELAY seconds (2 by default):
    # 0 here, so that a fast machine shows it too.
    env = provision_env(sqlite_url, keyring_path, PROVISION_PROGRESS_DELAY="0")
    argv = [sys.executable, "-m", "provision", "register", str(manifest), "--batch", "p"]
    code, shown = run_in_pty(argv, env, tmp_path)
    assert code == 0, shown
    assert "register" in shown and "12000/12000" in shown.replace(",", "")
    piped = subprocess.run(
        [*argv[:-1], "p"], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert piped.returncode == 0 and "0 registered, 12000 already" in piped.stdout
    assert "12000/12000" not in piped.stderr and "%|" not in piped.stderr  # no bar in a pipe


def test_the_activated_page_says_the_token_is_shown_once_and_how_apps_get_it(
    registry: Registry, keyring_path: Path, tmp_path: Path
) -> None:
    from provision.pipeline import register_batch
    from provision.web import WebSettings, create_app
    from tests.helpers import with_payload

    keyring = load_keyring(keyring_path)
    register_batch(registry, keyring, serials_csv(tmp_path / "s.csv", 1), batch="b")
    [label] = next(registry.devices.labels(registry.batches.id_of("b") or 0))
    dev: Any = with_payload(keyring, registry.devices.get(label.device_id))
    app = create_app(WebSettings(registry.url, str(keyring_path), BASE), registry=registry)
    app.config["WTF_CSRF_ENABLED"] = False
    page = app.test_client().post(f"/A/{dev.payload}", data={"user": "alice"})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "only once" in html and "not even if you reload it" in html
    assert "POST /api/v1/activations" in html and "activation_token" in html
