"""`provision audit`: verify the sealed rows and chained logs; signed checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import click

from provision.cli.common import (
    ProvisionGroup,
    Settings,
    emit,
    json_option,
    pass_settings,
)
from provision.errors import ChecksFailed
from provision.text import escape_control, plural


@click.group(cls=ProvisionGroup)
def audit() -> None:
    """Check the tamper-evident action log.

    \b
    Example:
      provision audit verify
    """


@audit.command("verify")
@click.argument("device_id", required=False)
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.Path(dir_okay=False),
    help="Also check that no chain is shorter than, or departs from, this signed checkpoint.",
)
@json_option
@pass_settings
def audit_verify(
    settings: Settings, device_id: str | None, checkpoint_file: str | None, as_json: bool
) -> None:
    """Recompute every chain and seal (or one device's) and name the first break of each.

    Exit code 1 when anything is broken, or when a chain is shorter than the checkpoint
    recorded (a rollback) or does not extend it. Each run is recorded in the registry, and
    `provision alerts` raises audit_chain_broken for each device a run found broken.

    \b
    Example:
      provision audit verify 3f9a0c1d2e4b5a69
      provision audit verify --checkpoint /mnt/audit/checkpoint-20261201T0300Z.txt
    """
    from provision.alerts import record_audit_run
    from provision.audit import verify_chains
    from provision.checkpoint import load_checkpoint

    registry, keyring = settings.registry_with_keyring()
    checkpoint = load_checkpoint(checkpoint_file, keyring) if checkpoint_file else None
    report = verify_chains(registry, keyring, device_id, checkpoint=checkpoint)
    # Recorded for the audit_chain_broken alert (`provision alerts`).
    record_audit_run(registry, report, "device" if device_id else "all")
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for p in report.problems:
            click.echo(f"BROKEN {escape_control(str(p))}")
        click.echo(report.summary())
    if not report.ok:
        raise ChecksFailed(f"{len(report.problems)} broken")


@audit.command("checkpoint")
@click.option(
    "--output",
    "output_file",
    type=click.Path(dir_okay=False),
    help="File to write [default: OUTPUT/checkpoints/checkpoint-TIME.txt].",
)
@json_option
@pass_settings
def audit_checkpoint(settings: Settings, output_file: str | None, as_json: bool) -> None:
    """Write a signed checkpoint of every chain, to keep outside the database.

    `audit verify --checkpoint FILE` later reports any device whose chains were rolled back
    to before it. Run it after the nightly batch and copy the file to another machine.

    \b
    Example (cron, after the nightly batch):
      0 4 * * *  provision audit checkpoint --output /srv/audit/cp-$(date +\\%Y\\%m\\%d).txt
    """
    from datetime import UTC, datetime

    from provision.checkpoint import write_checkpoint

    registry, keyring = settings.registry_with_keyring()
    now = datetime.now(UTC)
    path = (
        Path(output_file)
        if output_file
        else Path(settings.output) / "checkpoints" / f"checkpoint-{now:%Y%m%dT%H%M%SZ}.txt"
    )
    info = write_checkpoint(registry, keyring, path, now=now)
    emit(
        as_json,
        info.to_json(),
        f"Checkpoint {info.path}: {plural(info.devices, 'device')}, "
        f"{plural(info.actions, 'action')}, "
        f"{plural(info.pairing_events, 'pairing event')} (sha256 {info.digest[:16]}...)",
    )
