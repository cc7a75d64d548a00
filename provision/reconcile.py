"""Reconciliation: activations vs shipments (pandas, vectorised) -> categories -> report.

Serials are matched through the keyed serial hash: the registry holds no plaintext, so a
plaintext serial appears in the report only where the shipments file supplied it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import json
import multiprocessing
import os
import pickle
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from provision.categories import AGING_BUCKETS, CATEGORIES, CATEGORY_NAMES, ReconcileResult
from provision.errors import ManifestError, ProvisionError, UsageError, worker_deaths
from provision.keys import Keyring
from provision.manifests import LINE, SHIPMENTS, read_manifest
from provision.registry import Registry
from provision.serials import decrypt_serial, decrypt_serials, serial_hash
from provision.states import DeviceStatus

Progress = Callable[[str, int, int], None]


FORMATS = ("csv", "json", "pdf")
_FORMULA_CHARS = ["=", "+", "-", "@", "\t", "\r"]  # a cell starting with one is a formula
_HASH_CHUNK = 100_000  # serials hashed between two progress reports


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


def read_shipments(path: str | Path) -> pd.DataFrame:
    """Validated shipments with `shipped_at` parsed (UTC; a date alone is its midnight)."""
    manifest = read_manifest(path, SHIPMENTS)
    manifest.raise_if_bad()
    frame = manifest.good_rows()
    stamps = frame["shipped_at"]
    frame["shipped_at"] = pd.to_datetime(stamps, format="ISO8601", utc=True)
    return frame


def reconcile_shipments(
    registry: Registry,
    keyring: Keyring,
    shipments_path: str | Path | None = None,
    *,
    as_of: date | None = None,
    since: date | None = None,
    until: date | None = None,
    batch: str | None = None,
    report_dir: str | Path | None = None,
    formats: tuple[str, ...] = FORMATS,
    on_progress: Progress = _no_progress,
) -> ReconcileResult:
    """Compare the registry with shipments; write the report folder atomically.

    SHIPMENTS_PATH is a one-off file; without it, the stored shipments (`shipments import`).
    SINCE and UNTIL (dates, UTC, both included) choose the report's period without forgetting
    history: the shipments in the period are matched, and a device activated in the period
    is `activated_not_shipped` only when no shipment of it is known up to the period's end,
    however long before the period it shipped. BATCH limits the report to one batch's devices
    (and the shipments of them).
    """
    for f in formats:
        if f not in FORMATS:
            raise ProvisionError(f"--format: unknown format {f!r} (known: {', '.join(FORMATS)})")
    start = pd.Timestamp(since, tz="UTC") if since else None
    end = pd.Timestamp(until, tz="UTC") + pd.Timedelta(days=1) if until else None
    if start is not None and end is not None and start >= end:
        raise UsageError("--since must not be after --until")
    as_of = as_of or (until or datetime.now(UTC).date())
    if shipments_path is None:
        return _reconcile_stored(
            registry, keyring, as_of, since, until, batch, report_dir, formats, on_progress
        )
    ship = read_shipments(shipments_path)  # raises ManifestError before anything is written
    ship["serial_hash"] = _hash_serials(keyring.pepper, ship["serial"], on_progress)
    on_progress("load", 0, 1)
    dev = registry.reconcile_frame()
    on_progress("load", 1, 1)
    if batch is not None:
        if batch not in set(dev["batch"].dropna()):
            raise ProvisionError(f"--batch {batch!r}: no such batch")
        dev = dev[dev["batch"] == batch].reset_index(drop=True)
        ship = ship[ship["serial_hash"].isin(dev["serial_hash"])].reset_index(drop=True)
    frames = _categorise_period(ship, dev, as_of, start, end)
    _add_follow_up(registry, keyring.data_key, frames)
    totals = _Totals()
    totals.add(frames, keep_all=True)
    result = totals.result(as_of, str(shipments_path), since, until, batch, report_dir)
    if report_dir is not None:
        write_report(result, Path(report_dir), formats, on_progress)
    return result


PART_ROWS = 250_000
"""Devices (or stored shipments) a stored reconcile holds at once. A device and all its
shipments share a serial hash, so the rows are dealt out by serial hash into as many
partitions as that takes, and each partition is reconciled on its own: memory stays flat
however many rows there are (a grace hash join)."""


def _reconcile_stored(
    registry: Registry,
    keyring: Keyring,
    as_of: date,
    since: date | None,
    until: date | None,
    batch: str | None,
    report_dir: str | Path | None,
    formats: tuple[str, ...],
    on_progress: Progress,
) -> ReconcileResult:
    """reconcile_shipments of the stored feed: both tables read straight through once, dealt
    out into partitions (spilled to a private temporary folder when there are several), then
    each partition categorised and its rows appended to the report's CSVs."""
    start = pd.Timestamp(since, tz="UTC") if since else None
    end = pd.Timestamp(until, tz="UTC") + pd.Timedelta(days=1) if until else None
    batch_id = None
    if batch is not None:
        batch_id = registry.batches.id_of(batch)
        if batch_id is None:
            raise ProvisionError(f"--batch {batch!r}: no such batch")
    parts = max(1, -(-max(registry.sizes()) // PART_ROWS))
    job = _PartJob(as_of, start, end, batch_id)
    until_dt = end.to_pydatetime() if end is not None else None
    report = _Report(Path(report_dir), formats) if report_dir is not None else None
    totals = _Totals()
    try:
        with _paused_gc(), _Spill(parts) as spill:
            on_progress("load", 0, 2)
            if _in_process(registry, parts):
                spill.deal("devices", registry.reconcile_chunks(batch_id=batch_id))
                on_progress("load", 1, 2)
                spill.deal("shipments", registry.shipments_chunks(until_dt))
                on_progress("load", 2, 2)
                on_progress("reconcile", 0, parts)
                for k in range(parts):
                    frames = job.frames(registry, keyring.data_key, spill, k)
                    totals.add(frames)
                    if report is not None:
                        report.append(frames)
                    on_progress("reconcile", k + 1, parts)
            else:
                with (
                    worker_deaths("reconcile", "no report written"),
                    _workers(registry, keyring) as pool,
                ):
                    # A worker deals out the shipments while this process deals out the devices.
                    shipments = pool.submit(_deal_shipments, spill.blank(), until_dt)
                    spill.deal("devices", registry.reconcile_chunks(batch_id=batch_id))
                    on_progress("load", 1, 2)
                    spill.adopt(shipments.result(), "shipments")
                    on_progress("load", 2, 2)
                    # The partitions reconciled by the workers, each into CSV files of its own,
                    # appended to the report's in partition order.
                    on_progress("reconcile", 0, parts)
                    folder = str(report.tmp) if report is not None and report.csv else None
                    done = deque(
                        pool.submit(_part_in_worker, job, spill, k, folder) for k in range(parts)
                    )
                    for k in range(parts):
                        totals.merge(done.popleft().result())  # then dropped: memory stays flat
                        if report is not None:
                            report.append_part(k)
                        on_progress("reconcile", k + 1, parts)
        result = totals.result(as_of, "stored shipments", since, until, batch, report_dir)
        if report is not None:
            report.finish(result)
    except BaseException:
        if report is not None:
            report.abandon()
        raise
    return result


def _in_process(registry: Registry, parts: int) -> bool:
    """Reconcile in this process: one partition, or a registry no worker can open."""
    return parts == 1 or registry.store.in_memory


@dataclass(frozen=True)
class _PartJob:
    """What reconciling one partition of the stored feed takes, besides the partition."""

    as_of: date
    start: Any
    end: Any
    batch_id: int | None

    def frames(
        self, registry: Registry, data_key: bytes, spill: _Spill, k: int
    ) -> dict[str, pd.DataFrame]:
        dev = spill.take("devices", k)
        ship = _decrypted(data_key, spill.take("shipments", k))
        if self.batch_id is not None:
            keep = ship["serial_hash"].isin(dev["serial_hash"])
            ship = ship[keep].reset_index(drop=True)
        frames = _categorise_period(ship, dev, self.as_of, self.start, self.end)
        del dev, ship
        _add_follow_up(registry, data_key, frames)
        return frames


_worker: tuple[Registry, bytes] | None = None


def _init_worker(url: str, data_key: bytes) -> None:
    """A reconcile worker: its own registry connection; the data key (sent once, through the
    pool's pipe, never logged) to decrypt serials."""
    global _worker
    gc.disable()  # as _paused_gc
    _worker = (Registry(url, migrate=False, create=False), data_key)


@contextlib.contextmanager
def _workers(registry: Registry, keyring: Keyring) -> Iterator[ProcessPoolExecutor]:
    """One reconcile worker a core, two to four (two at least: one deals out the shipments
    while this process deals out the devices), started by a fork server (no state of this
    process)."""
    ctx = multiprocessing.get_context("forkserver")
    pool = ProcessPoolExecutor(
        max(2, min(4, os.cpu_count() or 1)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(registry.url, keyring.data_key),
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _deal_shipments(spill: _Spill, until: datetime | None) -> _Spill:
    assert _worker is not None
    spill.deal("shipments", _worker[0].shipments_chunks(until))
    return spill


def _part_in_worker(job: _PartJob, spill: _Spill, k: int, folder: str | None) -> _Totals:
    """Partition K reconciled: its totals, and (FOLDER) its rows as CSV files of their own."""
    assert _worker is not None
    frames = job.frames(_worker[0], _worker[1], spill, k)
    totals = _Totals()
    totals.add(frames)
    if folder is not None:
        _Report.write_part(Path(folder), k, frames)
    return totals


@contextlib.contextmanager
def _paused_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while a stored reconcile runs (reference counting
    still frees everything it drops). The reconcile makes millions of short-lived rows and
    no reference cycles; the collector's passes over them cost it a tenth of its time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Spill:
    """Frames dealt out by serial hash into PARTS partitions (partition k: the hashes whose
    first 32 bits times PARTS, over 2**32, round down to k): kept in memory when PARTS is 1,
    else appended as pickles to one file a partition, in a temporary folder only this user
    may read (serial hashes and user ids; never a plaintext serial), removed at the end.

    A text column with few distinct values (type, model, batch, status, carrier, ...) is
    spilled as integer codes into one dictionary per column, not as a string a row: a pickled
    string costs more to write and to read back than anything else the reconcile does to it.
    A column whose dictionary would grow past CODED_MAX values is spilled as text from then on
    (each pickle says which of its columns are codes).
    """

    CODED_SHARE = 0.01  # a column is coded when its first frame has at most 1% distinct values
    CODED_MAX = 4096  # values a column's dictionary holds at most (the workers get each copy)

    def __init__(self, parts: int) -> None:
        self.parts = parts
        self.coded_share = self.CODED_SHARE
        self._owner: tempfile.TemporaryDirectory[str] | None = None
        self._folder: Path | None = None
        self._memory: dict[str, list[pd.DataFrame]] = {}
        self._empty: dict[str, pd.DataFrame] = {}
        # (frames' name, column) -> its values by code, and the code of each value
        self._values: dict[tuple[str, str], list[Any]] = {}
        self._codes: dict[tuple[str, str], dict[Any, int]] = {}
        self._dtypes: dict[tuple[str, str], Any] = {}
        self._stopped: set[tuple[str, str]] = set()

    def blank(self) -> _Spill:
        """A copy of this spill with nothing dealt yet (for a worker to deal into while this
        process deals into this one)."""
        other = _Spill(self.parts)
        other.coded_share, other._folder = self.coded_share, self._folder
        return other

    def __enter__(self) -> _Spill:
        if self.parts > 1:
            self._owner = tempfile.TemporaryDirectory(prefix="provision-reconcile-")
            self._folder = Path(self._owner.name)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owner is not None:
            self._owner.cleanup()

    def __getstate__(self) -> dict[str, Any]:
        # A worker gets the folder's path and the dictionaries; the folder stays this
        # process's to remove.
        return {**self.__dict__, "_owner": None, "_codes": {}}

    def adopt(self, other: _Spill, name: str) -> None:
        """What a worker's deal(NAME) added: the frames' empty shape and dictionaries."""
        self._empty[name] = other._empty[name]
        for key in [key for key in other._values if key[0] == name]:
            self._values[key], self._dtypes[key] = other._values[key], other._dtypes[key]

    def _path(self, name: str, k: int) -> Path:
        assert self._folder is not None
        return self._folder / f"{name}-{k}.pickle"

    def deal(self, name: str, frames: Iterator[pd.DataFrame]) -> None:
        if self._folder is None:
            self._memory[name] = list(frames)
            return
        files = [self._path(name, k).open("wb") for k in range(self.parts)]
        try:
            for frame in frames:
                if name not in self._empty:
                    self._empty[name] = frame.iloc[:0]
                    self._choose(name, frame)
                hashes = frame["serial_hash"].to_numpy(dtype=object)
                prefix = np.fromiter((int(h[:8], 16) for h in hashes), np.uint64, len(frame))
                part = (prefix * np.uint64(self.parts)) >> np.uint64(32)
                order = np.argsort(part, kind="stable")
                bounds = np.searchsorted(part[order], np.arange(self.parts + 1))
                coded, frame = self._encode(name, frame)
                for k in np.flatnonzero(np.diff(bounds)):
                    rows = order[bounds[k] : bounds[k + 1]]
                    piece = (coded, frame.iloc[rows])
                    pickle.dump(piece, files[k], protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            for fh in files:
                fh.close()

    def _choose(self, name: str, frame: pd.DataFrame) -> None:
        """The text columns of NAME to code: those with few distinct values in FRAME."""
        if len(frame) < 1 / self.coded_share:
            return  # too few rows to tell
        for col in frame.columns:
            dtype = frame[col].dtype
            text = isinstance(dtype, pd.StringDtype) or dtype == np.dtype(object)
            few = text and frame[col].nunique(dropna=False) <= len(frame) * self.coded_share
            if col != "serial_hash" and few:
                self._values[name, col], self._codes[name, col] = [], {}
                self._dtypes[name, col] = dtype

    def _encode(self, name: str, frame: pd.DataFrame) -> tuple[tuple[str, ...], pd.DataFrame]:
        """FRAME with its coded columns as codes, and the names of those columns."""
        coded = {}
        for (frames, col), values in self._values.items():
            if frames != name or (name, col) in self._stopped:
                continue
            codes, found = pd.factorize(frame[col].to_numpy(dtype=object), use_na_sentinel=False)
            # None or NaN: one code for missing
            uniques = [None if u is None or u != u else u for u in found]
            known = self._codes[name, col]
            if len(values) + len(uniques) > self.CODED_MAX and any(u not in known for u in uniques):
                self._stopped.add((name, col))  # too many values: text from now on
                continue
            index = np.empty(len(uniques), dtype=np.int64)
            for i, value in enumerate(uniques):
                code = known.get(value)
                if code is None:
                    code = known[value] = len(values)
                    values.append(value)
                index[i] = code
            coded[col] = index[codes]
        return tuple(coded), (frame.assign(**coded) if coded else frame)

    def _decode(self, name: str, coded: tuple[str, ...], frame: pd.DataFrame) -> pd.DataFrame:
        decoded = {}
        for col in coded:
            values = self._values[name, col]
            lookup = np.empty(len(values), dtype=object)
            lookup[:] = values
            found = lookup[frame[col].to_numpy(dtype=np.int64)]
            decoded[col] = pd.array(found, dtype=self._dtypes[name, col])
        return frame.assign(**decoded) if decoded else frame

    def take(self, name: str, k: int) -> pd.DataFrame:
        """Partition K of NAME (its file removed once read)."""
        if self._folder is None:
            return _concat(self._memory.pop(name))
        runs: list[tuple[tuple[str, ...], list[pd.DataFrame]]] = []  # pieces coded alike
        path = self._path(name, k)
        with path.open("rb") as fh:
            while True:
                try:
                    coded, piece = pickle.load(fh)  # our own file, written above
                except EOFError:
                    break
                if runs and runs[-1][0] == coded:
                    runs[-1][1].append(piece)
                else:
                    runs.append((coded, [piece]))
        path.unlink()
        if not runs:
            return self._empty[name]
        parts = [self._decode(name, coded, _concat(pieces)) for coded, pieces in runs]
        return _concat(parts)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _categorise_period(
    ship: pd.DataFrame, dev: pd.DataFrame, as_of: date, start: Any, end: Any
) -> dict[str, pd.DataFrame]:
    """categorise the shipments of the period (START-END), remembering every earlier one."""
    history = ship["serial_hash"] if end is None else ship["serial_hash"][ship["shipped_at"] < end]
    in_period = np.ones(len(ship), dtype=bool)
    if start is not None:
        in_period &= (ship["shipped_at"] >= start).to_numpy()
    if end is not None:
        in_period &= (ship["shipped_at"] < end).to_numpy()
    return categorise(
        ship[in_period].reset_index(drop=True), dev, as_of, shipped=history, period=(start, end)
    )


SAMPLE_ROWS = 1000  # rows of each category a streamed result keeps (the PDF shows 25)


class _Totals:
    """What a report says about all its rows, added up a part at a time: counts, the aging
    of what is not activated, the days to activation, and the first rows of each category."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(CATEGORY_NAMES, 0)
        self.aging = dict.fromkeys(AGING_BUCKETS, 0)
        self.days: list[np.ndarray] = []
        self.samples: dict[str, list[pd.DataFrame]] = {n: [] for n in CATEGORY_NAMES}
        self.kept = dict.fromkeys(CATEGORY_NAMES, 0)

    def add(self, frames: dict[str, pd.DataFrame], keep_all: bool = False) -> None:
        for name in CATEGORY_NAMES:
            frame = frames[name]
            self.counts[name] += len(frame)
            self._keep(name, frame, len(frame) if keep_all else SAMPLE_ROWS - self.kept[name])
        buckets = frames["shipped_not_activated"]["aging_bucket"]
        for b in AGING_BUCKETS:
            self.aging[b] += int((buckets == b).sum())
        self.days.append(frames["matched"]["days_to_activation"].to_numpy(dtype=float))

    def _keep(self, name: str, frame: pd.DataFrame, room: int) -> None:
        """The first ROOM rows of FRAME among NAME's samples (its first frame always: the
        category's columns)."""
        if not self.samples[name] or (room > 0 and len(frame)):
            self.samples[name].append(frame.iloc[:room])
            self.kept[name] += min(room, len(frame))

    def merge(self, other: _Totals) -> None:
        """Add what OTHER (the next partition's totals) counted and kept."""
        for name in CATEGORY_NAMES:
            self.counts[name] += other.counts[name]
            self._keep(name, _concat(other.samples[name]), SAMPLE_ROWS - self.kept[name])
        for b in AGING_BUCKETS:
            self.aging[b] += other.aging[b]
        self.days.extend(other.days)

    def result(
        self,
        as_of: date,
        source: str,
        since: date | None,
        until: date | None,
        batch: str | None,
        report_dir: str | Path | None,
    ) -> ReconcileResult:
        days = np.concatenate(self.days) if self.days else np.empty(0)
        frames = {
            n: pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
            for n, parts in self.samples.items()
        }
        return ReconcileResult(
            as_of=as_of,
            shipments_file=source,
            counts=self.counts,
            report_dir=str(report_dir) if report_dir else None,
            frames=frames,
            aging=self.aging,
            days_to_activation={
                "median": float(np.median(days)) if len(days) else None,
                "p90": float(np.quantile(days, 0.9)) if len(days) else None,
                "max": float(days.max()) if len(days) else None,
            },
            matched_days=days,
            since=since,
            until=until,
            batch=batch,
        )


def _decrypted(data_key: bytes, frame: pd.DataFrame) -> pd.DataFrame:
    """Stored shipments (shipments_chunks) as a shipments frame in the order they shipped,
    serials decrypted."""
    frame = frame.sort_values(["shipped_at", "id"], kind="stable", ignore_index=True)
    aads = ["shipment:" + rh for rh in frame["row_hash"]]
    frame["serial"] = decrypt_serials(data_key, aads, frame["serial_ct"].tolist())
    frame[LINE] = frame.pop("line")
    return frame.drop(columns=["serial_ct", "row_hash", "id"])


FOLLOW_UP = ("activated_not_shipped", "shipped_revoked")


def _add_follow_up(registry: Registry, data_key: bytes, frames: dict[str, pd.DataFrame]) -> None:
    """What an analyst needs to follow up a critical row: the activating user and address,
    activated_at, batch, line and model (already there), and the serial: the shipment's where
    one gives it, else the device's own, decrypted with the keyring."""
    wanted = sorted({d for name in FOLLOW_UP for d in frames[name]["device_id"]})
    found = registry.follow_up(wanted) if wanted else {}
    key = data_key
    for name in FOLLOW_UP:
        frame = frames[name]
        ips, serials = [], []
        for did in frame["device_id"]:
            ct, ip = found.get(did, (b"", None))
            ips.append(ip)
            serials.append(decrypt_serial(key, did, ct) if ct else None)
        frame = frame.assign(activated_ip=ips)
        if "serial" in frame.columns:
            frame["serial"] = frame["serial"].where(frame["serial"].notna(), pd.Series(serials))
        else:
            frame = frame.assign(serial=serials)
        frames[name] = frame


def _hash_serials(pepper: bytes, serials: pd.Series, on_progress: Progress) -> np.ndarray:
    """The keyed hash of every serial, a chunk at a time so the progress bar moves.

    One HMAC per serial is inherent (about 2 us each); everything after works on whole columns.
    """
    values = serials.to_numpy(dtype=object)
    total = len(values)
    out = np.empty(total, dtype=object)
    hash_one = functools.partial(serial_hash, pepper)
    on_progress("hash", 0, total)
    for lo in range(0, total, _HASH_CHUNK):
        chunk = values[lo : lo + _HASH_CHUNK]
        out[lo : lo + len(chunk)] = list(map(hash_one, chunk))
        on_progress("hash", lo + len(chunk), total)
    return out


def categorise(
    ship: pd.DataFrame,
    dev: pd.DataFrame,
    as_of: date,
    *,
    shipped: pd.Series | None = None,
    period: tuple[Any, Any] = (None, None),
) -> dict[str, pd.DataFrame]:
    """Split shipments and registered devices into the categories, without per-row Python.

    SHIPPED, the serial hashes of every shipment known up to the period's end, keeps a device
    shipped before the period out of activated_not_shipped and registered_not_shipped; PERIOD
    (start, end: UTC timestamps or None) limits those two to devices activated, or
    registered, in it.

    One factorisation of all serial hashes (the registry's, then the shipments') turns them into
    integer codes: a shipment's code names its device, and a code seen again is a duplicate
    shipment. No string join and no set of a million hashes is built.
    """
    if not ship[LINE].is_monotonic_increasing:
        ship = ship.sort_values(LINE, kind="stable")
    ship = ship.reset_index(drop=True)
    dev = dev.reset_index(drop=True)
    codes, uniques = pd.factorize(
        np.concatenate(
            [dev["serial_hash"].to_numpy(dtype=object), ship["serial_hash"].to_numpy(dtype=object)]
        )
    )
    device_of = np.full(len(uniques), -1, dtype=np.int64)  # code -> row of dev, -1: unknown
    device_of[codes[: len(dev)]] = np.arange(len(dev))
    ship_codes = codes[len(dev) :]
    extra = pd.Series(ship_codes).duplicated(keep="first").to_numpy()
    first_rows = np.flatnonzero(~extra)
    first_of = np.full(len(uniques), -1, dtype=np.int64)  # code -> its first shipment row
    first_of[ship_codes[first_rows]] = first_rows
    extra_rows = np.flatnonzero(extra)
    repeated = first_of[ship_codes[extra_rows]]
    dup = ship.iloc[extra_rows].assign(
        first_line=ship[LINE].to_numpy()[repeated],
        first_shipped_at=ship["shipped_at"].array[repeated],
    )

    first = ship.iloc[first_rows].reset_index(drop=True)
    pos = device_of[ship_codes[first_rows]]
    is_known = pos >= 0
    shipped_dev = np.zeros(len(dev), dtype=bool)
    shipped_dev[pos[is_known]] = True
    # Shipment columns side by side with the device's (a left join, by position).
    joined = pd.concat(
        [
            first[is_known].reset_index(drop=True),
            dev.iloc[pos[is_known]].drop(columns="serial_hash").reset_index(drop=True),
        ],
        axis=1,
    )
    activated = joined["activated_at"].notna()
    status = joined["status"]
    # A date-only shipped_at parses as that day's midnight, so activating later that same day
    # is not early.
    before = activated & (joined["activated_at"] < joined["shipped_at"])
    # A revoked device is reported as shipped_revoked only, whatever happened before.
    live = status != DeviceStatus.REVOKED
    as_of_ts = pd.Timestamp(as_of, tz="UTC")

    matched = joined[live & activated & ~before]
    days = (matched["activated_at"] - matched["shipped_at"]).dt.total_seconds() / 86400
    matched = matched.assign(days_to_activation=days.round(2))
    early = joined[live & activated & before]
    days = (early["shipped_at"] - early["activated_at"]).dt.total_seconds() / 86400
    early = early.assign(days_early=days.round(2))
    pending = joined[status == DeviceStatus.PENDING]
    age = (as_of_ts - pending["shipped_at"]).dt.days.clip(lower=0)
    bucket = pd.cut(age, bins=[-1, 30, 90, np.inf], labels=list(AGING_BUCKETS))
    pending = pending.assign(age_days=age, aging_bucket=bucket.astype(str))

    if shipped is not None:
        shipped_dev |= dev["serial_hash"].isin(shipped).to_numpy()
    not_shipped = dev[~shipped_dev]
    start, end = period
    activated_ns = not_shipped[not_shipped["activated_at"].notna()]
    if start is not None:
        activated_ns = activated_ns[activated_ns["activated_at"] >= start]
    if end is not None:
        activated_ns = activated_ns[activated_ns["activated_at"] < end]
        not_shipped = not_shipped[not_shipped["registered_at"] < end]
    return {
        "matched": _columns(matched, SHIP_COLS + DEV_COLS + ["activated_at", "days_to_activation"]),
        "activated_not_shipped": _columns(
            activated_ns, [*DEV_COLS, "line", "user", "activated_at"]
        ),
        "activated_before_shipped": _columns(
            early, SHIP_COLS + DEV_COLS + ["activated_at", "days_early"]
        ),
        "shipped_not_activated": _columns(
            pending, SHIP_COLS + DEV_COLS + ["age_days", "aging_bucket"]
        ),
        "shipped_unknown_serial": _columns(first[~is_known], SHIP_COLS),
        "duplicate_shipment": _columns(dup, [*SHIP_COLS, "first_line", "first_shipped_at"]),
        "shipped_revoked": _columns(
            joined[status == DeviceStatus.REVOKED],
            SHIP_COLS + DEV_COLS + ["line", "user", "activated_at", "revoked_at"],
        ),
        "registered_not_shipped": _columns(
            not_shipped[not_shipped["status"] == DeviceStatus.PENDING], [*DEV_COLS, "registered_at"]
        ),
    }


SHIP_COLS = [LINE, "serial", "shipped_at", "order_id", "customer", "destination", "carrier"]
DEV_COLS = ["device_id", "device_type", "model", "batch", "status"]


def _columns(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    out = frame[cols].rename(columns={LINE: "shipments_line"}).reset_index(drop=True)
    return out


def neutralise(frame: pd.DataFrame) -> pd.DataFrame:
    """Make text cells safe to open in a spreadsheet (no formula injection, OWASP CSV).

    A cell starting with = + - @ tab or CR gets a leading apostrophe. Only the first character
    of each cell is looked at, as a numpy array: tens of milliseconds for a million cells.
    """
    out = frame.copy()
    for col in out.columns:
        column = out[col]
        if isinstance(column.dtype, pd.CategoricalDtype):
            column = column.astype(object)
        if pd.api.types.is_string_dtype(column) or column.dtype == object:
            values = column.to_numpy(dtype=object, copy=True)
            # A missing cell's first character ("n" of nan, "N" of None) is never a formula's.
            hit = np.isin(values.astype("U1"), _FORMULA_CHARS)
            if hit.any():
                values[hit] = np.char.add("'", values[hit].astype(str)).astype(object)
            out[col] = values
    return out


def _iso_utc(frame: pd.DataFrame) -> pd.DataFrame:
    """Timestamp columns as ISO 8601 UTC text (2026-11-28T10:00:00Z); a missing one stays empty."""
    out = frame.copy(deep=False)
    for col in frame.columns:
        if isinstance(frame[col].dtype, pd.DatetimeTZDtype):
            stamps = frame[col].dt.tz_convert("UTC").dt.tz_localize(None)
            seconds = stamps.to_numpy(dtype="datetime64[s]")
            text = np.char.add(np.datetime_as_string(seconds, unit="s"), "Z").astype(object)
            text[stamps.isna().to_numpy()] = np.nan
            out[col] = text
    return out


def _to_csv(frame: pd.DataFrame, path: Path, append: bool = False) -> None:
    """FRAME's rows as a report CSV holds them (UTC text stamps, no formula cells): a new file
    with a header, or (APPEND) more rows at the end of one."""
    neutralise(_iso_utc(frame)).to_csv(
        path, index=False, mode="a" if append else "w", header=not append
    )


class _Report:
    """A report folder being built: in a hidden sibling folder, the CSVs appended a part at a
    time, then the PDF and summary.json; then renamed into place (never half a report)."""

    def __init__(self, target: Path, formats: tuple[str, ...]) -> None:
        if target.exists():
            raise ProvisionError(
                f"{target}: report folder already exists; remove it or choose another"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        self.target, self.formats = target, formats
        self.tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        self._started: set[str] = set()

    @property
    def csv(self) -> bool:
        return "csv" in self.formats

    @staticmethod
    def write_part(folder: Path, k: int, frames: dict[str, pd.DataFrame]) -> None:
        """Partition K's rows of each category as a CSV file of its own (header included) in
        FOLDER, for append_part."""
        for name in CATEGORY_NAMES:
            _to_csv(frames[name], folder / f".{name}.{k}.csv")

    def append_part(self, k: int) -> None:
        """Partition K's files (write_part) appended to the report's CSVs, the header once."""
        if not self.csv:
            return
        for name in CATEGORY_NAMES:
            part, whole = self.tmp / f".{name}.{k}.csv", self.tmp / f"{name}.csv"
            if name not in self._started:
                part.rename(whole)
                self._started.add(name)
                continue
            with part.open("rb") as src, whole.open("ab") as dst:
                src.readline()  # the header, written once already
                shutil.copyfileobj(src, dst, 1 << 20)
            part.unlink()

    def append(self, frames: dict[str, pd.DataFrame], on_progress: Progress = _no_progress) -> None:
        if not self.csv:
            return
        total, done = sum(len(frames[n]) for n in CATEGORY_NAMES), 0
        on_progress("write", 0, total)
        for name in CATEGORY_NAMES:
            first = name not in self._started
            _to_csv(frames[name], self.tmp / f"{name}.csv", append=not first)
            self._started.add(name)
            done += len(frames[name])
            on_progress("write", done, total)

    def finish(self, result: ReconcileResult) -> None:
        tmp, target = self.tmp, self.target
        files = [f"{name}.csv" for name in CATEGORY_NAMES if name in self._started]
        if "pdf" in self.formats:
            from provision.report import render_reconciliation_pdf

            render_reconciliation_pdf(result, tmp / "report.pdf")
            files.append("report.pdf")
        files.append("summary.json")
        result.files = sorted(files)
        (tmp / "summary.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
        for p in tmp.iterdir():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise ProvisionError(
                    f"{target}: report folder appeared meanwhile; not replaced"
                ) from None
            raise

    def abandon(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_report(
    result: ReconcileResult,
    target: Path,
    formats: tuple[str, ...],
    on_progress: Progress = _no_progress,
) -> None:
    """A report of RESULT (its frames whole) into TARGET, atomically."""
    report = _Report(target, formats)
    try:
        report.append(result.frames, on_progress)
        report.finish(result)
    except BaseException:
        report.abandon()
        raise


__all__ = [
    "CATEGORIES",
    "CATEGORY_NAMES",
    "ManifestError",
    "ReconcileResult",
    "reconcile_shipments",
]
