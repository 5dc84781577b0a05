"""Dagster and DVC keep one record of what was computed from what: dvc.lock.

Every asset is the Dagster face of one DVC stage (its `dvc_stage` metadata). An asset runs the stage's command
itself (Dagster keeps the run config, the Pipes log and the cancellation) and then records the stage in dvc.lock
with `dvc commit --force <stage>`, which hashes the stage's deps, params and outputs exactly as `dvc repro` would
have. So after a Dagster run `dvc status` is clean, `dvc repro` does nothing, and the report's provenance hashes
are those of dvc.lock.

The same inputs give the Dagster side its versions:
- code version: a digest of the stage's command, the code and files it depends on that no stage produces, and the
  values of the params.yaml keys it tracks (the inputs `dvc status` compares for the stage itself);
- data version: the dvc.lock md5 of the stage's outputs (what the downstream stages' deps record).
The UI then marks an asset stale when its stage's own inputs changed or an upstream output changed: when
`dvc status` says the stage changed. Code versions are read when the code location loads ("Reload definitions"
in the UI after editing code or params.yaml).

dvc.yaml is read here with the subset of DVC's templating it uses: `foreach` over a list or a `${params.key}`
list, `${item}` and `${params.key}` in strings (https://dvc.org/doc/user-guide/project-structure/dvcyaml-files).
tests/assets/test_orchestration.py compares the result with DVC's own view.
"""
from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from pydantic import Field

DVC_YAML, DVC_LOCK, PARAMS, DVCIGNORE = Path("dvc.yaml"), Path("dvc.lock"), Path("params.yaml"), Path(".dvcignore")
DVC_ENV = Path(".venv-dvc/bin/dvc")  # DVC's own environment (make setup): hydra-core's antlr4 pin breaks Dagster
TEMPLATE = re.compile(r"\$\{\s*([\w.@-]+)\s*\}")


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _render(value: Any, context: dict[str, Any]) -> Any:
    """`value` with `${name}` replaced from `context` (a whole-string reference keeps the value's type)."""
    if isinstance(value, str):
        whole = TEMPLATE.fullmatch(value.strip())
        if whole:
            return _lookup(context, whole.group(1))
        return TEMPLATE.sub(lambda m: str(_lookup(context, m.group(1))), value)
    if isinstance(value, list):
        return [_render(v, context) for v in value]
    if isinstance(value, dict):
        return {_render(k, context): _render(v, context) for k, v in value.items()}
    return value


def _paths(entries: list) -> list[str]:
    """Paths of a deps/outs/metrics/plots list, whose entries are a path or {path: options}."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


@functools.cache
def stages() -> dict[str, dict[str, Any]]:
    """Every stage of dvc.yaml by DVC name (`shard@image`): cmd, deps, params (keys) and outs (every output,
    metrics and plots included)."""
    params = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
    resolved: dict[str, dict[str, Any]] = {}
    for name, body in yaml.safe_load(DVC_YAML.read_text(encoding="utf-8"))["stages"].items():
        if "foreach" in body:
            items = [(f"{name}@{item}", {**params, "item": item}, body["do"]) for item in _render(body["foreach"], params)]
        else:
            items = [(name, params, body)]
        for stage, context, spec in items:
            spec = _render(spec, context)
            resolved[stage] = {"cmd": spec["cmd"], "deps": _paths(spec.get("deps")), "params": spec.get("params", []),
                               "outs": _paths(spec.get("outs")) + _paths(spec.get("metrics")) + _paths(spec.get("plots"))}
    return resolved


@functools.cache
def _ignore_patterns() -> tuple[str, ...]:
    lines = DVCIGNORE.read_text().splitlines() if DVCIGNORE.exists() else []
    return tuple(p.strip().rstrip("/") for p in lines if p.strip() and not p.startswith("#"))


def _ignored(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in _ignore_patterns())


@functools.cache
def _digest(path: str) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, .dvcignore'd names left out)."""
    p, digest = Path(path), hashlib.sha256()
    if p.is_file():
        digest.update(p.read_bytes())
    elif p.is_dir():
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not _ignored(d))
            for f in sorted(f for f in files if not _ignored(f)):
                digest.update(f"{Path(root, f).relative_to(p)}\0".encode())
                digest.update(Path(root, f).read_bytes())
    else:
        digest.update(b"missing")
    return digest.hexdigest()


def _produced(path: str, outs: set[str]) -> bool:
    return any(path == o or path.startswith(o.rstrip("/") + "/") for o in outs)


def code_version(stage: str, reread: bool = False) -> str:
    """A digest of what `dvc status` compares for `stage` itself: its command, the deps no stage produces (code,
    raw files) and the values of its params (upstream outputs are compared through data versions instead).
    `reread`: hash the files again instead of using this process's earlier digests."""
    if reread:
        for cached in (stages, _digest, _ignore_patterns):
            cached.cache_clear()
    spec = stages()[stage]
    outs = {o for s in stages().values() for o in s["outs"]}
    params = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
    digest = hashlib.sha256(spec["cmd"].encode() if isinstance(spec["cmd"], str) else json.dumps(spec["cmd"]).encode())
    for dep in sorted(d for d in spec["deps"] if not _produced(d, outs)):
        digest.update(f"\0dep {dep} {_digest(dep)}".encode())
    for key in spec["params"]:
        try:
            value = _lookup(params, key) if isinstance(key, str) else key
        except (KeyError, TypeError):
            value = "missing"
        digest.update(f"\0param {json.dumps(key, sort_keys=True)}={json.dumps(value, sort_keys=True)}".encode())
    return digest.hexdigest()[:16]


def locked_outs(stage: str) -> dict[str, str]:
    """{output path: md5} that dvc.lock records for `stage` (empty if it records none)."""
    lock = yaml.safe_load(DVC_LOCK.read_text()) if DVC_LOCK.exists() else {}
    return {o["path"]: o.get("md5", "") for o in ((lock or {}).get("stages", {}).get(stage) or {}).get("outs", [])}


def params_sha256() -> str:
    return hashlib.sha256(PARAMS.read_bytes()).hexdigest()[:16] if PARAMS.exists() else "no params.yaml"


@contextlib.contextmanager
def _dvc_lock() -> Iterator[None]:
    """One DVC command at a time from Dagster's steps (DVC's own repository lock gives up after a few seconds)."""
    path = Path(".dvc/tmp/dagster-commit.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Dvc(dg.ConfigurableResource):
    """Records each materialized asset's DVC stage in dvc.lock (`dvc commit --force <stage>`)."""

    executable: str = Field(default="", description="The dvc command; empty: .venv-dvc/bin/dvc if present, else dvc on PATH.")
    record: bool = Field(default=True, description="Record each stage in dvc.lock after it ran (false: Dagster only; "
                         "`dvc status` then reports the stage as changed).")

    def command(self) -> str:
        found = self.executable or (str(DVC_ENV) if DVC_ENV.exists() else shutil.which("dvc"))
        if not found:
            raise dg.Failure("dvc not found: run `make setup` (it installs .venv-dvc), or set resources.dvc.config.record: false")
        return found

    def record_stage(self, context: dg.AssetExecutionContext, stage: str, params_path: str) -> dict[str, Any]:
        """Commit `stage` to dvc.lock and return the data version (the md5 of its outputs) and its metadata; nothing
        when recording is off or the stage ran with another params file than the params.yaml DVC tracks."""
        if not self.record or Path(params_path) != PARAMS:
            context.log.warning(f"{stage} is not recorded in dvc.lock (record: {self.record}, params: {params_path})")
            return {}
        if code_version(stage, reread=True) != context.assets_def.code_versions_by_key[context.asset_key]:
            raise dg.Failure(f"the inputs of DVC stage {stage} (code or params.yaml) changed while it ran: not "
                             "recorded in dvc.lock; materialize it again")
        with _dvc_lock():
            done = subprocess.run([self.command(), "commit", "--force", "--quiet", stage], capture_output=True, text=True)
        if done.returncode != 0:
            raise dg.Failure(f"dvc commit --force {stage} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        outs = locked_outs(stage)
        version = hashlib.sha256(json.dumps(outs, sort_keys=True).encode()).hexdigest()[:16]
        return {"data_version": dg.DataVersion(version),
                "metadata": {"dvc_lock_md5": dg.MetadataValue.json(outs)}}
