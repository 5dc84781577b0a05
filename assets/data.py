"""Data assets per modality: `<m>/raw` -> `<m>/shards` -> `<m>/tokenizer` (text, speech) -> `text/tokens`, with checks.

Thin by design: each asset resolves its config, calls one pipeline stage in the step's process (the same
function its DVC stage runs through the CLI), reports metadata (assets/metadata.py) and records the stage in
dvc.lock, whose output md5 is the data version. pipeline/ is imported inside the asset bodies so loading the
code location stays fast and never imports torch.
"""

import dagster as dg
from pydantic import Field

from assets.dvc import Dvc
from assets.metadata import shards_metadata, tokenizer_metadata
from assets.stage import asset_args, begin, finish

TOKENIZED = ("text", "speech")


class StageConfig(dg.Config):
    """Operational knobs only; hyper-parameters and sizes come from params.yaml."""

    params_path: str = Field(default="params.yaml", description="Hyper-parameters file; only params.yaml is recorded in dvc.lock.")
    progress: bool = Field(default=False, description="Progress bars in the step's stderr.")


def build_data_assets(modality: str) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    from pipeline import paths

    @dg.asset(**asset_args(f"prepare@{modality}", [modality, "raw"], modality, None, path=str(paths.raw_dir(modality))),
              kinds={"python"},
              description=f"Embedded default {modality} data under data/raw/{modality}/ (DVC stage prepare@{modality}).")
    def raw(context: dg.AssetExecutionContext, config: StageConfig, dvc: Dvc) -> dg.MaterializeResult:
        from pipeline import config as P
        from pipeline.data.prepare import prepare

        begin(context)
        summary = prepare(modality, P.load(config.params_path), progress=config.progress)
        context.log.info(f"prepared {modality}: {summary}")
        return finish(context, dvc, metadata={"summary": dg.MetadataValue.json(summary)}, params_path=config.params_path)

    @dg.asset(**asset_args(f"shard@{modality}", [modality, "shards"], modality, None, path=str(paths.shards_dir(modality))),
              deps=[raw], kinds={"webdataset"},
              description=f"WebDataset tar shards + index.json under data/shards/{modality}/ (DVC stage shard@{modality}).")
    def shards(context: dg.AssetExecutionContext, config: StageConfig, dvc: Dvc) -> dg.MaterializeResult:
        from pipeline import config as P
        from pipeline.data.shard import shard

        begin(context)
        cfg = P.section(P.load(config.params_path), P.Shard, modality, "shard")
        index = shard(modality, None, None, cfg, progress=config.progress)
        out = paths.shards_dir(modality)
        metadata = shards_metadata(modality, index, out)
        context.log.info(f"{metadata['num_samples']} samples in {metadata['num_shards']} shards, {metadata['num_skipped']} skipped")
        return finish(context, dvc, metadata=metadata, params_path=config.params_path)

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
    if modality == "text":
        assets.append(_tokens_asset(modality, [shards, assets[-1]]))
    return assets, checks


def _tokenizer_asset(modality: str, shards: dg.AssetsDefinition):
    from pipeline import paths

    kind = "byte-level BPE" if modality == "text" else "character vocabulary (CTC)"

    @dg.asset(**asset_args(f"tokenizer@{modality}", [modality, "tokenizer"], modality, None,
                           path=str(paths.tokenizer_path(modality))),
              deps=[shards], kinds={"tokenizers"},
              description=f"{kind} tokenizer trained on the train split: {paths.tokenizer_path(modality)} (DVC stage tokenizer@{modality}).")
    def tokenizer(context: dg.AssetExecutionContext, config: StageConfig, dvc: Dvc) -> dg.MaterializeResult:
        from pipeline import config as P
        from pipeline.data.tokenizer import load, train_tokenizer

        begin(context)
        summary = train_tokenizer(modality, P.load(config.params_path))
        tok = load(paths.tokenizer_path(modality))
        return finish(context, dvc, metadata=tokenizer_metadata(summary, tok, _texts(modality, 3)),
                      params_path=config.params_path)

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


def _tokens_asset(modality: str, upstream: list[dg.AssetsDefinition]) -> dg.AssetsDefinition:
    from pipeline import paths

    out = paths.tokens_dir(modality)

    @dg.asset(**asset_args(f"tokenize@{modality}", [modality, "tokens"], modality, None, path=str(out)),
              deps=upstream, kinds={"numpy"},
              description=f"The pretraining splits as token ids, once per (shards, tokenizer): {out}/<split>.npy and "
              f"index.json (DVC stage tokenize@{modality}).")
    def tokens(context: dg.AssetExecutionContext, config: StageConfig, dvc: Dvc) -> dg.MaterializeResult:
        from pipeline.data.tokens import tokenize_corpus

        begin(context)
        summary = tokenize_corpus()
        context.log.info(f"token ids of {modality}: {summary['tokens']}")
        return finish(context, dvc, metadata={"tokens": dg.MetadataValue.json(summary["tokens"])}, params_path=config.params_path)

    return tokens


def _texts(modality: str, count: int, split: str | None = None) -> list[str]:
    """The first `count` texts (text) or transcripts (speech) of `split` (default: the training split)."""
    from pipeline import paths
    from pipeline.data import preview

    shard_dir = paths.shards_dir(modality)
    if modality == "text":
        return [r["text"] for r in preview.text_examples(shard_dir, count, split, max_chars=None)]
    return [r["transcript"] for r in preview.speech_examples(shard_dir, count, split)]
