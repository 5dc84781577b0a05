"""The benchmark report: per modality and evaluation protocol, the downstream score against the pretraining cost,
in measured seconds and in training FLOPs (the paper's speed/accuracy figures), with seed spread and floors; each
method's best score and its cost; data2vec 2.0's speed-up over each baseline where the curves support one (else
"inconclusive" and why, pipeline/benchmark/analysis.py); the paper's claim beside what this run shows; throughput,
MFU and effective batch; the provenance of every number. Written as reports/benchmark.md and a self-contained
reports/benchmark.html (plots embedded, no scripts), with the plots in reports/plots/, every record in
reports/metrics.json and the headline numbers, flat, in reports/headline.json (`dvc metrics show`).

Inputs, for each modality of params.yaml `benchmark` (missing ones are named, on stderr and in the report):
  models/<modality>/<method>/probe/records.json    frozen-feature protocols (knn, linear, ctc_probe) of every
                                                   method and of the floors random_init and raw_input
  models/<modality>/<method>/sweep/<task>/curve.json  the finetune protocol of every method and scratch
                                                   (unless benchmark.<modality>.finetune is none)
  reports/throughput/<modality>.json               pipeline/benchmark/throughput.py records
Each record: {modality, method, preset, seed, pretrain_updates, pretrain_samples, pretrain_seconds, pretrain_flops,
device, world_size, protocol, task, metric, value, split, + protocol extras (layer, pooling, selected, counts)};
this stage adds git_commit and dvc_stage_hash (the md5 dvc.lock records for the stage output holding the file).
"""
from __future__ import annotations

import base64
import html
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.benchmark.analysis import FLOORS, RANDOM_INIT, REFERENCE, analyse
from pipeline.io import git_state

METHOD_ORDER = ["data2vec2", "data2vec1", "mae", "wav2vec2", "mlm"]
PROTOCOL_ORDER = ["knn", "linear", "ctc_probe", "finetune"]
PROTOCOL_NAMES = {"knn": "kNN-20 on frozen features", "linear": "linear probe on frozen features",
                  "ctc_probe": "linear CTC probe on frozen frame features", "finetune": "fine-tuning"}
# The paper's headline speed-ups of data2vec 2.0 over the baseline it names (Baevski et al. 2022, "Efficient
# Self-supervised Learning with Contextualized Target Representations for Vision, Speech and Language",
# arXiv 2212.07525, abstract).
PAPER_CLAIMS = {
    "image": ("mae", 16.4, "matches MAE's ImageNet-1K accuracy with 16.4x less pretraining time"),
    "speech": ("wav2vec2", 10.6, "matches wav2vec 2.0's LibriSpeech word error rate with 10.6x less pretraining time"),
    "text": ("mlm", 2.0, "matches a retrained RoBERTa on GLUE in half the pretraining time"),
}
REQUIRED = ("modality", "method", "protocol", "task", "metric", "value")
SCHEMA = ("modality", "method", "preset", "seed", "pretrain_updates", "pretrain_samples", "pretrain_seconds",
          "pretrain_flops", "device", "world_size", "protocol", "task", "metric", "value", "split", "git_commit",
          "dvc_stage_hash")
# A run whose training loop moved fewer samples/s than this fraction of the throughput stage's figure for the same
# step ran on a busy machine (or was dominated by start-up): its seconds overstate the method's cost.
SLOW_RUN = 0.7


# ---------------------------------------------------------------------------------------------------- inputs

def probe_records_path(modality: str, method: str) -> Path:
    return Path("models") / modality / method / "probe" / "records.json"


def benchmark_inputs(params: dict[str, Any] | None = None) -> tuple[list[Path], list[Path]]:
    """(records files, throughput files) the benchmark of params.yaml (`params` default: ./params.yaml) feeds the
    report: per modality, every method's and floor's probe records, every method's and scratch's fine-tuning
    sweep (unless its `finetune` is none) and the modality's throughput file. Existing or not."""
    from pipeline import config as P
    from pipeline import paths

    records, throughput = [], []
    for modality, run in P.benchmark(params).items():
        records += [probe_records_path(modality, m) for m in (*run.methods, "random_init", "raw_input")]
        if run.finetune != "none":
            records += [paths.sweep_dir(modality, m, run.task) / "curve.json" for m in (*run.methods, "scratch")]
        throughput.append(paths.throughput_path(modality))
    return records, throughput


def dvc_out_hashes(lock_path: Path) -> dict[str, str]:
    """{output path: md5} for every stage output recorded in dvc.lock."""
    import yaml

    if not lock_path.exists():
        return {}
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    return {o["path"]: o.get("md5", "") for stage in (lock.get("stages") or {}).values() for o in stage.get("outs", [])}


def stage_hash(path: Path, hashes: dict[str, str]) -> str:
    """The dvc.lock md5 of the stage output holding `path` (the file itself or the nearest folder above it)."""
    for candidate in (path, *path.parents):
        if candidate.as_posix() in hashes:
            return hashes[candidate.as_posix()]
    return "not in dvc.lock"


def validate(records: list[dict[str, Any]], source: str = "metrics.json") -> None:
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise ValueError(f"{source} record {i} lacks {missing}: {r}")


def collect(paths: list[Path], lock_path: Path) -> list[dict[str, Any]]:
    """Every record of the files in `paths`, with every schema field (None where the file has none), stamped with
    the git commit and the DVC hash of the stage output behind it."""
    hashes, commit = dvc_out_hashes(lock_path), git_state()
    records = []
    for path in paths:
        rows = json.loads(path.read_text(encoding="utf-8"))
        validate(rows, str(path))
        records += [{**dict.fromkeys(SCHEMA), **r, "git_commit": commit, "dvc_stage_hash": stage_hash(path, hashes)}
                    for r in rows]
    return records


def load_throughput(paths: list[Path]) -> list[dict[str, Any]]:
    return [t for p in paths if p.exists() for t in json.loads(p.read_text(encoding="utf-8"))]


# ------------------------------------------------------------------------------------------------ formatting

def _order(method: str) -> tuple[int, str]:
    order = METHOD_ORDER + list(FLOORS)
    return (order.index(method) if method in order else len(order), method)


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _score(point: dict[str, Any]) -> str:
    """mean ± spread over seeds; one seed has no spread to show."""
    return _num(point["mean"]) + (f" ± {point['spread']:.2g}" if point["n"] > 1 else "")


def _label(reason: str) -> str:
    """The short form of an analysis reason ("below the floor: ..." -> "below the floor")."""
    return reason.split(":", 1)[0]


def _ratio(verdict: dict[str, Any], axis: str) -> str:
    value = verdict[axis]
    return "" if value is None else ("≥" if verdict["at_least"] else "") + f"{value:.2f}x"


def speedup_cell(verdict: dict[str, Any] | None) -> str:
    """A speed-up in seconds and FLOPs where the analysis states one, else the verdict and its short reason."""
    if verdict is None:
        return "no curve"
    if verdict["verdict"] == "speedup":
        return ", ".join(f"{_ratio(verdict, axis)} {name}" for axis, name in (("seconds", "time"), ("flops", "FLOPs"))
                         if verdict[axis] is not None)
    if verdict["verdict"] == "not_reached":
        return "not reached"
    return f"inconclusive ({_label(verdict['reason'])})"


def group_key(group: dict[str, Any]) -> str:
    parts = [group["modality"], group["protocol"], group["task"], group["metric"]]
    return "-".join(str(p) for p in parts + ([group["split"]] if group["split"] not in ("test", None) else []))


def _sorted_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from pipeline.config import MODALITIES

    def key(g: dict[str, Any]) -> tuple:
        m, p = g["modality"], g["protocol"]
        return (MODALITIES.index(m) if m in MODALITIES else 99, str(m),
                PROTOCOL_ORDER.index(p) if p in PROTOCOL_ORDER else 99, str(p), str(g["task"]), str(g["split"]))

    return sorted(groups, key=key)  # stable: the metrics keep analysis' order


# ----------------------------------------------------------------------------------------------------- plots

FLOOR_STYLE = {"random_init": ("--", "black"), "raw_input": (":", "gray"), "scratch": ("-.", "black")}
# one colour per method in every plot; each modality has one paper baseline (mae, wav2vec2, mlm)
COLORS = {"data2vec2": "C0", "data2vec1": "C1", "mae": "C2", "wav2vec2": "C2", "mlm": "C2"}


def curves_png(group: dict[str, Any], path: Path) -> dict[str, list[str]]:
    """Score against pretraining seconds (left) and training FLOPs (right), log x-axes: every method's curve with
    the seed spread as error bars, every floor as a horizontal line (its spread as a band). Returns what was
    drawn: {"methods": [...], "floors": [...]}."""
    from pipeline import plots

    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, sharey=True)
    drawn: dict[str, list[str]] = {"methods": [], "floors": []}
    for ax, axis, xlabel in zip(axes, ("seconds", "flops"), ("pretraining seconds (training loop, measured)",
                                                               "pretraining FLOPs (counted)")):
        for method in sorted(group["curves"], key=_order):
            points = [p for p in group["curves"][method] if p[axis]]
            if points:
                ax.errorbar([p[axis] for p in points], [p["mean"] for p in points], yerr=[p["spread"] for p in points],
                            marker="o", capsize=3, lw=2 if method == REFERENCE else 1.3, label=method,
                            color=COLORS.get(method))
                drawn["methods"] += [method] if axis == "seconds" else []
        for name, floor in sorted(group["floors"].items(), key=lambda item: _order(item[0])):
            style, color = FLOOR_STYLE.get(name, ("--", "gray"))
            ax.axhline(floor["mean"], ls=style, color=color, lw=1.2, label=f"{name} (floor)")
            if floor["spread"]:
                ax.axhspan(floor["mean"] - floor["spread"], floor["mean"] + floor["spread"], color=color, alpha=0.1)
            drawn["floors"] += [name] if axis == "seconds" else []
        if any(p[axis] for points in group["curves"].values() for p in points):
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(group["metric"] + ("" if group["higher_is_better"] else " (lower is better)"))
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{group['modality']}: {PROTOCOL_NAMES.get(group['protocol'], group['protocol'])}, "
                 f"{group['task']} ({group['split']})")
    plots.save(fig, path)
    return drawn


# ---------------------------------------------------------------------------------------------- the sections

def _floor_of(group: dict[str, Any]) -> str | None:
    return next((m for m in RANDOM_INIT if m in group["floors"]), None)


def below_floor(group: dict[str, Any]) -> list[str]:
    """'method at N, M updates' for every pretrained point whose mean is below the random_init floor."""
    floor = _floor_of(group)
    if floor is None:
        return []
    return [f"{method} at {', '.join(str(p['pretrain_updates']) for p in low)} updates"
            for method in sorted(group["curves"], key=_order)
            if (low := [p for p in group["curves"][method] if p[f"below_{floor}"]])]


def _versus(best: dict[str, Any]) -> str:
    versus = best.get("vs_random_init")
    if versus is None:
        return ""
    word = "better" if versus["better_by"] > 0 else "worse"
    return (f"{word} by {abs(versus['better_by']):.3g}"
            + ("" if versus["beyond_spread"] or versus["better_by"] <= 0 or best["n"] == 1 else ", within the spread")
            + (" ⚠ below the floor" if versus["better_by"] < 0 else ""))


def group_section(group: dict[str, Any], image: str) -> list[str]:
    """One (modality, protocol, task, metric): the plot, the best points with the floors, the flags and the
    speed-ups with their reasons."""
    floor = _floor_of(group) or "random_init"
    md = [f"## {group['modality']}: {group['protocol']} on {group['task']} ({group['metric']})", "",
          f"{PROTOCOL_NAMES.get(group['protocol'], group['protocol'])}; {group['split']} split; "
          + ("higher is better." if group["higher_is_better"] else "lower is better."), "", f"![{image}](plots/{image}.png)", "",
          f"| method | best {group['metric']} | seeds | at updates | seconds | FLOPs | within its spread from (updates) "
          f"| vs {floor} |", "|---|---|---|---|---|---|---|---|"]
    for method in sorted(group["best"], key=_order):
        b = group["best"][method]
        md.append(f"| {method} | {_score(b)} | {b['n']} | {b['pretrain_updates']} | {_num(b['seconds'], 3)} | "
                  f"{_num(b['flops'], 3)} | {b['reached_within_spread']['pretrain_updates']} | {_versus(b)} |")
    for name in sorted(group["floors"], key=_order):
        f = group["floors"][name]
        md.append(f"| {name} (floor) | {_score(f)} | {f['n']} | 0 | 0 | 0 |  |  |")
    md.append("")
    low = below_floor(group)
    if low:
        md += [f"⚠ Below the {floor} floor (the encoder at initialisation scores better): {'; '.join(low)}.", ""]
    if group["speedups"]:
        md += ["| baseline | data2vec 2.0's speed-up | in time | in FLOPs | why |", "|---|---|---|---|---|"]
        for method in sorted(group["speedups"], key=_order):
            v = group["speedups"][method]
            verdict = {"speedup": "stated", "not_reached": "not reached"}.get(v["verdict"], "inconclusive")
            md.append(f"| {method} | {verdict} | {_ratio(v, 'seconds')} | {_ratio(v, 'flops')} | {v['reason']} |")
        md.append("")
        if any(v["at_least"] for v in group["speedups"].values()):
            md += ["≥: data2vec 2.0 already had the baseline's best at its smallest budget, so the ratio is a lower bound.", ""]
    return md


def headline_section(groups: list[dict[str, Any]]) -> list[str]:
    """Per modality: every method's and floor's best score per protocol and metric, and data2vec 2.0's speed-up over
    each baseline (time and FLOPs) or why there is none."""
    md = ["## Headline", "", "Best test score per method (mean ± spread over seeds at its best budget, the budget chosen on the validation split "
          "where the records carry valid scores) and floors; "
          "data2vec 2.0's speed-up = the baseline's cost to reach its best / data2vec 2.0's cost to reach that score, "
          "stated only above the random_init floor and beyond the seed spread.", ""]
    for modality in dict.fromkeys(g["modality"] for g in groups):
        mine = [g for g in groups if g["modality"] == modality]
        methods = sorted({m for g in mine for m in (*g["best"], *g["floors"])}, key=_order)
        baselines = sorted({m for g in mine for m in g["speedups"]}, key=_order)
        md += [f"### {modality}", "", "| protocol | task | metric | " + " | ".join(methods) + "".join(
               f" | speed-up vs {b}" for b in baselines) + " |", "|---|---|---|" + "---|" * (len(methods) + len(baselines))]
        for g in mine:
            cells = [_score(g["best"].get(m) or g["floors"][m]) if m in g["best"] or m in g["floors"] else ""
                     for m in methods]
            cells += [speedup_cell(g["speedups"].get(b)) if b in g["speedups"] else "" for b in baselines]
            md.append(f"| {g['protocol']} | {g['task']} | {g['metric']} | " + " | ".join(cells) + " |")
        md.append("")
    return md


def _shows(group: dict[str, Any], baseline: str) -> str:
    """What one group shows, in a clause: data2vec 2.0's best against the floor and the verdict on `baseline`."""
    head = f"{group['protocol']} {group['metric']}: "
    best = group["best"].get(REFERENCE)
    if best is None:
        return head + "no data2vec 2.0 curve"
    versus = best.get("vs_random_init")
    if versus:
        standing = ("better than" if versus["beyond_spread"] else "worse than" if versus["better_by"] < 0
                    else "not better, beyond the spread, than")
        head += (f"data2vec 2.0's best {_score(best)} is {standing} the {versus['floor']} floor "
                 f"({group['floors'][versus['floor']]['mean']:.4g}), ")
    else:
        head += f"data2vec 2.0's best {_score(best)} (no random_init floor), "
    raw = group["floors"].get("raw_input")
    if raw is not None and (best["mean"] <= raw["mean"]) == group["higher_is_better"]:
        head += f"not better than the raw_input floor ({raw['mean']:.4g}): not a result for this protocol yet, "
    verdict = group["speedups"].get(baseline)
    if verdict is None:
        return head + f"no {baseline} curve"
    if verdict["verdict"] == "speedup":
        axes = [f"{_ratio(verdict, axis)} faster in {name}" if verdict[axis] is not None else f"not faster beyond noise in {name}"
                for axis, name in (("seconds", "seconds"), ("flops", "FLOPs"))]
        return head + f"it reaches {baseline}'s best {' and '.join(axes)}"
    return head + f"speed-up over {baseline} {'not reached' if verdict['verdict'] == 'not_reached' else 'inconclusive'} " \
                  f"({verdict['reason']})"


def claims_section(groups: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Per modality, one sentence: the paper's claim and what this run shows (from the analysis)."""
    statements = []
    for modality in dict.fromkeys(g["modality"] for g in groups):
        if modality not in PAPER_CLAIMS:
            continue
        baseline, _, claim = PAPER_CLAIMS[modality]
        shows = "; ".join(_shows(g, baseline) for g in groups if g["modality"] == modality)
        statements.append(f"**{modality}**: the paper reports that data2vec 2.0 {claim}; this run shows, {shows}.")
    md = ["## The paper's claims and what this run shows", ""] + [f"- {s}" for s in statements]
    md += ["", "The paper's numbers are ImageNet-1K / LibriSpeech / GLUE with base-size models on GPUs; these runs use "
           "the embedded datasets at the preset and budgets above, so only the direction of a comparison carries over.", ""]
    return md, statements


def _run_key(r: dict[str, Any]) -> tuple:
    return (r["modality"], r["method"], r.get("seed"), r.get("pretrain_updates"))


def pretraining_runs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per pretraining run (modality, method, seed, updates) of a pretrained method (not a floor)."""
    runs = {_run_key(r): r for r in records if r["method"] not in FLOORS and r.get("pretrain_updates")}
    return [runs[k] for k in sorted(runs, key=lambda k: tuple(str(x) for x in k))]


def throughput_of(run: dict[str, Any], throughput: list[dict[str, Any]], same_step: bool = False) -> dict[str, Any] | None:
    """The throughput stage's record for a run's step: same modality and method, the same preset where the records
    say so; among those the latest that also has the run's batch, precision and device (each where both records
    carry it), as many of them as one has. `same_step`: only a record that has all three (None otherwise)."""
    same = [t for t in throughput if (t.get("modality"), t.get("method")) == (run["modality"], run["method"])
            and run.get("preset") in (None, t.get("preset"))]
    batch = (run.get("pretrain_samples") or 0) / (run.get("pretrain_updates") or 1)
    checks = (lambda t: t.get("batch_size") == batch,
              lambda t: None in (run.get("precision"), t.get("precision"))
              or precision_name(t["precision"]) == precision_name(run["precision"]),
              lambda t: None in (run.get("device"), t.get("device")) or t["device"] == run["device"])
    # the latest of the records matching most (max keeps the first of equals: iterate newest first)
    best = max(reversed(same), key=lambda t: sum(check(t) for check in checks), default=None)
    return None if best is None or (same_step and not all(check(best) for check in checks)) else best


PRECISION_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # torch's dtype names, as older records spell them


def precision_name(precision: str) -> str:
    """params.yaml's spelling (bf16, fp16, fp32) of a precision; older throughput records carry torch's dtype name."""
    return PRECISION_NAMES.get(str(precision).removeprefix("torch."), str(precision))


def slow_runs(records: list[dict[str, Any]], throughput: list[dict[str, Any]]) -> list[str]:
    """Per (modality, method), a warning naming its runs whose training loop moved fewer than SLOW_RUN x the
    throughput stage's samples/s for the same step (same batch, precision and device: `throughput_of` with
    same_step; a run with no such record is not compared)."""
    slow: dict[tuple[str, str], list[tuple[dict[str, Any], float, float]]] = defaultdict(list)
    runs: dict[tuple[str, str], int] = defaultdict(int)
    for run in pretraining_runs(records):
        stage = throughput_of(run, throughput, same_step=True)
        if not (stage and run.get("pretrain_samples") and run.get("pretrain_seconds")):
            continue
        runs[(run["modality"], run["method"])] += 1
        rate = run["pretrain_samples"] / run["pretrain_seconds"]
        if rate < SLOW_RUN * stage["train_samples_per_s"]:
            slow[(run["modality"], run["method"])].append((run, rate, stage["train_samples_per_s"]))
    warnings = []
    for (modality, method), rows in sorted(slow.items()):
        ratios = sorted(f"{rate / stage:.2f}" for _, rate, stage in rows)
        total = runs[(modality, method)]
        which = (f"all {total} runs" if len(rows) == total else f"{len(rows)} of {total} runs ("
                 + ", ".join(f"seed {r.get('seed')} at {r['pretrain_updates']} updates" for r, _, _ in rows) + ")")
        warnings.append(f"{modality}/{method}: {which} at {'-'.join(dict.fromkeys([ratios[0], ratios[-1]]))}x the "
                        f"throughput stage's {rows[0][2]:.1f} samples/s")
    return warnings


def throughput_section(records: list[dict[str, Any]], throughput: list[dict[str, Any]]) -> list[str]:
    md = []
    if throughput:
        md += ["## Throughput and MFU", "",
               "| modality | method | preset | device | precision | batch x clones | samples/s | tokens/s | loader samples/s "
               "| GFLOPs/sample | MFU | matmul peak (GFLOP/s) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for t in throughput:
            md.append(f"| {t['modality']} | {t['method']} | {t['preset']} | {t['device']} | {t['precision']} | "
                      f"{t['batch_size']} x {t['clone_batch']} | {t['train_samples_per_s']:.1f} | {t['train_tokens_per_s']:.0f} | "
                      f"{t['loader_samples_per_s']:.1f} | {_num(t.get('flops_per_sample', 0) / 1e9, 3)} | "
                      f"{100 * t['mfu']:.1f}% | {t['matmul_peak_flops_per_s'] / 1e9:.0f} |")
        md += ["", "MFU = FLOPs of one real training step (student, teacher, decoder, backward; FlopCounterMode) / step "
               "time / this machine's measured matmul peak in the same dtype (`python -m pipeline throughput`).", ""]
    warnings = slow_runs(records, throughput)
    if warnings:
        md += [f"⚠ Seconds measured on a busy machine are inflated: these runs' training loops moved fewer than "
               f"{SLOW_RUN}x the samples/s of the throughput stage for the same step, so their seconds overstate the "
               "cost (the FLOPs do not depend on the machine):", ""] + [f"- {w}" for w in warnings] + [""]
    return md


def effective_batch_section(records: list[dict[str, Any]], throughput: list[dict[str, Any]]) -> list[str]:
    """Per (modality, method): per-rank x world x accumulation x clones, from the records' effective_batch where
    they carry it, else the samples per update and world size of the records and the clones of the throughput step;
    and the precision the runs trained in (what `precision: auto` resolved to on their device)."""
    rows = {}
    for run in pretraining_runs(records):
        e = run.get("effective_batch") if isinstance(run.get("effective_batch"), dict) else {}
        stage = throughput_of(run, throughput) or {}
        samples = e.get("samples_per_update") or (run["pretrain_samples"] or 0) // run["pretrain_updates"] or None
        rows[(run["modality"], run["method"])] = [e.get("per_rank_micro_batch"), e.get("world_size") or run.get("world_size"),
                                                  e.get("grad_accum"), e.get("clone_batch") or stage.get("clone_batch"), samples,
                                                  run.get("precision")]
    if not rows:
        return []
    md = ["## Effective batch", "", "| modality | method | per-rank | world | accumulation | clones | samples/update | precision |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {m} | {x} | " + " | ".join(_num(v) for v in row) + " |" for (m, x), row in sorted(rows.items())]
    return md + ["", "samples/update = per-rank x world x accumulation; the student sees each sample `clones` times "
                 "(data2vec 2.0's clone batch), the teacher once.", ""]


def provenance_section(records: list[dict[str, Any]]) -> list[str]:
    """Which code, DVC stage output and seeds every number comes from: one row per (modality, method, protocol)."""
    rows: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        rows[(r["modality"], r["method"], r["protocol"])].append(r)

    def listed(values: set, code: bool = False) -> str:
        text = sorted(str(v) for v in values)
        return ", ".join(f"`{v[:10]}`" if code and v != "not in dvc.lock" else v for v in text)

    md = ["## Provenance", "", "Every record, with its seed, git commit and DVC stage hash, is in `metrics.json`.", "",
          "| modality | method | protocol | seeds | updates | records | git commit | DVC stage hash (dvc.lock) |",
          "|---|---|---|---|---|---|---|---|"]
    for (modality, method, protocol), rs in sorted(rows.items(), key=lambda item: (item[0][0], _order(item[0][1]), item[0][2])):
        seeds = sorted({r.get("seed") for r in rs}, key=str)
        updates = sorted({r.get("pretrain_updates") or 0 for r in rs})
        md.append(f"| {modality} | {method} | {protocol} | {', '.join('none' if s is None else str(s) for s in seeds)} | "
                  f"{', '.join(map(str, updates))} | {len(rs)} | {listed({r.get('git_commit') for r in rs}, True)} | "
                  f"{listed({r.get('dvc_stage_hash') for r in rs}, True)} |")
    return md + [""]


def header(records: list[dict[str, Any]], context: dict[str, Any]) -> list[str]:
    presets = sorted({str(r.get("preset")) for r in records if r.get("preset")})
    seeds = sorted({r.get("seed") for r in records if r.get("seed") is not None}, key=str)
    md = ["# Benchmark: data2vec 2.0 against its baselines", "",
          f"{len(records)} records (`{context.get('metrics_path', 'reports/metrics.json')}`) at git commit "
          f"`{context.get('git_commit', 'unknown')}`; dvc.lock md5 `{context.get('dvc_lock_md5', 'n/a')}`. "
          f"Hardware: {context.get('hardware', 'unknown')}. Presets: {', '.join(presets) or 'unknown'}; seeds: "
          f"{', '.join(map(str, seeds)) or 'none'}.", "",
          *([f"Scale `{context['scale']}`" + ("." if context.get("finetune", True) else
             f": the fine-tuning protocol is off at this scale (params.yaml benchmark.scales.{context['scale']}.finetune"
             "); frozen-feature probes only."), ""] if context.get("scale") else []),
          "Same encoder size, data and evaluation for every method. Each point of a curve is a complete pretraining run "
          "with its own schedule, at an update budget; its cost is measured twice: the training loop's seconds on this "
          "machine and the training FLOPs (counted, machine-independent). Scores are the mean over seeds, error bars "
          "and ± the sample standard deviation (none with one seed). Floors: `random_init` (the same encoder at "
          "initialisation, same protocol), `raw_input` (the probe on the raw input), `scratch` (fine-tuned from random "
          "weights). A speed-up is stated only where both curves are above the random_init floor and apart beyond the "
          "seed spread; otherwise the report says \"inconclusive\" and why.", ""]
    if context.get("missing"):
        md += ["## Missing inputs", "", "This report is partial: these inputs were not found (not run yet).", ""]
        md += [f"- `{p}`" for p in context["missing"]] + [""]
    return md


def build(records: list[dict[str, Any]], throughput: list[dict[str, Any]], out_dir: Path, context: dict[str, Any]
          ) -> dict[str, Any]:
    """Write benchmark.md, benchmark.html and plots/*.png under out_dir. Returns {"statements" (per modality,
    the paper's claim and what this run shows), "groups" (the analysis), "plots" ({key: what was drawn})}."""
    validate(records)
    groups = _sorted_groups(analyse(records))
    md = header(records, context) + headline_section(groups)
    claims, statements = claims_section(groups)
    md += claims
    images, drawn = {}, {}
    for group in groups:
        key = group_key(group)
        images[key] = out_dir / "plots" / f"{key}.png"
        drawn[key] = curves_png(group, images[key])
        md += group_section(group, key)
    md += throughput_section(records, throughput) + effective_batch_section(records, throughput)
    md += provenance_section(records)
    text = "\n".join(md) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmark.md").write_text(text, encoding="utf-8")
    (out_dir / "benchmark.html").write_text(to_html(text, images), encoding="utf-8")
    return {"statements": statements, "groups": groups, "plots": drawn}


def headline_metrics(groups: list[dict[str, Any]]) -> dict[str, float]:
    """A flat dict for `dvc metrics show/diff`: "<modality>/<protocol>/<task>/<metric>/<name>" -> every method's
    best mean score (<method>_best), every floor's mean (<floor>) and data2vec 2.0's speed-ups where stated
    (speedup_seconds_vs_<baseline>, speedup_flops_vs_<baseline>)."""
    out: dict[str, float] = {}
    for g in groups:
        prefix = f"{g['modality']}/{g['protocol']}/{g['task']}/{g['metric']}"
        out.update({f"{prefix}/{m}_best": b["mean"] for m, b in g["best"].items()})
        out.update({f"{prefix}/{m}": f["mean"] for m, f in g["floors"].items()})
        for m, v in g["speedups"].items():
            out.update({f"{prefix}/speedup_{axis}_vs_{m}": v[axis] for axis in ("seconds", "flops")
                        if v["verdict"] == "speedup" and v[axis] is not None})
    return out


def to_html(markdown: str, images: dict[str, Path]) -> str:
    """A small, dependency-free rendering of the report's markdown subset, with every plot embedded."""
    body: list[str] = []
    table: list[list[str]] = []

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    def flush_table() -> None:
        if table:
            head, rows = table[0], table[2:]
            body.append("<table><thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr></thead><tbody>")
            body.extend("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in rows)
            body.append("</tbody></table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        flush_table()
        heading = re.match(r"^(#{1,3}) (.*)", line)
        if heading:
            level = len(heading[1])
            body.append(f"<h{level}>{inline(heading[2])}</h{level}>")
        elif line.startswith("![") and "](" in line:
            key = line[2 : line.index("]")]
            data = base64.b64encode(images[key].read_bytes()).decode()
            body.append(f'<img alt="{html.escape(key)}" src="data:image/png;base64,{data}">')
        elif line.startswith("- "):
            body.append(f"<p>&bull; {inline(line[2:])}</p>")
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
             "th{background:#f4f4f4}img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>data2vec 2.0 benchmark</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def run(args) -> dict[str, Any]:
    """The `report` stage: collect the records (args.records, default: the benchmark's inputs), write
    <args.out>/metrics.json, headline.json, benchmark.md, benchmark.html and plots/. Missing inputs are named on
    stderr and in the report; no record at all is a UserInputError."""
    import hashlib
    import platform

    from pipeline import config as P
    from pipeline import paths
    from pipeline.errors import UserInputError
    from pipeline.io import atomic_write_json

    # given records need no params file; the benchmark's inputs and scale come from it
    params = None if args.records else P.load(getattr(args, "params", None) or Path("params.yaml"))
    inputs, throughput_paths = ([Path(p) for p in args.records], None) if args.records else benchmark_inputs(params)
    records = collect([p for p in inputs if p.exists()], Path("dvc.lock"))
    if throughput_paths is None:  # given records: the throughput of their modalities
        throughput_paths = [paths.throughput_path(m) for m in dict.fromkeys(r["modality"] for r in records)]
    missing = [p for p in inputs + throughput_paths if not p.exists()]
    if missing:
        print(f"report: {len(missing)} of {len(inputs) + len(throughput_paths)} inputs not found (not run yet), left out: "
              + ", ".join(map(str, missing)), file=sys.stderr)
    if not records:
        raise UserInputError("no benchmark records (models/<modality>/<method>/probe/records.json, "
                             ".../sweep/<task>/curve.json); run `python -m pipeline probe` or `sweep` first")
    throughput = load_throughput(throughput_paths)
    lock, out = Path("dvc.lock"), Path(args.out)
    context = {"git_commit": git_state(), "metrics_path": str(out / "metrics.json"), "missing": [str(p) for p in missing],
               "dvc_lock_md5": hashlib.md5(lock.read_bytes()).hexdigest() if lock.exists() else "no dvc.lock",
               "hardware": throughput[0]["device"] if throughput else f"{platform.machine()} ({platform.platform()})"}
    if params is not None and (params.get("benchmark") or {}).get("scales"):
        scale = P.benchmark_scale(params)
        context |= {"scale": scale.name, "finetune": scale.finetune}
    out.mkdir(parents=True, exist_ok=True)
    # every record with every key (None where its protocol has none): `dvc plots` reads a list of records only
    # when all of them have the same keys (probe and fine-tuning records carry different extras)
    keys = list(dict.fromkeys(k for r in records for k in r))
    atomic_write_json(out / "metrics.json", [{k: r.get(k) for k in keys} for r in records])
    result = build(records, throughput, out, context)
    atomic_write_json(out / "headline.json", headline_metrics(result["groups"]))
    return {"records": len(records), "report": str(out / "benchmark.md"), "statements": result["statements"],
            "missing": context["missing"]}
