"""The long-running services: `provision serve`."""

from __future__ import annotations

import json
import logging

import click

from provision.cli.common import (
    Settings,
    json_option,
    pass_settings,
)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5001, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Worker threads of the WSGI server (waitress).",
)
@click.option(
    "--trusted-proxies",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    envvar="PROVISION_TRUSTED_PROXIES",
    show_envvar=True,
    help="Reverse proxies in front of us; only then is X-Forwarded-For believed.",
)
@click.option(
    "--rate-limit",
    default="10 per minute",
    show_default=True,
    envvar="PROVISION_RATE_LIMIT",
    show_envvar=True,
    help="Activation attempts allowed per client address.",
)
@json_option
@pass_settings
def serve(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    trusted_proxies: int,
    rate_limit: str,
    as_json: bool,
) -> None:
    """Run the activation service (scan page and JSON API) under waitress.

    \b
    Example:
      provision --base-url https://act.example.com serve --host 0.0.0.0 --trusted-proxies 1
    """
    from provision.web import WebSettings, create_app
    from provision.web import serve as run_server

    logging.getLogger("provision").setLevel(logging.INFO)
    app = create_app(
        WebSettings(
            settings.db, settings.keyring_path, settings.base_url, trusted_proxies, rate_limit
        ),
        keyring=settings.keyring(),
        registry=settings.registry(),
    )
    if as_json:
        click.echo(json.dumps({"listening": f"http://{host}:{port}", "workers": workers}))
    else:
        click.echo(
            f"provision activation service on http://{host}:{port} ({workers} workers)", err=True
        )
    run_server(app, host, port, workers)
