"""The keyring and `provision keys`, the keyed serial identity, and the documented settings."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from cryptography.exceptions import InvalidTag

from provision.cli import cli
from provision.config import SETTINGS
from provision.keys import init_keyring, load_keyring
from provision.serials import decrypt_serial, device_id, encrypt_serial, serial_hash
from tests.conftest import RunCLI

REPO = Path(__file__).resolve().parents[1]


def invoke(tmp_path: Path, keyring: Path | str | None, *args: str) -> Result:
    """Run `provision` with no usable database: key commands must not need one."""
    env = {
        "PROVISION_DB_URL": f"sqlite:///{tmp_path / 'no-such-dir' / 'registry.db'}",
        "PROVISION_KEYRING": str(keyring) if keyring else None,
        "PROVISION_BASE_URL": "http://localhost:5001",
        "PROVISION_OUTPUT": str(tmp_path / "output"),
    }
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def error_line(result: Result) -> str:
    """The single `Error: ...` line a failing command prints on stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    return lines[0]


def secrets_in(path: Path) -> list[str]:
    """Every base64 secret in a keyring file: signing keys, pepper and data key."""
    raw = json.loads(path.read_text())
    found = [raw["pepper"], raw["data_key"]] + [k["secret"] for k in raw["keys"] if k["secret"]]
    assert all(len(base64.b64decode(s)) == 32 for s in found)
    return found


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A permissive umask (0) for the test, restored afterwards."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- keys init -------------------------------------------------------------------------------


def test_keys_init_creates_keyring_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "keyring.json"
    result = invoke(tmp_path, path, "keys", "init")
    assert result.exit_code == 0, result.output
    assert mode(path) == 0o600
    assert str(path) in result.stdout
    keyring = load_keyring(path)
    assert [(k.id, k.state) for k in keyring.keys] == [(1, "active")]


def test_keys_init_mode_is_0600_even_with_umask_0(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "keys" / "keyring.json"
    result = invoke(tmp_path, path, "keys", "init")
    assert result.exit_code == 0, result.output
    assert mode(path) == 0o600
    # the folder it made is not writable by others either (they could swap the keyring)
    assert mode(path.parent) & 0o077 == 0


def test_keys_rotate_and_revoke_keep_mode_0600_with_umask_0(
    tmp_path: Path, open_umask: None
) -> None:
    path = tmp_path / "keyring.json"
    assert invoke(tmp_path, path, "keys", "init").exit_code == 0
    assert invoke(tmp_path, path, "keys", "rotate").exit_code == 0
    assert mode(path) == 0o600
    assert invoke(tmp_path, path, "keys", "revoke", "1", "--yes").exit_code == 0
    assert mode(path) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".keyring.json.")]


def test_keys_init_refuses_to_overwrite(tmp_path: Path, keyring_path: Path) -> None:
    before = keyring_path.read_bytes()
    result = invoke(tmp_path, keyring_path, "keys", "init")
    assert result.exit_code == 1
    line = error_line(result)
    assert "already exists" in line
    assert "keys rotate" in line
    assert keyring_path.read_bytes() == before
    assert mode(keyring_path) == 0o600


def test_keys_init_refuses_to_overwrite_any_file(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    path.write_text("not a keyring, but someone's file")
    result = invoke(tmp_path, path, "keys", "init")
    assert result.exit_code == 1
    assert path.read_text() == "not a keyring, but someone's file"


def test_keys_init_takes_the_keyring_option(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    result = invoke(tmp_path, None, "--keyring", str(path), "keys", "init", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["keyring"] == str(path)
    assert [k["key_id"] for k in data["keys"]] == [1]
    for secret in secrets_in(path):
        assert secret not in result.output


def test_no_keyring_configured_says_how_to_create_one(tmp_path: Path) -> None:
    for args in (
        ["keys", "init"],
        ["keys", "list"],
        ["keys", "rotate"],
        ["keys", "revoke", "1"],
        ["verify", "A" * 48],
    ):
        result = invoke(tmp_path, None, *args)
        assert result.exit_code == 1, args
        line = error_line(result)
        assert "PROVISION_KEYRING" in line, args
        assert "keys init" in line, args
        assert "Traceback" not in result.output


def test_missing_keyring_file_says_how_to_create_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "keyring.json"
    for args in (["keys", "list"], ["keys", "rotate"], ["verify", "A" * 48]):
        result = invoke(tmp_path, path, *args)
        assert result.exit_code == 1, args
        line = error_line(result)
        assert str(path) in line
        assert "keys init" in line
    assert not path.exists()


def test_keyring_readable_by_others_is_refused_naming_chmod(
    tmp_path: Path, keyring_path: Path
) -> None:
    keyring_path.chmod(0o644)
    before = keyring_path.read_bytes()
    for args in (["keys", "list"], ["keys", "rotate"], ["verify", "A" * 48]):
        result = invoke(tmp_path, keyring_path, *args)
        assert result.exit_code == 1, args
        line = error_line(result)
        assert "0644" in line
        assert f"chmod 600 {keyring_path}" in line
    assert keyring_path.read_bytes() == before
    for bad in (0o640, 0o604, 0o660):
        keyring_path.chmod(bad)
        assert invoke(tmp_path, keyring_path, "keys", "list").exit_code == 1, oct(bad)
    keyring_path.chmod(0o400)  # read-only for the owner is fine
    assert invoke(tmp_path, keyring_path, "keys", "list").exit_code == 0


def test_invalid_keyring_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    for content in ("{not json", '{"format": "other/1"}', '{"format": "provision-keyring/1"}'):
        path.write_text(content)
        path.chmod(0o600)
        result = invoke(tmp_path, path, "keys", "list")
        assert result.exit_code == 1, content
        assert "not a valid provision keyring" in error_line(result)


# -- keys list -------------------------------------------------------------------------------


def test_keys_list_json_never_contains_secrets_or_pepper(
    tmp_path: Path, keyring_path: Path
) -> None:
    assert invoke(tmp_path, keyring_path, "keys", "rotate").exit_code == 0
    secrets = secrets_in(keyring_path)
    assert len(secrets) == 4  # pepper, data key, two signing keys
    for args in (["keys", "list", "--json"], ["keys", "list"], ["keys", "rotate", "--json"]):
        result = invoke(tmp_path, keyring_path, *args)
        assert result.exit_code == 0
        for secret in secrets_in(keyring_path):
            assert secret not in result.output, args
            assert secret.rstrip("=") not in result.output, args
        assert "pepper" not in result.output
        assert "secret" not in result.output
        assert "data_key" not in result.output


def test_keys_list_json_shows_ids_and_states(tmp_path: Path, keyring_path: Path) -> None:
    invoke(tmp_path, keyring_path, "keys", "rotate")
    invoke(tmp_path, keyring_path, "keys", "rotate")
    invoke(tmp_path, keyring_path, "keys", "revoke", "1", "--yes")
    result = invoke(tmp_path, keyring_path, "keys", "list", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["keyring"] == str(keyring_path)
    assert [(k["key_id"], k["state"]) for k in data["keys"]] == [
        (1, "revoked"),
        (2, "verify-only"),
        (3, "active"),
    ]
    assert data["keys"][0]["revoked_at"]
    assert data["keys"][2]["revoked_at"] is None
    assert {frozenset(k) for k in data["keys"]} == {
        frozenset({"key_id", "state", "created_at", "revoked_at"})
    }


def test_keys_list_text_is_a_table(tmp_path: Path, keyring_path: Path) -> None:
    result = invoke(tmp_path, keyring_path, "keys", "list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KEY", "STATE", "CREATED"]
    assert lines[1].split()[:2] == ["1", "active"]


# -- rotate and revoke, end to end -----------------------------------------------------------


def generate(run_cli: RunCLI, serial: str) -> str:
    """Register one device through the CLI and return its QR URL."""
    result = run_cli("generate", serial, "sensor", "--json")
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["url"])


def verify(run_cli: RunCLI, url: str) -> tuple[int, dict[str, object]]:
    result = run_cli("verify", url, "--json")
    return result.exit_code, json.loads(result.stdout)


def test_rotate_signs_new_payloads_with_the_new_key_and_old_ones_still_verify(
    run_cli: RunCLI, keyring_path: Path
) -> None:
    old_url = generate(run_cli, "SN-OLD-0001")
    code, before = verify(run_cli, old_url)
    assert code == 0
    assert before["key_id"] == 1

    result = run_cli("keys", "rotate", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["key_id"] == 2
    states = [(k.id, k.state) for k in load_keyring(keyring_path).keys]
    assert states == [(1, "verify-only"), (2, "active")]

    new_url = generate(run_cli, "SN-NEW-0001")
    code, new = verify(run_cli, new_url)
    assert code == 0
    assert new["valid"] is True
    assert new["key_id"] == 2
    code, old = verify(run_cli, old_url)
    assert code == 0
    assert old["valid"] is True
    assert old["key_id"] == 1
    # the device registered before the rotation keeps its payload
    assert generate(run_cli, "SN-OLD-0001") == old_url


def test_revoke_makes_that_keys_payloads_fail_with_revoked_key(
    run_cli: RunCLI, keyring_path: Path
) -> None:
    old_url = generate(run_cli, "SN-OLD-0001")
    assert run_cli("keys", "rotate").exit_code == 0
    new_url = generate(run_cli, "SN-NEW-0001")

    result = run_cli("keys", "revoke", "1", "--json", "--yes")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["key_id"] == 1
    key = load_keyring(keyring_path).get(1)
    assert key is not None and key.state == "revoked" and key.secret is None

    assert verify(run_cli, old_url) == (1, {"valid": False, "reason": "revoked_key"})
    code, new = verify(run_cli, new_url)
    assert code == 0 and new["key_id"] == 2
    both = run_cli("verify", "-", "--json", input=f"{new_url}\n{old_url}\n")
    assert both.exit_code == 1
    assert [json.loads(line)["valid"] for line in both.stdout.splitlines()] == [True, False]


def test_the_signing_key_cannot_be_revoked_rotate_first(
    run_cli: RunCLI, keyring_path: Path
) -> None:
    url = generate(run_cli, "SN-000001")
    result = run_cli("keys", "revoke", "1", "--yes")
    assert result.exit_code == 1
    assert "keys rotate" in error_line(result) and "signing key" in error_line(result)
    assert verify(run_cli, url)[0] == 0  # nothing changed
    assert run_cli("keys", "rotate").exit_code == 0
    assert run_cli("keys", "revoke", "1", "--yes").exit_code == 0
    assert verify(run_cli, url) == (1, {"valid": False, "reason": "revoked_key"})
    code, data = verify(run_cli, generate(run_cli, "SN-000003"))
    assert code == 0 and data["key_id"] == 2


def test_revoking_an_unknown_key_id_exits_1_with_an_error_line(
    tmp_path: Path, keyring_path: Path
) -> None:
    before = keyring_path.read_bytes()
    for key_id in ("2", "0", "999"):
        result = invoke(tmp_path, keyring_path, "keys", "revoke", key_id)
        assert result.exit_code == 1, key_id
        line = error_line(result)
        assert f"no key with id {key_id}" in line
        assert "known: 1" in line
    assert keyring_path.read_bytes() == before


def test_revoking_a_revoked_key_again_exits_1(tmp_path: Path, keyring_path: Path) -> None:
    invoke(tmp_path, keyring_path, "keys", "rotate")
    assert invoke(tmp_path, keyring_path, "keys", "revoke", "1", "--yes").exit_code == 0
    result = invoke(tmp_path, keyring_path, "keys", "revoke", "1", "--yes")
    assert result.exit_code == 1
    assert "already revoked" in error_line(result)


def test_revoke_with_json_reports_the_error_as_json(tmp_path: Path, keyring_path: Path) -> None:
    result = invoke(tmp_path, keyring_path, "keys", "revoke", "7", "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert "no key with id 7" in error["message"]


# -- keyed serial identity -------------------------------------------------------------------


def test_serial_hash_is_keyed_by_the_pepper(tmp_path: Path) -> None:
    a = init_keyring(tmp_path / "a.json")
    b = init_keyring(tmp_path / "b.json")
    serial = "SN-000123"
    h = serial_hash(a.pepper, serial)
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert h == serial_hash(a.pepper, serial)
    assert h != serial_hash(b.pepper, serial)
    assert h != serial_hash(a.pepper, "SN-000124")
    assert h != serial_hash(a.pepper, "sn-000123")  # serials compare exactly
    assert h != hashlib.sha256(serial.encode()).hexdigest()


def test_device_id_is_16_hex_chars_and_not_the_serial_hash_prefix(tmp_path: Path) -> None:
    a = init_keyring(tmp_path / "a.json")
    b = init_keyring(tmp_path / "b.json")
    ids = set()
    for i in range(200):
        serial = f"SN-{i:06d}"
        did = device_id(a.pepper, serial)
        assert re.fullmatch(r"[0-9a-f]{16}", did)
        assert did == device_id(a.pepper, serial)
        assert did != serial_hash(a.pepper, serial)[:16]
        assert did != device_id(b.pepper, serial)
        assert did != hashlib.sha256(serial.encode()).hexdigest()[:16]
        ids.add(did)
    assert len(ids) == 200


def test_encrypted_serial_round_trips(tmp_path: Path) -> None:
    keyring = init_keyring(tmp_path / "a.json")
    for serial in ("SN-000123", "x" * 64, "!\"%&'()*+,-./:;<=>?_"):
        did = device_id(keyring.pepper, serial)
        blob = encrypt_serial(keyring.data_key, did, serial)
        assert serial.encode() not in blob
        assert decrypt_serial(keyring.data_key, did, blob) == serial
    # a fresh nonce each time: the same serial never encrypts to the same bytes
    did = device_id(keyring.pepper, "SN-000123")
    assert encrypt_serial(keyring.data_key, did, "SN-000123") != encrypt_serial(
        keyring.data_key, did, "SN-000123"
    )


def test_decrypting_a_serial_with_a_wrong_device_id_or_key_fails(tmp_path: Path) -> None:
    a = init_keyring(tmp_path / "a.json")
    b = init_keyring(tmp_path / "b.json")
    did = device_id(a.pepper, "SN-000123")
    blob = encrypt_serial(a.data_key, did, "SN-000123")
    with pytest.raises(InvalidTag):
        decrypt_serial(a.data_key, device_id(a.pepper, "SN-000124"), blob)
    with pytest.raises(InvalidTag):
        decrypt_serial(b.data_key, did, blob)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(InvalidTag):
        decrypt_serial(a.data_key, did, tampered)


# -- help and documented settings ------------------------------------------------------------


def all_commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, group
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from all_commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_command_walk_finds_every_command() -> None:
    names = {" ".join(p) for p, _ in all_commands(cli)}
    expected = {"", "keys", "keys init", "keys rotate", "keys revoke", "keys list"}
    expected |= {"db", "db upgrade", "verify", "register", "labels", "run", "generate"}
    assert expected <= names


@pytest.mark.parametrize(
    "path", [p for p, _ in all_commands(cli)], ids=lambda p: " ".join(p) or "provision"
)
def test_every_command_help_has_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "Example" in result.output, " ".join(path)


def test_every_command_but_help_only_groups_takes_json() -> None:
    for path, command in all_commands(cli):
        if isinstance(command, click.Group):
            continue
        opts = {o for p in command.params for o in getattr(p, "opts", [])}
        assert "--json" in opts, " ".join(path)


def test_every_setting_appears_with_its_env_var_in_help() -> None:
    result = CliRunner().invoke(cli, ["--help"], terminal_width=200, catch_exceptions=False)
    assert result.exit_code == 0
    help_text = result.output
    for s in SETTINGS:
        option = f"--{s.name.replace('_', '-')}"
        lines = [line for line in help_text.splitlines() if line.strip().startswith(option)]
        assert lines, option
        # the env var sits in the same option entry, after the option name
        entry = help_text[help_text.index(lines[0]) :]
        next_option = re.search(r"\n\s+-", entry[1:])
        entry = entry[: next_option.start() + 1] if next_option else entry
        assert s.env in entry, (option, s.env)
        if s.default is not None:
            assert s.default in entry, (option, s.default)


def test_env_vars_set_the_global_options(tmp_path: Path, keyring_path: Path) -> None:
    """PROVISION_KEYRING is read: `keys list` finds the keyring through the env var alone."""
    result = invoke(tmp_path, keyring_path, "keys", "list", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["keyring"] == str(keyring_path)


def test_every_setting_is_documented_in_readme() -> None:
    readme = REPO / "README.md"
    assert readme.exists(), "README.md is missing"
    text = readme.read_text(encoding="utf-8")
    for s in SETTINGS:
        option = f"--{s.name.replace('_', '-')}"
        assert option in text, f"README.md does not mention {option}"
        assert s.env in text, f"README.md does not mention {s.env}"
        if s.default is not None:
            assert s.default in text, f"README.md does not state the default of {option}"
