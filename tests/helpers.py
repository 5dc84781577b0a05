"""Helpers the tests share: the repository and venv paths, tiny params, running a command."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DVC = REPO / ".venv-dvc" / "bin" / "dvc"

_BENCHMARK = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["benchmark"]

# Small enough for seconds per stage, big enough that every split and task is non-empty.
TINY_PARAMS = {
    "seed": 0,
    # the repository's methods, tasks and probes at a tiny scale: 2 complete runs of 2 and 4 updates per method
    "benchmark": {
        **_BENCHMARK, "scale": "demo",
        "scales": {"demo": {"seeds": [0], "budget_fractions": [0.5, 1.0], "probe_sizes": dict.fromkeys(("image", "speech", "text"), {"train": 48, "valid": 16, "test": 16}),
                            "max_updates": {m: dict.fromkeys(_BENCHMARK[m]["methods"], 4) for m in ("image", "speech", "text")},
                            "finetune": True}},
    },
    "image": {"prepare": {"train_limit": 64, "test_limit": 16}, "shard": {"max_samples_per_shard": 40}},
    "speech": {
        "prepare": {"train_utterances": 6, "valid_utterances": 2, "test_utterances": 2, "sample_rate": 16000},
        "shard": {"max_samples_per_shard": 4},
        "tokenizer": {"lowercase": True},
    },
    "text": {
        "prepare": {
            "corpus_limit": 400, "valid_fraction": 0.05, "lexname_train": 90, "lexname_valid": 20, "lexname_test": 20,
            "fortune_valid_fraction": 0.1, "fortune_test_fraction": 0.1, "fortune_min_per_category": 1000,
        },
        "shard": {"max_samples_per_shard": 150},
        "tokenizer": {"vocab_size": 400, "min_frequency": 2},
    },
    # update budgets (not wall-clock) so tests are deterministic; budget checkpoints after 2 and 3 updates
    "pretrain": {
        m: {"preset": "tiny", "batch_size": 4, "max_updates": 3, "warmup_updates": 1, "checkpoint_every": 2, "log_every": 1,
            "checkpoint_fractions": [0.5, 1.0]}
        for m in ("image", "speech", "text")
    },
    # a few updates of a few samples; validation and a checkpoint half-way, so best.pt and resume paths run
    "finetune": {
        "image": {"preset": "tiny", "batch_size": 8, "max_updates": 4, "valid_size": 16, "eval_every": 2,
                  "eval_batch_size": 16, "log_every": 1, "checkpoint_every": 2},
        "speech": {"preset": "tiny", "batch_size": 2, "max_updates": 3, "freeze_updates": 1, "eval_every": 2,
                   "eval_batch_size": 2, "log_every": 1, "checkpoint_every": 2},
        "text": {"preset": "tiny", "batch_size": 8, "max_updates": 4, "eval_every": 2, "eval_batch_size": 16,
                 "log_every": 1, "checkpoint_every": 2},
    },
}


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


# dvc.lock: the committed one records the full-size run; a tiny-params copy writes its own
_IGNORED_ANYWHERE = shutil.ignore_patterns(".venv", ".venv-dvc", ".git", "dvc.lock", ".dagster_home", "__pycache__",
                                           "*.egg-info", ".pytest_cache", ".setup-*.stamp")
_OUTPUT_FOLDERS = {"data", "models", "reports", "tmp", "cache"}  # at the top only: pipeline/data/ is code


def COPY_IGNORE(directory: str, names: list[str]) -> set[str]:  # noqa: N802 (shutil.copytree's ignore=)
    ignored = _IGNORED_ANYWHERE(directory, names)
    return ignored | (_OUTPUT_FOLDERS & set(names)) if Path(directory) == REPO else ignored


def run(cmd: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`cmd` in `cwd`, its code imported from `cwd` first: the project is installed editable (a path to this
    checkout in site-packages), which processes that do not start in `cwd` (DataLoader workers, Dagster steps)
    would otherwise import instead of a repository copy's. Raises AssertionError with the output's tail when it
    fails."""
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(cwd), full_env.get("PYTHONPATH")) if p)
    # dvc.yaml's stage commands call `python` (portable to `dvc exp run --temp`): the project venv's, as `make` sets it
    full_env["PATH"] = os.pathsep.join(p for p in (str(VENV_BIN), full_env.get("PATH")) if p)
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def tiny_image_shards(root: Path, params: dict, shards: Path | None = None) -> Path:
    """`params` written to root/params.yaml (their image.prepare/shard sections: the tiny Fashion-MNIST split sizes)
    and those images prepared and sharded into `shards` (default root/data/shards/image, where the stages look)."""
    from pipeline.config import Shard
    from pipeline.data.prepare import prepare
    from pipeline.data.shard import shard

    shards = shards or root / "data" / "shards" / "image"
    write_params(root / "params.yaml", params)
    prepare("image", params, root / "data" / "raw" / "image", progress=False)
    shard("image", root / "data" / "raw" / "image", shards, Shard(**params["image"]["shard"]), progress=False)
    return shards
