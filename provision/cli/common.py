"""What every command shares: settings, the error handler, options, output."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from provision.config import (
    MAX_OFFSET_MM,
    SETTINGS,
)
from provision.errors import ProvisionError
from provision.keys import Keyring, load_keyring
from provision.text import escape_control

if TYPE_CHECKING:
    from tqdm import tqdm

    from provision.registry import DeviceRecord

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Settings:
    """The global options, resolved; the registry and keyring open on first use."""

    db: str
    keyring_path: str | None
    base_url: str
    output: str
    stations: str
    _registry: Any = field(default=None, repr=False)
    _keyring: Keyring | None = field(default=None, repr=False)

    def registry(self, *, create: bool = False) -> Any:
        """The registry. Only the commands that make one (register, run, generate, db
        upgrade) pass CREATE; any other finds a missing SQLite file an error."""
        if self._registry is None:
            from provision.registry import Registry

            # With the keyring at hand, an upgrade can seal the rows already there (0003).
            keyring = self._keyring
            if keyring is None and self.keyring_path:
                try:
                    keyring = self.keyring()
                except ProvisionError:
                    keyring = None  # the command says so itself if it needs the keyring
            self._registry = Registry(self.db, keyring=keyring, create=create)
        return self._registry

    def registry_with_keyring(self, *, create: bool = False) -> tuple[Any, Keyring]:
        """Both, the keyring first: a command that cannot sign must not create a database."""
        keyring = self.keyring()
        return self.registry(create=create), keyring

    def label_base_url(self) -> str:
        """The base URL labels carry, checked (exit 2 when it has no scheme or host); when it
        is this machine's, a warning once the command is done (a phone cannot reach it)."""
        from provision.payload import check_base_url, is_loopback

        url = check_base_url(self.base_url)
        if is_loopback(url):
            ctx = click.get_current_context().find_root()  # closes after the error handler

            def warn() -> None:
                if not ctx.meta.get(_FAILED_META):
                    click.echo(
                        f"warning: the labels point at {url}, which a customer's phone cannot "
                        "reach; set PROVISION_BASE_URL (or --base-url) to the activation "
                        "service's address",
                        err=True,
                    )

            ctx.call_on_close(warn)
        return url

    def keyring(self) -> Keyring:
        if self._keyring is None:
            self._keyring = load_keyring(self.keyring_path)
        return self._keyring

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()


class ProvisionGroup(click.Group):
    """Turns ProvisionError into a one-line `Error: ...` on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ProvisionError as exc:
            fail(ctx, exc)


_FAILED_META = "provision.failed"


def fail(ctx: click.Context, exc: ProvisionError) -> None:
    """The one place an error becomes output and an exit code (see provision.errors)."""
    ctx.meta[_FAILED_META] = exc.exit_code not in (0, 4)  # exit 4: the labels exist
    if not exc.reported:
        if exc.json and _wants_json(ctx):
            click.echo(json.dumps({"error": exc.json_error()}))
        for line in exc.lines():
            click.echo(escape_control(line), err=True)
        # A message may quote what was typed or stored: no control character reaches the
        # terminal raw.
        click.echo(f"{exc.label}: {escape_control(str(exc))}", err=True)
    ctx.exit(exc.exit_code)


def _wants_json(ctx: click.Context) -> bool:
    # ctx.meta is shared by a context and all its children, so the subcommand's --json is
    # visible here, where the error surfaces.
    return bool(ctx.meta.get(_JSON_META))


_JSON_META = "provision.json"


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta[_JSON_META] = value
    return value


class Millimetres(click.ParamType):
    """A calibration offset: a finite number of millimetres, at most MAX_OFFSET_MM either way
    (click's FloatRange lets nan through, and inf)."""

    name = "mm"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            mm = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of millimetres", param, ctx)
        if not math.isfinite(mm) or abs(mm) > MAX_OFFSET_MM:
            self.fail(
                f"{value} is not between -{MAX_OFFSET_MM:g} and {MAX_OFFSET_MM:g} mm", param, ctx
            )
        return mm


MILLIMETRES = Millimetres()


class _Date(click.DateTime):
    """A date or a date-time (UTC), shown as DATE in help."""

    name = "date"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "DATE"


DATE = _Date(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"])


def typed_day(value: datetime | None) -> date | datetime | None:
    """A date typed alone is that day (UTC); with a time, that moment (UTC)."""
    if value is None:
        return None
    return value.date() if value.time() == datetime.min.time() else value


def json_option(f: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        callback=_remember_json,
        is_eager=True,
        help="Machine-readable JSON output.",
    )(f)


def format_option(*choices: str, help: str | None = None) -> Callable[[F], F]:
    """--format CHOICE (into `fmt`), the first choice by default."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(list(choices)),
        default=choices[0],
        show_default=True,
        help=help,
    )


def quiet_option(f: F) -> F:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(f)


def emit(as_json: bool, data: Any, text: str) -> None:
    """Print DATA as JSON, or TEXT; no control character of a value reaches the terminal raw
    (values that may hold line breaks are escaped where the text is built, as in history)."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo("\n".join(escape_control(line) for line in text.split("\n")))


PROGRESS_DELAY = "PROVISION_PROGRESS_DELAY"
"""Seconds a stage runs before its progress bar appears (default 2): quick stages stay quiet."""


def progress_bar(quiet: bool) -> Callable[[str, int, int], None]:
    """A tqdm bar per stage on stderr, when stderr is a terminal and the stage lasts long."""
    bars: dict[str, tqdm[Any]] = {}
    try:
        delay = max(0.0, float(os.environ.get(PROGRESS_DELAY, "2")))
    except ValueError:
        delay = 2.0

    def update(stage: str, done: int, total: int) -> None:
        if quiet or total <= 0:
            return
        bar = bars.get(stage)
        if bar is None:
            from tqdm import tqdm  # here, not at the top: quick commands need not load it

            # disable=None: no bar at all when stderr is not a terminal (cron, pipes).
            bar = bars[stage] = tqdm(
                total=total,
                desc=stage,
                unit=" rows",
                file=sys.stderr,
                disable=None,
                delay=delay,
                mininterval=0.5,
                dynamic_ncols=True,
            )
        bar.total = max(total, done)
        bar.update(done - bar.n)  # update(), not refresh(): it honours the delay
        if done >= total:
            bar.close()

    return update


def pass_settings(f: F) -> F:
    @click.pass_obj
    @functools.wraps(f)
    def wrapper(settings: Settings, *args: Any, **kwargs: Any) -> Any:
        return f(settings, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def settings_options(f: F) -> F:
    """Global options from the settings table, each with its env var."""
    for s in reversed(SETTINGS):
        f = click.option(
            f"--{s.name.replace('_', '-')}",
            s.name,
            envvar=s.env,
            default=s.default,
            show_default=s.default is not None,
            show_envvar=True,
            metavar="PATH" if s.name in ("keyring", "output", "stations") else "URL",
            help=s.help,
        )(f)
    return f


def device_selector(f: F) -> F:
    """DEVICE_ID argument, or --serial for support staff who have the box, not our id."""
    f = click.option("--serial", help="Look the device up by its serial (through the keyed hash).")(
        f
    )
    return click.argument("device_id", required=False)(f)


def find_device_arg(settings: Settings, device_id: str | None, serial: str | None) -> DeviceRecord:
    from provision.audit import find_device

    keyring = settings.keyring() if serial is not None else None
    return find_device(settings.registry(), keyring, device_id, serial)


def find_device_for_write(
    settings: Settings, device_id: str | None, serial: str | None
) -> DeviceRecord:
    settings.keyring()  # commands that write need it: fail before touching the database
    return find_device_arg(settings, device_id, serial)


def operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def csv_choice(known: tuple[str, ...], option: str) -> Callable[..., tuple[str, ...]]:
    def parse(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...]:
        if not value:
            return ()
        items = tuple(v.strip() for v in value.split(",") if v.strip())
        bad = [v for v in items if v not in known]
        if bad:
            raise click.BadParameter(
                f"unknown {', '.join(bad)}; choose from {', '.join(known)}", param_hint=option
            )
        return items

    return parse
