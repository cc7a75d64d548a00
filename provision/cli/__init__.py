"""The `provision` command: each command parses, makes one library call, formats the result.

One module per command group (keys, db, batch, printing, devices, audit, quality, fleet,
shipments, staff, servers);
what they share is in common.py. Each module imports what its commands need inside them, so
`provision --help` loads none of the library behind them.
"""

from __future__ import annotations

import logging
import sys

import click

from provision import __version__
from provision.cli import (
    audit,
    batch,
    db,
    devices,
    export,
    fleet,
    keys,
    printing,
    quality,
    servers,
    shipments,
    staff,
)
from provision.cli.common import ProvisionGroup, Settings, settings_options


@click.group(cls=ProvisionGroup, context_settings={"help_option_names": ["-h", "--help"]})
@settings_options
@click.option("--verbose", "-v", is_flag=True, help="Log progress messages to stderr.")
@click.version_option(__version__, prog_name="provision")
@click.pass_context
def cli(
    ctx: click.Context,
    db: str,
    keyring: str | None,
    base_url: str,
    output: str,
    stations: str,
    verbose: bool,
) -> None:
    """Register devices, sign their QR codes and print their labels.

    \b
    Example: the nightly batch of a production line
      export PROVISION_KEYRING=/etc/provision/keyring.json
      provision keys init
      provision run jobs/demo.toml
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = Settings(db, keyring, base_url, output, stations)
    ctx.call_on_close(ctx.obj.close)


for command in (
    keys.keys,
    db.db,
    batch.register,
    batch.labels,
    batch.run,
    batch.verify,
    batch.generate,
    batch.resign,
    printing.stations,
    printing.templates,
    devices.activate,
    devices.log_cmd,
    devices.history,
    devices.revoke_cmd,
    devices.unrevoke_cmd,
    devices.batches,
    devices.devices_cmd,
    devices.find_cmd,
    audit.audit,
    quality.trace,
    quality.recall,
    fleet.stats,
    fleet.alerts,
    shipments.shipments,
    shipments.reconcile,
    export.export,
    servers.serve,
    servers.console,
    staff.staff,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="provision")
