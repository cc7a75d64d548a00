"""The registry as pandas frames, for the analyses that work on whole columns (reconcile).

Apart from the core registry, so that pandas is imported only by what needs it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, select

from provision.registry.schema import batches, devices
from provision.registry.store import Store


def reconcile_frame(store: Store, chunk: int = 100_000) -> Any:
    """Every device as a pandas frame (no plaintext: serial hashes only), for reconcile.

    Streamed a chunk at a time in primary-key order, with only the columns reconcile needs.
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
        type_coerce(devices.c.created_at, String).label("registered_at"),
        type_coerce(devices.c.activated_at, String).label("activated_at"),
        type_coerce(devices.c.revoked_at, String).label("revoked_at"),
    ).order_by(devices.c.id)

    def shared(values: Any) -> Any:
        codes, uniques = pd.factorize(np.asarray(values, dtype=object))
        lookup = np.concatenate([np.asarray(uniques, dtype=object), np.array([None])])
        return lookup[codes]  # code -1 (NULL) picks the None at the end

    columns = ["serial_hash", "device_id", "device_type", "model", "batch", "status", *stamps]
    parts = []
    with store.connect() as conn:
        names = {i: n for i, n in conn.execute(select(batches.c.id, batches.c.name))}
        result = conn.execution_options(stream_results=True, yield_per=chunk).execute(q)
        for rows in result.partitions():
            (hashes, ids, types, models, batch_ids, status, *times) = zip(*rows, strict=True)
            part = {
                "serial_hash": np.asarray(hashes, dtype=object),
                "device_id": np.asarray(ids, dtype=object),
                "device_type": shared(types),
                "model": shared(models),
                "batch": shared(pd.Series(batch_ids).map(names)),
                "status": shared(status),
            }
            for col, values in zip(stamps, times, strict=True):
                part[col] = pd.to_datetime(
                    pd.Series(values, dtype=object), utc=True, format="ISO8601"
                )
            parts.append(pd.DataFrame(part))
    if not parts:
        empty = {c: pd.Series(dtype=object) for c in columns}
        empty |= {c: pd.Series(dtype="datetime64[us, UTC]") for c in stamps}
        return pd.DataFrame(empty, columns=columns)
    return pd.concat(parts, ignore_index=True)
