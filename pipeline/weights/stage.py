"""The `import-fairseq` and `export` stages (python -m pipeline import-fairseq / export)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.config import MODALITIES

IMPORTED = "imported.pt"


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="fairseq data2vec 2.0 pretraining checkpoint (.pt)")
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--out", type=Path, help="output folder (default: models/<modality>/fairseq/import)")
    p.add_argument("--ignore-field", action="append", default=[], metavar="NAME",
                   help="import although this fairseq setting (a flat name from the refusal, e.g. mod.mask_dropout) "
                   "cannot be represented; repeatable")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="pretraining checkpoint: pretrain's last.pt/best.pt or import-fairseq's imported.pt")
    p.add_argument("--out", type=Path, required=True, help="output folder for model.safetensors and config.json")
    p.add_argument("--teacher", action="store_true", help="the EMA teacher's encoder instead of the student's")


def run_import(args: argparse.Namespace) -> dict[str, Any]:
    """Convert, then write <out>/imported.pt (our pretraining checkpoint) and <out>/import.json (the report)."""
    from pipeline.io import atomic_write_json
    from pipeline.train import checkpoint
    from pipeline.weights.fairseq import import_checkpoint

    out = args.out or Path("models") / args.modality / "fairseq" / "import"
    ckpt, report = import_checkpoint(args.checkpoint, args.modality, tuple(args.ignore_field))
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save(out / IMPORTED, ckpt)
    atomic_write_json(out / "import.json", report)
    model = ckpt["config"]["model"]
    return {"checkpoint": str(out / IMPORTED), "report": str(out / "import.json"), "modality": args.modality,
            "ema_scope": model["ema_scope"], "embed_dim": model["encoder"]["embed_dim"], "depth": model["encoder"]["depth"],
            "tensors": report["tensors"], "neutralised": report["neutralised"], "update": ckpt["update"],
            "stored_dtypes": report["stored_dtypes"], "unknown_off": report["unknown_off"],
            "ignored_on_request": report["ignored_on_request"]}


def run_export(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.weights.export import export_encoder

    return export_encoder(args.checkpoint, args.out, args.teacher)
