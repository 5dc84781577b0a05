"""Every piece of Dagster metadata the assets show, built from what a stage wrote to disk.

The stages report only plain values through Pipes (pipeline/train/pipes.py); the images, tables and JSON a
person looks at in the UI are made here, in the Dagster process, after the stage has finished. Keep images
small: metadata lives in the event log database.
"""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import dagster as dg

SAMPLE_ROWS = 10  # transcriptions shown per speech run
SIGNIFICANT = 4  # digits of a float shown in the UI (the files keep full precision)
# The UI draws markdown metadata in place only when it is under 1000 characters; longer values (the PNG plots)
# sit behind "[Show Markdown]". A line drawn as an SVG path stays under that, so it shows on the asset's page.
INLINE_MARKDOWN = 1000


def png_markdown(png: bytes, alt: str = "preview") -> dg.MetadataValue:
    """A PNG embedded in markdown metadata (the idiom of Dagster's own ML guide)."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def png_file(path: Path, alt: str) -> dict[str, dg.MetadataValue]:
    """{alt: the image} when the file exists, else nothing (e.g. a run that stopped before its first record)."""
    return {alt.replace(" ", "_"): png_markdown(path.read_bytes(), alt)} if path.exists() else {}


def rounded(metadata: dict[str, Any]) -> dict[str, Any]:
    """`metadata` with every float (plain or float metadata) to SIGNIFICANT significant digits."""
    def short(value: Any) -> Any:
        raw = value.value if isinstance(value, dg.FloatMetadataValue) else value
        return float(f"{raw:.{SIGNIFICANT}g}") if isinstance(raw, float) else value

    return {k: short(v) for k, v in metadata.items()}


def svg_line(values: list[float], alt: str, width: int = 240, height: int = 60) -> dg.MetadataValue | None:
    """`values` as a small line chart embedded as an SVG data URL, short enough for the UI to draw it in place
    (None: fewer than two points). Points are thinned to fit the length limit; the extremes label the axis."""
    from urllib.parse import quote

    points = [v for v in values if v == v]  # NaN dropped
    if len(points) < 2:
        return None
    step = max(1, len(points) // 60)
    points = points[::step] + ([points[-1]] if (len(points) - 1) % step else [])
    low, high = min(points), max(points)
    span = (high - low) or 1.0
    path = "".join(f"{'M' if i == 0 else 'L'}{round(i * (width - 2) / (len(points) - 1)) + 1},"
                   f"{round((high - v) * (height - 4) / span) + 2}" for i, v in enumerate(points))
    svg = (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'><path d='{path}' "
           f"fill='none' stroke='#4f43dd' stroke-width='1.5'/></svg>")
    url = "data:image/svg+xml," + quote(svg, safe="/:=',")
    markdown = f"![{alt}]({url}) {high:.{SIGNIFICANT}g} → {points[-1]:.{SIGNIFICANT}g}"
    return dg.MetadataValue.md(markdown) if len(markdown) < INLINE_MARKDOWN else None


def loss_line(out: Path) -> dict[str, dg.MetadataValue]:
    """{"loss": the loss of every logged update of the run in `out` as an in-place line} (metrics.jsonl)."""
    log = out / "metrics.jsonl"
    if not log.exists():
        return {}
    losses = [json.loads(line).get("loss") for line in log.read_text().splitlines() if line.strip()]
    line = svg_line([float(v) for v in losses if isinstance(v, (int, float))], "loss by update")
    return {"loss": line} if line else {}


def table(rows: list[dict[str, Any]]) -> dg.MetadataValue:
    """Rows of equal keys as a table of strings; `_none_` when there are no rows."""
    if not rows:
        return dg.MetadataValue.md("_none_")
    columns = list(rows[0])
    schema = dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns])
    return dg.MetadataValue.table([dg.TableRecord({c: str(r.get(c, "")) for c in columns}) for r in rows], schema=schema)


# --- data -------------------------------------------------------------------------------------------------------

def shards_metadata(modality: str, index: dict[str, Any], shard_dir: Path) -> dict[str, Any]:
    """Counts from index.json, the per-split table, skipped inputs and a preview of the first samples."""
    from pipeline.data import preview

    splits = index["splits"]
    metadata: dict[str, Any] = {
        "num_samples": index["num_samples"],
        "num_shards": sum(len(s["shards"]) for s in splits.values()),
        "bytes": sum(sh["bytes"] for s in splits.values() for sh in s["shards"]),
        "num_skipped": len(index["skipped"]),
        "splits": table([{"split": k, "samples": v["num_samples"], "shards": len(v["shards"])} for k, v in splits.items()]),
        "skipped": table(index["skipped"][:50]),
    }
    if modality == "image":
        metadata["preview"] = png_markdown(preview.image_grid_png(shard_dir), "first training images")
    elif modality == "speech":
        metadata["preview"] = table(preview.speech_examples(shard_dir, 5, "train") + preview.speech_examples(shard_dir, 3, "test"))
    else:
        metadata["preview"] = table(preview.text_examples(shard_dir, 5))
    return metadata


def tokenizer_metadata(summary: dict[str, Any], tok, texts: list[str]) -> dict[str, Any]:
    """Vocabulary size, special tokens, and how a few training texts tokenize."""
    rows = [{"text": t[:80], "tokens": " ".join(tok.encode(t).tokens[:24])} for t in texts]
    return {"vocab_size": summary["vocab_size"], "specials": dg.MetadataValue.json(summary["specials"]), "examples": table(rows)}


# --- training runs (after the Pipes subprocess) -----------------------------------------------------------------

def reported_path(result: dg.MaterializeResult, key: str = "path") -> Path | None:
    """A path the stage reported through Pipes (where it actually wrote), or None if it reported none."""
    value = (result.metadata or {}).get(key)
    if value is None:
        return None
    return Path(value.value if isinstance(value, dg.MetadataValue) else value)


def merged(result: dg.MaterializeResult, metadata: dict[str, Any]) -> dg.MaterializeResult:
    """`result` (what the Pipes client returned) with `metadata` added; the stage's own values win on a clash."""
    return dg.MaterializeResult(asset_key=result.asset_key, metadata={**metadata, **(result.metadata or {})},
                                check_results=result.check_results, data_version=result.data_version, tags=result.tags)


def pretrain_metadata(out: Path) -> dict[str, Any]:
    """The loss curve and the effective batch of a pretraining run in `out` (each when the run wrote it)."""
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    batch = {"effective_batch": dg.MetadataValue.json(summary["effective_batch"])} if "effective_batch" in summary else {}
    return {**batch, **loss_line(out), **png_file(out / "loss_curve.png", "loss curve")}


def pretrain_runs_metadata(out: Path) -> dict[str, Any]:
    """The runs of `pretrain --benchmark` in `out` (its runs.json) as a table, one row per run with its cost and
    final loss, and the effective batch and loss curve of the final run (the last seed's largest budget)."""
    runs = json.loads((out / "runs.json").read_text())
    rows = []
    for r in runs:
        summary = out / r["name"] / "summary.json"
        loss = json.loads(summary.read_text()).get("final_loss") if summary.exists() else None
        rows.append({"run": r["name"], "seed": r["seed"], "updates": r["updates"], "train seconds": f"{r['train_seconds']:.1f}",
                     "FLOPs": f"{r['pretrain_flops']:.3g}", "final loss": "" if loss is None else f"{loss:.4f}"})
    return {"pretraining_runs": table(rows), **(pretrain_metadata(out / runs[-1]["name"]) if runs else {})}


def probe_metadata(path: Path) -> dict[str, Any]:
    """A probe's records.json at `path`: one row per source (pretraining run or floor) and protocol with a column
    per metric and what the protocol selected on validation; and `<protocol>_<metric>` of the last source (a
    method's final run) as numbers."""
    records = json.loads(path.read_text())
    metrics = list(dict.fromkeys(r["metric"] for r in records))
    rows: dict[tuple, dict[str, Any]] = {}
    for r in records:
        row = rows.setdefault((r.get("source"), r["protocol"]), {
            "source": r.get("source"), "seed": r.get("seed"), "updates": r.get("pretrain_updates"),
            "protocol": r["protocol"], **dict.fromkeys(metrics, ""), "selected": json.dumps(r.get("selected") or {})})
        row[r["metric"]] = f"{r['value']:.4f}"
    last = records[-1].get("source") if records else None
    return {"records": len(records), "probes": table(list(rows.values())), "path": dg.MetadataValue.path(str(path)),
            **rounded({f"{r['protocol']}_{r['metric']}": r["value"] for r in records if r.get("source") == last})}


def finetune_metadata(out: Path) -> dict[str, Any]:
    """The test result of a fine-tuning run in `out` (its metrics.json), the confusion matrix (classification)
    or reference/hypothesis pairs (speech), and the loss curve."""
    result = json.loads((out / "metrics.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    metadata: dict[str, Any] = {
        "metric": result["metric"], "value": result["value"], result["metric"]: result["value"], "split": result["split"],
        "finetune_updates": result["finetune_updates"], "finetune_seconds": result["finetune_seconds"],
        "labeled_samples": summary["labeled_samples"], "stop_reason": summary["stop_reason"],
        "metrics": dg.MetadataValue.json({k: v for k, v in result["metrics"].items() if k != "confusion_matrix"}),
        **png_file(out / "confusion_matrix.png", "confusion matrix"),
        **loss_line(out),
        **png_file(out / "loss_curve.png", "loss curve"),
    }
    if (out / "samples.json").exists():
        rows = json.loads((out / "samples.json").read_text())[:SAMPLE_ROWS]
        metadata["samples"] = dg.MetadataValue.md("| reference | hypothesis |\n|---|---|\n" + "".join(
            f"| {r['reference']} | {r['hypothesis'] or '(empty)'} |\n" for r in rows))
    return metadata


def curve_markdown(records: list[dict[str, Any]]) -> str:
    """A sweep's curve.json as one row per fine-tuning run (checkpoint and seed) and one column per metric."""
    if not records:
        return "_no fine-tuning runs_"
    metrics = list(dict.fromkeys(r["metric"] for r in records))
    by_checkpoint: dict[tuple, dict[str, Any]] = {}
    for r in records:
        by_checkpoint.setdefault((r["checkpoint"], r.get("seed")), {**r})[r["metric"]] = r["value"]
    rows = "".join(f"| {r['pretrain_seconds']:.1f} | {r['pretrain_updates']} | " + " | ".join(f"{r[m]:.4f}" for m in metrics)
                   + f" | {r['checkpoint']} |\n" for r in by_checkpoint.values())
    return f"| pretraining seconds | updates | {' | '.join(metrics)} | checkpoint |\n|---|---|{'---|' * len(metrics)}---|\n{rows}"


def sweep_metadata(out: Path, final_run: Path | None) -> dict[str, Any]:
    """The curve of a sweep in `out` and the result of its last run (`final_run`; None: the sweep ran none)."""
    records = json.loads((out / "curve.json").read_text())
    return {**(finetune_metadata(final_run) if final_run else {}), "curve": dg.MetadataValue.md(curve_markdown(records))}


# --- benchmark --------------------------------------------------------------------------------------------------

def throughput_metadata(records: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """One row per method: training samples/s and tokens/s, MFU, the loader's samples/s."""
    rows = [{"method": r["method"], "device": r["device"], "samples/s": f"{r['train_samples_per_s']:.1f}",
             "tokens/s": f"{r['train_tokens_per_s']:.0f}", "MFU": f"{100 * r['mfu']:.2f}%",
             "loader samples/s": f"{r['loader_samples_per_s']:.1f}"} for r in records]
    return {"throughput": table(rows), "path": dg.MetadataValue.path(str(out))}


def report_metadata(result: dict[str, Any]) -> dict[str, Any]:
    """The report as markdown (its plot links dropped: the plots follow as embedded images), the record
    count and the statements on where we agree with the paper."""
    report = Path(result["report"])
    markdown = re.sub(r"^!\[[^\]]*\]\(plots/[^)]*\)\n", "", report.read_text(encoding="utf-8"), flags=re.M)
    metadata: dict[str, Any] = {
        "report": dg.MetadataValue.md(markdown),
        "records": result["records"],
        "statements": dg.MetadataValue.md("\n".join(f"- {s}" for s in result["statements"]) or "_none_"),
        "path": dg.MetadataValue.path(str(report)),
    }
    for png in sorted(report.parent.joinpath("plots").glob("*.png")):
        metadata[f"plot_{png.stem}"] = png_markdown(png.read_bytes(), png.stem)
    return metadata
