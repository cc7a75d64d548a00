"""`provision keys`: the keyring's signing keys and pepper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from provision.cli.common import (
    ProvisionGroup,
    Settings,
    emit,
    json_option,
    pass_settings,
)
from provision.errors import ConfigError
from provision.keys import Keyring, init_keyring, load_keyring
from provision.text import plural

# -- keys ------------------------------------------------------------------------------------


@click.group(cls=ProvisionGroup)
def keys() -> None:
    """Manage the keyring: signing keys and the serial-hash pepper.

    \b
    Example:
      provision --keyring /etc/provision/keyring.json keys init
    """


def _key_rows(keyring: Keyring) -> list[dict[str, Any]]:
    return [k.public() for k in keyring.keys]


def _key_table(keyring: Keyring) -> str:
    lines = [f"{'KEY':>4}  {'STATE':<12} CREATED"]
    for k in keyring.keys:
        extra = f"  (revoked {k.revoked_at})" if k.revoked_at else ""
        lines.append(f"{k.id:>4}  {k.state:<12} {k.created_at}{extra}")
    return "\n".join(lines)


def _keyring_path(settings: Settings) -> Path:
    if not settings.keyring_path:
        load_keyring(None)  # raises the "how to create one" message
    return Path(str(settings.keyring_path))


@keys.command("init")
@json_option
@pass_settings
def keys_init(settings: Settings, as_json: bool) -> None:
    """Create a new keyring (mode 0600) with one active signing key and a pepper.

    Refuses to overwrite an existing keyring.

    \b
    Example:
      PROVISION_KEYRING=/etc/provision/keyring.json provision keys init
    """
    path = _keyring_path(settings)
    keyring = init_keyring(path)
    emit(
        as_json,
        {"keyring": str(path), "keys": _key_rows(keyring)},
        f"Created keyring {path} (mode 0600) with signing key {keyring.active.id}.",
    )


@keys.command("rotate")
@json_option
@pass_settings
def keys_rotate(settings: Settings, as_json: bool) -> None:
    """Add a new active signing key; older keys stay valid for verification.

    \b
    Example:
      provision keys rotate
    """
    keyring = settings.keyring()
    key = keyring.rotate()
    keyring.save()
    emit(
        as_json,
        {"key_id": key.id, "keys": _key_rows(keyring)},
        f"Signing key {key.id} is now active; earlier keys verify only.",
    )


@keys.command("revoke")
@click.argument("key_id", type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_settings
def keys_revoke(settings: Settings, key_id: int, yes: bool, as_json: bool) -> None:
    """Revoke a leaked key: payloads it signed fail with `revoked_key`; its secret is destroyed.

    Says how many pending devices, in which batches, carry payloads under the key, and asks
    first (or takes --yes). Their printed labels stop working; `provision resign BATCH` gives
    them new payloads. The signing key itself cannot be revoked: rotate first. For the normal
    end of a key's life, use `keys retire`.

    \b
    Example:
      provision keys rotate && provision keys revoke 1 --yes && provision resign line1-20261128
    """
    keyring = settings.keyring()
    keyring.revocable(key_id)  # before anything is asked or counted
    try:
        pending = settings.registry().devices.pending_by_batch(key_id)
    except ConfigError as exc:
        pending = {}
        click.echo(f"warning: {exc}: pending devices under key {key_id} not counted", err=True)
    total = sum(pending.values())
    if total:
        where = ", ".join(f"{name} ({n:,})" for name, n in pending.items())
        click.echo(
            f"Key {key_id} signed the payloads of {plural(total, 'pending device')}: {where}. "
            "Their labels will fail with revoked_key until `provision resign BATCH` signs them "
            "under the active key.",
            err=True,
        )
    else:
        click.echo(f"No pending device carries a payload under key {key_id}.", err=True)
    if not yes:
        click.confirm(f"Revoke key {key_id} and destroy its secret?", abort=True, err=True)
    key = keyring.revoke(key_id)
    keyring.save()
    emit(
        as_json,
        {"key_id": key.id, "pending_devices": pending, "keys": _key_rows(keyring)},
        f"Key {key.id} revoked."
        + (f" Re-sign its batches: {', '.join(pending)}." if pending else ""),
    )


@keys.command("retire")
@click.argument("key_id", type=int)
@json_option
@pass_settings
def keys_retire(settings: Settings, key_id: int, as_json: bool) -> None:
    """Retire the signing key: it stops signing and keeps verifying; a new key signs.

    The normal end of a key's life (labels already printed keep working); `keys revoke` is
    for a key that leaked.

    \b
    Example:
      provision keys retire 1
    """
    keyring = settings.keyring()
    new = keyring.retire(key_id)
    keyring.save()
    emit(
        as_json,
        {"retired": key_id, "key_id": new.id, "keys": _key_rows(keyring)},
        f"Key {key_id} retired: it verifies only. Signing key {new.id} is now active.",
    )


@keys.command("list")
@json_option
@pass_settings
def keys_list(settings: Settings, as_json: bool) -> None:
    """List the signing keys and their states (never the secrets).

    \b
    Example:
      provision keys list --json
    """
    keyring = settings.keyring()
    emit(as_json, {"keyring": str(keyring.path), "keys": _key_rows(keyring)}, _key_table(keyring))
