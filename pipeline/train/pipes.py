"""Reporting back to Dagster when a run was launched through Dagster Pipes; the one module of pipeline/ that
knows Dagster exists.

An asset in assets/ starts `python -m pipeline STAGE` with `PipesSubprocessClient`, which passes the bootstrap
variables DAGSTER_PIPES_CONTEXT / DAGSTER_PIPES_MESSAGES in the environment. Without them (DVC, CI, a person at a
shell) every method here does nothing, so the stages run the same code everywhere. Only plain values travel:
numbers, strings and paths; the asset builds images and tables from the run's output folder after the process
ends (assets/metadata.py).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

ENV_PREFIX = "DAGSTER_PIPES_"
CONTEXT_ENV = ENV_PREFIX + "CONTEXT"

Plain = int | float | str | bool | Path


def launched_by_pipes(env: Mapping[str, str] = os.environ) -> bool:
    return CONTEXT_ENV in env


def without_pipes(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`env` minus the Pipes bootstrap variables: for a child process whose results its parent reports (the
    sweep's fine-tuning runs), since Dagster accepts one materialization per asset and step."""
    return {k: v for k, v in env.items() if not k.startswith(ENV_PREFIX)}


class PipesReport:
    """Log lines and one final materialization for the asset that launched this process.

    Open it on one process only (rank 0 under torchrun): every rank inherits the bootstrap variables, and a
    second materialization of the same asset fails the Dagster step."""

    _holding = False  # see holding()

    def __init__(self) -> None:
        self._context = None
        if launched_by_pipes():
            from dagster_pipes import open_dagster_pipes

            self._context = open_dagster_pipes()

    @property
    def active(self) -> bool:
        return self._context is not None and not self._context.is_closed

    def log(self, message: str) -> None:
        """One line in the Dagster event log of the step."""
        if self.active:
            self._context.log.info(message)

    def materialize(self, metadata: Mapping[str, Plain | None]) -> None:
        """Report the asset as materialized with `metadata` (None values are left out; a Path becomes path
        metadata), then close the connection: later calls do nothing."""
        if not self.active or PipesReport._holding:
            return
        raw = {k: {"raw_value": str(v), "type": "path"} if isinstance(v, Path) else v
               for k, v in metadata.items() if v is not None}
        self._context.report_asset_materialization(metadata=raw)
        self.close()

    @classmethod
    @contextlib.contextmanager
    def holding(cls) -> Iterator[None]:
        """Within this block materialize() does nothing: for runs trained one after another in one process
        (pretrain --benchmark), which log through the process's one Pipes context while the stage reports the asset
        once, after them."""
        cls._holding = True
        try:
            yield
        finally:
            cls._holding = False

    def close(self) -> None:
        if self.active:
            self._context.close()
