"""Console logins: Flask-Login sessions over provision.staff, the roles, the staff audit log.

A session is a signed cookie (HttpOnly, SameSite=Strict, Secure over https) that remembers the
account id and a fingerprint of its password hash; it expires after the idle timeout (Flask
checks the signature's age on every request, and each request renews it). A new password or
a disabled account ends the session at its next request. There is no "remember me".
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import Blueprint, abort, redirect, render_template, request, session, url_for
from flask_login import LoginManager, current_user, login_required, login_user, logout_user

from provision import staff as staff_lib
from provision.registry import StaffRecord
from provision.states import StaffRole
from provision.web.common import services

F = TypeVar("F", bound=Callable[..., Any])


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
        account = staff_lib.account_of_session(services().registry, sid)
        return StaffUser(account) if account else None

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
    if not target:
        return url_for("pages.overview")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
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
            session.permanent = True  # the idle timeout: PERMANENT_SESSION_LIFETIME
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
        audit("logout")
        logout_user()
        session.clear()
        return redirect(url_for("auth.login"))

    return bp
