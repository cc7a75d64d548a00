"""provision: track a manufactured device from the factory floor to its owner."""

__version__ = "0.1.0"
