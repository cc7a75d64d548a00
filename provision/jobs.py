"""Job files (TOML) for nightly batches: which manifests, which batch, which template."""

from __future__ import annotations

import math
import string
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from provision.config import DEFAULT_TTL_DAYS, MAX_COPIES, MAX_TTL_DAYS
from provision.errors import JobError
from provision.gs1 import gtin_problem
from provision.keys import Keyring
from provision.labels.stations import Station, get_station
from provision.labels.templates import load_template
from provision.pipeline import (
    LabelsResult,
    Progress,
    RegisterResult,
    no_progress,
    register_and_render,
)
from provision.registry import Registry, utcnow
from provision.text import text_problem

KEYS = {
    "batch": 'batch name; may hold {date}, e.g. "line1-{date:%Y%m%d}"',
    "serials": "serial manifest, relative to the job file",
    "components": "component manifest, relative to the job file (optional)",
    "template": "label template name or TOML path (default avery-l7160)",
    "ttl_days": f"days a label's QR stays valid, 1 to {MAX_TTL_DAYS} (default {DEFAULT_TTL_DAYS})",
    "device_type": "device type for rows that leave it empty (optional)",
    "start_at": "first label position on the first sheet, from 1 (default 1)",
    "reject_file": "let good rows through and write bad ones here (optional)",
    "station": "print station profile: offsets, template and format (optional)",
    "format": "pdf or zpl (default: the station's, else pdf)",
    "payload": "what the QR holds: compact or digital-link (default: the station's, else compact)",
    "copies": f"copies of each label, 1 to {MAX_COPIES} (default 1)",
    "offset_x_mm": "calibration offset right, mm (default: the station's, else 0)",
    "offset_y_mm": "calibration offset down, mm (default: the station's, else 0)",
    "gtin": 'GTIN of each model, a table: [gtin] "TH-100" = "04012345000016" (optional; a '
    "manifest's gtin column wins)",
}
WHOLE_NUMBERS = {"ttl_days": (1, MAX_TTL_DAYS), "start_at": (1, None), "copies": (1, MAX_COPIES)}
"""The whole-number keys and their bounds (None: no upper bound here; the template has one)."""
STRINGS = ("template", "device_type", "station")  # format: checked against its values below


@dataclass(frozen=True)
class Job:
    """A parsed job file, paths resolved against the file's folder."""

    path: Path
    batch: str
    serials: Path
    components: Path | None
    template: str
    ttl_days: int
    device_type: str | None
    start_at: int
    reject_file: Path | None
    station: str | None = None
    format: str | None = None
    copies: int = 1
    offset_x_mm: float | None = None
    offset_y_mm: float | None = None
    gtins: dict[str, str] = field(default_factory=dict)  # model -> GTIN
    payload: str | None = None


@dataclass
class JobResult:
    job: str
    register: RegisterResult
    labels: LabelsResult

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "register": self.register.to_json(), "labels": asdict(self.labels)}


def load_job(path: str | Path, now: datetime | None = None) -> Job:
    """Parse and check a job file: every problem is one JobError line naming the key."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobError(f"{p}: job file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise JobError(f"{p}: cannot read job file: {exc}") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise JobError(f"{p}: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
    for key in ("batch", "serials"):
        if key in data and not isinstance(data[key], str):
            raise JobError(f"{p}: `{key}` must be a string ({KEYS[key]})")
        if not data.get(key):
            raise JobError(f"{p}: `{key}` is required ({KEYS[key]})")
    for key in STRINGS:
        if key in data and not isinstance(data[key], str):
            raise JobError(f"{p}: `{key}` must be a string ({KEYS[key]})")
    if problem := text_problem(data.get("device_type", "")):
        raise JobError(f"{p}: `device_type` {problem}")
    base = p.parent

    def rel(key: str) -> Path | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise JobError(f"{p}: `{key}` must be a string path")
        return base / value

    batch = _batch_name(p, data["batch"], now or utcnow())
    for key, (low, high) in WHOLE_NUMBERS.items():
        if key not in data:
            continue
        value = data[key]
        # TOML's true and false are bools, and a bool is an int in Python.
        if isinstance(value, bool) or not isinstance(value, int):
            raise JobError(f"{p}: `{key}` must be a whole number")
        if high is None and value < low:
            raise JobError(f"{p}: `{key}` must be at least {low}, not {value}")
        if high is not None and not low <= value <= high:
            raise JobError(f"{p}: `{key}` must be {low} to {high}, not {value}")
    for key in ("offset_x_mm", "offset_y_mm"):
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise JobError(f"{p}: `{key}` must be a number")
        if not math.isfinite(value):  # TOML has inf and nan
            raise JobError(f"{p}: `{key}` must be a finite number")
    if data.get("format") not in (None, "pdf", "zpl"):
        raise JobError(f"{p}: `format` must be pdf or zpl")
    if data.get("payload") not in (None, "compact", "digital-link"):
        raise JobError(f"{p}: `payload` must be compact or digital-link")
    gtins = data.get("gtin", {})
    if not isinstance(gtins, dict):
        raise JobError(f"{p}: `gtin` must be a table of model = GTIN ({KEYS['gtin']})")
    for model, value in gtins.items():
        if not isinstance(value, str):
            raise JobError(f'{p}: `gtin."{model}"` must be a string of digits')
        if problem := gtin_problem(value):
            raise JobError(f'{p}: `gtin."{model}"`: {problem}')
    template = data.get("template", "")
    if template.endswith(".toml"):
        template = str(base / template)
    serials = rel("serials")
    assert serials is not None
    return Job(
        path=p,
        batch=batch,
        serials=serials,
        components=rel("components"),
        template=template,
        ttl_days=int(data.get("ttl_days", DEFAULT_TTL_DAYS)),
        device_type=data.get("device_type"),
        start_at=int(data.get("start_at", 1)),
        reject_file=rel("reject_file"),
        station=data.get("station"),
        format=data.get("format"),
        copies=int(data.get("copies", 1)),
        offset_x_mm=data.get("offset_x_mm"),
        offset_y_mm=data.get("offset_y_mm"),
        gtins=dict(gtins),
        payload=data.get("payload"),
    )


def _batch_name(path: Path, pattern: str, now: datetime) -> str:
    """The batch name a pattern gives today. Only `{date}` and `{date:STRFTIME}` are allowed:
    any other field (`{date.year:>999999999}`) could build a string of any size."""
    try:
        fields = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise JobError(f"{path}: `batch` has a bad placeholder: {exc}") from None
    for _literal, name, spec, conversion in fields:
        if name is None:
            continue
        if name != "date" or conversion or (spec and "{" in spec):
            raise JobError(
                f"{path}: `batch` may hold only {{date}} or {{date:FORMAT}} "
                f"(a strftime format), not {{{name}{'!' + conversion if conversion else ''}}}"
            )
    try:
        return pattern.format(date=now)
    except (KeyError, ValueError, IndexError) as exc:
        raise JobError(f"{path}: `batch` has a bad placeholder: {exc}") from None


def run_job(
    registry: Registry,
    keyring: Keyring,
    job: Job,
    *,
    base_url: str,
    output_dir: str | Path,
    stations_file: str | Path = "stations.toml",
    on_progress: Progress = no_progress,
) -> JobResult:
    """Register the job's manifests and render its labels (at once for a new batch)."""
    # A bad station or template fails before anything is written.
    profile = get_station(stations_file, job.station) if job.station else Station("none")
    template = load_template(job.template or profile.template or "avery-l7160")
    registered, labels = register_and_render(
        registry,
        keyring,
        job.serials,
        batch=job.batch,
        template=template,
        output_dir=output_dir,
        base_url=base_url,
        components_path=job.components,
        device_type=job.device_type,
        ttl_days=job.ttl_days,
        reject_file=job.reject_file,
        fmt=job.format or profile.format or "pdf",
        start_at=job.start_at,
        copies=job.copies,
        offset_x_mm=job.offset_x_mm if job.offset_x_mm is not None else profile.offset_x_mm,
        offset_y_mm=job.offset_y_mm if job.offset_y_mm is not None else profile.offset_y_mm,
        on_progress=on_progress,
        gtins=job.gtins,
        payload=job.payload or profile.payload or "compact",
    )
    return JobResult(str(job.path), registered, labels)
