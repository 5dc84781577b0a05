"""Data assets per modality: `<m>/raw` -> `<m>/shards` -> `<m>/tokenizer` (text, speech), with checks.

Thin by design: each asset resolves its config, calls one pipeline stage in the step's process (the same
function its DVC stage runs through the CLI) and reports metadata (assets/metadata.py). pipeline/ is imported
inside the asset bodies so loading the code location stays fast and never imports torch.
"""

import hashlib
from pathlib import Path

import dagster as dg

from assets.metadata import shards_metadata, tokenizer_metadata

TOKENIZED = ("text", "speech")


class StageConfig(dg.Config):
    """Operational knobs only; hyper-parameters and sizes come from params.yaml."""

    params_path: str = "params.yaml"
    progress: bool = False


def _file_version(path: Path) -> dg.DataVersion:
    return dg.DataVersion(hashlib.sha256(path.read_bytes()).hexdigest()[:16])


def build_data_assets(modality: str) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    from pipeline import paths

    group = modality

    @dg.asset(key=[modality, "raw"], group_name=group, kinds={"python"},
              description=f"Embedded default {modality} data under data/raw/{modality}/ (DVC stage prepare@{modality}).",
              metadata={"dvc_stage": f"prepare@{modality}", "path": str(paths.raw_dir(modality))})
    def raw(context: dg.AssetExecutionContext, config: StageConfig) -> dg.MaterializeResult:
        from pipeline import config as P
        from pipeline.data.prepare import prepare

        summary = prepare(modality, P.load(config.params_path), progress=config.progress)
        context.log.info(f"prepared {modality}: {summary}")
        return dg.MaterializeResult(metadata={"summary": dg.MetadataValue.json(summary)})

    @dg.asset(key=[modality, "shards"], group_name=group, deps=[raw], kinds={"webdataset"},
              description=f"WebDataset tar shards + index.json under data/shards/{modality}/ (DVC stage shard@{modality}).",
              metadata={"dvc_stage": f"shard@{modality}", "path": str(paths.shards_dir(modality))})
    def shards(context: dg.AssetExecutionContext, config: StageConfig) -> dg.MaterializeResult:
        from pipeline import config as P
        from pipeline.data.shard import shard

        cfg = P.section(P.load(config.params_path), P.Shard, modality, "shard")
        index = shard(modality, None, None, cfg, progress=config.progress)
        out = paths.shards_dir(modality)
        metadata = shards_metadata(modality, index, out)
        context.log.info(f"{metadata['num_samples']} samples in {metadata['num_shards']} shards, {metadata['num_skipped']} skipped")
        return dg.MaterializeResult(metadata=metadata, data_version=_file_version(out / "index.json"))

    @dg.asset_check(asset=shards, blocking=True, description="Every shard listed in index.json exists, is non-empty, "
                    "holds the sample count index.json records and matches its sha256.")
    def shards_match_index() -> dg.AssetCheckResult:
        from pipeline.data.shard_writer import verify_index

        problems = verify_index(paths.shards_dir(modality))
        return dg.AssetCheckResult(passed=not problems, metadata={"problems": dg.MetadataValue.json(problems[:50])})

    assets, checks = [raw, shards], [shards_match_index]
    if modality in TOKENIZED:
        assets_, checks_ = _tokenizer_asset(modality, shards)
        assets.append(assets_)
        checks.append(checks_)
    return assets, checks


def _tokenizer_asset(modality: str, shards: dg.AssetsDefinition):
    from pipeline import paths

    kind = "byte-level BPE" if modality == "text" else "character vocabulary (CTC)"

    @dg.asset(key=[modality, "tokenizer"], group_name=modality, deps=[shards], kinds={"tokenizers"},
              description=f"{kind} tokenizer trained on the train split: {paths.tokenizer_path(modality)} (DVC stage tokenizer@{modality}).",
              metadata={"dvc_stage": f"tokenizer@{modality}", "path": str(paths.tokenizer_path(modality))})
    def tokenizer(context: dg.AssetExecutionContext, config: StageConfig) -> dg.MaterializeResult:
        from pipeline import config as P
        from pipeline.data.tokenizer import load, train_tokenizer

        summary = train_tokenizer(modality, P.load(config.params_path))
        tok = load(paths.tokenizer_path(modality))
        return dg.MaterializeResult(metadata=tokenizer_metadata(summary, tok, _texts(modality, 3)),
                                    data_version=_file_version(paths.tokenizer_path(modality)))

    @dg.asset_check(asset=tokenizer, blocking=True, description="decode(encode(x)) gives x back for validation samples.")
    def tokenizer_roundtrip() -> dg.AssetCheckResult:
        from pipeline.data.tokenizer import WORD_BOUNDARY, load, roundtrip_failures

        tok = load(paths.tokenizer_path(modality))
        texts = _texts(modality, 50, "valid")
        if modality == "text":
            failures = roundtrip_failures(tok, texts)
        else:  # CTC letters: decoding gives the transcript back as the tokenizer's own normalizer left it (case, spaces)
            failures = roundtrip_failures(tok, texts, normalize=lambda s: tok.normalizer.normalize_str(s).replace(WORD_BOUNDARY, " "))
        return dg.AssetCheckResult(passed=not failures, metadata={"checked": len(texts), "failures": dg.MetadataValue.json(failures[:10])})

    return tokenizer, tokenizer_roundtrip


def _texts(modality: str, count: int, split: str | None = None) -> list[str]:
    """The first `count` texts (text) or transcripts (speech) of `split` (default: the training split)."""
    from pipeline import paths
    from pipeline.data import preview

    shard_dir = paths.shards_dir(modality)
    if modality == "text":
        return [r["text"] for r in preview.text_examples(shard_dir, count, split, max_chars=None)]
    return [r["transcript"] for r in preview.speech_examples(shard_dir, count, split)]
