"""The registry as pandas frames, for the analyses that work on whole columns (reconcile).

Apart from the core registry, so that pandas is imported only by what needs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import String, select, type_coerce

from provision.registry.schema import batches, devices
from provision.registry.store import Store, chunks


def reconcile_frame(store: Store, chunk: int = 100_000, batch_id: int | None = None) -> Any:
    """Every device (of BATCH_ID) as one pandas frame; see reconcile_chunks."""
    import pandas as pd

    parts = list(reconcile_chunks(store, chunk, batch_id))
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def reconcile_chunks(
    store: Store, chunk: int = 100_000, batch_id: int | None = None
) -> Iterator[Any]:
    """Every device (of BATCH_ID) as pandas frames of CHUNK rows (no plaintext: serial hashes
    only), for reconcile; one empty frame when there is none.

    Streamed in primary-key order (the table read straight through), with only the columns
    reconcile needs.
    Timestamps come back as the database's own text (SQLite) or datetimes (PostgreSQL) and
    are parsed by pandas a column at a time; repeated text (type, model, batch name, status)
    keeps one string per distinct value, so a million devices load in seconds.
    """
    import numpy as np
    import pandas as pd
    from sqlalchemy import type_coerce

    stamps = ("registered_at", "activated_at", "revoked_at")
    q = select(
        devices.c.serial_hash,
        devices.c.device_id,
        devices.c.device_type,
        devices.c.model,
        devices.c.batch_id,
        devices.c.status,
        devices.c.production_line,
        devices.c.user_id,
        type_coerce(devices.c.created_at, String).label("registered_at"),
        type_coerce(devices.c.activated_at, String).label("activated_at"),
        type_coerce(devices.c.revoked_at, String).label("revoked_at"),
    )
    if batch_id is not None:
        q = q.where(devices.c.batch_id == batch_id)
    q = q.order_by(devices.c.id)

    def shared(values: Any) -> Any:
        codes, uniques = pd.factorize(np.asarray(values, dtype=object))
        lookup = np.concatenate([np.asarray(uniques, dtype=object), np.array([None])])
        return lookup[codes]  # code -1 (NULL) picks the None at the end

    columns = [
        "serial_hash", "device_id", "device_type", "model", "batch", "status", "line", "user",
        *stamps,
    ]  # fmt: skip
    given = False
    with store.connect() as conn:
        names = {i: n for i, n in conn.execute(select(batches.c.id, batches.c.name))}
        result = conn.execution_options(stream_results=True, yield_per=chunk).execute(q)
        for rows in result.partitions():
            (hashes, ids, types, models, batch_ids, status, lines, users, *times) = zip(
                *rows, strict=True
            )
            part = {
                "serial_hash": np.asarray(hashes, dtype=object),
                "device_id": np.asarray(ids, dtype=object),
                "device_type": shared(types),
                "model": shared(models),
                "batch": shared(pd.Series(batch_ids).map(names)),
                "status": shared(status),
                "line": shared(lines),
                "user": np.asarray(users, dtype=object),
            }
            for col, values in zip(stamps, times, strict=True):
                part[col] = pd.to_datetime(
                    pd.Series(values, dtype=object), utc=True, format="ISO8601"
                )
            given = True
            yield pd.DataFrame(part)
    if not given:
        empty = {c: pd.Series(dtype=object) for c in columns}
        empty |= {c: pd.Series(dtype="datetime64[us, UTC]") for c in stamps}
        yield pd.DataFrame(empty, columns=columns)


def shipments_chunks(store: Store, until: Any = None, chunk: int = 100_000) -> Iterator[Any]:
    """The stored shipments shipped up to UNTIL (all, without it) as pandas frames of CHUNK
    rows, in id order: the columns of a shipments file (the serial still encrypted: serial_ct
    and row_hash), with each row's id, line in its file, source and import."""
    import pandas as pd

    from provision.registry.schema import shipments

    c = shipments.c
    q = select(
        c.id, c.line, c.serial_hash, c.serial_ct, c.row_hash,
        type_coerce(c.shipped_at, String).label("shipped_at"),
        c.order_id, c.customer, c.destination, c.carrier, c.source, c.import_id,
    ).order_by(c.id)  # fmt: skip
    if until is not None:
        q = q.where(c.shipped_at < until)
    names = [
        "id", "line", "serial_hash", "serial_ct", "row_hash", "shipped_at", "order_id",
        "customer", "destination", "carrier", "source", "import_id",
    ]  # fmt: skip
    given = False
    with store.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk).execute(q)
        for rows in result.partitions():
            frame = pd.DataFrame([tuple(r) for r in rows], columns=names)
            frame["shipped_at"] = pd.to_datetime(frame["shipped_at"], utc=True, format="ISO8601")
            given = True
            yield frame
    if not given:
        frame = pd.DataFrame(columns=names)
        frame["shipped_at"] = pd.to_datetime(frame["shipped_at"], utc=True)
        yield frame


def follow_up(store: Store, device_ids: list[str]) -> dict[str, tuple[bytes, str | None]]:
    """Device id -> (serial ciphertext, the address its accepted activation came from), for
    the rows an analyst follows up (few)."""
    from provision.registry.events import among_ids
    from provision.registry.schema import pairing_events
    from provision.states import PairingResult

    out: dict[str, tuple[bytes, str | None]] = {}
    with store.connect() as conn:
        for part in chunks(device_ids, store.lookup_chunk):
            q = select(devices.c.id, devices.c.device_id, devices.c.serial_ct).where(
                store.among(devices.c.device_id, part)
            )
            found = {pk: (did, bytes(ct)) for pk, did, ct in conn.execute(q)}
            ips: dict[int, str | None] = {}
            if found:
                pe = pairing_events.c
                q2 = select(pe.device_pk, pe.ip).where(
                    among_ids(store, pe.device_pk, list(found)), pe.result == PairingResult.ACCEPTED
                )
                ips = {pk: ip for pk, ip in conn.execute(q2)}
            for pk, (did, ct) in found.items():
                out[did] = (ct, ips.get(pk))
    return out
