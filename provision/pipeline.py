"""The nightly batch: validate -> hash -> register -> sign, in chunks; then render labels."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd

from provision.audit import make_sealer
from provision.config import DEFAULT_CHUNK_SIZE, DEFAULT_TTL_DAYS, MAX_TTL_DAYS
from provision.errors import (
    BatchError,
    ConflictError,
    KeyringError,
    ManifestError,
    ProvisionError,
    RowError,
    UsageError,
)
from provision.files import atomic_writer, publish_revision, write_atomic
from provision.gs1 import MAX_GS1_SERIAL, SERIAL_TOO_LONG_FOR_GTIN, gtin14
from provision.keys import Keyring
from provision.labels.layout import check_offsets
from provision.labels.render import (
    LabelData,
    RenderPool,
    RenderResult,
    render_alignment_page,
    render_label_sheets,
)
from provision.labels.templates import Template
from provision.manifests import (
    COMPONENTS,
    LINE,
    SERIALS,
    Manifest,
    build_manifest,
    read_manifest,
    write_rejects,
)
from provision.payload import device_token, digital_link_url, payload_url
from provision.qr import save_png
from provision.registry import NewBatch, Registry, utcnow
from provision.serials import (
    component_row_hash,
    component_serial_hash,
    decrypt_serial,
    device_id,
    encrypt_serial,
    serial_hash,
    serial_problem,
)
from provision.states import DeviceStatus
from provision.text import plural, text_problem

log = logging.getLogger(__name__)

# What a label's QR holds: the compact token, or a GS1 Digital Link URI (provision.payload).
COMPACT = "compact"
DIGITAL_LINK = "digital-link"
PAYLOADS = (COMPACT, DIGITAL_LINK)


def check_payload(payload: str) -> str:
    """What a label's QR holds: `compact` (BASE_URL/A/TOKEN) or `digital-link`."""
    if payload not in PAYLOADS:
        raise UsageError(f"--payload must be {' or '.join(PAYLOADS)}, not {payload!r}")
    return payload


Progress = Callable[[str, int, int], None]
"""on_progress(stage, done, total): the CLI wires tqdm to it; the library never imports tqdm."""

Registered = Callable[[list[dict[str, Any]], list[str]], None]
"""on_registered(rows, serials): a chunk of devices just committed, with their plaintext serials."""

BATCH_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def no_progress(stage: str, done: int, total: int) -> None:
    pass


@dataclass
class RegisterResult:
    """What `register` did: devices registered, already there, rejected, in other batches.

    Rows whose serial another batch holds are counted by that batch (`other_batches`);
    `skipped` keeps the first MAX_EXAMPLES of them as examples."""

    batch: str
    registered: int = 0
    already_registered: int = 0
    rejected: int = 0
    other_batch: int = 0
    components: int = 0
    skipped: list[RowError] = field(default_factory=list)
    other_batches: dict[str, int] = field(default_factory=dict)
    reject_file: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped"] = [str(e) for e in self.skipped]
        return d


@dataclass
class LabelsResult:
    """Where a batch's labels went, as recorded in the summary JSON beside the print file."""

    batch: str
    format: str
    file: str
    pdf: str | None
    zpl: str | None
    revision: int
    summary: str
    labels: int
    pages: int
    template: str
    sha256: str
    start_at: int
    copies: int
    offset_x_mm: float
    offset_y_mm: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


MAX_EXAMPLES = 10
"""Rows shown as examples of one kind of warning; the rest are counted ("and N more")."""

# A new device's sealed state between its status and its chains: no user, activation, token or
# revocation yet.
_NEW = (None, None, None, None, None, None)
PENDING = DeviceStatus.PENDING


def check_ttl(ttl_days: int) -> int:
    """A payload's lifetime in days: its expiry must fit the payload's 4 bytes, and sense."""
    if not 1 <= ttl_days <= MAX_TTL_DAYS:
        raise ProvisionError(f"--ttl-days must be 1 to {MAX_TTL_DAYS}, not {ttl_days}")
    return ttl_days


def check_batch_name(name: str) -> str:
    if not BATCH_NAME_RE.fullmatch(name):
        raise BatchError(
            f"batch name {name!r} is not usable: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (it becomes a file name in the output folder)"
        )
    return name


def default_batch_name(serials: Manifest) -> str:
    """Stable across reruns of the same manifest, distinct for a different one."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", serials.path.stem).strip(".-_") or "batch"
    return f"{stem[:48]}-{serials.sha256[:8]}"


def register_batch(
    registry: Registry,
    keyring: Keyring,
    serials_path: str | Path,
    *,
    components_path: str | Path | None = None,
    batch: str | None = None,
    device_type: str | None = None,
    ttl_days: int = DEFAULT_TTL_DAYS,
    reject_file: str | Path | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_progress: Progress = no_progress,
    on_registered: Registered | None = None,
    now: datetime | None = None,
    gtins: Mapping[str, str] | None = None,
) -> RegisterResult:
    """Validate the manifests, then register every new device (and its components) in chunks.

    GTINS (model -> GTIN, from a job file) gives the devices of those models their GTIN where
    the manifest's gtin column leaves it empty.

    Without `reject_file` any bad row aborts before anything is written. Each chunk is one
    transaction, so a batch killed at any point is finished by simply running it again.
    """
    check_ttl(ttl_days)
    if device_type is not None and (problem := text_problem(device_type)):
        raise ProvisionError(f"--device-type {problem}")
    _ = keyring.active  # fail before reading anything if no key can sign
    serials = read_manifest(serials_path, SERIALS, device_type_default=device_type)
    if gtins:
        serials.check(functools.partial(_serials_fit_gtins, dict(gtins), serials.name))
    comps = read_manifest(components_path, COMPONENTS) if components_path else None
    return register_manifests(
        registry,
        keyring,
        serials,
        comps,
        batch=batch,
        ttl_days=ttl_days,
        reject_file=reject_file,
        chunk_size=chunk_size,
        on_progress=on_progress,
        on_registered=on_registered,
        now=now,
        gtins=gtins,
    )


def _gtin_of(rec: Any, gtins: Mapping[str, str] | None) -> str | None:
    """A row's GTIN-14: its own gtin cell, else its model's from the job file, else none."""
    value = rec.gtin or (gtins or {}).get(rec.model or "")
    return gtin14(value) if value else None


def _serials_fit_gtins(gtins: dict[str, str], name: str, frame: Any) -> list[RowError]:
    """Rows that get a job file's GTIN must have a serial GS1 AI 21 can hold."""
    given = frame["gtin"].to_numpy(dtype=object) == ""
    of_model = frame["model"].isin(list(gtins)).to_numpy(dtype=bool)
    long = (frame["serial"].str.len() > MAX_GS1_SERIAL).to_numpy(dtype=bool)
    lines = frame[LINE].to_numpy()[given & of_model & long]
    return [RowError(name, int(n), "serial", SERIAL_TOO_LONG_FOR_GTIN) for n in lines]


def register_manifests(
    registry: Registry,
    keyring: Keyring,
    serials: Manifest,
    comps: Manifest | None,
    *,
    batch: str | None = None,
    ttl_days: int = DEFAULT_TTL_DAYS,
    reject_file: str | Path | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_progress: Progress = no_progress,
    on_registered: Registered | None = None,
    now: datetime | None = None,
    gtins: Mapping[str, str] | None = None,
) -> RegisterResult:
    """Register already-validated manifests (see register_batch).

    The manifests are read again chunk by chunk (Manifest.chunks), so memory stays flat in the
    batch size: each chunk is hashed, looked up, signed and inserted in one transaction. The
    components follow the devices, a chunk per transaction; a run stopped in between leaves them
    to the next run, which finds the devices registered and inserts only what is missing.
    """
    check_ttl(ttl_days)
    signing_key = keyring.active
    manifests = [m for m in (serials, comps) if m is not None]
    fatal = [e for m in manifests if m.fatal for e in m.errors]
    if fatal:
        raise ManifestError(fatal)
    name = check_batch_name(batch) if batch else default_batch_name(serials)

    pepper = keyring.pepper
    if comps is not None:
        _check_component_owners(registry, pepper, serials, comps)

    rejected = sum(len(m.bad_lines()) for m in manifests)
    if rejected and reject_file is None:
        raise ManifestError(sorted(e for m in manifests for e in m.errors))
    result = RegisterResult(batch=name, rejected=rejected)
    if reject_file is not None:
        write_rejects(reject_file, manifests)
        result.reject_file = str(reject_file)

    # The batch row is created by the transaction of the first chunk that stores anything, so
    # a run that fails or registers nothing leaves none behind.
    found = registry.batches.id_of(name)
    # The first chunk's transaction creates the batch row, or updates its digests and rejects.
    target: int | NewBatch = NewBatch(
        name, serials.sha256, comps.sha256 if comps else None, rejected
    )
    batch_id = found
    expires = int(((now or utcnow()) + timedelta(days=ttl_days)).timestamp())
    expires_at = datetime.fromtimestamp(expires, UTC)
    seal = make_sealer(keyring).device_values
    skipped: set[str] = set()  # serial hashes registered in another batch: components skipped
    total = serials.good
    on_progress("register", 0, total)
    done = 0
    for chunk in serials.chunks(chunk_size):
        hashes = [serial_hash(pepper, s) for s in chunk["serial"]]
        existing = registry.devices.existing_by_hash(hashes)
        created = now or utcnow()
        rows = []
        printed: list[str] = []
        for rec, h in zip(chunk.itertuples(index=False), hashes, strict=True):
            serial, line = rec.serial, int(getattr(rec, LINE))
            other = existing.get(h)
            if other is not None:
                if other[1] == batch_id:
                    result.already_registered += 1
                    continue
                result.other_batch += 1
                result.other_batches[other[2]] = result.other_batches.get(other[2], 0) + 1
                skipped.add(h)
                if len(result.skipped) < MAX_EXAMPLES:
                    result.skipped.append(
                        RowError(
                            serials.name,
                            line,
                            "serial",
                            f"already registered in batch {other[2]!r}; skipped",
                        )
                    )
                continue
            did = device_id(pepper, serial)
            rows.append(
                {
                    "device_id": did,
                    "serial_hash": h,
                    "serial_ct": encrypt_serial(keyring.data_key, did, serial),
                    "device_type": rec.device_type,
                    "manufacturer": rec.manufacturer or None,
                    "model": rec.model or None,
                    "manufactured_at": rec.manufactured_at or None,
                    "production_line": rec.line or None,
                    "gtin": _gtin_of(rec, gtins),
                    "batch_seq": line,
                    "key_id": signing_key.id,
                    "expires_at": expires_at,
                    "status": PENDING,
                    "created_at": created,
                    "seal": seal(
                        did,
                        h,
                        signing_key.id,
                        expires_at,
                        DeviceStatus.PENDING,
                        *_NEW,
                        0,
                        None,
                        0,
                        None,
                    ),
                }
            )
            printed.append(serial)
        if rows:
            target = batch_id = _insert_chunk(
                registry,
                rows,
                [],
                target,
                f"batch {name}: a device in rows {_lines(chunk)} of {serials.name} was registered "
                "by another process meanwhile, or two serials share a device id",
            )
            if on_registered is not None:
                on_registered(rows, printed)
        done += len(chunk)
        result.registered += len(rows)
        on_progress("register", done, total)
    if comps is not None:
        comp_done, comp_total = 0, comps.good
        on_progress("components", 0, comp_total)
        for chunk in comps.chunks(chunk_size):
            comp_done += len(chunk)
            on_progress("components", comp_done, comp_total)
            comp_rows = _component_rows(registry, keyring, chunk, skipped, now or utcnow())
            if not comp_rows:
                continue
            target = batch_id = _insert_chunk(
                registry,
                [],
                comp_rows,
                target,
                f"batch {name}: a component in rows {_lines(chunk)} of {comps.name} was stored "
                "by another process meanwhile",
            )
            result.components += len(comp_rows)
    log.info(
        "batch %s: %d registered, %d already registered, %d in other batches, %d rejected",
        name,
        result.registered,
        result.already_registered,
        result.other_batch,
        rejected,
    )
    return result


def _insert_chunk(
    registry: Registry,
    rows: list[dict[str, Any]],
    component_rows: list[dict[str, Any]],
    batch: int | NewBatch,
    clash: str,
) -> int:
    """One chunk in one transaction; a clash with another process says CLASH and what to do."""
    try:
        return registry.devices.insert(rows, component_rows, batch)
    except ConflictError as exc:
        raise BatchError(
            f"{clash}; nothing of this chunk was written, run the batch again ({exc})"
        ) from None


def _lines(chunk: pd.DataFrame) -> str:
    return f"{int(chunk[LINE].iloc[0])}-{int(chunk[LINE].iloc[-1])}"


def _check_component_owners(
    registry: Registry, pepper: bytes, serials: Manifest, comps: Manifest
) -> None:
    """A component row must name a serial of this manifest (not rejected) or a registered one."""
    bad_serial_lines = serials.bad_lines()

    def owners(frame: pd.DataFrame) -> list[RowError]:
        owner = serials.owner_lines(frame["serial"])
        outside = frame["serial"].to_numpy(dtype=object)[owner < 0]
        hashes = [serial_hash(pepper, s) for s in outside]
        registered = registry.devices.existing_by_hash(hashes) if hashes else {}
        known = iter([h in registered for h in hashes])
        errors = []
        for line, at in zip(frame[LINE], owner, strict=True):
            if at < 0:
                if not next(known):
                    errors.append(
                        RowError(
                            comps.name,
                            int(line),
                            "serial",
                            f"serial is neither in {serials.name} nor registered",
                        )
                    )
            elif at in bad_serial_lines:
                errors.append(
                    RowError(
                        comps.name,
                        int(line),
                        "serial",
                        f"its device row ({serials.name} line {at}) is rejected",
                    )
                )
        return errors

    comps.check(owners)


def _component_rows(
    registry: Registry,
    keyring: Keyring,
    chunk: pd.DataFrame,
    skipped: set[str],
    created: datetime,
) -> list[dict[str, Any]]:
    """New component rows of a chunk of good component rows (rows already stored are left
    out), registered at CREATED (the batch's time, as its devices are)."""
    owners = [serial_hash(keyring.pepper, s) for s in chunk["serial"]]
    hashes = [
        component_row_hash(keyring.pepper, h, t, s, cs)
        for h, t, s, cs in zip(
            owners,
            chunk["component_type"],
            chunk["component_spec"],
            chunk["component_serial"],
            strict=True,
        )
    ]
    stored = registry.devices.existing_component_hashes(hashes)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for rec, owner, rh in zip(chunk.itertuples(index=False), owners, hashes, strict=True):
        if owner in skipped or rh in stored or rh in seen:
            continue
        seen.add(rh)
        out.append(
            {
                "serial_hash": owner,
                "component_type": rec.component_type,
                "component_spec": rec.component_spec,
                # The device's own id binds the ciphertext; components use their row hash instead.
                "component_serial_ct": (
                    encrypt_serial(keyring.data_key, rh[:16], rec.component_serial)
                    if rec.component_serial
                    else None
                ),
                "supplier": rec.supplier or None,
                "lot": rec.lot or None,
                "component_serial_hash": (
                    component_serial_hash(keyring.pepper, rec.component_serial)
                    if rec.component_serial
                    else None
                ),
                "row_hash": rh,
                "created_at": created,
            }
        )
    return out


def render_batch_labels(
    registry: Registry,
    batch: str,
    template: Template,
    output_dir: str | Path,
    base_url: str,
    *,
    keyring: Keyring,
    start_at: int = 1,
    fmt: str = "pdf",
    copies: int = 1,
    offset_x_mm: float = 0.0,
    offset_y_mm: float = 0.0,
    on_progress: Progress = no_progress,
    payload: str = COMPACT,
) -> LabelsResult:
    """Render OUTPUT/BATCH.pdf (or .zpl), then OUTPUT/BATCH.json, the print station's signal.

    Each payload is signed again from the device's key id and expiry (it is never stored).
    PAYLOAD is what the QR holds: `compact` (BASE_URL/A/TOKEN) or `digital-link` (a GS1
    Digital Link URI with the signature in its query: every device needs a GTIN).

    The print file is published under a new name, never over an existing one: a re-render
    with other content becomes BATCH.r2.pdf, BATCH.r3.pdf, ... and the summary names it.
    """
    if fmt not in RENDERERS:
        raise BatchError(f"--format must be one of {', '.join(RENDERERS)}")
    check_payload(payload)
    batch_id = _batch_id(registry, batch)
    total = registry.devices.count(batch_id)
    if total == 0:
        raise BatchError(f"batch {batch!r} has no devices")
    if payload == DIGITAL_LINK and (missing := registry.devices.without_gtin(batch_id)):
        raise BatchError(
            f"batch {batch!r}: {plural(missing, 'device')} without a GTIN; --payload "
            "digital-link needs one for each (a gtin column in the manifest, or the job "
            "file's [gtin] table)"
        )
    # A pending device under a key that cannot sign (revoked) would get a label that never
    # activates: refuse, and say how to fix it. An activated or revoked device under such a
    # key is left off the sheets (it needs no label; its payload cannot be signed again).
    unusable = sorted(
        k
        for k in registry.batches.pending_by_key(batch_id)
        if (key := keyring.get(k)) is None or not key.secret
    )
    if unusable:
        keys = ", ".join(map(str, unusable))
        raise KeyringError(
            f"batch {batch!r} has pending devices whose payloads key {keys} signed, which is "
            f"revoked (or not in the keyring): their labels would not activate; run "
            f"`provision resign {batch}` to sign them under the active key"
        )

    labels = batch_labels(
        registry, batch_id, batch, template, base_url, keyring, on_progress, payload
    )
    result = _publish_labels(
        labels,
        batch,
        template,
        output_dir,
        fmt=fmt,
        start_at=start_at,
        copies=copies,
        offset_x_mm=offset_x_mm,
        offset_y_mm=offset_y_mm,
        payload=payload,
    )
    registry.batches.labels_published(batch_id, result.revision, utcnow())
    return result


def _publish_labels(
    labels: Iterable[LabelData],
    batch: str,
    template: Template,
    output_dir: str | Path,
    *,
    fmt: str,
    start_at: int,
    copies: int,
    offset_x_mm: float,
    offset_y_mm: float,
    pool: RenderPool | None = None,
    payload: str = "compact",
) -> LabelsResult:
    """Render LABELS to OUTPUT/BATCH.pdf (or .zpl, or a new revision), then OUTPUT/BATCH.json."""
    out = Path(output_dir)
    json_path = out / f"{batch}.json"

    rendered = RenderResult(0, 0)

    def write(fh: BinaryIO) -> None:
        nonlocal rendered
        rendered = RENDERERS[fmt](
            labels,
            template,
            fh,
            start_at=start_at,
            title=f"provision batch {batch}",
            copies=copies,
            offset_x_mm=offset_x_mm,
            offset_y_mm=offset_y_mm,
            **({"pool": pool} if pool is not None else {}),
        )

    path, revision, sha = publish_revision(out, batch, fmt, write)
    result = LabelsResult(
        batch=batch,
        format=fmt,
        file=str(path),
        pdf=str(path) if fmt == "pdf" else None,
        zpl=str(path) if fmt == "zpl" else None,
        revision=revision,
        summary=str(json_path),
        labels=rendered.labels,
        pages=rendered.pages,
        template=template.name,
        sha256=sha,
        start_at=start_at,
        copies=copies,
        offset_x_mm=offset_x_mm,
        offset_y_mm=offset_y_mm,
    )
    summary = {
        "batch": batch,
        "payload": payload,
        "format": fmt,
        fmt: path.name,
        "revision": revision,
        "labels": result.labels,
        "pages": result.pages,
        "template": template.name,
        "sha256": sha,
        "start_at": start_at,
        "copies": copies,
        "offset_x_mm": offset_x_mm,
        "offset_y_mm": offset_y_mm,
        "rendered_at": utcnow().replace(microsecond=0).isoformat(),
    }
    # Written last and atomically: a station that waits for it never sees half a print file.
    write_atomic(json_path, (json.dumps(summary, indent=2) + "\n").encode())
    log.info("batch %s: %d labels on %d pages -> %s", batch, result.labels, result.pages, path)
    return result


def register_and_render(
    registry: Registry,
    keyring: Keyring,
    serials_path: str | Path,
    *,
    batch: str,
    template: Template,
    output_dir: str | Path,
    base_url: str,
    components_path: str | Path | None = None,
    device_type: str | None = None,
    ttl_days: int = DEFAULT_TTL_DAYS,
    reject_file: str | Path | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    fmt: str = "pdf",
    start_at: int = 1,
    copies: int = 1,
    offset_x_mm: float = 0.0,
    offset_y_mm: float = 0.0,
    workers: int | None = None,
    on_progress: Progress = no_progress,
    gtins: Mapping[str, str] | None = None,
    payload: str = "compact",
) -> tuple[RegisterResult, LabelsResult]:
    """register_batch, then render_batch_labels; for a new batch, both at once.

    A new batch's labels are exactly the devices this run registers, in manifest order, so its
    sheets are drawn while registering goes on: each committed chunk goes straight to the render
    workers, and the CPU that registering leaves idle draws labels. The result is the file
    render_batch_labels would write (a later `labels` run re-renders it byte for byte). As
    before, nothing is published unless the whole batch is registered and rendered: a bad row
    or a failed chunk stops both, and a render that fails leaves the batch registered.
    `workers`: render processes (default one per CPU).
    """
    check_batch_name(batch)
    if fmt not in RENDERERS:
        raise BatchError(f"--format must be one of {', '.join(RENDERERS)}")
    # Offsets that push labels off the page are refused before anything is registered.
    if fmt == "zpl":
        from provision.labels.zpl import check_zpl_offsets

        check_zpl_offsets(template, offset_x_mm, offset_y_mm)
    else:
        check_offsets(template, offset_x_mm, offset_y_mm)
    existing = registry.batches.id_of(batch)
    fresh = existing is None or registry.devices.count(existing) == 0
    register_kwargs: dict[str, Any] = {
        "components_path": components_path,
        "batch": batch,
        "device_type": device_type,
        "ttl_days": ttl_days,
        "reject_file": reject_file,
        "chunk_size": chunk_size,
        "gtins": gtins,
    }
    render_kwargs: dict[str, Any] = {
        "payload": payload,
        "fmt": fmt,
        "start_at": start_at,
        "copies": copies,
        "offset_x_mm": offset_x_mm,
        "offset_y_mm": offset_y_mm,
    }
    check_payload(payload)
    # The labels drawn while registering are compact ones; a Digital Link batch is drawn after.
    if not fresh or fmt != "pdf" or payload != COMPACT:
        registered = register_batch(
            registry, keyring, serials_path, on_progress=on_progress, **register_kwargs
        )
        if registry.batches.id_of(batch) is None:
            raise _nothing_registered(batch, registered, serials_path)
        rendered = render_batch_labels(
            registry,
            batch,
            template,
            output_dir,
            base_url,
            keyring=keyring,
            on_progress=on_progress,
            **render_kwargs,
        )
        return registered, rendered

    chunks: queue.Queue[list[LabelData] | BaseException | None] = queue.Queue(maxsize=4)
    stop = threading.Event()  # the render failed: registering goes on, its labels are dropped
    outcome: list[RegisterResult] = []
    expected = [0]

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "register":
            expected[0] = total
        on_progress(stage, done, total)

    def registered_chunk(rows: list[dict[str, Any]], serials: list[str]) -> None:
        printed = template.prints_serial
        labels = [
            _label(keyring, base_url, batch, s if printed else None, **_label_fields(r))
            for r, s in zip(rows, serials, strict=True)
        ]
        while not stop.is_set():
            try:
                chunks.put(labels, timeout=0.1)
                return
            except queue.Full:
                continue

    def register() -> None:
        try:
            outcome.append(
                register_batch(
                    registry,
                    keyring,
                    serials_path,
                    on_progress=progress,
                    on_registered=registered_chunk,
                    **register_kwargs,
                )
            )
            chunks.put(None)
        except BaseException as exc:  # handed to the rendering thread, raised there
            chunks.put(exc)

    def committed_labels() -> Iterator[LabelData]:
        done = 0
        while (item := chunks.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            if not done:
                on_progress("render", 0, expected[0])
            yield from item
            done += len(item)
            on_progress("render", done, max(done, expected[0]))
        if not done:
            if outcome and registry.batches.id_of(batch) is None:
                raise _nothing_registered(batch, outcome[0], serials_path)
            raise BatchError(f"batch {batch!r} has no devices")
        # The register total counted rows found registered too: the last bar ends at what was drawn.
        on_progress("render", done, done)

    # The render workers first, while this process is small and has no other thread: forked
    # later, each would start as a copy of the manifest being registered.
    with RenderPool(workers, template) as pool:
        worker = threading.Thread(target=register, name="provision-register", daemon=True)
        worker.start()
        try:
            result = _publish_labels(
                committed_labels(), batch, template, output_dir, pool=pool, **render_kwargs
            )
        except KeyboardInterrupt:
            raise  # the registering thread ends with the process; its open chunk rolls back
        except BaseException:
            stop.set()
            while worker.is_alive():  # let registering finish, as it would before a render
                with contextlib.suppress(queue.Empty):
                    chunks.get(timeout=0.1)
            raise
        worker.join()
    published = registry.batches.id_of(batch)
    if published is not None:
        registry.batches.labels_published(published, result.revision, utcnow())
    return outcome[0], result


def _nothing_registered(batch: str, result: RegisterResult, serials: str | Path) -> BatchError:
    """Why a run registered no device for its batch: one line, naming where the devices are."""
    if result.other_batch:
        where = ", ".join(f"{name} ({n})" for name, n in sorted(result.other_batches.items()))
        return BatchError(
            f"batch {batch!r} has no devices: all {plural(result.other_batch, 'row')} of "
            f"{serials} are registered in other batches already: {where}"
        )
    return BatchError(f"batch {batch!r} has no devices: {serials} holds no row to register")


def batch_labels(
    registry: Registry,
    batch_id: int,
    batch: str,
    template: Template,
    base_url: str,
    keyring: Keyring,
    on_progress: Progress = no_progress,
    payload: str = "compact",
) -> Iterator[LabelData]:
    """What each label of a batch shows, in label order, read from the registry in chunks."""
    total = registry.devices.count(batch_id)
    done = 0
    on_progress("render", 0, total)
    for chunk in registry.devices.labels(batch_id):
        for d in chunk:
            if d.status != DeviceStatus.PENDING and not _can_sign(keyring, d.key_id):
                continue  # in use already, under a key that can no longer sign: no label
            linked = payload == DIGITAL_LINK
            serial = (
                decrypt_serial(keyring.data_key, d.device_id, d.serial_ct)
                if template.prints_serial or linked
                else None
            )
            url = None
            if linked:
                assert d.gtin is not None and serial is not None  # checked before rendering
                url = digital_link_url(base_url, keyring, d.key_id, d.gtin, serial, d.expires_at)
            yield _label(
                keyring,
                base_url,
                batch,
                serial if template.prints_serial else None,
                device_id=d.device_id,
                device_type=d.device_type,
                model=d.model,
                manufacturer=d.manufacturer,
                key_id=d.key_id,
                expires_at=d.expires_at,
                url=url,
            )
        done += len(chunk)
        on_progress("render", done, total)


def _label(
    keyring: Keyring,
    base_url: str,
    batch: str,
    serial: str | None,
    *,
    device_id: str,
    device_type: str,
    model: str | None,
    manufacturer: str | None,
    key_id: int,
    expires_at: datetime,
    url: str | None = None,
) -> LabelData:
    """What a device's label shows; its payload signed again from key id and expiry (URL:
    a payload signed already, as a Digital Link label's is)."""
    if url is None:
        url = payload_url(base_url, device_token(keyring, key_id, device_id, expires_at))
    return LabelData(
        device_id=device_id,
        url=url,
        device_type=device_type,
        model=model,
        manufacturer=manufacturer,
        serial=serial,
        batch=batch,
    )


def _can_sign(keyring: Keyring, key_id: int) -> bool:
    key = keyring.get(key_id)
    return key is not None and key.secret is not None


def _label_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The label's fields of a device row as just inserted."""
    return {k: row[k] for k in _LABEL_FIELDS}


_LABEL_FIELDS = ("device_id", "device_type", "model", "manufacturer", "key_id", "expires_at")


def _render_zpl(
    labels: Iterable[LabelData],
    template: Template,
    out: BinaryIO,
    *,
    start_at: int,
    title: str,
    copies: int,
    offset_x_mm: float,
    offset_y_mm: float,
) -> RenderResult:
    from provision.labels.zpl import render_zpl

    if start_at != 1:
        raise BatchError("--start-at applies to label sheets; a thermal roll has no used positions")
    return render_zpl(
        labels, template, out, copies=copies, offset_x_mm=offset_x_mm, offset_y_mm=offset_y_mm
    )


# Output format -> renderer, as segno's writers are a table, not an if-chain.
# (Looked up at call time, so a test can stand a failing renderer in for the real one.)
RENDERERS: dict[str, Callable[..., RenderResult]] = {
    "pdf": lambda *args, **kwargs: render_label_sheets(*args, **kwargs),
    "zpl": lambda *args, **kwargs: _render_zpl(*args, **kwargs),
}


@dataclass
class ResignResult:
    """What `resign` did: how many pending devices got payloads under which key, and the
    label revision that carries them."""

    batch: str
    resigned: int
    key_id: int
    labels: LabelsResult

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "resigned": self.resigned,
            "key_id": self.key_id,
            "labels": self.labels.to_json(),
        }


def resign_plan(registry: Registry, keyring: Keyring, batch: str) -> dict[int, int]:
    """The batch's pending devices whose payloads another key than the active one signed,
    counted by that key: what `resign` would sign again."""
    batch_id = _batch_id(registry, batch)
    active = keyring.active.id
    return {k: n for k, n in registry.batches.pending_by_key(batch_id).items() if k != active}


def resign_batch(
    registry: Registry,
    keyring: Keyring,
    batch: str,
    output_dir: str | Path,
    base_url: str,
    *,
    actor: str,
    now: datetime | None = None,
    on_progress: Progress = no_progress,
) -> ResignResult:
    """Give the batch's pending devices payloads under the active key, then a label revision.

    For labels under a revoked key, or a key being retired early. Each device's re-signing is
    an action in its history; activated devices are untouched. The new labels are drawn with
    the print settings of the batch's last summary (OUTPUT/BATCH.json), and published as the
    next revision (BATCH.r2.pdf, ...): the payloads changed, so the content did.
    """
    from provision.labels.templates import load_template

    batch_id = _batch_id(registry, batch)
    key = keyring.active
    moved = registry.events.resign(batch_id, key.id, actor, now or utcnow(), make_sealer(keyring))
    last = _last_summary(Path(output_dir), batch)
    labels = render_batch_labels(
        registry,
        batch,
        load_template(str(last.get("template") or "avery-l7160")),
        output_dir,
        base_url,
        keyring=keyring,
        fmt=str(last.get("format") or "pdf"),
        start_at=int(last.get("start_at") or 1),
        copies=int(last.get("copies") or 1),
        offset_x_mm=float(last.get("offset_x_mm") or 0.0),
        offset_y_mm=float(last.get("offset_y_mm") or 0.0),
        on_progress=on_progress,
        payload=str(last.get("payload") or COMPACT),
    )
    log.info("batch %s: %d devices re-signed under key %d", batch, moved, key.id)
    return ResignResult(batch, moved, key.id, labels)


def _batch_id(registry: Registry, batch: str) -> int:
    check_batch_name(batch)
    batch_id = registry.batches.id_of(batch)
    if batch_id is None:
        recent = registry.batches.names()[-5:]
        hint = f"; recent batches: {', '.join(recent)}" if recent else "; no batch registered yet"
        raise BatchError(f"no batch named {batch!r}{hint}")
    return batch_id


def _last_summary(output_dir: Path, batch: str) -> dict[str, Any]:
    """The batch's print summary as the last `labels` wrote it, or {} if there is none."""
    try:
        data = json.loads((output_dir / f"{batch}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def render_alignment(
    template: Template,
    output_dir: str | Path,
    *,
    offset_x_mm: float = 0.0,
    offset_y_mm: float = 0.0,
) -> Path:
    """OUTPUT/alignment-TEMPLATE.pdf: outlines and rulers to calibrate a station's offsets."""
    path = Path(output_dir) / f"alignment-{template.name}.pdf"
    with atomic_writer(path) as fh:
        render_alignment_page(template, fh, offset_x_mm=offset_x_mm, offset_y_mm=offset_y_mm)
    return path


@dataclass
class GenerateResult:
    device_id: str
    url: str
    batch: str
    created: bool
    png: str
    pdf: str
    device_type: str  # as registered: another TYPE, if the serial was registered before

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def generate_device(
    registry: Registry,
    keyring: Keyring,
    serial: str,
    device_type: str,
    base_url: str,
    output_dir: str | Path,
    template: Template,
    *,
    components: list[tuple[str, str]] = (),  # type: ignore[assignment]
    ttl_days: int = DEFAULT_TTL_DAYS,
) -> GenerateResult:
    """Register one device (or find it), then write its QR as PNG and a one-label PDF."""
    serial = serial.strip()
    problem = serial_problem(serial)
    if problem:
        raise ProvisionError(f"SERIAL: {problem}")
    if not device_type.strip():
        raise ProvisionError("TYPE: device type is empty")
    batch = f"single-{utcnow():%Y%m%d}"
    sha = hashlib.sha256(f"{serial}\x1f{device_type}".encode()).hexdigest()
    serials = build_manifest(
        Path("SERIAL"), SERIALS, ["serial", "device_type"], 0, [[serial, device_type]], [1], sha
    )
    comps = (
        build_manifest(
            Path("--component"),
            COMPONENTS,
            ["serial", "component_type", "component_spec"],
            0,
            [[serial, t, s] for t, s in components],
            list(range(1, len(components) + 1)),
            sha,
        )
        if components
        else None
    )
    before = registry.devices.existing_by_hash([serial_hash(keyring.pepper, serial)])
    res = register_manifests(registry, keyring, serials, comps, batch=batch, ttl_days=ttl_days)
    did = device_id(keyring.pepper, serial)
    dev = registry.devices.get(did)
    assert dev is not None
    url = payload_url(base_url, device_token(keyring, dev.key_id, did, dev.expires_at))
    out = Path(output_dir)
    png, pdf = out / f"{did}.png", out / f"{did}.pdf"
    with atomic_writer(png) as fh:
        save_png(url, fh)  # type: ignore[arg-type]
    label = LabelData(did, url, dev.device_type, dev.model, dev.manufacturer, serial)
    with atomic_writer(pdf) as fh:
        render_label_sheets([label], template, fh, title=f"provision device {did}")
    batch_name = batch if not before else next(iter(before.values()))[2]
    return GenerateResult(
        did, url, batch_name, res.registered == 1, str(png), str(pdf), dev.device_type
    )
