"""Dagster code location (`workspace.yaml` loads this package): exposes `defs`."""
from assets.definitions import defs

__all__ = ["defs"]
