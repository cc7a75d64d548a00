"""Atomic file output: a reader (a print station, a cron job) never sees half a file.

Output is written to a hidden temporary file beside its target, `.NAME.XXXXXXXX.tmp`, which the
writer holds an exclusive flock on from creating it until it is renamed or removed. A run that
is killed leaves its temporary file behind, unlocked: the next write of the same target removes
every such file whose lock it can take without waiting, and none that a live process holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Write to a hidden temporary name beside `path`, fsync, rename, fsync the folder.

    On any exception the temporary file is removed and `path` is left as it was. Stale
    temporary files of `path` (from killed runs) are removed first; the caller must not close
    the file it is given (its lock goes with it).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}."
    remove_stale_temporaries(target.parent, prefix)
    fd, tmp = _locked_temporary(target.parent, prefix)
    fh = os.fdopen(fd, "wb")
    try:
        os.fchmod(fd, mode)
        yield fh
        fh.flush()
        os.fsync(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        fh.close()  # only now, renamed or removed, is the lock given up
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
    Stale temporary files of `STEM.EXT` (from killed runs) are removed first.
    """
    target_dir = Path(folder)
    target_dir.mkdir(parents=True, exist_ok=True)
    prefix = f".{stem}.{ext}."
    remove_stale_temporaries(target_dir, prefix)
    fd, tmp = _locked_temporary(target_dir, prefix)
    fh = os.fdopen(fd, "wb")
    try:
        os.fchmod(fd, 0o644)
        write(fh)
        fh.flush()
        os.fsync(fd)
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
        fh.close()  # the lock last, once the temporary name is gone


def remove_stale_temporaries(folder: str | Path, prefix: str) -> list[Path]:
    """Remove the temporary files `PREFIX*.tmp` in FOLDER that no process is writing.

    Only names of the writers' own form count: PREFIX, a random part without a dot, `.tmp`
    (so `.a.pdf.` never matches the temporary files of `a.pdf.json`). A file is removed only
    while its lock is held here, taken without waiting, and only if its name still gives that
    file. Returns the paths removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        middle = name[len(prefix) : -len(".tmp")]
        if not middle or "." in middle:
            continue
        try:
            # O_NONBLOCK: a FIFO of that name must not hang the run.
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # BlockingIOError: a live writer holds it
                continue
            try:
                if not os.path.samestat(st, os.lstat(entry.path)):
                    continue
            except FileNotFoundError:  # renamed into place meanwhile: not stale
                continue
            try:
                os.unlink(entry.path)
            except OSError:  # gone already, or not ours to remove: never fails the write
                continue
            removed.append(Path(entry.path))
        finally:
            os.close(fd)
    return removed


def _locked_temporary(folder: Path, prefix: str) -> tuple[int, str]:
    """A new file `PREFIX*.tmp` in FOLDER, exclusively flocked: (descriptor, path).

    Between creating the file and locking it, another process's remove_stale_temporaries may
    take its lock and remove it; the name then no longer gives this file, and another is made.
    """
    while True:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a cleaner holds it, a moment
        try:
            if os.path.samestat(os.fstat(fd), os.lstat(tmp)):
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)


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
