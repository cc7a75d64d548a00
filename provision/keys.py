"""Keyring: signing keys with ids and states, the serial-hash pepper and the data key.

The keyring is one JSON file with mode 0600, named by PROVISION_KEYRING. There is no default
key anywhere: a command that needs keys and finds no keyring says how to create one.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provision.errors import KeyringError
from provision.files import write_atomic
from provision.states import KeyState

FORMAT = "provision-keyring/1"
SECRET_BYTES = 32
MAX_KEY_ID = 255  # the key id is one byte of the payload


@dataclass
class SigningKey:
    """One HMAC signing key; a revoked key keeps its id but loses its secret."""

    id: int
    state: KeyState
    secret: bytes | None
    created_at: str
    revoked_at: str | None = None

    def public(self) -> dict[str, Any]:
        """The key as `keys list` shows it: never the secret."""
        return {
            "key_id": self.id,
            "state": self.state,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


@dataclass
class Keyring:
    """The loaded keyring; `save` writes it back atomically with mode 0600."""

    path: Path
    pepper: bytes
    data_key: bytes
    keys: list[SigningKey] = field(default_factory=list)

    @property
    def active(self) -> SigningKey:
        """The key new payloads are signed with."""
        for key in self.keys:
            if key.state == KeyState.ACTIVE:
                return key
        raise KeyringError(
            f"{self.path}: no active signing key (all revoked); run `provision keys rotate`"
        )

    def get(self, key_id: int) -> SigningKey | None:
        """The key with this id, or None when the keyring never had it."""
        for key in self.keys:
            if key.id == key_id:
                return key
        return None

    def rotate(self) -> SigningKey:
        """Add a new active key; the previous active key stays valid for verification."""
        next_id = max((k.id for k in self.keys), default=0) + 1
        if next_id > MAX_KEY_ID:
            raise KeyringError(f"{self.path}: all {MAX_KEY_ID} key ids are used")
        for key in self.keys:
            if key.state == KeyState.ACTIVE:
                key.state = KeyState.VERIFY_ONLY
        key = SigningKey(next_id, KeyState.ACTIVE, secrets.token_bytes(SECRET_BYTES), _now())
        self.keys.append(key)
        return key

    def _key(self, key_id: int) -> SigningKey:
        key = self.get(key_id)
        if key is None:
            known = ", ".join(str(k.id) for k in self.keys)
            raise KeyringError(f"{self.path}: no key with id {key_id} (known: {known})")
        return key

    def retire(self, key_id: int) -> SigningKey:
        """End a key's signing life: it verifies what it signed, and a new key signs from now
        on (the normal end of a key; revoke is for a key that leaked). Returns the new key."""
        key = self._key(key_id)
        if key.state != KeyState.ACTIVE:
            raise KeyringError(
                f"{self.path}: key {key_id} is {key.state}, not the active key; it signs nothing"
            )
        return self.rotate()

    def revoke(self, key_id: int) -> SigningKey:
        """Revoke a key: its payloads fail with `revoked_key` and its secret is destroyed."""
        key = self.revocable(key_id)
        key.state = KeyState.REVOKED
        key.secret = None
        key.revoked_at = _now()
        return key

    def revocable(self, key_id: int) -> SigningKey:
        """The key, if it may be revoked: it exists, is not revoked, and is not the one key
        that signs (then nothing could sign after it)."""
        key = self._key(key_id)
        if key.state == KeyState.REVOKED:
            raise KeyringError(f"{self.path}: key {key_id} is already revoked")
        if key.state == KeyState.ACTIVE:
            raise KeyringError(
                f"{self.path}: key {key_id} is the signing key, and nothing could sign after "
                f"it; run `provision keys rotate` first, then `provision keys revoke {key_id}`"
            )
        return key

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "pepper": _b64(self.pepper),
            "data_key": _b64(self.data_key),
            "keys": [
                {
                    "id": k.id,
                    "state": k.state,
                    "secret": _b64(k.secret) if k.secret is not None else None,
                    "created_at": k.created_at,
                    "revoked_at": k.revoked_at,
                }
                for k in self.keys
            ],
        }

    def save(self) -> None:
        """Write the keyring atomically, never readable by group or others."""
        write_atomic(self.path, json.dumps(self.to_json(), indent=2).encode(), mode=0o600)


def init_keyring(path: Path) -> Keyring:
    """Create a new keyring with one active key; refuse to overwrite an existing file."""
    # A folder made here is private too: in a group- or world-writable folder anyone could swap
    # the keyring for their own (mode 0700 still applies under a permissive umask such as 0).
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
    keyring = Keyring(path, secrets.token_bytes(SECRET_BYTES), secrets.token_bytes(SECRET_BYTES))
    keyring.rotate()
    data = json.dumps(keyring.to_json(), indent=2).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyringError(
            f"{path}: keyring already exists; refusing to overwrite it "
            "(use `provision keys rotate` for a new signing key)"
        ) from None
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return keyring


def load_keyring(path: str | Path | None) -> Keyring:
    """Load and check the keyring named by --keyring / PROVISION_KEYRING."""
    if not path:
        raise KeyringError(
            "no keyring given: set PROVISION_KEYRING (or --keyring) to a file path, "
            "and create the file once with `provision keys init`"
        )
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise KeyringError(
            f"{p}: keyring not found; create it with `provision --keyring {p} keys init`"
        ) from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyringError(
            f"{p}: keyring is readable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {p}`"
        )
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
        if raw.get("format") != FORMAT:
            raise ValueError(f"unknown format {raw.get('format')!r}")
        keys = [
            SigningKey(
                id=int(k["id"]),
                state=k["state"],
                secret=_unb64(k["secret"]) if k.get("secret") else None,
                created_at=k["created_at"],
                revoked_at=k.get("revoked_at"),
            )
            for k in raw["keys"]
        ]
        keyring = Keyring(p, _unb64(raw["pepper"]), _unb64(raw["data_key"]), keys)
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyringError(f"{p}: not a valid provision keyring ({exc})") from None
    for key in keyring.keys:
        if key.state not in set(KeyState):
            raise KeyringError(f"{p}: key {key.id} has unknown state {key.state!r}")
        key.state = KeyState(key.state)
        if key.state != KeyState.REVOKED and (key.secret is None or len(key.secret) < 16):
            raise KeyringError(f"{p}: key {key.id} has no usable secret")
    if len(keyring.pepper) < 16 or len(keyring.data_key) != 32:
        raise KeyringError(f"{p}: pepper or data key has the wrong length")
    return keyring


class KeyringWatcher:
    """The keyring as the file holds it now, for long-running processes (the web service).

    A running server must honour `keys revoke` and `keys rotate` without a restart: the file's
    identity (inode, size, modification and change times) is checked at most every INTERVAL
    seconds, and a changed file is loaded again. `keys` commands replace the file atomically,
    so a reader never sees half of one. A file that no longer loads (removed, made readable by
    others) raises KeyringError rather than leaving the old keys in use.
    """

    def __init__(
        self, path: str | Path, interval: float = 0.5, *, initial: Keyring | None = None
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self._lock = threading.Lock()
        self._checked = 0.0
        self._identity: tuple[int, int, int, int] | None = None
        self._keyring = initial
        self._identity = self._stat()
        if initial is None:
            self._keyring = load_keyring(self.path)

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def current(self) -> Keyring:
        """The keyring, loaded again if the file changed since it was last looked at."""
        now = time.monotonic()
        if now - self._checked >= self.interval:
            with self._lock:
                if now - self._checked >= self.interval:
                    identity = self._stat()
                    if identity != self._identity or self._keyring is None:
                        try:
                            fresh = load_keyring(self.path)
                        except KeyringError:
                            self._keyring = None  # fail closed until the file loads again
                            raise
                        self._keyring, self._identity = fresh, identity
                    self._checked = now
        keyring = self._keyring
        if keyring is None:
            raise KeyringError(f"{self.path}: the keyring could not be loaded again")
        return keyring


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode("ascii"), validate=True)
