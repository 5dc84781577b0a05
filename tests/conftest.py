"""Fixtures only (shared helpers live in helpers.py): tiny params, a temporary copy of the repository."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import COPY_IGNORE, REPO, TINY_PARAMS, write_params


@pytest.fixture
def tiny_params() -> dict:
    return yaml.safe_load(yaml.safe_dump(TINY_PARAMS))  # a fresh deep copy per test


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The working tree (code, dvc.yaml, .dvc config) in a fresh git repo, with tiny params and the project venv."""
    dest = tmp_path / "repo"
    shutil.copytree(REPO, dest, ignore=COPY_IGNORE)
    write_params(dest / "params.yaml", TINY_PARAMS)
    (dest / ".venv").symlink_to(REPO / ".venv")
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest

