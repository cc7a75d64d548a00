"""A new batch is registered and rendered at once (pipeline.register_and_render, `provision run`).

What must hold: the published PDF is the one the sequential path (register, then `labels`)
writes, byte for byte; and nothing is published unless the whole batch registered and rendered.
Each case runs on SQLite and on PostgreSQL (the db_url fixture).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from provision import pipeline
from provision.errors import BatchError, ManifestError, TemplateError
from provision.keys import Keyring
from provision.labels.render import TASK_PAGES
from provision.labels.templates import load_template
from provision.registry import ConflictError, Registry
from tests.helpers import decode_pdf, serials_csv, write_csv

BASE_URL = "https://id.example.com"
TEMPLATE = load_template("avery-5160")  # 30 labels a page
# Enough devices for several render tasks (so worker processes draw) and several chunks.
N = 3 * TASK_PAGES * TEMPLATE.per_page + 7
CHUNK = 250


def run(
    registry: Registry, keyring: Keyring, manifest: Path, out: Path, **kwargs: object
) -> tuple[pipeline.RegisterResult, pipeline.LabelsResult]:
    return pipeline.register_and_render(
        registry,
        keyring,
        manifest,
        batch=str(kwargs.pop("batch", "b1")),
        template=TEMPLATE,
        output_dir=out,
        base_url=str(kwargs.pop("base_url", BASE_URL)),
        chunk_size=CHUNK,
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_new_batch_renders_while_registering_the_file_a_later_render_writes(
    db_url: str, keyring: Keyring, tmp_path: Path
) -> None:
    registry = Registry(db_url)
    out = tmp_path / "out"
    chunks: list[int] = []
    real = registry.devices.insert

    def counting(rows, comps, batch):  # type: ignore[no-untyped-def]
        chunks.append(len(rows))
        return real(rows, comps, batch)

    registry.devices.insert = counting  # type: ignore[method-assign]
    manifest = serials_csv(tmp_path / "s.csv", N)
    registered, labels = run(registry, keyring, manifest, out, copies=2, start_at=3)
    assert registered.registered == N and len(chunks) > 2  # it really went chunk by chunk
    assert labels.labels == 2 * N and labels.revision == 1
    first = Path(labels.file).read_bytes()
    assert hashlib.sha256(first).hexdigest() == labels.sha256

    # The sequential path, reading the batch back from the registry: the very same file.
    again = pipeline.render_batch_labels(
        registry, "b1", TEMPLATE, out, BASE_URL, keyring=keyring, copies=2, start_at=3
    )
    assert (again.file, again.revision, again.sha256) == (labels.file, 1, labels.sha256)
    assert sorted(p.name for p in out.iterdir()) == ["b1.json", "b1.pdf"]
    # And what a scanner reads on the last page: the last devices of the manifest, twice each.
    on_last = (2 * N + 2) % TEMPLATE.per_page or TEMPLATE.per_page  # start_at 3: 2 skipped
    batch_id = registry.batches.id_of("b1")
    assert batch_id is not None
    urls = [
        d.url for d in pipeline.batch_labels(registry, batch_id, "b1", TEMPLATE, BASE_URL, keyring)
    ]
    last = decode_pdf(Path(labels.file))[-1]
    assert len(last) == on_last
    assert sorted(last) == sorted(2 * urls[-(on_last // 2) :])


def test_a_bad_row_publishes_nothing_and_registers_nothing(
    db_url: str, keyring: Keyring, tmp_path: Path
) -> None:
    registry = Registry(db_url)
    out = tmp_path / "out"
    rows = [[f"SN{i:06d}", "sensor", "Acme", "M-1"] for i in range(N)]
    rows[N - 3][0] = "bad serial!"
    manifest = write_csv(
        tmp_path / "s.csv", ["serial", "device_type", "manufacturer", "model"], rows
    )
    with pytest.raises(ManifestError) as err:
        run(registry, keyring, manifest, out)
    assert [(r.line, r.column) for r in err.value.rows] == [(N - 1, "serial")]
    assert registry.devices.count() == 0
    assert not out.exists() or list(out.iterdir()) == []


def test_a_chunk_failing_midway_publishes_nothing(
    db_url: str, keyring: Keyring, tmp_path: Path
) -> None:
    registry = Registry(db_url)
    out = tmp_path / "out"
    calls = [0]
    real = registry.devices.insert

    def third_fails(rows, comps, batch):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 3:
            raise ConflictError("IntegrityError")
        return real(rows, comps, batch)

    registry.devices.insert = third_fails  # type: ignore[method-assign]
    with pytest.raises(BatchError, match="registered by another process meanwhile"):
        run(registry, keyring, serials_csv(tmp_path / "s.csv", N), out)
    assert registry.devices.count() == 2 * CHUNK  # the chunks before it stay: a rerun finishes
    assert not out.exists() or list(out.iterdir()) == []

    registry.devices.insert = real  # type: ignore[method-assign]
    registered, labels = run(registry, keyring, serials_csv(tmp_path / "s.csv", N), out)
    assert (registered.registered, registered.already_registered) == (N - 2 * CHUNK, 2 * CHUNK)
    assert labels.labels == N  # not a new batch any more: rendered from the registry


def test_a_render_failure_leaves_the_batch_registered_and_nothing_published(
    db_url: str, keyring: Keyring, tmp_path: Path
) -> None:
    registry = Registry(db_url)
    out = tmp_path / "out"
    long_url = "https://" + "activation-service." * 24 + "example.com"  # modules too small
    with pytest.raises(TemplateError, match="use a shorter base URL"):
        run(registry, keyring, serials_csv(tmp_path / "s.csv", N), out, base_url=long_url)
    assert registry.devices.count() == N  # registered in full, as register-then-render does
    assert not out.exists() or list(out.iterdir()) == []


def test_a_batch_of_only_devices_registered_elsewhere_has_no_labels(
    db_url: str, keyring: Keyring, tmp_path: Path
) -> None:
    registry = Registry(db_url)
    out = tmp_path / "out"
    manifest = serials_csv(tmp_path / "s.csv", 40)
    run(registry, keyring, manifest, out, batch="first")
    with pytest.raises(BatchError, match="'second' has no devices"):
        run(registry, keyring, manifest, out, batch="second")
    assert sorted(p.name for p in out.iterdir()) == ["first.json", "first.pdf"]


def test_the_render_progress_ends_at_the_labels_drawn_when_some_rows_were_registered_before(
    keyring: Keyring, tmp_path: Path, sqlite_url: str
) -> None:
    """The register total counts rows found in another batch; the render bar still completes."""
    registry = Registry(sqlite_url)
    out = tmp_path / "out"
    run(registry, keyring, serials_csv(tmp_path / "a.csv", 30), out, batch="first")
    calls: list[tuple[str, int, int]] = []
    res, labels = run(
        registry,
        keyring,
        serials_csv(tmp_path / "b.csv", 100),  # SN000000..29 belong to "first"
        out,
        batch="second",
        on_progress=lambda *c: calls.append(c),
    )
    registry.close()
    assert (res.registered, res.other_batch, labels.labels) == (70, 30, 70)
    assert calls[-1] == ("render", 70, 70)
    assert [c for c in calls if c[0] == "register"][-1] == ("register", 100, 100)
