"""Benchmark the nightly batch end to end against the original approach (issue 6).

    .venv/bin/python benchmarks/pipeline_bench.py --n 100000

Set-up (not timed): a temporary folder with a keyring and a synthetic serials manifest of N
devices (serial, device_type, manufacturer, model); the label template is avery-5160 (US Letter,
3 x 10 labels a sheet) unless --template says otherwise.

Measured, in this process and in the same run:
  * provision: the nightly job's path, pipeline.register_and_render into a fresh SQLite
    registry and one published PDF (read_manifest validates, register_batch hashes, inserts and
    signs chunk by chunk, and each committed chunk's labels go straight to the render workers,
    --workers processes, default one per CPU as in production). Register stages come from the
    on_progress callback and from timing wrappers the benchmark puts around library functions
    (pipeline.read_manifest, pipeline.serial_hash, pipeline.device_token, Devices.insert;
    the wrappers add about 0.3 us a call); the library has no timing code. read_manifest is the
    first, validating pass; the second pass reads the file again chunk by chunk while
    registering, and is part of "register other". With
    --sequential, the same again as register_batch then render_batch_labels, for comparison.
    Peak memory is sampled every 0.1 s as the proportional set size (Pss) of this process and
    its render workers together (the figure held to the goal); ru_maxrss of this process and of
    the largest worker, taken after this phase (the baseline runs later), is shown beside it.
  * the render stages one by one (read, encode, draw, compress, write): the first
    --breakdown-n labels (default 20,000) rendered again in this process alone, with wrappers
    around render.encode_qr, render._draw_label and render._compress. In the timed run encode,
    draw and compress run in the workers, read and write here, side by side.
  * the original approach, rebuilt faithfully on --baseline-n devices (default min(N, 500)) and
    extrapolated per device: csv reader with per-row checks, a ~250-character base64 JSON payload
    signed with HMAC-SHA256, one SQLAlchemy ORM object and one commit per device into a SQLite
    table, a segno PNG per device drawn into the PDF with reportlab drawImage.

Check: a random sample of --sample labels (default 100) is cut out of provision's PDF rasterised
with PDFium at 300 dpi, decoded with zxing-cpp and verified with provision.payload.verify_payload;
each must also carry the device of its manifest row. Exit status 1 if any fails (or, with
--strict, if the goal of issue 6 is not met), else 0.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import functools
import hashlib
import hmac
import io
import itertools
import json
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import segno
import zxingcpp
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen.canvas import Canvas
from sqlalchemy import DateTime, Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from provision import files, pipeline
from provision.keys import Keyring, init_keyring
from provision.labels import render
from provision.labels.templates import MM_PER_INCH, Template, load_template
from provision.payload import verify_payload
from provision.registry import Registry
from provision.serials import device_id

BASE_URL = "https://id.example.com"
BATCH = "bench"
GOAL_DPS = 3300.0  # 1,000,000 devices in 5 minutes
GOAL_RATIO = 60.0
GOAL_MB = 1024.0
DECODE_DPI = 300
QR_ONLY = zxingcpp.barcode_formats_from_str("QRCodeModel2")  # not the QR family: no Micro QR
PNG_SCALE = 4  # pixels a module: ~0.2 mm on a 25 mm label, about 130 dpi
SERIAL_RE = re.compile(r"[!-~]{1,64}")


def serial_of(i: int) -> str:
    return f"PB{i:09d}"


def write_manifest(path: Path, n: int) -> None:
    """N devices, streamed to disk (the benchmark's own memory stays flat)."""
    models = [f"M-{k}" for k in range(7)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["serial", "device_type", "manufacturer", "model"])
        for i in range(n):
            w.writerow([serial_of(i), "sensor" if i % 3 else "gateway", "Acme", models[i % 7]])


class MemorySampler:
    """Peak memory of this process and its children together, sampled every 0.1 s.

    Proportional set size (Pss, /proc/PID/smaps_rollup): a page shared by n processes counts
    1/n in each, so the sum is what the run really occupies. ru_maxrss would count the pages a
    forked render worker shares with this process twice.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024

    def _run(self) -> None:
        while True:
            self.peak_kb = max(self.peak_kb, self.sample_kb())
            if self._stop.wait(self.interval):
                return

    @staticmethod
    def sample_kb() -> int:
        pids = [os.getpid()]
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):
                pids += [int(p) for p in (task / "children").read_text().split()]
        total = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        return total


def peak_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory; for RUSAGE_CHILDREN, that of the largest child waited for."""
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


# -- provision, in process ---------------------------------------------------------------------


class Clock:
    """Seconds spent in wrapped functions, and first/last times of progress stages."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def progress(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        self.first.setdefault(stage, now)
        self.last[stage] = now

    def span(self, stage: str) -> float:
        return self.last.get(stage, 0.0) - self.first.get(stage, 0.0)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        spent, clock = self.spent, time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += clock() - t0

        return timed


@contextmanager
def patched(obj: Any, attr: str, value: Any) -> Iterator[None]:
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


def run_provision(
    work: Path,
    manifest: Path,
    keyring: Keyring,
    template: Template,
    chunk: int,
    workers: int | None,
    sequential: bool = False,
) -> tuple[float, list[tuple[str, float]], Path, int]:
    """The whole pipeline as `provision run` does it; (seconds, stages, PDF path, pages).

    register_and_render: a new batch's labels are drawn by the render workers while the
    remaining chunks register. With `sequential`, register_batch then render_batch_labels.
    """
    db = work / ("registry-seq.db" if sequential else "registry.db")
    out = work / ("output-seq" if sequential else "output")
    registry = Registry(f"sqlite:///{db}")  # schema creation: not timed
    clock = Clock()
    try:
        with ExitStack() as stack:
            stack.enter_context(
                patched(pipeline, "device_token", clock.wrap("sign", pipeline.device_token))
            )
            stack.enter_context(
                patched(pipeline, "read_manifest", clock.wrap("validate", pipeline.read_manifest))
            )
            stack.enter_context(
                patched(pipeline, "serial_hash", clock.wrap("hash", pipeline.serial_hash))
            )
            stack.enter_context(
                patched(registry.devices, "insert", clock.wrap("insert", registry.devices.insert))
            )
            stack.enter_context(
                patched(
                    pipeline,
                    "RENDERERS",
                    {"pdf": functools.partial(render.render_label_sheets, workers=workers)},
                )
            )
            t0 = time.perf_counter()
            if sequential:
                result = pipeline.register_batch(
                    registry,
                    keyring,
                    manifest,
                    batch=BATCH,
                    chunk_size=chunk,
                    on_progress=clock.progress,
                )
                labels = pipeline.render_batch_labels(
                    registry,
                    BATCH,
                    template,
                    out,
                    BASE_URL,
                    keyring=keyring,
                    on_progress=clock.progress,
                )
            else:
                result, labels = pipeline.register_and_render(
                    registry,
                    keyring,
                    manifest,
                    batch=BATCH,
                    template=template,
                    output_dir=out,
                    base_url=BASE_URL,
                    chunk_size=chunk,
                    workers=workers,
                    on_progress=clock.progress,
                )
            total = time.perf_counter() - t0
            assert result.registered == result_n(manifest), result
    finally:
        registry.close()
    s = clock.spent
    hashing = s["hash"]
    t_validate = s["validate"]
    t_register = clock.last["register"] - t0
    processes = workers if workers is not None else render._cpu_count()
    stages = [
        ("validate (read_manifest, pass 1)", t_validate),
        ("hash (serial hashes)", hashing),
        ("insert (devices.insert)", s["insert"]),
        ("sign (device_token)", s["sign"]),
        ("register other", t_register - t_validate - hashing - s["insert"] - s["sign"]),
        ("= registered (start to last chunk)", t_register),
        (
            f"render, after that ({processes} proc.{'' if sequential else ', from chunk 1 on'})",
            total - t_register,
        ),
        ("total", total),
    ]
    return total, stages, Path(labels.file), labels.pages


def render_breakdown(
    work: Path, keyring: Keyring, template: Template, n: int
) -> list[tuple[str, float]]:
    """CPU seconds of each render stage for the first N labels of the batch, in this process.

    In the timed run these stages are spread over the worker processes (encode, draw,
    compress) and this one (read, write); here they run one after another, so each can be
    timed with a wrapper.
    """
    registry = Registry(f"sqlite:///{work / 'registry.db'}")
    clock = Clock()
    try:
        batch_id = registry.batches.id_of(BATCH)
        assert batch_id is not None
        t0 = time.perf_counter()
        labels = list(
            itertools.islice(
                pipeline.batch_labels(registry, batch_id, BATCH, template, BASE_URL, keyring), n
            )
        )
        t_read = time.perf_counter() - t0
        with ExitStack() as stack:
            stack.enter_context(
                patched(render, "encode_qr", clock.wrap("encode", render.encode_qr))
            )
            stack.enter_context(
                patched(render, "_draw_label", clock.wrap("draw", render._draw_label))
            )
            stack.enter_context(
                patched(render, "_compress", clock.wrap("compress", render._compress))
            )
            t1 = time.perf_counter()
            with files.atomic_writer(work / "breakdown.pdf") as fh:
                render.render_label_sheets(labels, template, fh, workers=1)
            t_render = time.perf_counter() - t1
    finally:
        registry.close()
    s = clock.spent
    return [
        ("read (registry rows -> labels)", t_read),
        ("encode (encode_qr)", s["encode"]),
        ("draw (rest of _draw_label)", s["draw"] - s["encode"]),
        ("compress (page contents)", s["compress"]),
        ("write (PDF objects, font, fsync)", t_render - s["draw"] - s["compress"]),
        ("render total, one process", t_read + t_render),
    ]


def result_n(manifest: Path) -> int:
    with open(manifest, "rb") as fh:
        return sum(1 for _ in fh) - 1


# -- the original approach ---------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class OldDevice(Base):
    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[str] = mapped_column(String(32), unique=True)
    device_type: Mapped[str] = mapped_column(String(64))
    manufacturer: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    payload: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(DateTime)


def old_payload(secret: bytes, did: str, row: dict[str, str], now: datetime) -> str:
    """base64(JSON with an HMAC-SHA256 tag): about 250 characters, mixed case (QR byte mode)."""
    body = {
        "v": 1,
        "id": did,
        "type": row["device_type"],
        "mfr": row["manufacturer"],
        "model": row["model"],
        "batch": f"{BATCH}-{now:%Y%m%d}",
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(days=365)).timestamp()),
    }
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    body["sig"] = base64.b64encode(hmac.new(secret, data, hashlib.sha256).digest()).decode()
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()


def run_original(
    work: Path, manifest: Path, keyring: Keyring, template: Template, n: int
) -> tuple[float, list[tuple[str, float]], int]:
    """The original script, device by device; (seconds, stages, payload length)."""
    secret, pepper = keyring.active.secret or b"", keyring.pepper
    engine = create_engine(f"sqlite:///{work / 'original.db'}")
    Base.metadata.create_all(engine)
    out = work / "original.pdf"
    t = template
    canvas = Canvas(str(out), pagesize=(t.page_width * mm, t.page_height * mm))
    spent: dict[str, float] = defaultdict(float)
    clock = time.perf_counter
    side = min(t.label_height, t.label_width) - 2 * t.edge
    length = 0
    t_start = clock()
    with open(manifest, newline="", encoding="utf-8") as fh, Session(engine) as session:
        reader = csv.DictReader(fh)
        for i, row in enumerate(reader):
            if i >= n:
                break
            t0 = clock()
            serial = row["serial"].strip()
            if not SERIAL_RE.fullmatch(serial):
                raise ValueError(f"line {i + 2}: bad serial")
            did = device_id(pepper, serial)
            now = datetime.now(UTC)
            payload = old_payload(secret, did, row, now)
            url = f"{BASE_URL}/activate?p={payload}"
            length = len(payload)
            t1 = clock()
            session.add(
                OldDevice(
                    serial=serial,
                    device_id=did,
                    device_type=row["device_type"],
                    manufacturer=row["manufacturer"],
                    model=row["model"],
                    payload=payload,
                    created_at=now,
                )
            )
            session.commit()
            t2 = clock()
            png = io.BytesIO()
            segno.make_qr(url, error="m").save(png, kind="png", scale=PNG_SCALE, border=4)
            png.seek(0)
            t3 = clock()
            position = i % t.per_page
            if i and position == 0:
                canvas.showPage()
            x0, y0 = t.label_origin(position)
            top = t.page_height - y0
            canvas.drawImage(
                ImageReader(png),
                (x0 + t.edge) * mm,
                (top - t.edge - side) * mm,
                side * mm,
                side * mm,
            )
            canvas.setFont("Helvetica", 7)
            canvas.drawString((x0 + side + 2 * t.edge) * mm, (top - t.label_height / 2) * mm, did)
            t4 = clock()
            spent["validate+hash+sign"] += t1 - t0
            spent["insert (commit per row)"] += t2 - t1
            spent["encode (segno PNG)"] += t3 - t2
            spent["draw (drawImage)"] += t4 - t3
    t5 = clock()
    canvas.save()
    spent["write"] = clock() - t5
    total = clock() - t_start
    engine.dispose()
    stages = [(k, v) for k, v in spent.items()]
    stages.append(("total", total))
    return total, stages, length


# -- check the labels --------------------------------------------------------------------------


def check_sample(
    pdf_path: Path, keyring: Keyring, template: Template, n: int, sample: int, seed: int
) -> list[str]:
    """Decode SAMPLE random labels cut from their cells; problems found, empty when all pass."""
    rng = random.Random(seed)
    picks = sorted(rng.sample(range(n), min(sample, n)))
    problems: list[str] = []
    per_page = template.per_page
    k = DECODE_DPI / MM_PER_INCH
    doc = pdfium.PdfDocument(str(pdf_path))
    try:
        by_page: dict[int, list[int]] = defaultdict(list)
        for i in picks:
            by_page[i // per_page].append(i)
        for page_no, items in by_page.items():
            page = doc[page_no]
            image = page.render(scale=DECODE_DPI / 72, grayscale=True).to_numpy()
            page.close()
            for i in items:
                x, y = template.label_origin(i % per_page)
                cell = image[
                    int(y * k) : int((y + template.label_height) * k),
                    int(x * k) : int((x + template.label_width) * k),
                ]
                codes = zxingcpp.read_barcodes(cell, formats=QR_ONLY)
                if len(codes) != 1:
                    problems.append(f"label {i + 1}: {len(codes)} QR codes decoded")
                    continue
                code = codes[0]
                v = verify_payload(code.text, keyring)
                want = device_id(keyring.pepper, serial_of(i))
                if not v.valid:
                    problems.append(f"label {i + 1}: does not verify ({v.reason})")
                elif v.device_id != want:
                    problems.append(f"label {i + 1}: device {v.device_id}, expected {want}")
                elif code.ec_level != "M" or code.format != zxingcpp.BarcodeFormat.QRCode:
                    problems.append(f"label {i + 1}: {code.format} at level {code.ec_level}")
    finally:
        doc.close()
    return problems


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="devices in the manifest")
    ap.add_argument("--baseline-n", type=int, help="devices for the original approach")
    ap.add_argument("--sample", type=int, default=100, help="labels decoded and verified")
    ap.add_argument("--template", default="avery-5160")
    ap.add_argument("--chunk-size", type=int, default=pipeline.DEFAULT_CHUNK_SIZE)
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--no-baseline", action="store_true", help="skip the original approach")
    ap.add_argument(
        "--workers", type=int, help="render processes (default: one per CPU, as in production)"
    )
    ap.add_argument("--breakdown-n", type=int, default=20_000, help="labels timed stage by stage")
    ap.add_argument(
        "--sequential",
        action="store_true",
        help="also time register, then render (before they overlapped), for comparison",
    )
    ap.add_argument("--strict", action="store_true", help="exit 1 when the goal is not met")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--dir", type=Path, help="work here instead of a temporary folder")
    args = ap.parse_args(argv)
    n = args.n
    base_n = min(n, args.baseline_n or 500)
    template = load_template(args.template)

    work = args.dir or Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"work folder: {work}  (cpus: {os.cpu_count()})", flush=True)
        keyring = init_keyring(work / "keys" / "keyring.json")
        manifest = work / "serials.csv"
        t0 = time.perf_counter()
        write_manifest(manifest, n)
        print(f"setup: manifest of {n:,} devices in {time.perf_counter() - t0:.1f} s", flush=True)

        print("timing: provision pipeline (in process) ...", flush=True)
        with MemorySampler() as memory:
            total, stages, pdf_path, pages = run_provision(
                work, manifest, keyring, template, args.chunk_size, args.workers
            )
        peak_main, peak_worker = peak_mb(), peak_mb(resource.RUSAGE_CHILDREN)
        processes = args.workers if args.workers is not None else render._cpu_count()
        peak = memory.peak_mb
        dps = n / total
        size_mb = pdf_path.stat().st_size / 2**20
        print(f"provision: {n:,} devices, {pages:,} pages, {size_mb:.1f} MB PDF in {total:.2f} s")
        seq_stages: list[tuple[str, float]] = []
        if args.sequential:
            print("timing: the same, register then render (--sequential) ...", flush=True)
            _, seq_stages, _, _ = run_provision(
                work, manifest, keyring, template, args.chunk_size, args.workers, True
            )
        breakdown_n = min(n, args.breakdown_n)
        print(f"timing: render stages on {breakdown_n:,} labels, one process ...", flush=True)
        breakdown = render_breakdown(work, keyring, template, breakdown_n)

        base_dps: float | None = None
        base_stages: list[tuple[str, float]] = []
        payload_len = 0
        if not args.no_baseline:
            print(f"timing: original approach on {base_n:,} devices ...", flush=True)
            base_total, base_stages, payload_len = run_original(
                work, manifest, keyring, template, base_n
            )
            base_dps = base_n / base_total

        print(f"checking: {min(args.sample, n)} random labels at {DECODE_DPI} dpi ...", flush=True)
        problems = check_sample(pdf_path, keyring, template, n, args.sample, args.seed)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    ratio = dps / base_dps if base_dps else None
    goal = dps >= GOAL_DPS and peak <= GOAL_MB and (ratio is None or ratio >= GOAL_RATIO)
    table = [
        ("N (devices)", f"{n:,}"),
        ("template", f"{template.name} ({template.per_page} a page)"),
        ("provision s (end to end)", f"{total:.2f}"),
        ("provision devices/s", f"{dps:,.0f}"),
        (
            f"original devices/s ({base_n:,}, extrapolated)",
            f"{base_dps:,.1f}" if base_dps else "-",
        ),
        ("original payload chars", str(payload_len) if payload_len else "-"),
        ("ratio", f"{ratio:.1f}x" if ratio else "-"),
        ("peak MB (ru_maxrss, main process)", f"{peak_main:.0f}"),
        ("peak MB (ru_maxrss, largest render worker)", f"{peak_worker:.0f}"),
        (f"peak MB (Pss, main + {processes} workers)", f"{peak:.0f}"),
        ("1,000,000 devices at this rate", f"{1_000_000 / dps / 60:.1f} min"),
        (
            f"labels verified ({min(args.sample, n)} sampled)",
            "all" if not problems else f"{len(problems)} FAILED",
        ),
        (
            f"goal (>= {GOAL_DPS:,.0f}/s, >= {GOAL_RATIO:.0f}x, <= {GOAL_MB:.0f} MB)",
            "met" if goal else "NOT met",
        ),
    ]
    width = max(len(k) for k, _ in table + stages + seq_stages + base_stages + breakdown)
    print()
    print(f"{'figure':<{width}}  value")
    for k, v in table:
        print(f"{k:<{width}}  {v}")
    print()
    print(f"{'provision stage':<{width}}  {'seconds':>8}  {'us/device':>9}")
    for stage, seconds in stages:
        print(f"{stage:<{width}}  {seconds:8.2f}  {seconds / n * 1e6:9.1f}")
    if seq_stages:
        print()
        print(
            f"{'register, then render (--sequential)':<{width}}  {'seconds':>8}  {'us/device':>9}"
        )
        for stage, seconds in seq_stages:
            print(f"{stage:<{width}}  {seconds:8.2f}  {seconds / n * 1e6:9.1f}")
    print()
    print(
        f"{'render CPU, one process (' + format(breakdown_n, ',') + ')':<{width}}  "
        f"{'seconds':>8}  {'us/label':>9}"
    )
    for stage, seconds in breakdown:
        print(f"{stage:<{width}}  {seconds:8.2f}  {seconds / breakdown_n * 1e6:9.1f}")
    if base_stages:
        print()
        print(
            f"{'original stage (' + format(base_n, ',') + ')':<{width}}  {'seconds':>8}  "
            f"{'us/device':>9}"
        )
        for stage, seconds in base_stages:
            print(f"{stage:<{width}}  {seconds:8.2f}  {seconds / base_n * 1e6:9.1f}")
    for p in problems:
        print(f"FAILED: {p}")
    if problems:
        return 1
    return 1 if args.strict and not goal else 0


if __name__ == "__main__":
    sys.exit(main())
