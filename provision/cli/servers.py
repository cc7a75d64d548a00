"""The long-running services: `provision serve` (public) and `provision console` (staff)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

from provision.cli.common import (
    Settings,
    json_option,
    pass_settings,
)
from provision.errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])


def listen_options(port: int) -> Callable[[F], F]:
    """--host, --port (default PORT), --workers and --trusted-proxies: what both servers take."""

    def add(f: F) -> F:
        for option in reversed(
            (
                click.option(
                    "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
                ),
                click.option(
                    "--port", type=click.IntRange(1, 65535), default=port, show_default=True
                ),
                click.option(
                    "--workers",
                    type=click.IntRange(min=1),
                    default=4,
                    show_default=True,
                    help="Worker threads of the WSGI server (waitress), each process. More "
                    "threads in one process wait for its interpreter lock: for more load, "
                    "add --processes.",
                ),
                click.option(
                    "--trusted-proxies",
                    type=click.IntRange(min=0),
                    default=0,
                    show_default=True,
                    envvar="PROVISION_TRUSTED_PROXIES",
                    show_envvar=True,
                    help="Reverse proxies in front of us; only then is X-Forwarded-For believed.",
                ),
            )
        ):
            f = option(f)
        return f

    return add


@click.command()
@listen_options(5001)
@click.option(
    "--rate-limit",
    default="10 per minute",
    show_default=True,
    envvar="PROVISION_RATE_LIMIT",
    show_envvar=True,
    help="Activation attempts allowed per client address.",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes, each with --workers threads, sharing the port.",
)
@click.option(
    "--rate-limit-storage",
    default="memory://",
    show_default=True,
    envvar="PROVISION_RATE_LIMIT_STORAGE",
    show_envvar=True,
    metavar="URI",
    help="Where the rate limit's counters live: memory:// (this process only) or "
    "redis://HOST:PORT, shared by every process and host.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Serve Prometheus metrics on http://127.0.0.1:PORT/metrics (never the public port).",
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
    processes: int,
    rate_limit_storage: str,
    metrics_port: int | None,
    as_json: bool,
) -> None:
    """Run the activation service (scan page and JSON API) under waitress.

    /healthz answers while the process is alive; /readyz when the registry answers and the
    keyring reads (503 naming the check that failed). SIGTERM stops it gracefully: no new
    connections, the requests in flight finished, exit 0.

    \b
    Example:
      provision --base-url https://act.example.com serve --host 0.0.0.0 --trusted-proxies 1
      provision serve --processes 4 --rate-limit-storage redis://127.0.0.1:6379
    """
    from provision.web import WebSettings, create_app
    from provision.web.activation import activation_limit
    from provision.web.server import serve as run_server

    web = WebSettings(
        settings.db,
        settings.keyring_path,
        settings.base_url,
        trusted_proxies,
        rate_limit,
        rate_limit_storage,
    )
    activation_limit(web)  # a bad limit or store fails here, not in a worker
    if processes > 1 and rate_limit_storage.startswith("memory://"):
        raise UsageError(
            f"--processes {processes} with --rate-limit-storage memory://: each process would "
            "count on its own, multiplying the limit; give a shared store, e.g. "
            "--rate-limit-storage redis://127.0.0.1:6379"
        )
    logging.getLogger("provision").setLevel(logging.INFO)
    if metrics_port is not None:
        if metrics_port == port:
            raise UsageError(f"--metrics-port {metrics_port} is the public --port")
        from provision.web import metrics

        samples = metrics.prepare()  # before any app exists: each worker writes its samples there
        import atexit
        import shutil

        atexit.register(shutil.rmtree, samples, True)
    keyring, registry = settings.keyring(), settings.registry()  # fail here, not in a worker
    if processes == 1:
        app = create_app(web, keyring=keyring, registry=registry)

        def make_app() -> object:
            return app

    else:
        registry.ping()
        registry.close()  # each worker opens its own connections, after the fork

        def make_app() -> object:
            return create_app(web)

    def listening() -> None:
        if as_json:
            data = {"listening": f"http://{host}:{port}", "workers": workers}
            click.echo(json.dumps(data | {"processes": processes}))
        else:
            click.echo(
                f"provision activation service on http://{host}:{port} "
                f"({processes} x {workers} workers)",
                err=True,
            )

    run_server(
        make_app,
        host,
        port,
        workers,
        processes,
        on_listening=listening,
        metrics_port=metrics_port,
        proxy_headers=trusted_proxies > 0,
    )


@click.command()
@listen_options(5002)
@click.option(
    "--secure-cookie/--no-secure-cookie",
    default=None,
    help="Mark the session cookie Secure (staff reach the console over https). "
    "Default: on with --trusted-proxies (a TLS proxy in front), off without.",
)
@json_option
@pass_settings
def console(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    trusted_proxies: int,
    secure_cookie: bool | None,
    as_json: bool,
) -> None:
    """Run the staff console (STAFF ONLY: login, pages, staff API) under waitress.

    A separate app from `serve`, on its own port; keep it off the public internet (a VPN, or a
    proxy that only staff reach). Accounts come from `provision staff add`. The pages read the
    registry and the output folder (label files, reconciliation reports).

    \b
    Example:
      provision staff add alice --role admin
      provision console --port 5002
    """
    from provision.web import WebSettings
    from provision.web.console import create_console_app
    from provision.web.server import serve as run_server

    logging.getLogger("provision").setLevel(logging.INFO)
    web = WebSettings(settings.db, settings.keyring_path, settings.base_url, trusted_proxies)
    keyring, registry = settings.keyring(), settings.registry()
    app = create_console_app(
        web,
        settings.output,
        keyring=keyring,
        registry=registry,
        figures_process=True,
        secure_cookie=trusted_proxies > 0 if secure_cookie is None else secure_cookie,
    )
    app.extensions["provision.figures"].warm()  # so that no page waits for them

    def listening() -> None:
        if as_json:
            click.echo(json.dumps({"listening": f"http://{host}:{port}", "workers": workers}))
        else:
            click.echo(f"provision staff console on http://{host}:{port}", err=True)

    run_server(
        lambda: app,
        host,
        port,
        workers,
        1,
        on_listening=listening,
        proxy_headers=trusted_proxies > 0,
    )
