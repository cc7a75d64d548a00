"""provision: track a manufactured device from the factory floor to its owner.

`from provision import Provision` is the public Python API (provision.api); the device's own
HTTP client is provision.client. Everything else in the package is internal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Provision", "__version__"]

if TYPE_CHECKING:
    from provision.api import Provision


def __getattr__(name: str) -> Any:
    # Loaded on first use: `provision --help` and the activation service never pay for it.
    if name == "Provision":
        from provision.api import Provision

        return Provision
    raise AttributeError(f"module 'provision' has no attribute {name!r}")
