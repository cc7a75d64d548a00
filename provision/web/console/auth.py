"""Console logins: Flask-Login sessions over provision.staff, the roles, the staff audit log.

A session is a signed cookie (HttpOnly, SameSite=Strict, Secure over https, gone when the
browser closes) that remembers the account id, a fingerprint of its password hash, when it
logged in and when it was last used. The server ends it after the idle timeout, after
MAX_SESSION in any case, when it comes from another address or browser than the one that
logged in (Flask-Login's strong protection), and when the account gets a new password, is
disabled or logs out (a logout ends all of the account's sessions). There is no
"remember me".
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, TypeVar, cast

from flask import (
    Blueprint,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import LoginManager, current_user, login_required, login_user, logout_user

from provision import staff as staff_lib
from provision.registry import StaffRecord
from provision.states import StaffRole
from provision.web.common import services

F = TypeVar("F", bound=Callable[..., Any])
MAX_SESSION = timedelta(hours=12)  # however busy: a new login each working day
# A path on this console: a slash, then no backslash, no control character, no second slash
# first (browsers read `/\\host` and `//host` as another site).
_LOCAL_PATH = re.compile(r"/(?![/\\])[^\\\x00-\x20\x7f]*")


class StaffUser:
    """The logged-in account, as Flask-Login wants it."""

    is_authenticated = True
    is_active = True
    is_anonymous = False

    def __init__(self, account: StaffRecord) -> None:
        self.account = account
        self.name = account.name
        self.role = StaffRole(account.role)

    def get_id(self) -> str:
        return staff_lib.session_id(self.account)

    def can(self, role: str) -> bool:
        return self.role.allows(StaffRole(role))


def install(app: Any) -> LoginManager:
    manager = LoginManager(app)
    manager.login_view = "auth.login"
    manager.login_message = "Log in to see that page."
    manager.session_protection = "strong"  # a stolen cookie from another browser is useless

    @manager.user_loader
    def load(sid: str) -> StaffUser | None:
        now = time.time()
        idle = current_app.config["PROVISION_IDLE_TIMEOUT"].total_seconds()
        logged_in, seen = session.get("login_at"), session.get("seen")
        if not isinstance(logged_in, float) or not isinstance(seen, float):
            return None
        if now - seen > idle or now - logged_in > MAX_SESSION.total_seconds():
            session.clear()
            return None
        at = datetime.fromtimestamp(logged_in, UTC)
        account = staff_lib.account_of_session(services().registry, sid, at)
        if account is None:
            session.clear()
            return None
        session["seen"] = now
        return StaffUser(account)

    return manager


def me() -> StaffUser:
    return cast(StaffUser, current_user._get_current_object())  # type: ignore[attr-defined]


def needs(role: StaffRole) -> Callable[[F], F]:
    """The route needs a login with ROLE or above; any other role gets 403."""

    def decorate(view: F) -> F:
        @wraps(view)
        @login_required
        def checked(*args: Any, **kwargs: Any) -> Any:
            if not me().role.allows(role):
                audit("denied", request.path, {"needs": str(role), "method": request.method})
                abort(403)
            return view(*args, **kwargs)

        return cast(F, checked)

    return decorate


def audit(action: str, subject: str | None = None, detail: dict[str, Any] | None = None) -> None:
    """A line of the staff audit log for the logged-in account, from the request's address."""
    staff_lib.record(services().registry, me().name, action, subject, request.remote_addr, detail)


def _safe_next(target: str | None) -> str:
    """Where to go after the login: a path on this console, never another site."""
    # A path that starts with one slash has no scheme and no host: nothing else to check.
    if not target or not _LOCAL_PATH.fullmatch(target):
        return url_for("pages.overview")
    return target


def blueprint() -> Blueprint:
    bp = Blueprint("auth", __name__)

    @bp.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if request.method == "GET":
            if current_user.is_authenticated:
                return redirect(_safe_next(request.args.get("next")))
            return render_template("console/login.html", next=request.args.get("next", ""))
        username = request.form.get("username", "")
        password = request.form.get("password", "")
        outcome = staff_lib.login(
            services().registry, username, password, request.remote_addr or "-"
        )
        if outcome.result is staff_lib.LoginResult.OK:
            assert outcome.account is not None
            session.clear()
            login_user(StaffUser(outcome.account))
            # Not a permanent session: Flask-Login's strong protection holds only for these.
            session["login_at"] = session["seen"] = time.time()
            return redirect(_safe_next(request.form.get("next")))
        if outcome.result is staff_lib.LoginResult.LOCKED:
            until = outcome.locked_until.astimezone(UTC) if outcome.locked_until else None
            message = (
                "Too many failed logins for this account or from this address. "
                f"Try again after {until:%H:%M} UTC."
                if until
                else "Locked."
            )
            status = 429
        else:
            message, status = "Wrong name or password.", 401
        page = render_template(
            "console/login.html",
            error=message,
            username=username[:64],
            next=request.form.get("next", ""),
        )
        return page, status

    @bp.route("/logout", methods=["POST"])
    @login_required
    def logout() -> Any:
        staff_lib.end_sessions(services().registry, me().name, request.remote_addr)
        logout_user()
        session.clear()
        return redirect(url_for("auth.login"))

    return bp
