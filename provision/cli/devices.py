"""Devices: one device's life (activate, log, history, revoke) and the questions about many
(batches, devices, find)."""

from __future__ import annotations

import csv
import json
import sys
from datetime import date, datetime
from typing import Any

import click

from provision.cli.common import (
    ProvisionGroup,
    Settings,
    device_selector,
    emit,
    find_device_arg,
    find_device_for_write,
    format_option,
    json_option,
    operator,
    pass_settings,
)
from provision.errors import ChecksFailed
from provision.states import DeviceStatus
from provision.text import escape_control, formula_safe


def t(value: Any) -> str:
    """A stored value, safe to print on a terminal."""
    return escape_control(str(value))


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
        meta = " ".join(
            f"{t(k)}={t(v if isinstance(v, str) else json.dumps(v))}"
            for k, v in a["metadata"].items()
        )
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


@click.command("unrevoke")
@device_selector
@click.option("--reason", required=True, help="Why the revocation is undone; shown in history.")
@json_option
@pass_settings
def unrevoke_cmd(
    settings: Settings, device_id: str | None, serial: str | None, reason: str, as_json: bool
) -> None:
    """Undo a revocation: the device is activated again (same owner) if it had been, else
    pending; history keeps both, with who and why.

    \b
    Example:
      provision unrevoke 3f9a0c1d2e4b5a69 --reason "found again; the theft report was withdrawn"
    """
    from provision.audit import unrevoke

    device = find_device_for_write(settings, device_id, serial)
    by = operator()
    status = unrevoke(*settings.registry_with_keyring(), device, reason, by)
    emit(
        as_json,
        {"device_id": device.device_id, "status": status, "unrevoked_by": by, "reason": reason},
        f"Device {device.device_id} un-revoked by {by} (now {status}): {reason}",
    )


# -- questions: batches, devices, find ---------------------------------------------------------


@click.group(invoke_without_command=True, cls=ProvisionGroup)
@json_option
@pass_settings
@click.pass_context
def batches(ctx: click.Context, settings: Settings, as_json: bool) -> None:
    """List every batch: created, devices by status, rejected rows, label revision, keys.

    \b
    Example:
      provision batches
      provision batches show line1-20261128 --json
    """
    if ctx.invoked_subcommand is not None:
        return
    from provision.queries import batch_json, batches_overview

    found = batches_overview(settings.registry())
    header = f"{'BATCH':<32} {'CREATED':<20} {'DEVICES':>8} {'PENDING':>8} {'ACTIVE':>8}"
    header += f" {'REVOKED':>8} {'REJECTED':>8} {'LABELS':>6} KEYS"
    lines = [header]
    for b in found:
        pending, active, revoked = (b.by_status[s] for s in DeviceStatus)
        lines.append(
            f"{t(b.name):<32} {b.created_at:%Y-%m-%d %H:%M:%S} {b.devices:>8,} "
            f"{pending:>8,} {active:>8,} {revoked:>8,} {b.rejected_rows:>8,} "
            f"{('r' + str(b.label_revision)) if b.label_revision else '-':>6} "
            f"{','.join(map(str, b.key_ids)) or '-'}"
        )
    if not found:
        lines = ["no batch registered yet"]
    emit(as_json, {"batches": [batch_json(b) for b in found]}, "\n".join(lines))


@batches.command("show")
@click.argument("name")
@json_option
@pass_settings
def batches_show(settings: Settings, name: str, as_json: bool) -> None:
    """Show one batch.

    \b
    Example:
      provision batches show line1-20261128
    """
    from provision.queries import batch_json, batch_overview

    data = batch_json(batch_overview(settings.registry(), name))
    text = "\n".join(
        f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}"
        for key, value in data.items()
    )
    emit(as_json, data, text)


@click.command("devices")
@click.option("--batch", help="Only this batch's devices.")
@click.option("--status", type=click.Choice([s.value for s in DeviceStatus]), help="Only these.")
@click.option("--type", "device_type", metavar="T", help="Only this device type.")
@click.option("--model", metavar="M", help="Only this model.")
@click.option("--line", metavar="L", help="Only this production line.")
@click.option("--user", metavar="U", help="Only devices linked to this user (any case).")
@click.option(
    "--activated-since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    help="Activated at or after DATE (UTC).",
)
@click.option(
    "--activated-until",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    help="Activated before the end of DATE (UTC; a date includes that whole day).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    help="Rows a page [default: 50 for table and json; every row for csv].",
)
@click.option(
    "--after", "cursor", metavar="CURSOR", help="The next page: the cursor a page printed."
)
@format_option("table", "csv", "json")
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@pass_settings
def devices_cmd(
    settings: Settings,
    batch: str | None,
    status: str | None,
    device_type: str | None,
    model: str | None,
    line: str | None,
    user: str | None,
    activated_since: datetime | None,
    activated_until: datetime | None,
    limit: int | None,
    cursor: str | None,
    fmt: str,
    as_json: bool,
) -> None:
    """List devices, filtered, in registration order, a page at a time (or all, as CSV).

    Pages are keyset-paged: `--after CURSOR` continues where a page ended, at the same cost
    however deep. CSV streams every matching row in flat memory, formula-safe.

    \b
    Example:
      provision devices --batch line1-20261128 --status pending
      provision devices --user alice@example.com --format json
      provision devices --activated-since 2026-11-01 --format csv > november.csv
    """
    from provision.queries import (
        DEVICE_COLUMNS,
        DeviceFilter,
        batch_names,
        device_row,
        iter_devices,
        list_devices,
    )

    def day(value: datetime | None) -> date | datetime | None:
        if value is None:
            return None
        return value.date() if value.time() == datetime.min.time() else value

    flt = DeviceFilter(
        batch=batch,
        status=DeviceStatus(status) if status else None,
        device_type=device_type,
        model=model,
        line=line,
        user=user,
        activated_since=day(activated_since),
        activated_until=day(activated_until),
    )
    fmt = "json" if as_json else fmt
    registry = settings.registry()
    if fmt == "csv" and limit is None:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(DEVICE_COLUMNS)
        names = batch_names(registry)
        for device in iter_devices(registry, flt):
            row = device_row(device, names)
            out.writerow([formula_safe(row[c]) for c in DEVICE_COLUMNS])
        return
    page = list_devices(registry, flt, after=cursor, limit=limit or 50)
    rows = [device_row(d, page.batch_names) for d in page.devices]
    if fmt == "json":
        click.echo(json.dumps({"devices": rows, "next": page.next_cursor}, indent=2, default=str))
    elif fmt == "csv":
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(DEVICE_COLUMNS)
        out.writerows([formula_safe(r[c]) for c in DEVICE_COLUMNS] for r in rows)
        if page.next_cursor:
            click.echo(f"next: --after {page.next_cursor}", err=True)
    else:
        lines = [
            f"{'DEVICE':<16}  {'BATCH':<24} {'STATUS':<9} {'TYPE':<16} {'MODEL':<12} "
            f"{'ACTIVATED':<19} USER"
        ]
        lines += [
            f"{r['device_id']:<16}  {t(r['batch']):<24} {r['status']:<9} "
            f"{t(r['device_type']):<16} {t(r['model'] or '-'):<12} "
            f"{(r['activated_at'] or '-')[:19]:<19} {t(r['user'] or '-')}"
            for r in rows
        ]
        if not rows:
            lines = ["no device matches"]
        if page.next_cursor:
            lines.append(f"next: --after {page.next_cursor}")
        click.echo("\n".join(lines))


@click.command("find")
@click.argument("text")
@json_option
@pass_settings
def find_cmd(settings: Settings, text: str, as_json: bool) -> None:
    """Find devices from whatever a customer reads out or a scanner gives.

    A device id (or a unique prefix of 6 or more, or `ID xxxx` as the label prints it), a QR
    URL or token, a serial (through the keyed hash; a case or space difference gets a hint),
    a user name or e-mail (exact, any case), or a component serial. Each hit says what it
    matched on.

    \b
    Example:
      provision find "ID 83d38b0c"
      provision find alice@example.com --json
      provision find TH200-2611-00001
    """
    from provision.queries import batch_names, find, find_json

    registry, keyring = settings.registry_with_keyring()
    result = find(registry, keyring, text)
    data = find_json(result, batch_names(registry))
    lines = [
        f"{h['device_id']}  {h['matched_on']:<17} {t(h['batch']):<24} {h['status']:<9} "
        f"{t(h['device_type'])} {t(h['model'] or '')}".rstrip()
        + (f"  ({h['detail']})" if h["matched_on"] in ("payload", "serial_variant") else "")
        for h in data["hits"]
    ] or [f"nothing found for {t(result.query)!r}"]
    lines += [f"hint: {hint}" for hint in result.hints]
    emit(as_json, data, "\n".join(lines))
    if not result.hits:
        raise ChecksFailed("nothing found")
