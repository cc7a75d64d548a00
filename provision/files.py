"""Atomic file output: a reader (a print station, a cron job) never sees half a file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Write to a hidden temporary name beside `path`, fsync, rename, fsync the folder.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def write_atomic(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    with atomic_writer(path, mode) as fh:
        fh.write(data)


def publish_revision(
    folder: str | Path, stem: str, ext: str, write: Callable[[BinaryIO], None]
) -> tuple[Path, int, str]:
    """Write a print file for the hot folder without ever rewriting an existing file.

    The content goes to a hidden temporary file first (fsynced). If `STEM.EXT` does not exist
    it takes that name; if an existing revision holds the very same bytes, that one is reused;
    otherwise the next free `STEM.rN.EXT` is claimed with a hard link, which fails instead of
    replacing when another process got there first. Returns (path, revision, sha256).
    """
    target_dir = Path(folder)
    target_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=f".{stem}.{ext}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        sha = _sha256_file(Path(tmp))
        revision = 1
        while True:
            name = f"{stem}.{ext}" if revision == 1 else f"{stem}.r{revision}.{ext}"
            path = target_dir / name
            if path.exists():
                if _sha256_file(path) == sha:
                    return path, revision, sha
                revision += 1
                continue
            try:
                os.link(tmp, path)
            except FileExistsError:
                continue
            _fsync_dir(target_dir)
            return path, revision, sha
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
