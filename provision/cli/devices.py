"""One device's life: activate, log, history, revoke."""

from __future__ import annotations

from typing import Any

import click

from provision.cli.common import (
    Settings,
    device_selector,
    emit,
    find_device_arg,
    find_device_for_write,
    json_option,
    operator,
    pass_settings,
)
from provision.states import DeviceStatus
from provision.text import escape_control

# -- activation and lifetime tracking ---------------------------------------------------------


@click.command()
@click.argument("payload", metavar="PAYLOAD_OR_URL")
@click.option(
    "--user",
    help="The customer the device is linked to (without it, the device is linked to no one).",
)
@click.option("--ip", help="Client address to record with the pairing event.")
@click.option("--user-agent", help="Client user agent to record with the pairing event.")
@json_option
@pass_settings
def activate(
    settings: Settings,
    payload: str,
    user: str | None,
    ip: str | None,
    user_agent: str | None,
    as_json: bool,
) -> None:
    """Activate a device from its scanned payload, exactly once; exit 1 with the reason if not.

    \b
    Example:
      provision activate HTTP://LOCALHOST:5001/A/AEA5PMXE... --user alice@example.com
    """
    from provision.activation import activate as activate_device

    result = activate_device(
        *settings.registry_with_keyring(),
        payload,
        user,
        ip=ip,
        user_agent=user_agent or "provision-cli",
    )
    emit(
        as_json,
        result.to_json(),
        f"Activated device {result.device_id} ({result.device_type}) "
        + (f"for {user}.\n" if user else "with no user linked.\n")
        + f"Activation token (shown once): {result.activation_token}",
    )


def _parse_meta(items: tuple[str, ...]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
        meta[key.strip()] = value
    return meta


@click.command("log")
@click.argument("target", nargs=-1, metavar="[DEVICE_ID] ACTION")
@click.option("--serial", help="Look the device up by its serial (through the keyed hash).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Action metadata; repeatable.")
@click.option("--ip", help="Address the action came from.")
@json_option
@pass_settings
def log_cmd(
    settings: Settings,
    target: tuple[str, ...],
    serial: str | None,
    meta: tuple[str, ...],
    ip: str | None,
    as_json: bool,
) -> None:
    """Append an action to a device's tamper-evident log.

    \b
    Example:
      provision log 3f9a0c1d2e4b5a69 firmware_update --meta version=2.4.1
      provision log --serial TH200-2611-00001 returned --meta rma=RMA-7781
    """
    from provision.audit import log_action

    wanted = 1 if serial is not None else 2
    if len(target) != wanted:
        raise click.UsageError("give ACTION with --serial, else DEVICE_ID ACTION")
    device_id, action = (None, target[0]) if serial is not None else target
    device = find_device_for_write(settings, device_id, serial)
    entry = log_action(
        *settings.registry_with_keyring(),
        device,
        action,
        _parse_meta(meta),
        ip=ip,
        actor=operator(),
    )
    emit(
        as_json,
        {
            "device_id": device.device_id,
            "action_id": entry.id,
            "seq": entry.seq,
            "action_type": action,
        },
        f"Logged {action} for device {device.device_id} (entry #{entry.seq}).",
    )


@click.command()
@device_selector
@click.option("--limit", type=click.IntRange(min=1), help="Show only the newest N events/actions.")
@json_option
@pass_settings
def history(
    settings: Settings,
    device_id: str | None,
    serial: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Show a device's whole history, oldest first: factory, components, pairing, actions.

    \b
    Example:
      provision history 3f9a0c1d2e4b5a69
      provision history --serial TH200-2611-00001 --json
    """
    from provision.audit import device_history

    device = find_device_arg(settings, device_id, serial)
    data = device_history(settings.registry(), device, limit)
    emit(as_json, data, _history_text(data))


def _history_text(h: dict[str, Any]) -> str:
    """The history as text; every stored value is escaped, so none can forge a line."""

    def t(value: Any) -> str:
        return escape_control(str(value))

    d = h["device"]
    out = [
        f"Device {d['device_id']}  {t(d['device_type'])}"
        + (f" {t(d['model'])}" if d["model"] else "")
        + (f" by {t(d['manufacturer'])}" if d["manufacturer"] else ""),
        f"  status {d['status']}; batch {t(d['batch'])}; registered {d['registered_at']}; "
        f"QR expires {d['expires_at']}",
    ]
    if d["manufactured_at"] or d["line"]:
        out.append(f"  manufactured {t(d['manufactured_at'] or '?')} on line {t(d['line'] or '?')}")
    if d["activated_at"]:
        who = f"by {t(d['user'])}" if d["user"] else "with no user linked"
        out.append(f"  activated {d['activated_at']} {who}")
    if d["revoked_at"]:
        out.append(f"  revoked {d['revoked_at']} by {t(d['revoked_by'])}: {t(d['revoked_reason'])}")
    n = len(h["components"])
    out.append(f"Components ({n} of {n}):")
    for c in h["components"]:
        extra = ", ".join(t(x) for x in (c["supplier"], c["lot"] and f"lot {c['lot']}") if x)
        out.append(
            f"  {t(c['component_type'])}: {t(c['component_spec'])}"
            + (f" ({extra})" if extra else "")
        )
    out.append(f"Pairing events ({len(h['pairing_events'])} of {d['pairing_events_total']}):")
    for e in h["pairing_events"]:
        why = f" {e['reason']}" if e["reason"] else ""
        out.append(
            f"  {e['occurred_at']}  {e['result']}{why}  user={t(e['user'] or '-')} "
            f"ip={t(e['ip'] or '-')} user_agent={t(e['user_agent'] or '-')} "
            f"fingerprint={t(e['fingerprint'] or '-')}"
        )
    out.append(f"Actions ({len(h['actions'])} of {d['actions_total']}):")
    for a in h["actions"]:
        meta = " ".join(f"{t(k)}={t(v)}" for k, v in a["metadata"].items())
        by = f"actor={t(a['actor'] or '-')} ip={t(a['ip'] or '-')}"
        out.append(f"  #{a['seq']} {a['occurred_at']}  {a['action_type']}  {meta}  {by}")
    return "\n".join(out)


@click.command("revoke")
@device_selector
@click.option("--reason", required=True, help="Why; shown in the device's history.")
@json_option
@pass_settings
def revoke_cmd(
    settings: Settings, device_id: str | None, serial: str | None, reason: str, as_json: bool
) -> None:
    """Revoke a device: it can no longer be activated; history shows who and why.

    \b
    Example:
      provision revoke 3f9a0c1d2e4b5a69 --reason "stolen from warehouse 3"
    """
    from provision.audit import revoke

    device = find_device_for_write(settings, device_id, serial)
    by = operator()
    revoke(*settings.registry_with_keyring(), device, reason, by)
    emit(
        as_json,
        {
            "device_id": device.device_id,
            "status": DeviceStatus.REVOKED,
            "revoked_by": by,
            "reason": reason,
        },
        f"Device {device.device_id} revoked by {by}: {reason}",
    )
