"""Run a job of the workspace's code location from the command line, and wait for it:

    python -m assets.launch demo [-c run_config.yaml ...] [--tags '{"k": "v"}'] [-S key.path=value ...]

`dagster job execute -m assets` runs a job outside any code location: the UI then lists its run under no job and
warns on re-execution. `dagster job launch -w workspace.yaml` creates the run through the code location but only
submits it: it waits in the run queue for the daemon, and the command returns at once. This does both halves: it
creates the run as `dagster job launch` does (workspace.yaml's code location, so the run shows under its job and
re-executes from the UI) and executes it in this process, as the daemon's run worker would, printing the event
log and exiting 1 on failure. DAGSTER_HOME must be set (the Makefile sets it to .dagster_home/). Concurrency
pools apply: a training step waits while another run holds the `training` slot.

It uses the functions behind `dagster job launch` and the run worker (`dagster._cli.job._create_run`,
`dagster._core.execution.api.execute_run`), which are not public API: dagster is pinned (requirements.txt), and
tests/assets/test_orchestration.py runs `make demo`'s command end to end.

-S/--set-param sets a params.yaml value before the run, as `dvc exp run -S` does (the value parsed as YAML; the
file's comments and layout kept, by ruamel.yaml's round trip) and leaves it set, so the stages read it and
dvc.lock records what ran: `make benchmark-cpu` runs the demo job with `-S benchmark.scale=cpu`. Only keys that
already exist can be set (a typo is an error, not a new key). The launch then restarts itself without `-S`, so
the job is built from the edited file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assets.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("job", help="demo, image_pipeline, speech_pipeline or text_pipeline")
    parser.add_argument("-c", "--config", action="append", default=[], help="run config YAML (repeatable; later files win)")
    parser.add_argument("--tags", default="{}", help="run tags as a JSON object")
    parser.add_argument("-w", "--workspace", default="workspace.yaml")
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                        help="set a params.yaml value before the run (dotted key, YAML value), like `dvc exp run -S`; repeatable")
    parser.add_argument("--params", default="params.yaml", help="the file -S edits")
    args = parser.parse_args(argv)
    if args.set_param:
        try:
            set_params(args.params, args.set_param)
        except ValueError as error:
            print(f"{args.params}: {error}", file=sys.stderr)
            return 2
        # `python -m assets.launch` imported the package, and with it the asset graph, code versions and params,
        # before the values changed: run in a fresh interpreter that reads the file as it is now
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "assets.launch", *without_set_params(argv or sys.argv[1:])])

    from dagster import DagsterInstance
    from dagster._cli.job import _create_run
    from dagster._utils.hosted_user_process import recon_job_from_origin
    from dagster._core.execution.api import execute_run
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    run_config: dict = {}
    for path in args.config:
        run_config = _deep_merge(run_config, yaml.safe_load(open(path, encoding="utf-8")) or {})
    with DagsterInstance.get() as instance:
        with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[args.workspace])) as workspace:
            request = workspace.create_request_context()
            (location,) = [entry.code_location for entry in request.get_code_location_entries().values()
                           if entry.code_location is not None] or [None]
            if location is None:
                errors = [e.load_error for e in request.get_code_location_entries().values() if e.load_error]
                print(f"{args.workspace}: the code location failed to load: {errors}", file=sys.stderr)
                return 2
            (repo,) = location.get_repositories().values()
            if not repo.has_job(args.job):
                print(f"no job {args.job!r}; jobs: {', '.join(sorted(j.name for j in repo.get_all_jobs()))}", file=sys.stderr)
                return 2
            run = _create_run(instance=instance, code_location=location, remote_repo=repo, remote_job=repo.get_full_job(args.job),
                              run_config=run_config, tags=json.loads(args.tags), op_selection=None, run_id=None)
        print(f"run {run.run_id} of job {args.job} in code location {location.name}")
        result = execute_run(recon_job_from_origin(run.job_code_origin), run, instance)
        return 0 if result.success else 1


def without_set_params(argv: list[str]) -> list[str]:
    """argv less its -S/--set-param assignments (both `-S x=1` and `-Sx=1` / `--set-param=x=1` spellings)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-S", "--set-param"):
            skip = True
        elif not (arg.startswith("--set-param=") or (arg.startswith("-S") and len(arg) > 2)):
            kept.append(arg)
    return kept


def set_params(path: str, assignments: list[str]) -> None:
    """Apply `key.path=value` assignments to the YAML file at `path` in place (atomically), keeping its comments.
    Raises ValueError naming the assignment when it has no `=`, its key is not in the file, or its value is not
    YAML."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    from pipeline.io import atomic_write_bytes

    round_trip = YAML()
    round_trip.preserve_quotes = True
    round_trip.width = 4096  # keep long lines as they are
    # null as `null` (ruamel writes an empty value), as the file spells it
    round_trip.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
    with open(path, encoding="utf-8") as handle:
        document = round_trip.load(handle)
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"-S {assignment!r}: expected KEY=VALUE, e.g. -S benchmark.scale=cpu")
        *parents, leaf = key.split(".")
        node = document
        for i, part in enumerate(parents + [leaf]):
            if not hasattr(node, "keys") or part not in node:
                raise ValueError(f"-S {assignment!r}: no key {'.'.join(parents[:i] + [part])!r} in the file")
            if i < len(parents):
                node = node[part]
        try:
            node[leaf] = round_trip.load(text) if text.strip() else None  # `[0]` stays a flow list
        except YAMLError as error:
            raise ValueError(f"-S {assignment!r}: the value is not YAML ({getattr(error, 'problem', None) or error})") from None
        print(f"{path}: {key} = {node[leaf]!r}", file=sys.stderr)
    buffer = io.StringIO()
    round_trip.dump(document, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue().encode("utf-8"))


def _deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


if __name__ == "__main__":
    sys.exit(main())
