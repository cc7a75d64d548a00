"""`provision db`: schema migrations."""

from __future__ import annotations

import click

from provision.cli.common import (
    ProvisionGroup,
    Settings,
    emit,
    json_option,
    pass_settings,
)

# -- db --------------------------------------------------------------------------------------


@click.group(cls=ProvisionGroup)
def db() -> None:
    """Database schema management.

    \b
    Example:
      provision --db postgresql+psycopg://provision@db/provision db upgrade
    """


@db.command("upgrade")
@json_option
@pass_settings
def db_upgrade(settings: Settings, as_json: bool) -> None:
    """Apply every pending migration (also done automatically on first use).

    \b
    Example:
      provision db upgrade
    """
    from provision.registry import Registry

    registry = Registry(settings.db, migrate=False)
    try:
        revision = registry.upgrade()
    finally:
        registry.close()
    emit(
        as_json,
        {"db": registry.safe_url, "revision": revision},
        f"{registry.safe_url} is at revision {revision}.",
    )
