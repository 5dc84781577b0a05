"""The pipeline's one matplotlib set-up: figures are drawn off-screen (the Agg backend: stages run on machines
without a display, under DVC and Dagster) and written as PNG files."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported on first use: matplotlib costs a second to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> None:
    """Lay out `fig`, write it to `path` (PNG; parent folders created) and free it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    pyplot().close(fig)
