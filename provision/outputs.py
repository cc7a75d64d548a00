"""What the output folder holds, as the console lists it: each batch's print files (every label
revision) with the summary beside them, and the reconciliation reports (a folder with a
summary.json) anywhere below it. Only reads; the names come from what pipeline and reconcile
write (BATCH.pdf, BATCH.r2.pdf, ..., BATCH.zpl; REPORT/summary.json, REPORT/report.pdf)."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT_DEPTH = 3  # how far below the output folder a report folder is looked for
MAX_REPORTS = 500


@dataclass(frozen=True)
class LabelFile:
    name: str
    revision: int
    format: str
    size: int
    modified: float


@dataclass(frozen=True)
class ReportFolder:
    """A reconciliation report: its folder relative to the output folder, and its summary."""

    path: str
    summary: dict[str, Any]
    files: tuple[str, ...]
    modified: float


def label_files(output_dir: str | Path, batch: str, others: Iterable[str] = ()) -> list[LabelFile]:
    """The batch's print files, newest revision first. OTHERS: the other batches' names, whose
    files are not this one's (batch `line1.r2`'s `line1.r2.pdf` is not `line1`'s revision 2)."""
    foreign = {f"{o}.{ext}" for o in others if o != batch for ext in ("pdf", "zpl")}
    out = Path(output_dir)
    pattern = re.compile(re.escape(batch) + r"(?:\.r(\d+))?\.(pdf|zpl)")
    found = []
    try:
        entries = list(os.scandir(out))
    except OSError:
        return []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and entry.name not in foreign and entry.is_file(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            rev = int(m.group(1) or 1)
            found.append(LabelFile(entry.name, rev, m.group(2), st.st_size, st.st_mtime))
    return sorted(found, key=lambda f: (-f.revision, f.format))


def batch_summary(output_dir: str | Path, batch: str) -> dict[str, Any] | None:
    """OUTPUT/BATCH.json as the last `labels` wrote it, or None."""
    try:
        data = json.loads((Path(output_dir) / f"{batch}.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def report_folders(output_dir: str | Path) -> list[ReportFolder]:
    """The reconciliation reports below OUTPUT (up to REPORT_DEPTH levels), newest first.

    A report folder is one whose summary.json has the reconciliation's keys (as_of, counts,
    severity); hidden folders (reports being written) are skipped.
    """
    root = Path(output_dir)
    found: list[ReportFolder] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if len(rel.parts) >= REPORT_DEPTH:
            dirnames[:] = []
        if "summary.json" not in filenames or not rel.parts:
            continue
        try:
            summary = json.loads((Path(dirpath) / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(summary, dict) or not {"as_of", "counts", "severity"} <= summary.keys():
            continue
        mtime = (Path(dirpath) / "summary.json").stat().st_mtime
        # Files only, never a link: a link could point anywhere outside the output folder.
        files = tuple(
            sorted(
                f for f in filenames if not f.startswith(".") and _regular_file(Path(dirpath) / f)
            )
        )
        found.append(ReportFolder(rel.as_posix(), summary, files, mtime))
        if len(found) >= MAX_REPORTS:
            break
    return sorted(found, key=lambda r: -r.modified)


def report_folder(output_dir: str | Path, path: str) -> ReportFolder | None:
    """The report at PATH (as report_folders names it), or None; never a folder outside."""
    return next((r for r in report_folders(output_dir) if r.path == path), None)


def _regular_file(path: Path) -> bool:
    """PATH is a file, not a link (and still there)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
