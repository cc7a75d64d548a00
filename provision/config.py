"""Settings as data: one row per global option, with its env var, default and help."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    """A global option of the `provision` command."""

    name: str
    env: str
    default: str | None
    help: str


DEFAULT_DB_URL = "sqlite:///provision.db"
DEFAULT_BASE_URL = "http://localhost:5001"
DEFAULT_OUTPUT = "output"

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "db",
        "PROVISION_DB_URL",
        DEFAULT_DB_URL,
        "SQLAlchemy database URL. Default: the SQLite file provision.db in the current "
        "directory; use postgresql+psycopg://... when several lines share one registry.",
    ),
    Setting(
        "keyring",
        "PROVISION_KEYRING",
        None,
        "Path of the keyring file (mode 0600) holding the signing keys and the serial pepper. "
        "No default: create one with `provision keys init`.",
    ),
    Setting(
        "base_url",
        "PROVISION_BASE_URL",
        DEFAULT_BASE_URL,
        "Base URL of the activation service; QR codes hold BASE_URL/A/TOKEN.",
    ),
    Setting(
        "output",
        "PROVISION_OUTPUT",
        DEFAULT_OUTPUT,
        "Folder the print stations watch: label PDFs and their summary JSON land here.",
    ),
    Setting(
        "stations",
        "PROVISION_STATIONS",
        "stations.toml",
        "Print station profiles (TOML): each printer's calibration offsets, for --station.",
    ),
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

TEMPLATES_ENV = "PROVISION_TEMPLATES"
DEFAULT_TEMPLATES_DIR = "~/.config/provision/templates"
"""The user template folder when PROVISION_TEMPLATES is unset and so is XDG_CONFIG_HOME (when
that is set: $XDG_CONFIG_HOME/provision/templates)."""
# Read from the environment wherever a template is looked up (provision.labels.templates), so
# `labels`, `run`, `generate` and `stations set` all see it. Not in SETTINGS yet: each row there
# becomes a global option, which the `provision` group (provision/cli/__init__.py) and
# cli.common.Settings must then take.
TEMPLATES_SETTING = Setting(
    "templates",
    TEMPLATES_ENV,
    None,
    "Your label template folders, separated by ':' (os.pathsep). `templates import` writes "
    "into the first; a template name (`--template NAME`) is looked up in each in turn, then "
    "among the built-in templates, so a file here named like a built-in replaces it. "
    f"Default: $XDG_CONFIG_HOME/provision/templates, else {DEFAULT_TEMPLATES_DIR}.",
)

# Rows per transaction on the bulk paths: big enough to amortise commits, small enough that a
# killed batch loses little work and memory stays flat.
DEFAULT_CHUNK_SIZE = 5000
DEFAULT_TTL_DAYS = 730
# A payload's expiry is 4 bytes of unix seconds (it ends in 2106); no label needs more than
# about ten years.
MAX_TTL_DAYS = 3660
MAX_COPIES = 1000
"""Copies of each label one run may ask for: a sheet or a roll, not a runaway print."""
MAX_OFFSET_MM = 100.0
"""A station's calibration offset: a few millimetres in practice, never a page."""
