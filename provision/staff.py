"""Staff accounts of the console: passwords (argon2id), API tokens, logins and the lockout, and
the staff audit log. No HTTP here: the console (provision.web.console) and `provision staff`
call these.

- A password is stored only as its argon2id hash (argon2-cffi's RFC 9106 low-memory profile);
  an API token only as its SHA-256 (it is 256 random bits: a slow hash adds nothing).
- 5 failed logins within 15 minutes lock the account name, and the client address too, until
  the oldest of them is 15 minutes old. A login while locked is refused without looking at the
  password, and does not extend the lock.
- Every staff action is a line of the staff audit log: who, when, what, to what, from where.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from provision.errors import ConflictError, StaffError
from provision.registry import Registry, StaffRecord
from provision.registry.store import utcnow
from provision.states import StaffRole
from provision.text import text_problem

LOCK_FAILURES = 5
LOCK_WINDOW = timedelta(minutes=15)
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
TOKEN_PREFIX = "pst_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_hasher = PasswordHasher()  # argon2id, t=3, m=64 MiB, p=4 (RFC 9106 second choice)
_dummy: list[str] = []


class LoginResult(StrEnum):
    OK = "ok"
    BAD = "bad_credentials"
    LOCKED = "locked"


@dataclass(frozen=True)
class Login:
    """The outcome of a login: OK with the account, BAD, or LOCKED (and until when)."""

    result: LoginResult
    account: StaffRecord | None = None
    locked_until: datetime | None = None


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise StaffError(
            f"staff name {name!r}: 1 to 64 letters, digits and . _ @ -, starting with a letter "
            "or digit"
        )
    return name


def check_role(role: str) -> StaffRole:
    try:
        return StaffRole(role)
    except ValueError:
        known = ", ".join(StaffRole)
        raise StaffError(f"role {role!r}: must be one of {known}") from None


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise StaffError(f"the password is shorter than {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise StaffError(f"the password is longer than {MAX_PASSWORD} characters")
    if problem := text_problem(password):
        raise StaffError(f"the password {problem}")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _waste_time(password: str) -> None:
    """As long as a real check: a login for a name that does not exist takes as long as one for
    a name that does, so the time does not tell which names exist."""
    if not _dummy:
        _dummy.append(_hasher.hash(secrets.token_urlsafe(16)))
    _verify(_dummy[0], password)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def session_id(account: StaffRecord) -> str:
    """What a login session remembers: the account id and a fingerprint of its password hash,
    so that a new password (`staff passwd`) ends every session made with the old one."""
    mark = hashlib.sha256(account.password_hash.encode()).hexdigest()[:16]
    return f"{account.id}.{mark}"


def account_of_session(
    registry: Registry, sid: str, logged_in_at: datetime | None = None
) -> StaffRecord | None:
    """The active account a session id names, or None (disabled, new password, unknown, or a
    session made before the account's last logout)."""
    pk, _, _mark = sid.partition(".")
    if not pk.isdigit() or len(pk) > 12:
        return None
    account = registry.staff.by_id(int(pk))
    if account is None or not account.active:
        return None
    if not hmac.compare_digest(session_id(account), sid):
        return None
    ended = account.sessions_ended_at
    if ended is not None and (logged_in_at is None or logged_in_at <= ended):
        return None
    return account


def end_sessions(registry: Registry, name: str, ip: str | None = None) -> None:
    """Log NAME out everywhere: every session made so far ends at its next request."""
    now = utcnow()
    registry.staff.change(name, now, _event(name, "logout", None, ip, None), sessions_ended_at=now)


def record(
    registry: Registry,
    who: str,
    action: str,
    subject: str | None = None,
    ip: str | None = None,
    detail: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """One line of the staff audit log."""
    registry.staff.record(now or utcnow(), _event(who, action, subject, ip, detail))


def _event(
    who: str, action: str, subject: str | None, ip: str | None, detail: dict[str, Any] | None
) -> dict[str, Any]:
    """A line of the audit log, each value cut to its column (a request path can be long)."""
    return {
        "staff": who[:64],
        "action": action[:64],
        "subject": subject[:256] if subject is not None else None,
        "ip": ip[:64] if ip is not None else None,
        "detail": detail,
    }


def add_staff(
    registry: Registry, name: str, role: str, password: str, by: str, ip: str | None = None
) -> StaffRecord:
    name, r = check_name(name), check_role(role)
    hashed = hash_password(check_password(password))
    now = utcnow()
    try:
        return registry.staff.add(
            name, r, hashed, by, now, _event(by, "staff.add", name, ip, {"role": str(r)})
        )
    except ConflictError:
        raise StaffError(f"staff {name!r} already exists") from None


def get_staff(registry: Registry, name: str) -> StaffRecord:
    found = registry.staff.get(name)
    if found is None:
        raise StaffError(f"no staff account named {name!r} (see `provision staff list`)")
    return found


def disable_staff(registry: Registry, name: str, by: str, ip: str | None = None) -> StaffRecord:
    """The account can no longer log in or use its token; its sessions end at their next
    request."""
    account = get_staff(registry, name)
    if not account.active:
        raise StaffError(f"staff {name!r} is already disabled")
    now = utcnow()
    registry.staff.change(
        name, now, _event(by, "staff.disable", name, ip, None), disabled_at=now, token_hash=None
    )
    return get_staff(registry, name)


def set_password(
    registry: Registry, name: str, password: str, by: str, ip: str | None = None
) -> StaffRecord:
    """A new password; every session made with the old one ends, and the API token too (a new
    password is what follows a compromise: `staff token` issues a new one)."""
    get_staff(registry, name)
    hashed = hash_password(check_password(password))
    now = utcnow()
    registry.staff.change(
        name,
        now,
        _event(by, "staff.passwd", name, ip, None),
        password_hash=hashed,
        password_changed_at=now,
        token_hash=None,
        token_created_at=None,
    )
    return get_staff(registry, name)


def issue_token(registry: Registry, name: str, by: str, ip: str | None = None) -> str:
    """A new bearer token for the staff API, replacing the account's previous one; only its
    hash is stored, so this is the one time it is seen."""
    account = get_staff(registry, name)
    if not account.active:
        raise StaffError(f"staff {name!r} is disabled")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    registry.staff.change(
        name,
        now,
        _event(by, "staff.token", name, ip, None),
        token_hash=token_hash(token),
        token_created_at=now,
    )
    return token


def account_of_token(registry: Registry, token: str | None) -> StaffRecord | None:
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    account = registry.staff.by_token_hash(token_hash(token))
    return account if account is not None and account.active else None


def login(
    registry: Registry, username: str, password: str, ip: str, now: datetime | None = None
) -> Login:
    """Check a console login; every outcome is recorded in the staff audit log."""
    now = now or utcnow()
    username = username.strip()
    # A name no account can have is counted (and recorded) as "-": it never reaches a query
    # as typed (a NUL byte would be a driver error, a long one overflow the column).
    if not _NAME.fullmatch(username):
        username = "-"
    ip = ip[:64]
    since = now - LOCK_WINDOW
    locked = Login(LoginResult.LOCKED, locked_until=now + LOCK_WINDOW)
    by_name, by_ip = registry.staff.failures_since(username, ip, since)
    if by_name >= LOCK_FAILURES or by_ip >= LOCK_FAILURES:
        record(registry, username, "login.locked", username, ip, None, now)
        return locked
    # Counted as a failure before the password is checked, then forgotten if it was right:
    # logins in flight at once each see the others, so no more than LOCK_FAILURES guesses
    # get through however many are sent together.
    attempt = registry.staff.login_attempt(username, ip, now, since)
    by_name, by_ip = registry.staff.failures_since(username, ip, since)
    if by_name > LOCK_FAILURES or by_ip > LOCK_FAILURES:
        registry.staff.forget_attempt(attempt)
        record(registry, username, "login.locked", username, ip, None, now)
        return locked
    account = registry.staff.get(username) if username != "-" else None
    if account is None or not account.active:
        _waste_time(password)
        ok = False
    else:
        ok = _verify(account.password_hash, password)
    if not ok:
        record(registry, username, "login.failed", username, ip, None, now)
        return locked if max(by_name, by_ip) >= LOCK_FAILURES else Login(LoginResult.BAD)
    assert account is not None
    registry.staff.forget_attempt(attempt)
    if _hasher.check_needs_rehash(account.password_hash):
        registry.staff.change(
            account.name,
            now,
            _event(account.name, "staff.rehash", account.name, ip, None),
            password_hash=hash_password(password),
        )
        account = get_staff(registry, account.name)
    registry.staff.logged_in(account.name, now, _event(account.name, "login", None, ip, None))
    return Login(LoginResult.OK, account)


def staff_json(a: StaffRecord) -> dict[str, Any]:
    return {
        "name": a.name,
        "role": a.role,
        "active": a.active,
        "created_at": a.created_at.isoformat(),
        "created_by": a.created_by,
        "password_changed_at": a.password_changed_at.isoformat(),
        "token_created_at": a.token_created_at.isoformat() if a.token_created_at else None,
        "disabled_at": a.disabled_at.isoformat() if a.disabled_at else None,
        "last_login_at": a.last_login_at.isoformat() if a.last_login_at else None,
    }
