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
from provision.keys import Keyring, init_keyring, load_keyring

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
@json_option
@pass_settings
def keys_revoke(settings: Settings, key_id: int, as_json: bool) -> None:
    """Revoke a key: payloads it signed fail with `revoked_key`; its secret is destroyed.

    \b
    Example:
      provision keys revoke 1
    """
    keyring = settings.keyring()
    key = keyring.revoke(key_id)
    keyring.save()
    emit(as_json, {"key_id": key.id, "keys": _key_rows(keyring)}, f"Key {key.id} revoked.")


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
