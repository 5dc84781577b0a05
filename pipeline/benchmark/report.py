"""The benchmark report: downstream score against pretraining wall-clock per modality and method (the paper's
figures), each method's best score and the time to reach it, data2vec 2.0's speed-up to reach each baseline's
best, throughput and MFU, and where our numbers disagree with the paper. Written as reports/benchmark.md and a
self-contained reports/benchmark.html (images embedded, no scripts), with the plots in reports/plots/.
docs/benchmark.md describes the design and how to read the report.

Input: reports/metrics.json, a list of records, one per (modality, method, budget checkpoint, task, metric)
(pipeline/benchmark/sweep.py writes them into each sweep's curve.json):
  {modality, method, preset, pretrain_seconds, pretrain_updates, pretrain_samples, device, world_size,
   task, metric, value, split, git_commit, dvc_stage_hash}
and reports/throughput/*.json (pipeline/benchmark/throughput.py records).
"""
from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.finetune.metrics import LOWER_IS_BETTER
from pipeline.io import git_state

METHOD_ORDER = ["data2vec2", "data2vec1", "mae", "wav2vec2", "mlm", "scratch"]
# The paper's headline speed-ups of data2vec 2.0 over the baseline it names (arXiv 2212.07525, abstract).
PAPER_CLAIMS = {
    "image": ("mae", 16.4, "matches MAE's ImageNet-1K accuracy with 16.4x less pretraining time"),
    "speech": ("wav2vec2", 10.6, "matches wav2vec 2.0's LibriSpeech word error rate with 10.6x less pretraining time"),
    "text": ("mlm", 2.0, "matches RoBERTa on GLUE in half the pretraining time"),
}
REQUIRED = ("modality", "method", "pretrain_seconds", "task", "metric", "value")


def better(metric: str, a: float, b: float) -> bool:
    """Is score a at least as good as score b?"""
    return a <= b if metric.lower() in LOWER_IS_BETTER else a >= b


def validate(records: list[dict[str, Any]]) -> None:
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise ValueError(f"metrics.json record {i} lacks {missing}: {r}")


def curves(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, list[tuple[float, float, dict]]]]:
    """{(modality, task, metric): {method: [(pretrain_seconds, value, record), ...] sorted by time}}."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        out[(r["modality"], r["task"], r["metric"])][r["method"]].append((float(r["pretrain_seconds"]), float(r["value"]), r))
    for by_method in out.values():
        for points in by_method.values():
            points.sort(key=lambda p: p[0])
    return out


def best_point(metric: str, points: list[tuple[float, float, dict]]) -> tuple[float, float]:
    """(best score, earliest pretraining time at which it was reached)."""
    best_t, best_v = points[0][0], points[0][1]
    for t, v, _ in points[1:]:
        if not better(metric, best_v, v):
            best_t, best_v = t, v
    return best_v, best_t


def time_to_reach(metric: str, points: list[tuple[float, float, dict]], target: float) -> float | None:
    for t, v, _ in points:
        if better(metric, v, target):
            return t
    return None


def flat(by_method: dict[str, list]) -> bool:
    """Every method scores the same at every budget (e.g. WER 1.0 before CTC emits letters): nothing to compare."""
    values = [v for points in by_method.values() for _, v, _ in points]
    return len(values) > 1 and max(values) - min(values) < 1e-9


def speedups(metric: str, by_method: dict[str, list]) -> dict[str, dict[str, Any]]:
    """For each baseline: its best score and time, data2vec 2.0's time to reach that score, and the ratio. When
    data2vec 2.0 already had the score at its first checkpoint the true time may be earlier: the ratio is then a
    lower bound (`lower_bound`). Flat curves give no rows."""
    if "data2vec2" not in by_method or flat(by_method):
        return {}
    ours = by_method["data2vec2"]
    rows = {}
    for method, points in by_method.items():
        if method in ("data2vec2", "scratch"):
            continue
        best_v, best_t = best_point(metric, points)
        t = time_to_reach(metric, ours, best_v)
        rows[method] = {"baseline_best": best_v, "baseline_time": best_t, "data2vec2_time": t,
                        "speedup": (best_t / t) if (t is not None and t > 0) else None, "lower_bound": t == ours[0][0]}
    return rows


def plot_png(title: str, metric: str, by_method: dict[str, list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=100)
    for method in sorted(by_method, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99):
        points = by_method[method]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if method == "scratch":
            ax.axhline(ys[-1], ls="--", color="gray", label="scratch (no pretraining)")
        else:
            ax.plot(xs, ys, marker="o", lw=2 if method == "data2vec2" else 1.3, label=method)
    ax.set_xlabel("pretraining wall-clock (s)")
    ax.set_ylabel(metric + (" (lower is better)" if metric.lower() in LOWER_IS_BETTER else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def headline_table(records: list[dict[str, Any]]) -> list[str]:
    """One row per (modality, task): every method's best score and data2vec 2.0's speed-up over the paper's baseline."""
    methods = sorted({r["method"] for r in records}, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)
    baselines = [m for m in methods if m not in ("data2vec2", "data2vec1", "scratch")]
    md = ["## Headline", "", "Best test score per method within the pretraining budget (scratch: no pretraining); speed-up = "
          "the baseline's time to its best score / data2vec 2.0's time to reach that score.", "",
          "| modality | task | metric | " + " | ".join(methods) + " | data2vec 2.0 speed-up |",
          "|---|---|---|" + "---|" * len(methods) + "---|"]
    for (modality, task, metric), by_method in sorted(curves(records).items()):
        cells = [_fmt(best_point(metric, by_method[m])[0]) if m in by_method else "" for m in methods]
        rows = speedups(metric, by_method)
        speed = ", ".join(f"{_speedup(r)} vs {m}" for m, r in rows.items() if m in baselines) or "n/a"
        if flat(by_method):
            speed = "curves do not separate"
        md.append(f"| {modality} | {task} | {metric} | " + " | ".join(cells) + f" | {speed} |")
    return md + [""]


def _speedup(row: dict[str, Any]) -> str:
    if row["speedup"] is None:
        return "not reached"
    return ("≥" if row["lower_bound"] else "") + f"{row['speedup']:.2f}x"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "not reached"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def build(records: list[dict[str, Any]], throughput: list[dict[str, Any]], out_dir: Path, context: dict[str, Any]) -> dict[str, Any]:
    """Write benchmark.md, benchmark.html and plots/*.png under out_dir; returns the headline numbers."""
    validate(records)
    md: list[str] = ["# Benchmark: data2vec 2.0 against its baselines", ""]
    md += [f"Generated from `{context.get('metrics_path', 'reports/metrics.json')}` ({len(records)} records) at git commit "
           f"`{context.get('git_commit', 'unknown')}`; dvc.lock md5 `{context.get('dvc_lock_md5', 'n/a')}`. "
           f"Hardware: {context.get('hardware', 'unknown')}.", ""]
    md += ["Every number below comes from a run of this pipeline; each record in metrics.json carries the git commit and "
           "the DVC stage hash behind it. Same encoder size, data, fine-tuning recipe and machine for every method; each "
           "method pretrains under the same wall-clock budget and is fine-tuned from checkpoints at fixed fractions of it. "
           "One run (one seed) per point, so no error bars: small differences may be run-to-run noise.", ""]
    md += headline_table(records)
    images: dict[str, Path] = {}
    headline: dict[str, Any] = {}
    statements: list[str] = []
    for (modality, task, metric), by_method in sorted(curves(records).items()):
        key = f"{modality}-{task}-{metric}"
        png = out_dir / "plots" / f"{key}.png"
        plot_png(f"{modality}: {task} ({metric}) vs pretraining time", metric, by_method, png)
        images[key] = png
        md += [f"## {modality}: {task}", "", f"![{key}](plots/{png.name})", ""]
        md += ["| method | best " + metric + " | reached after (s) | points |", "|---|---|---|---|"]
        for method in sorted(by_method, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99):
            best_v, best_t = best_point(metric, by_method[method])
            md.append(f"| {method} | {_fmt(best_v)} | {_fmt(best_t, 3)} | {len(by_method[method])} |")
        md.append("")
        rows = speedups(metric, by_method)
        if rows:
            md += ["| baseline | its best | its time (s) | data2vec 2.0 reaches it after (s) | speed-up |", "|---|---|---|---|---|"]
            for method, row in rows.items():
                speed = _speedup(row)
                md.append(f"| {method} | {_fmt(row['baseline_best'])} | {_fmt(row['baseline_time'], 3)} | "
                          f"{_fmt(row['data2vec2_time'], 3)} | {speed} |")
            md.append("")
            if any(r["lower_bound"] for r in rows.values()):
                md += ["≥: data2vec 2.0 already had that score at its first checkpoint, so it may have reached it sooner.", ""]
            headline[key] = rows
        claim = PAPER_CLAIMS.get(modality)
        where = f"**{modality} ({task}, {metric})**"
        if flat(by_method):
            value = next(iter(by_method.values()))[0][1]
            md += [f"Every method scores {_fmt(value)} at every budget: the curves do not separate.", ""]
            statements.append(f"{where}: every method scores {_fmt(value)} at every budget, so the curves do not separate "
                              "and no speed-up can be read from them; the pretraining budget is too small for this task.")
        elif claim and claim[0] in rows:
            row = rows[claim[0]]
            if row["speedup"] is None:
                statements.append(f"{where}: the paper says data2vec 2.0 {claim[2]}; here data2vec 2.0 did "
                                  f"not reach {claim[0]}'s best {metric} ({_fmt(row['baseline_best'])}) within the budget. "
                                  "Our result disagrees with the paper at this scale.")
            elif row["speedup"] < claim[1] and row["lower_bound"]:
                statements.append(f"{where}: the paper says data2vec 2.0 {claim[2]}; here data2vec 2.0 already had "
                                  f"{claim[0]}'s best {metric} ({_fmt(row['baseline_best'])}) at its first checkpoint, so the "
                                  f"speed-up is at least {row['speedup']:.2f}x; checkpoints this coarse cannot tell whether it "
                                  f"reaches the paper's {claim[1]}x (add `checkpoint_fractions`).")
            elif row["speedup"] < claim[1]:
                statements.append(f"{where}: the paper says data2vec 2.0 {claim[2]}; here the speed-up is "
                                  f"{_speedup(row)}, below the paper's {claim[1]}x. Our result disagrees with the paper at this scale.")
            else:
                statements.append(f"{where}: the paper says data2vec 2.0 {claim[2]}; here the speed-up is "
                                  f"{_speedup(row)} (at least the paper's {claim[1]}x).")
        elif claim:
            statements.append(f"{where}: no {claim[0]} run in metrics.json, so the paper's claim that "
                              f"data2vec 2.0 {claim[2]} is not checked here.")
        if "scratch" in by_method and "data2vec2" in by_method:
            ours, scratch = best_point(metric, by_method["data2vec2"])[0], by_method["scratch"][-1][1]
            if not better(metric, ours, scratch) and abs(ours - scratch) >= 1e-9:
                statements.append(f"{where}: data2vec 2.0's best ({_fmt(ours)}) is worse than no pretraining at all "
                                  f"({_fmt(scratch)}): at this budget pretraining does not pay off yet.")
    if statements:
        md += ["## Where we agree and disagree with the paper", ""] + [f"- {s}" for s in statements]
        md += ["", "The paper's numbers are ImageNet-1K / LibriSpeech / GLUE at base size on GPUs; these are the embedded "
               "datasets at the preset and budget above, so only the direction of the comparison is comparable.", ""]
    if throughput:
        md += ["## Throughput and MFU", "",
               "| modality | method | preset | device | precision | batch x clones | samples/s | tokens/s | loader samples/s | MFU | matmul peak (GFLOP/s) |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for t in throughput:
            md.append(f"| {t['modality']} | {t['method']} | {t['preset']} | {t['device']} | {t['precision']} | "
                      f"{t['batch_size']} x {t['clone_batch']} | {t['train_samples_per_s']:.1f} | {t['train_tokens_per_s']:.0f} | "
                      f"{t['loader_samples_per_s']:.1f} | {100 * t['mfu']:.1f}% | {t['matmul_peak_flops_per_s'] / 1e9:.0f} |")
        md += ["", "MFU = FLOPs of one training step (FlopCounterMode) / step time / this machine's measured matmul peak in "
               "the same dtype (`python -m pipeline throughput`).", ""]
    effective = {f"{r['modality']}/{r['method']}": r["effective_batch"] for r in records if r.get("effective_batch")}
    if effective:
        md += ["## Effective batch per pretraining run", "", "| run | per-rank x world x accumulation x clones | samples/update |",
               "|---|---|---|"]
        for run, e in sorted(effective.items()):
            md.append(f"| {run} | {e['per_rank_micro_batch']} x {e['world_size']} x {e['grad_accum']} x {e['clone_batch']} | "
                      f"{e['samples_per_update']} |")
        md.append("")
    md += ["## Provenance", "", "| modality | method | task | pretrain s | updates | value | git commit | DVC stage hash |",
           "|---|---|---|---|---|---|---|---|"]
    for r in records:
        md.append(f"| {r['modality']} | {r['method']} | {r['task']} | {_fmt(float(r['pretrain_seconds']), 3)} | "
                  f"{r.get('pretrain_updates', '')} | {_fmt(float(r['value']))} | `{str(r.get('git_commit', ''))[:10]}` | "
                  f"`{str(r.get('dvc_stage_hash', ''))[:10]}` |")
    text = "\n".join(md) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmark.md").write_text(text, encoding="utf-8")
    (out_dir / "benchmark.html").write_text(to_html(text, images), encoding="utf-8")
    return {"speedups": headline, "statements": statements}


def to_html(markdown: str, images: dict[str, Path]) -> str:
    """A small, dependency-free rendering of the report's markdown subset, with every plot embedded."""
    body: list[str] = []
    table: list[list[str]] = []

    def inline(text: str) -> str:
        import re

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
        if line.startswith("## "):
            body.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.startswith("![") and "](" in line:
            key = line[2 : line.index("]")]
            data = base64.b64encode(images[key].read_bytes()).decode()
            body.append(f'<img alt="{html.escape(key)}" src="data:image/png;base64,{data}">')
        elif line.startswith("- "):
            body.append(f"<p>&bull; {inline(line[2:])}</p>")
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
             "th{background:#f4f4f4}img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>data2vec 2.0 benchmark</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def dvc_out_hashes(lock_path: Path) -> dict[str, str]:
    """{output path: md5} for every stage output recorded in dvc.lock."""
    import yaml

    if not lock_path.exists():
        return {}
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    return {o["path"]: o.get("md5", "") for stage in (lock.get("stages") or {}).values() for o in stage.get("outs", [])}


def collect(curve_paths: list[Path], lock_path: Path) -> list[dict[str, Any]]:
    """Records of every sweep, stamped with the git commit and the DVC hash of the sweep output behind them."""
    hashes, commit = dvc_out_hashes(lock_path), git_state()
    records = []
    for path in sorted(curve_paths):
        sweep_dir = str(path.parent.parent)  # models/<modality>/<method>/sweep (the DVC out)
        for r in json.loads(path.read_text(encoding="utf-8")):
            records.append({**r, "git_commit": commit, "dvc_stage_hash": hashes.get(sweep_dir, "not in dvc.lock")})
    return records


def headline_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A flat dict for `dvc metrics show/diff`: best score per method and data2vec 2.0's speed-ups."""
    out: dict[str, Any] = {}
    for (modality, task, metric), by_method in curves(records).items():
        node = out.setdefault(modality, {}).setdefault(task, {})
        for method, points in by_method.items():
            node[f"{method}_best_{metric}"] = best_point(metric, points)[0]
        for method, row in speedups(metric, by_method).items():
            node[f"speedup_vs_{method}"] = row["speedup"] if row["speedup"] is not None else -1.0
    return out


def benchmark_curves() -> list[Path]:
    """The sweeps of the benchmark (every method of params.yaml benchmark.<modality>.methods and scratch, on the
    modality's benchmark task) that exist; the ones missing are named on stderr. Other sweeps: pass them with --curves."""
    import sys

    from pipeline import config as P
    from pipeline import paths

    expected = [paths.sweep_dir(m, method, run.task) / "curve.json"
                for m, run in P.benchmark().items() for method in (*run.methods, "scratch")]
    missing = [str(p) for p in expected if not p.exists()]
    if missing:
        print(f"report: {len(missing)} of {len(expected)} benchmark sweeps not run yet, left out: {', '.join(missing)}", file=sys.stderr)
    return [p for p in expected if p.exists()]


def run(args) -> dict[str, Any]:
    import hashlib
    import platform

    from pipeline.io import atomic_write_json

    curve_paths = [Path(p) for p in args.curves] if args.curves else benchmark_curves()
    if not curve_paths:
        from pipeline.errors import UserInputError

        raise UserInputError("no sweep results (models/<modality>/<method>/sweep/<task>/curve.json); run `python -m pipeline sweep` first")
    records = collect(curve_paths, Path("dvc.lock"))
    throughput = [t for p in sorted(Path(args.out, "throughput").glob("*.json")) for t in load_json(p)]
    lock = Path("dvc.lock")
    context = {"git_commit": git_state(), "metrics_path": str(Path(args.out) / "metrics.json"),
               "dvc_lock_md5": hashlib.md5(lock.read_bytes()).hexdigest() if lock.exists() else "no dvc.lock",
               "hardware": throughput[0]["device"] if throughput else f"{platform.machine()} ({platform.platform()})"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", records)
    atomic_write_json(out / "headline.json", headline_metrics(records))
    result = build(records, throughput, out, context)
    return {"records": len(records), "report": str(out / "benchmark.md"), "statements": result["statements"]}
