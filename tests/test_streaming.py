"""Manifests are validated in one streaming pass and registered from a second one.

Block boundaries must not change what is read: every fixture file gives the same errors, rows
and digest whatever the block size. A file that changes between the passes stops the batch
before any row that was not validated is registered. Registering keeps only a fingerprint a row.
"""

from __future__ import annotations

import csv
import gc
import os
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from provision import manifests
from provision.errors import BatchError, ManifestError
from provision.keys import Keyring
from provision.manifests import COMPONENTS, LINE, SERIALS, Manifest, read_manifest
from provision.pipeline import register_batch
from provision.registry import Registry
from tests.helpers import serials_csv, write_csv

DATA = Path(__file__).parent / "data"
FILES = sorted(p.name for p in DATA.glob("*.csv"))


def spec_of(name: str) -> manifests.ManifestSpec:
    return COMPONENTS if name.startswith("components") else SERIALS


def snapshot(m: Manifest) -> dict[str, Any]:
    rows = [
        tuple(r)
        for chunk in m.chunks(3)
        for r in chunk.itertuples(index=False)  # every good row, normalised, in order
    ]
    return {
        "errors": sorted(m.errors),
        "fatal": m.fatal,
        "sha256": m.sha256,
        "rows": m.rows,
        "good": rows,
        "header": m.header,
    }


@pytest.mark.parametrize("name", FILES)
def test_block_boundaries_do_not_change_what_a_file_reads_as(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_of(name)
    whole = snapshot(read_manifest(DATA / name, spec, device_type_default="gadget"))
    for block_bytes, block_rows in ((1, 1), (7, 2), (64, 3)):
        monkeypatch.setattr(manifests, "BLOCK_BYTES", block_bytes)
        monkeypatch.setattr(manifests, "BLOCK_ROWS", block_rows)
        m = read_manifest(DATA / name, spec, device_type_default="gadget")
        assert snapshot(m) == whole, (block_bytes, block_rows)


@pytest.mark.parametrize("multiline", [False, True], ids=["fast-reader", "csv-reader"])
def test_duplicates_and_line_numbers_hold_across_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, multiline: bool
) -> None:
    rows = [[f"SN{i:05d}", "sensor", "m"] for i in range(400)]
    rows[350][0] = rows[3][0]  # a duplicate blocks apart
    rows[200][0] = rows[3][0]
    rows[120][0] = "bad serial"
    if multiline:
        rows[10][2] = "two\nlines"  # a quoted line break: the csv module reads this file
    path = write_csv(tmp_path / "s.csv", ["serial", "device_type", "model"], rows)
    monkeypatch.setattr(manifests, "BLOCK_BYTES", 256)
    monkeypatch.setattr(manifests, "BLOCK_ROWS", 16)
    m = read_manifest(path, SERIALS)
    assert m._fast is not multiline and len(m._digests) > 10
    shift = 1 if multiline else 0  # rows after the record with a line break start a line later
    line = {3: 5, 120: 122 + shift, 200: 202 + shift, 350: 352 + shift}
    first = line[3]
    control = [(12, "contains a control character")] if multiline else []
    assert sorted((e.line, e.reason) for e in m.errors) == [
        (first, f"same serial again on line {line[200]}, {line[350]}"),
        *control,
        (line[120], "serial contains a space, outside the GS1 AI 82 character set"),
        (line[200], f"same serial as line {first}"),
        (line[350], f"same serial as line {first}"),
    ]
    good = pd.concat(list(m.chunks(7)))
    assert len(good) == 396 - len(control) == m.good
    assert good[LINE].is_monotonic_increasing and not set(good[LINE]) & m.bad_lines()


def test_components_find_their_device_rows_across_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keyring: Keyring, sqlite_url: str
) -> None:
    """Owners are matched by fingerprint: a rejected owner line is named, an unknown serial too."""
    monkeypatch.setattr(manifests, "BLOCK_BYTES", 200)
    devices = [[f"SN{i:04d}", "sensor"] for i in range(300)]
    devices[250][1] = ""  # rejected: no device type
    serials = write_csv(tmp_path / "s.csv", ["serial", "device_type"], devices)
    parts = [[f"SN{i:04d}", "board", f"rev{i % 3}"] for i in range(299, -1, -1)]
    parts.append(["SN9999", "board", "rev0"])
    comps = write_csv(tmp_path / "c.csv", ["serial", "component_type", "component_spec"], parts)
    registry = Registry(sqlite_url)
    try:
        with pytest.raises(ManifestError) as info:
            register_batch(registry, keyring, serials, components_path=comps, batch="b")
        assert {str(e) for e in info.value.rows} == {
            f"{serials}:252: device_type: device type missing and no --device-type default given",
            f"{comps}:51: serial: its device row ({serials} line 252) is rejected",
            f"{comps}:302: serial: serial is neither in {serials} nor registered",
        }
        assert registry.devices.count() == 0
        res = register_batch(
            registry,
            keyring,
            serials,
            components_path=comps,
            batch="b",
            reject_file=tmp_path / "rejects.csv",
            chunk_size=7,
        )
        assert (res.registered, res.components, res.rejected) == (299, 299, 3)
        assert registry.devices.count_components() == 299
        with (tmp_path / "rejects.csv").open(newline="") as fh:
            rejects = list(csv.DictReader(fh))
        assert [(r["source_line"], r["serial"]) for r in rejects] == [
            ("252", "SN0250"),
            ("51", "SN0250"),
            ("302", "SN9999"),
        ]
    finally:
        registry.close()


def test_a_repeated_component_row_in_another_chunk_is_stored_once(
    tmp_path: Path, keyring: Keyring, sqlite_url: str
) -> None:
    serials = serials_csv(tmp_path / "s.csv", 3)
    row = ["SN000001", "board", "rev1"]
    comps = write_csv(
        tmp_path / "c.csv",
        ["serial", "component_type", "component_spec"],
        [row, ["SN000000", "board", "rev1"], ["SN000002", "psu", "5V"], row],
    )
    registry = Registry(sqlite_url)
    try:
        res = register_batch(
            registry, keyring, serials, components_path=comps, batch="b", chunk_size=1
        )
        assert (res.registered, res.components) == (3, 3)
        assert registry.devices.count_components() == 3
    finally:
        registry.close()


@pytest.mark.parametrize("multiline", [False, True], ids=["fast-reader", "csv-reader"])
def test_a_file_changed_after_validation_stops_before_its_unvalidated_rows(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keyring: Keyring,
    sqlite_url: str,
    multiline: bool,
) -> None:
    monkeypatch.setattr(manifests, "BLOCK_BYTES", 300)
    monkeypatch.setattr(manifests, "BLOCK_ROWS", 10)
    rows = [[f"SN{i:04d}", "sensor", "m"] for i in range(2000)]  # more than a read buffer
    path = write_csv(tmp_path / "s.csv", ["serial", "device_type", "model"], rows)
    text = path.read_text()
    if multiline:  # a blank first line narrower than the header: only the csv module reads it
        text = ",\n" + text
        path.write_text(text)
    assert read_manifest(path, SERIALS)._fast is not multiline
    registered: list[str] = []

    def tamper(rows_: list[dict[str, Any]], serials: list[str]) -> None:
        if not registered:  # the first chunk is in; now the last row turns bad
            path.write_text(text.replace("SN1999", "SN 1999"))
        registered.extend(serials)

    registry = Registry(sqlite_url)
    try:
        with pytest.raises(BatchError, match="changed after it was validated"):
            register_batch(registry, keyring, path, batch="b", chunk_size=5, on_registered=tamper)
        n = registry.devices.count()
        assert 5 <= n < 1999 and n == len(registered)
        assert "SN 1999" not in registered and "SN1999" not in registered
        with pytest.raises(ManifestError, match="1 bad row"):
            register_batch(registry, keyring, path, batch="b")  # validated again: rejected
        assert registry.devices.count() == n
    finally:
        registry.close()


def test_blank_lines_added_before_a_block_count_as_a_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same bytes in every block with rows, but their lines shifted: not the validated file."""
    monkeypatch.setattr(manifests, "BLOCK_BYTES", 32)
    path = tmp_path / "s.csv"
    head = b"serial,device_type\nSN1,sensor_x\n"  # 32 bytes: one block each
    blank = b" " * 31 + b"\n"
    assert len(head) == len(blank) == 32
    tail = b"SN2,sensor\nSN 3,sensor\nSN4,sensor\n"
    path.write_bytes(head + blank + tail)
    m = read_manifest(path, SERIALS)
    assert m._fast and m.bad_lines() == {5}
    path.write_bytes(head + b"\n" * 32 + tail)  # the blank block: as long, 32 lines now
    with pytest.raises(BatchError, match="changed after it was validated"):
        list(m.chunks(10))


def test_a_blank_line_opening_a_later_block_keeps_the_fast_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = "serial,device_type,model\n"
    path = tmp_path / "s.csv"
    path.write_text(header + ",\nSN1,sensor,a\nSN2,sensor,b\n")
    monkeypatch.setattr(manifests, "BLOCK_BYTES", len(header) + 1)  # block two opens with ","
    m = read_manifest(path, SERIALS)
    assert m._fast and not m.errors
    assert [tuple(r) for r in pd.concat(list(m.chunks(5)))[["serial", LINE]].to_numpy()] == [
        ("SN1", 3),
        ("SN2", 4),
    ]
    with pytest.raises(ValueError, match="at least 1"):
        next(m.chunks(0))


@pytest.mark.parametrize("multiline", [False, True], ids=["fast-reader", "csv-reader"])
def test_a_manifest_from_a_pipe_is_read_twice_from_a_copy(
    tmp_path: Path, keyring: Keyring, sqlite_url: str, multiline: bool
) -> None:
    """`provision register <(zcat serials.csv.gz)`: a pipe cannot be read again, its copy can."""
    rows = [[f"SN{i:04d}", "sensor", "m"] for i in range(50)]
    text = write_csv(tmp_path / "s.csv", ["serial", "device_type", "model"], rows).read_bytes()
    if multiline:
        text = b",\n" + text
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(text,))
    writer.start()
    m = read_manifest(fifo, SERIALS)
    writer.join()
    assert m._fast is not multiline and m.good == 50 and m.name == str(fifo)
    copy = m._source
    assert copy is not None and copy.exists()
    registry = Registry(sqlite_url)
    try:
        from provision.pipeline import register_manifests

        res = register_manifests(registry, keyring, m, None, batch="b")
        assert res.registered == 50 == registry.devices.count()
    finally:
        registry.close()
    del m
    gc.collect()
    assert not copy.exists()


def _peak_reading(path: Path) -> int:
    """Peak bytes traced while validating PATH and walking its good rows in chunks."""
    gc.collect()
    tracemalloc.start()
    try:
        m = read_manifest(path, SERIALS)
        for chunk in m.chunks(5000):
            del chunk
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_validating_and_reading_a_manifest_takes_memory_flat_in_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five times the rows, about the same peak: a row keeps 20 bytes, not the row itself.

    Both files span many blocks, so the blocks in flight weigh the same in each; what differs
    is what the reader keeps a row. Holding the rows (about 400 bytes each, as the reader did
    before it streamed) would add some 80 MB here; the fingerprints add 4 MB.
    """
    monkeypatch.setattr(manifests, "BLOCK_BYTES", 1 << 17)
    small = _peak_reading(serials_csv(tmp_path / "small.csv", 50_000))
    large = _peak_reading(serials_csv(tmp_path / "large.csv", 250_000))
    assert large - small < 200_000 * 40, (small, large)
