"""Every error provision raises on purpose, each with its JSON `type` and its exit code.

The CLI turns any of them into its lines and its exit code in one place (cli.common): the
lines an error adds before its own (`lines()`), then `Error: MESSAGE` on stderr, and with
--json first `{"error": ...}` (`json_error()`) on stdout. `kind` is the machine-readable type
and part of the CLI's interface: it is a class attribute, never derived from the class name,
so renaming a class changes nothing a script sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any


class ProvisionError(Exception):
    """A problem the operator can act on; its message is the whole story."""

    kind = "provision"
    exit_code = 1
    label = "Error"
    """The word the CLI's line starts with (`Error: ...`)."""
    reported = False
    """True when the command already printed the outcome (a check that failed): exit only."""
    json = True
    """False when --json output was already printed and the error adds none to it."""

    def lines(self) -> list[str]:
        """Lines printed on stderr before the `Error:` line."""
        return []

    def json_error(self) -> dict[str, Any]:
        return {"type": self.kind, "message": str(self)}


class ConfigError(ProvisionError):
    """A setting is missing or has a value provision cannot use."""

    kind = "config"


class KeyringError(ProvisionError):
    """The keyring file is missing, unreadable, too permissive or inconsistent."""

    kind = "keyring"


class ManifestError(ProvisionError):
    """A manifest has bad rows; `rows` lists every one of them."""

    kind = "manifest"

    def __init__(self, rows: list[RowError]) -> None:
        self.rows = rows
        files = sorted({r.file for r in rows})
        super().__init__(
            f"{len(rows)} bad row{'s' if len(rows) != 1 else ''} in {', '.join(files)}; "
            "nothing written"
        )

    def lines(self) -> list[str]:
        return [str(r) for r in self.rows]

    def json_error(self) -> dict[str, Any]:
        return super().json_error() | {"rows": [str(r) for r in self.rows]}


class TemplateError(ProvisionError):
    """A label template cannot be loaded or cannot hold a readable QR code."""

    kind = "template"


class BatchError(ProvisionError):
    """A batch cannot be found or cannot be processed as asked."""

    kind = "batch"


class ConflictError(BatchError):
    """A row of the chunk was stored by another process meanwhile (a unique key clashed)."""

    kind = "conflict"


class DeviceError(ProvisionError):
    """A device cannot be found or is in the wrong state for the request."""

    kind = "device"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        """The API's reason code where there is one (`revoked_device`), else None."""


class RecallError(ProvisionError):
    """A recall cannot be found, made or changed as asked (a name taken, a recall closed)."""

    kind = "recall"


class AlertError(ProvisionError):
    """No such alert, an id prefix that names more than one, or a bad acknowledgement."""

    kind = "alert"


class NotifyFailed(ProvisionError):
    """Some alerts could not be delivered to the webhook; the next run sends them again."""

    kind = "notify_failed"


class StaffError(ProvisionError):
    """A staff account cannot be made or changed as asked (a bad name or password, no such
    account, a name taken)."""

    kind = "staff"


class WorkerError(ProvisionError):
    """A worker process ended in the middle of its work (killed, or out of memory): the
    command stops, and what it was writing is dropped, as after any other failure."""

    kind = "worker"


@contextlib.contextmanager
def worker_deaths(what: str, consequence: str) -> Iterator[None]:
    """A process pool's worker that ended meanwhile (the OOM killer, kill -9, an initializer
    that failed: BrokenProcessPool) as the one line of a WorkerError naming WHAT
    (`reconcile`, ...) and CONSEQUENCE, not a traceback."""
    try:
        yield
    except BrokenProcessPool as exc:
        raise WorkerError(
            f"{what}: a worker process ended unexpectedly (killed, out of memory, or failed to "
            f"start); {consequence}"
        ) from exc


class RegistryError(ProvisionError):
    """The registry database cannot be reached or refused a statement."""

    kind = "registry"


class CheckpointError(ProvisionError):
    """A checkpoint file is missing, malformed, or not signed with this keyring."""

    kind = "checkpoint"


class JobError(ProvisionError):
    """A job file is missing, malformed or names something that does not exist."""

    kind = "job"


class UsageError(ProvisionError):
    """An option's value cannot be used as given (exit code 2, as click's usage errors)."""

    kind = "usage"
    exit_code = 2


class RowsRejected(ProvisionError):
    """Rows went to the reject file; the good rows are registered (exit code 4, for cron)."""

    kind = "rows_rejected"
    exit_code = 4
    json = False
    label = "Warning"


class ChecksFailed(ProvisionError):
    """A check found problems, and the command has printed them (verify, audit verify)."""

    kind = "checks_failed"
    reported = True


class FailOnHit(ProvisionError):
    """A category named by --fail-on is not empty (reconcile's report is written first)."""

    kind = "fail_on"
    exit_code = 3
    json = False


@dataclass(frozen=True, order=True)
class RowError:
    """One bad row (or header) of a manifest, as `FILE:LINE: column: reason`."""

    file: str
    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.column}: {self.reason}"
