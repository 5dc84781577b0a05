"""`python -m pipeline STAGE ...`: the one command line every orchestrator (Dagster, DVC, CI) calls.

Each stage prints a JSON summary of what it wrote on stdout; progress goes to stderr. Errors the user can fix
print one message naming the file and what to do, and exit with status 2 (no traceback); a training run a guard
stopped (NaN/Inf loss, representation collapse) exits with status 3, its last good checkpoint kept.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipeline.config import MODALITIES, TOKENIZER
from pipeline.data.shard_cache import LOCATION_HELP, local_folder, shard_location
from pipeline.errors import TrainingStopped, UserInputError

EPILOG = "Hyper-parameters and data sizes come from params.yaml (see --params). Outputs land under data/ (DVC-tracked)."


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in CI logs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="data2vec 2.0 experiment pipeline", epilog=EPILOG)
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    _data_stages(stages)
    _training_stages(stages)
    _benchmark_stages(stages)
    _weights_stages(stages)
    return parser


def _data_stages(stages) -> None:
    """prepare, shard, tokenizer, tokenize: raw data -> shards -> tokenizers -> token ids."""
    p = stages.add_parser("prepare", help="materialize the embedded default data under data/raw/<modality>/",
                          description="Materialize the embedded default data of a modality: Fashion-MNIST (image), "
                          "espeak-ng/flite-synthesized WordNet sentences (speech), WordNet glosses + fortunes (text).")
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--out", type=Path, help="output folder (default: data/raw/<modality>)")
    _common(p)

    p = stages.add_parser("shard", help="write WebDataset tar shards + index.json",
                          description="Write deterministic WebDataset shards <split>-NNNNNN.tar and index.json. "
                          "Sources: image = ImageFolder tree or IDX folder; speech = LibriSpeech-layout tree or TSV "
                          "manifest (path<TAB>transcript); text = .txt file/folder (documents separated by blank lines) "
                          "or GLUE task folder (train.tsv, dev.tsv, test.tsv; sentence or sentence-pair columns + label). "
                          "Splits: top-level folders (or .tsv files) named train/training, valid/val/validation/dev, "
                          "test/testing, in any case, map to train/valid/test; subsets such as dev-clean + dev-other or "
                          "dev_matched + dev_mismatched merge into one split; two spellings of one split (val/ and "
                          "validation/) are an error. Hidden and OS/tool entries (names starting with '.', __MACOSX, "
                          "Thumbs.db, desktop.ini, ...) are never classes, samples or splits; they and top-level entries "
                          "outside the layout are listed in index.json `ignored`. An input that cannot be used (undecodable, "
                          "over a decoder's safety limit, speech shorter than speech.shard.min_seconds, default 0.1 s) is "
                          "listed in `skipped` with the reason, never fatal. A GLUE test.tsv without labels is skipped "
                          "(the final metric comes from dev.tsv). Lossy conversions (resampling, channel mixing, bit or "
                          "colour depth reduction, scaling down instead of clipping) are listed per file in `conversions`. "
                          "Text files may start with a UTF-8 byte-order mark.")
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--source", type=Path, help="your data (default: the prepared embedded data, data/raw/<modality>)")
    p.add_argument("--out", type=Path, help="output folder (default: data/shards/<modality>)")
    p.add_argument("--max-samples-per-shard", type=int, help="override params.yaml <modality>.shard.max_samples_per_shard")
    _common(p)

    p = stages.add_parser("tokenizer", help="train a tokenizer on the training split of the shards",
                          description="Train data/tokenizers/<modality>/tokenizer.json: byte-level BPE for text, "
                          "a character vocabulary for speech transcripts (CTC).")
    p.add_argument("--modality", required=True, choices=tuple(TOKENIZER))
    p.add_argument("--shards", type=shard_location, help=f"shards: {LOCATION_HELP} (default: data/shards/<modality>)")
    p.add_argument("--out", type=Path, help="tokenizer.json path (default: data/tokenizers/<modality>/tokenizer.json)")
    _common(p)

    p = stages.add_parser("tokenize", help="write the text corpus as token ids (what text pretraining reads)",
                          description="Tokenize the pretraining splits (train, valid) of the text shards once: "
                          "data/tokens/text/<split>.npy (int32, each document followed by </s>) and index.json, which "
                          "names the shards and the tokenizer with their digests. pretrain reads them for those files, "
                          "refuses them once either changed, and tokenizes other shards (--shards) itself.")
    p.add_argument("--modality", required=True, choices=("text",))
    p.add_argument("--shards", type=shard_location, help=f"shards: {LOCATION_HELP} (default: data/shards/text)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: data/tokenizers/text/tokenizer.json)")
    p.add_argument("--out", type=Path, help="output folder (default: data/tokens/text)")


def _training_stages(stages) -> None:
    """pretrain and finetune (torchrun), evaluate, and the model summary."""
    from pipeline.pretrain.stage import add_arguments as pretrain_arguments

    p = stages.add_parser("pretrain", help="pretrain data2vec 2.0 (DDP, torchrun for --nproc > 1; resumes from last.pt)",
                          description="Pretrain in this process (--nproc 1) or under torchrun (--nproc processes, gloo on "
                          "CPU, nccl on GPU). Writes models/<modality>/<method>/pretrain/: last.pt, best.pt, "
                          "budget-<fraction>.pt, config.json, metrics.jsonl, tb/, loss_curve.png, summary.json; with "
                          "--benchmark, one such folder per run of the benchmark scale (s<seed>-u<updates>/) and runs.json. "
                          "Hyper-parameters: params.yaml pretrain.<modality> (and benchmark.scales). "
                          "Many nodes: torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:PORT "
                          "-m pipeline pretrain ...",
                          epilog=EPILOG)
    pretrain_arguments(p)

    from pipeline.finetune.evaluate import add_arguments as evaluate_arguments
    from pipeline.finetune.stage import add_arguments as finetune_arguments

    p = stages.add_parser("finetune", help="fine-tune a pretrained (or `none`: scratch) encoder on a labeled task, then test it",
                          description="Fine-tune in this process (--nproc 1) or under torchrun (--nproc processes); "
                          "resumes from last.pt. Image "
                          "classification (mean-pooled patches, layer decay, drop path, label smoothing) or a linear probe "
                          "(--mode linear_probe), speech CTC on characters (frozen feature extractor, time/channel masks), "
                          "text classification from <s>. Writes models/<modality>/<method>/finetune/<task>[-<mode>][-f<fraction>]/: "
                          "last.pt, best.pt (best on validation), metrics.jsonl, tb/, metrics.json (test metrics of best.pt), "
                          "confusion_matrix.png or samples.json. Hyper-parameters: params.yaml finetune.<modality>.",
                          epilog=EPILOG)
    finetune_arguments(p)

    p = stages.add_parser("evaluate", help="evaluate a fine-tuned checkpoint on a split (top1/top5, WER/CER, accuracy/F1/MCC)",
                          description="Score a fine-tuned checkpoint (best.pt or last.pt of `finetune`) on a split of its "
                          "task; writes eval-<split>.json (the metrics.json schema) and confusion_matrix-<split>.png or "
                          "samples-<split>.json next to the checkpoint (or in --out). One process, one device.",
                          epilog=EPILOG)
    evaluate_arguments(p)

    p = stages.add_parser("summary", help="print a model summary (parameters, tokens, FLOPs per step)",
                          description="Print parameters of the student encoder, decoder and teacher, tokens per sample, "
                          "visible tokens per clone, the clone batch and the FLOPs of one training step per sample.")
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--preset", default="tiny", choices=("tiny", "base", "large"))
    p.add_argument("--method", default="data2vec2")


def _benchmark_stages(stages) -> None:
    """throughput, probe, sweep, report: the benchmark over pretrained models."""
    from pipeline.benchmark.throughput import add_arguments as throughput_arguments

    p = stages.add_parser("throughput", help="measure loader and training throughput and MFU of one or more methods (into --out)",
                          description="Measure the input pipeline (samples/s), one training step (samples/s, tokens/s), "
                          "its FLOPs (FlopCounterMode) and MFU against this machine's measured matmul peak, for each --method; "
                          "writes one record per method into --out. Speed is measured here, never asserted in tests.")
    throughput_arguments(p)

    from pipeline.benchmark.probe import add_arguments as probe_arguments

    p = stages.add_parser("probe", help="frozen-feature probes (kNN, linear, CTC) of every pretraining run of a method, or a floor",
                          description="Extract frozen features once per source (every run of models/<modality>/<method>/"
                          "pretrain/runs.json; --method random_init: data2vec 2.0's encoder at initialisation, one per "
                          "seed; --method raw_input: the input itself), cache them under <out>/features/, run every "
                          "protocol of params.yaml benchmark.<modality>.probes on the cache and write <out>/records.json "
                          "(default out: models/<modality>/<method>/probe). One process, CPU.",
                          epilog=EPILOG)
    probe_arguments(p)
    _common(p)

    from pipeline.benchmark.sweep import add_arguments as sweep_arguments

    p = stages.add_parser("sweep", help="the fine-tuning protocol: fine-tune the final pretraining run of each seed, or scratch",
                          description="With params.yaml benchmark.<modality>.finetune `final`: fine-tune the final (most "
                          "updates) run of each seed of models/<modality>/<method>/pretrain/runs.json with the same recipe "
                          "and label fraction, under that seed (scratch: one run from random weights per seed of the "
                          "benchmark scale), test each, and write curve.json (protocol finetune). `none`: nothing.")
    sweep_arguments(p)

    p = stages.add_parser("report", help="write reports/benchmark.md, benchmark.html, metrics.json, headline.json and plots",
                          description="Collect the benchmark's records (every method's and floor's probe records, every "
                          "fine-tuning sweep) into reports/metrics.json, stamped with the git commit and the dvc.lock hash "
                          "behind each number, and write the report: per modality and protocol, score against pretraining "
                          "seconds and FLOPs with seed spread and the random_init/raw_input floors; best scores and their "
                          "cost; data2vec 2.0's speed-ups where the curves separate above the floor (else 'inconclusive' "
                          "and why); the paper's claims; throughput/MFU (reports/throughput/*.json) and effective batch; "
                          "provenance. reports/headline.json is flat, for `dvc metrics show`. Missing inputs are named on "
                          "stderr and in the report.")
    p.add_argument("--records", "--curves", nargs="*", dest="records",
                   help="records files instead of the benchmark's (default, for each modality of params.yaml benchmark: "
                   "models/<modality>/<method>/probe/records.json of every method, random_init and raw_input, and "
                   "models/<modality>/<method>/sweep/<task>/curve.json of every method and scratch)")
    p.add_argument("--out", default="reports", help="report folder (default: %(default)s)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"),
                   help="params file whose benchmark section names the inputs and the scale (default: %(default)s)")


def _weights_stages(stages) -> None:
    """import-fairseq and export: released fairseq weights in, safetensors out."""
    from pipeline.weights.stage import add_export_arguments, add_import_arguments

    p = stages.add_parser("import-fairseq", help="import a released fairseq data2vec 2.0 checkpoint as a pretraining checkpoint",
                          description="Read a fairseq data2vec 2.0 pretraining checkpoint (cfg.model._name data2vec_multi) "
                          "without running code from it (fairseq's own classes become inert placeholders, named in the "
                          "report), map its config and every tensor of the student and the EMA teacher (_ema), and write "
                          "<out>/imported.pt, which finetune, evaluate, sweep and export accept like a pretraining "
                          "checkpoint, and <out>/import.json (what was mapped, checked and neutralised). A setting this "
                          "code cannot represent, or a tensor without a partner, is an error naming them.")
    add_import_arguments(p)

    p = stages.add_parser("export", help="export an encoder (student or EMA teacher) as model.safetensors + config.json",
                          description="Write the encoder of a pretraining checkpoint (the student, or with --teacher the EMA "
                          "teacher) as <out>/model.safetensors and <out>/config.json (our config, version-stamped); "
                          "load it with `from pipeline.weights import load_encoder; load_encoder(out)`.")
    add_export_arguments(p)


def run(args: argparse.Namespace, argv: list[str]) -> dict | str | None:
    if args.stage == "pretrain":
        from pipeline.pretrain.stage import preflight, train
        from pipeline.train.launch import launch, under_torchrun

        if not under_torchrun():
            preflight(args)
        if not under_torchrun() and args.nproc != 1:  # one process trains here, in a world of one
            return launch(args, argv)  # rank 0 of the workers prints the summary
        summary = train(args)
        return summary if os.environ.get("RANK", "0") == "0" else None
    if args.stage == "throughput":
        from pipeline.benchmark.throughput import run as measure_throughput

        return measure_throughput(args)
    if args.stage == "probe":
        from pipeline.benchmark.probe import run as probe

        return probe(args)
    if args.stage == "sweep":
        from pipeline.benchmark.sweep import run as sweep

        return sweep(args)
    if args.stage == "report":
        from pipeline.benchmark.report import run as report

        return report(args)
    if args.stage == "finetune":
        from pipeline.finetune.stage import preflight
        from pipeline.finetune.stage import train as finetune
        from pipeline.train.launch import launch, under_torchrun

        if not under_torchrun():
            preflight(args)
        if not under_torchrun() and args.nproc != 1:  # one process trains here, in a world of one
            return launch(args, argv)  # rank 0 of the workers prints the summary
        summary = finetune(args)
        return summary if os.environ.get("RANK", "0") == "0" else None
    if args.stage == "evaluate":
        from pipeline.finetune.evaluate import evaluate_checkpoint

        return evaluate_checkpoint(args)
    if args.stage == "import-fairseq":
        from pipeline.weights.stage import run_import

        return run_import(args)
    if args.stage == "export":
        from pipeline.weights.stage import run_export

        return run_export(args)
    if args.stage == "summary":
        from model.summary import summarize

        return summarize(args.modality, args.preset, args.method)
    if args.stage == "tokenize":
        from pipeline.data.tokens import tokenize_corpus

        return tokenize_corpus(args.shards, args.tokenizer, args.out)

    from pipeline import config as P

    params = P.load(args.params)
    progress = not args.no_progress
    if args.stage == "prepare":
        from pipeline.data.prepare import prepare

        return prepare(args.modality, params, args.out, progress)
    if args.stage == "shard":
        import dataclasses

        from pipeline.data.shard import shard

        cfg = P.section(params, P.Shard, args.modality, "shard")
        if args.max_samples_per_shard:
            cfg = dataclasses.replace(cfg, max_samples_per_shard=args.max_samples_per_shard)
        index = shard(args.modality, args.source, args.out, cfg, progress)
        return {
            "splits": {name: info["num_samples"] for name, info in index["splits"].items()},
            "shards": sum(len(info["shards"]) for info in index["splits"].values()),
            "skipped": len(index["skipped"]),
            "ignored": len(index["ignored"]),
            "conversions": len(index["conversions"]),
        }
    if args.stage == "tokenizer":
        from pipeline.data.tokenizer import train_tokenizer

        return train_tokenizer(args.modality, params, args.shards, args.out)
    raise AssertionError(args.stage)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "shards", None) is not None:  # a URL: its index.json, in this node's shard cache
            args.shards = local_folder(args.shards)
        result = run(args, argv)
    except UserInputError as e:
        return _failed(e, "error", 2)
    except TrainingStopped as e:
        return _failed(e, "stopped", 3)
    if result is not None:
        print(result if isinstance(result, str) else json.dumps(result, indent=2, default=str))
    return 0


def _failed(error: Exception, label: str, status: int) -> int:
    """Print `label: message` on stderr (unless the torchrun launcher prints it for this worker) and return `status`."""
    from pipeline.train.launch import report_error

    message = original_message(error)
    if not report_error(error, message):
        print(f"{label}: {message}", file=sys.stderr)
    return status


def original_message(error: Exception) -> str:
    """The error's own message. Raised inside a DataLoader worker, it comes back as the same type with torch's
    "Caught X in DataLoader worker process N. Original Traceback ..." around it: the message is what follows the
    traceback's last `module.X: `."""
    text = str(error)
    marker = f"{type(error).__module__}.{type(error).__qualname__}: "
    if text.startswith(f"Caught {type(error).__name__} ") and "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text
