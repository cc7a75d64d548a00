"""Every error provision raises on purpose; the CLI prints them as one line and exits 1."""

from __future__ import annotations

from dataclasses import dataclass


class ProvisionError(Exception):
    """A problem the operator can act on; its message is the whole story."""


class ConfigError(ProvisionError):
    """A setting is missing or has a value provision cannot use."""


class KeyringError(ProvisionError):
    """The keyring file is missing, unreadable, too permissive or inconsistent."""


class ManifestError(ProvisionError):
    """A manifest has bad rows; `rows` lists every one of them."""

    def __init__(self, rows: list[RowError]) -> None:
        self.rows = rows
        files = sorted({r.file for r in rows})
        super().__init__(
            f"{len(rows)} bad row{'s' if len(rows) != 1 else ''} in {', '.join(files)}; "
            "nothing written"
        )


class TemplateError(ProvisionError):
    """A label template cannot be loaded or cannot hold a readable QR code."""


class BatchError(ProvisionError):
    """A batch cannot be found or cannot be processed as asked."""


class DeviceError(ProvisionError):
    """A device cannot be found or is in the wrong state for the request."""


class CheckpointError(ProvisionError):
    """A checkpoint file is missing, malformed, or not signed with this keyring."""


class JobError(ProvisionError):
    """A job file is missing, malformed or names something that does not exist."""


@dataclass(frozen=True, order=True)
class RowError:
    """One bad row (or header) of a manifest, as `FILE:LINE: column: reason`."""

    file: str
    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.column}: {self.reason}"
