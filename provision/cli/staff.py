"""`provision staff`: the console's staff accounts (add, list, disable, passwd, token)."""

from __future__ import annotations

import sys

import click

from provision.cli.common import (
    ProvisionGroup,
    Settings,
    emit,
    json_option,
    operator,
    pass_settings,
)
from provision.errors import UsageError

ROLES = ("viewer", "support", "admin")


def _by() -> str:
    return f"cli:{operator()}"


def _password(prompt: str) -> str:
    """Read twice from a terminal, or one line from stdin when it is not one (a script)."""
    if sys.stdin.isatty():
        first = click.prompt(prompt, hide_input=True, err=True)
        second = click.prompt("Again", hide_input=True, err=True)
        if first != second:
            raise UsageError("the two passwords differ; nothing changed")
        return str(first)
    line = sys.stdin.readline()
    if not line:
        raise UsageError("no password on stdin (give it as one line)")
    return line.rstrip("\r\n")


@click.group(cls=ProvisionGroup)
def staff() -> None:
    """Staff accounts of the console (`provision console`).

    Roles: viewer reads; support also revokes and un-revokes devices, releases recall holds,
    acknowledges alerts and makes recalls; admin also manages staff. Passwords are stored as
    argon2id hashes, API tokens as SHA-256; every change is in the staff audit log.

    \b
    Example:
      provision staff add alice --role support
      printf '%s\\n' "$PASSWORD" | provision staff add bot --role viewer
    """


@staff.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the account may do.")
@json_option
@pass_settings
def staff_add(settings: Settings, name: str, role: str, as_json: bool) -> None:
    """Add a staff account NAME; the password is read twice from the terminal, or as one line
    from stdin (at least 12 characters).

    \b
    Example:
      provision staff add alice --role support
    """
    from provision.staff import add_staff, check_name, staff_json

    check_name(name)
    registry = settings.registry()
    account = add_staff(registry, name, role, _password(f"Password for {name}"), _by())
    emit(as_json, staff_json(account), f"staff {account.name} added ({account.role})")


@staff.command("list")
@json_option
@pass_settings
def staff_list(settings: Settings, as_json: bool) -> None:
    """List the staff accounts: name, role, active or disabled, whether it has an API token.

    \b
    Example:
      provision staff list --json
    """
    from provision.staff import staff_json

    accounts = settings.registry().staff.all()
    lines = [
        f"{a.name:<24} {a.role:<8} {'enabled' if a.active else 'disabled':<8} "
        f"{'token' if a.token_hash else '-'}"
        for a in accounts
    ]
    emit(
        as_json,
        {"staff": [staff_json(a) for a in accounts], "count": len(accounts)},
        "\n".join(lines) if lines else "no staff accounts (provision staff add NAME --role ...)",
    )


@staff.command("disable")
@click.argument("name")
@json_option
@pass_settings
def staff_disable(settings: Settings, name: str, as_json: bool) -> None:
    """Disable a staff account: no more logins, its token stops working, its sessions end.

    \b
    Example:
      provision staff disable alice
    """
    from provision.staff import disable_staff, staff_json

    account = disable_staff(settings.registry(), name, _by())
    emit(as_json, staff_json(account), f"staff {account.name} disabled")


@staff.command("passwd")
@click.argument("name")
@json_option
@pass_settings
def staff_passwd(settings: Settings, name: str, as_json: bool) -> None:
    """Set a new password for NAME (read as `add` reads it); its sessions end.

    \b
    Example:
      provision staff passwd alice
    """
    from provision.staff import get_staff, set_password, staff_json

    registry = settings.registry()
    get_staff(registry, name)
    account = set_password(registry, name, _password(f"New password for {name}"), _by())
    emit(as_json, staff_json(account), f"staff {account.name}: password changed")


@staff.command("token")
@click.argument("name")
@json_option
@pass_settings
def staff_token(settings: Settings, name: str, as_json: bool) -> None:
    """A new bearer token for the staff JSON API (/api/v1/staff/...), replacing NAME's
    previous one. It is shown once: only its hash is stored.

    \b
    Example:
      provision staff token support-bot
      curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:5002/api/v1/staff/devices/ID/history
    """
    from provision.staff import issue_token

    token = issue_token(settings.registry(), name, _by())
    emit(as_json, {"name": name, "token": token}, token)
