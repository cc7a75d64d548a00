"""The compact signed payload: format, tamper resistance, reasons, and `provision verify`."""

from __future__ import annotations

import base64
import json
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import segno
from click.testing import CliRunner, Result

from provision.cli import cli
from provision.keys import Keyring, init_keyring, load_keyring
from provision.payload import TOKEN_CHARS, payload_url, sign_token, verify_payload
from provision.serials import device_id

BASE32 = string.ascii_uppercase + "234567"
QR_ALPHANUMERIC = set(string.digits + string.ascii_uppercase + " $%*+-./:")
REASONS = {"malformed", "forged", "unknown_key", "revoked_key", "expired"}
BASE_URL = "http://localhost:5001"
# Characters a careless scanner or an attacker might put in: outside base32, some of them
# uppercasing to a base32 letter under Unicode rules (dotless i -> I, long s -> S, Kelvin -> K).
NON_BASE32 = ["0", "1", "8", "9", "=", "-", "/", " ", "\t", "\x00", "é", "ı", "ſ", "\u212a", "Ａ"]


def make_token(keyring: Keyring, serial: str = "SN-000001", days: int = 30) -> tuple[str, str, int]:
    """A token signed with the active key: (token, device id, expiry in unix seconds)."""
    did = device_id(keyring.pepper, serial)
    expires = int((datetime.now(UTC) + timedelta(days=days)).timestamp())
    key = keyring.active
    assert key.secret is not None
    return sign_token(key.id, key.secret, did, expires), did, expires


def invoke(
    tmp_path: Path, keyring_path: Path | None, *args: str, input: str | None = None
) -> Result:
    """Run `provision` without a usable database: commands that need none must still work."""
    env = {
        "PROVISION_DB_URL": f"sqlite:///{tmp_path / 'no-such-dir' / 'registry.db'}",
        "PROVISION_KEYRING": str(keyring_path) if keyring_path else None,
        "PROVISION_BASE_URL": BASE_URL,
        "PROVISION_OUTPUT": str(tmp_path / "output"),
    }
    return CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=False)


# -- format ----------------------------------------------------------------------------------


def test_token_is_48_uppercase_base32_characters(keyring: Keyring) -> None:
    token, _, _ = make_token(keyring)
    assert len(token) == TOKEN_CHARS == 48
    assert set(token) <= set(BASE32)
    assert "=" not in token
    assert len(base64.b32decode(token)) == 30


def test_url_is_uppercase_base_url_slash_a_slash_token(keyring: Keyring) -> None:
    token, _, _ = make_token(keyring)
    url = payload_url("http://localhost:5001/", token)
    assert url == f"HTTP://LOCALHOST:5001/A/{token}"
    assert url == url.upper()


def test_whole_url_is_in_the_qr_alphanumeric_charset(keyring: Keyring) -> None:
    token, _, _ = make_token(keyring)
    for base in (BASE_URL, "https://activate.example.com", "https://Example.COM/devices/"):
        url = payload_url(base, token)
        assert set(url) <= QR_ALPHANUMERIC, url
    qr = segno.make_qr(payload_url(BASE_URL, token), error="m", boost_error=False)
    assert qr.mode == "alphanumeric"
    assert qr.version == 4
    assert qr.error == "M"


def test_round_trip_verify_gives_device_id_key_id_and_expiry(keyring: Keyring) -> None:
    token, did, expires = make_token(keyring)
    for text in (token, payload_url(BASE_URL, token)):
        result = verify_payload(text, keyring)
        assert result.valid
        assert result.reason is None
        assert result.device_id == did
        assert result.key_id == keyring.active.id == 1
        assert result.expires_at == datetime.fromtimestamp(expires, UTC)


# -- tampering -------------------------------------------------------------------------------


@pytest.fixture
def rotated_keyring(tmp_path: Path) -> Keyring:
    """Keys 1, 2 (verify-only), 3 (revoked), 4 (active).

    A token signed with key 2 (0b010) is one bit, so one character, away from key 3 (0b011): a
    changed key id byte can land on a revoked key, not only on an unknown one.
    """
    keyring = init_keyring(tmp_path / "rotated" / "keyring.json")
    for _ in range(3):
        keyring.rotate()
    keyring.revoke(3)
    keyring.save()
    return load_keyring(keyring.path)


@pytest.mark.parametrize("which", ["single_key", "rotated"])
def test_every_single_character_change_of_a_token_is_rejected(
    which: str, keyring: Keyring, rotated_keyring: Keyring
) -> None:
    kr = keyring if which == "single_key" else rotated_keyring
    if which == "rotated":
        key = kr.get(2)
        assert key is not None and key.secret is not None
        did = device_id(kr.pepper, "SN-000001")
        expires = int((datetime.now(UTC) + timedelta(days=30)).timestamp())
        token = sign_token(2, key.secret, did, expires)
    else:
        token, _, _ = make_token(kr)
    assert verify_payload(token, kr).valid
    seen: set[str] = set()
    checked = 0
    for i, original in enumerate(token):
        for c in [*BASE32, *NON_BASE32]:
            if c == original:
                continue
            changed = token[:i] + c + token[i + 1 :]
            # the URL as scanned, built literally (payload_url would uppercase the change away)
            for text in (changed, f"HTTP://LOCALHOST:5001/A/{changed}"):
                result = verify_payload(text, kr)
                assert not result.valid, (i, c, text)
                assert result.reason in REASONS, (i, c, result)
                seen.add(result.reason)
                checked += 1
    assert checked == 2 * TOKEN_CHARS * (len(BASE32) - 1 + len(NON_BASE32))
    assert {"malformed", "forged", "unknown_key"} <= seen
    if which == "rotated":
        assert "revoked_key" in seen


def test_first_character_change_breaks_the_version_and_is_malformed(keyring: Keyring) -> None:
    token, _, _ = make_token(keyring)
    for c in BASE32:
        if c != token[0]:
            assert verify_payload(c + token[1:], keyring).reason == "malformed"


def test_changed_tag_is_forged(keyring: Keyring) -> None:
    token, _, _ = make_token(keyring)
    last = "A" if token[-1] != "A" else "B"
    assert verify_payload(token[:-1] + last, keyring).reason == "forged"


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: t[:-1], id="one-short"),
        pytest.param(lambda t: t[:-8], id="eight-short"),
        pytest.param(lambda t: t[1:], id="first-dropped"),
        pytest.param(lambda t: t + "A", id="one-long"),
        pytest.param(lambda t: t + "AAAAAAAA", id="eight-long"),
        pytest.param(lambda t: t + "=" * 8, id="padded"),
        pytest.param(lambda t: t[:24] + " " + t[24:], id="space-inside"),
        pytest.param(lambda t: "", id="empty"),
        pytest.param(lambda t: f"{BASE_URL}/A/", id="url-without-token"),
        pytest.param(lambda t: f"{BASE_URL}/B/{t}", id="url-wrong-path"),
        pytest.param(lambda t: f"{BASE_URL}/A/{t}X", id="url-token-one-long"),
    ],
)
def test_truncated_or_extended_token_is_malformed(keyring: Keyring, mangle: object) -> None:
    token, _, _ = make_token(keyring)
    assert callable(mangle)
    result = verify_payload(mangle(token), keyring)
    assert not result.valid
    assert result.reason == "malformed"


def test_lower_case_token_still_verifies(keyring: Keyring) -> None:
    token, did, _ = make_token(keyring)
    for text in (token.lower(), token.swapcase(), f"  {token.lower()}\r\n"):
        result = verify_payload(text, keyring)
        assert result.valid, text
        assert result.device_id == did


def test_url_with_any_base_url_case_still_verifies(keyring: Keyring) -> None:
    token, did, _ = make_token(keyring)
    for text in (
        payload_url(BASE_URL, token),
        f"{BASE_URL}/A/{token}",
        f"{BASE_URL}/a/{token}",
        f"Http://LocalHost:5001/a/{token.lower()}",
        f"HTTP://LOCALHOST:5001/A/{token}/",
        f"https://example.com/a/b/A/{token}",
    ):
        result = verify_payload(text, keyring)
        assert result.valid, text
        assert result.device_id == did


# -- reasons ---------------------------------------------------------------------------------


def test_expired_payload_is_expired(keyring: Keyring) -> None:
    token, _, expires = make_token(keyring, days=1)
    expires_at = datetime.fromtimestamp(expires, UTC)
    assert verify_payload(token, keyring, now=expires_at - timedelta(seconds=1)).valid
    for now in (expires_at, expires_at + timedelta(days=365)):
        result = verify_payload(token, keyring, now=now)
        assert not result.valid
        assert result.reason == "expired"
        assert result.to_json() == {"valid": False, "reason": "expired"}


def test_forged_tag_is_forged(keyring: Keyring) -> None:
    token, _, _ = make_token(keyring)
    raw = bytearray(base64.b32decode(token))
    raw[-1] ^= 0x01
    forged = base64.b32encode(bytes(raw)).decode()
    assert verify_payload(forged, keyring).reason == "forged"


def test_changed_device_id_or_expiry_is_forged(keyring: Keyring) -> None:
    token, _, _ = make_token(keyring)
    raw = base64.b32decode(token)
    for offset in (2, 9, 10, 13):  # first and last byte of the device id and of the expiry
        changed = bytearray(raw)
        changed[offset] ^= 0x80
        text = base64.b32encode(bytes(changed)).decode()
        assert verify_payload(text, keyring).reason == "forged", offset


def test_signed_with_an_unknown_secret_is_forged(keyring: Keyring) -> None:
    did = device_id(keyring.pepper, "SN-000001")
    expires = int((datetime.now(UTC) + timedelta(days=30)).timestamp())
    token = sign_token(1, b"\x00" * 32, did, expires)
    assert verify_payload(token, keyring).reason == "forged"


def test_unknown_key_id_is_unknown_key(keyring: Keyring) -> None:
    did = device_id(keyring.pepper, "SN-000001")
    expires = int((datetime.now(UTC) + timedelta(days=30)).timestamp())
    for key_id in (0, 2, 255):
        token = sign_token(key_id, b"\x00" * 32, did, expires)
        result = verify_payload(token, keyring)
        assert result.reason == "unknown_key"
        assert result.to_json() == {"valid": False, "reason": "unknown_key"}


def test_revoked_key_is_revoked_key(keyring: Keyring) -> None:
    token, _, _ = make_token(keyring)
    keyring.rotate()
    keyring.revoke(1)
    result = verify_payload(token, keyring)
    assert result.reason == "revoked_key"
    assert result.to_json() == {"valid": False, "reason": "revoked_key"}


def test_revoked_key_wins_over_expiry(keyring: Keyring) -> None:
    token, _, expires = make_token(keyring)
    keyring.rotate()
    keyring.revoke(1)
    later = datetime.fromtimestamp(expires, UTC) + timedelta(days=1)
    assert verify_payload(token, keyring, now=later).reason == "revoked_key"


def test_other_keyring_with_the_same_key_id_is_forged(keyring: Keyring, tmp_path: Path) -> None:
    token, _, _ = make_token(keyring)
    other = init_keyring(tmp_path / "other" / "keyring.json")
    assert other.active.id == keyring.active.id == 1
    assert verify_payload(token, other).reason == "forged"


def test_wrong_version_is_malformed(keyring: Keyring) -> None:
    token, _, _ = make_token(keyring)
    raw = bytearray(base64.b32decode(token))
    for version in (0, 2, 255):
        raw[0] = version
        text = base64.b32encode(bytes(raw)).decode()
        assert verify_payload(text, keyring).reason == "malformed"


# -- provision verify ------------------------------------------------------------------------


def test_verify_json_valid_output_is_exact(tmp_path: Path, keyring_path: Path) -> None:
    keyring = load_keyring(keyring_path)
    token, did, expires = make_token(keyring)
    result = invoke(tmp_path, keyring_path, "verify", payload_url(BASE_URL, token), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "valid": True,
        "device_id": did,
        "key_id": 1,
        "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
    }
    assert list(json.loads(result.stdout)) == ["valid", "device_id", "key_id", "expires_at"]


@pytest.mark.parametrize(
    ("reason", "days", "mangle"),
    [
        ("malformed", 30, lambda t: t[:-1]),
        ("forged", 30, lambda t: t[:-1] + ("A" if t[-1] != "A" else "B")),
        ("expired", -1, lambda t: t),
    ],
)
def test_verify_json_invalid_output_is_exact_with_exit_1(
    tmp_path: Path, keyring_path: Path, reason: str, days: int, mangle: object
) -> None:
    assert callable(mangle)
    token, _, _ = make_token(load_keyring(keyring_path), days=days)
    result = invoke(tmp_path, keyring_path, "verify", mangle(token), "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"valid": False, "reason": reason}


def test_verify_text_output(tmp_path: Path, keyring_path: Path) -> None:
    token, did, _ = make_token(load_keyring(keyring_path))
    ok = invoke(tmp_path, keyring_path, "verify", token)
    assert ok.exit_code == 0
    assert ok.stdout.startswith(f"valid: device {did}, key 1, expires ")
    bad = invoke(tmp_path, keyring_path, "verify", token[:-1])
    assert bad.exit_code == 1
    assert bad.stdout.strip() == "invalid: malformed"


def test_verify_dash_reads_many_from_stdin_one_result_per_line(
    tmp_path: Path, keyring_path: Path
) -> None:
    keyring = load_keyring(keyring_path)
    tokens = [make_token(keyring, serial=f"SN-{i:06d}")[0] for i in range(3)]
    lines = [
        payload_url(BASE_URL, tokens[0]),
        tokens[1].lower(),
        "",  # a blank line from the scanner is skipped
        f"http://localhost:5001/a/{tokens[2]}\r",
    ]
    result = invoke(tmp_path, keyring_path, "verify", "-", "--json", input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == 3
    assert all(r["valid"] for r in out)
    assert [r["device_id"] for r in out] == [
        device_id(keyring.pepper, f"SN-{i:06d}") for i in range(3)
    ]


def test_verify_dash_exits_1_when_any_is_invalid(tmp_path: Path, keyring_path: Path) -> None:
    token, _, _ = make_token(load_keyring(keyring_path))
    stdin = f"{token}\nNOT-A-TOKEN\n{token[:-1]}\n{token}\n"
    result = invoke(tmp_path, keyring_path, "verify", "-", "--json", input=stdin)
    assert result.exit_code == 1
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["valid"] for r in out] == [True, False, False, True]
    assert out[1] == {"valid": False, "reason": "malformed"}
    assert out[2] == {"valid": False, "reason": "malformed"}


@pytest.mark.parametrize(
    "url_template",
    [
        pytest.param("sqlite:///{tmp}/no-such-dir/registry.db", id="sqlite-missing-dir"),
        pytest.param("sqlite:////proc/provision-cannot-write-here.db", id="sqlite-unwritable"),
        pytest.param("postgresql+psycopg://nobody:x@127.0.0.1:1/none", id="postgresql-unreachable"),
        pytest.param("nosuchdriver://whatever", id="unknown-driver"),
    ],
)
def test_verify_never_touches_the_database(
    tmp_path: Path, keyring_path: Path, url_template: str
) -> None:
    token, did, _ = make_token(load_keyring(keyring_path))
    url = url_template.format(tmp=tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    env = {"PROVISION_DB_URL": url, "PROVISION_KEYRING": str(keyring_path)}
    runner = CliRunner()
    one = runner.invoke(cli, ["verify", token, "--json"], env=env, catch_exceptions=False)
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout)["device_id"] == did
    many = runner.invoke(
        cli, ["verify", "-", "--json"], input=f"{token}\n", env=env, catch_exceptions=False
    )
    assert many.exit_code == 0, many.output
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "no-such-dir").exists()
    assert not list(Path.cwd().glob("*.db-journal"))


def test_verify_with_the_default_database_creates_no_file(
    tmp_path: Path, keyring_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    token, _, _ = make_token(load_keyring(keyring_path))
    env = {"PROVISION_DB_URL": None, "PROVISION_KEYRING": str(keyring_path)}
    result = CliRunner().invoke(cli, ["verify", token], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "provision.db").exists()


def test_verify_without_a_keyring_says_how_to_create_one(tmp_path: Path) -> None:
    result = invoke(tmp_path, None, "verify", "A" * 48)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: ")
    assert "PROVISION_KEYRING" in lines[0]
    assert "keys init" in lines[0]
