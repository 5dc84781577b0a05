"""Frozen features for the benchmark's probes: extracted once per (source, split, subsample, layer, pooling), cached.

Sources (each point or floor of a benchmark curve is one):
  checkpoint   a pretraining checkpoint's student encoder, pretraining modules removed, in eval mode, never updated
  random_init  the same encoder config at initialisation under the run's seed, built exactly as pretraining builds
               it (pipeline/pretrain/stage.py seeds torch, then `build_model`): update 0 of that run
  raw_input    no encoder: image pixels (the evaluation transform's output, flattened), speech log-mel filterbank
               frames (Kaldi fbank: 80 bins, 25 ms windows every 10 ms), text bag-of-tokens counts (pad excluded)

Pooling (`FeatureSpec.pooling`): `mean` over patches / frames / tokens with padding excluded; `cls`, the image CLS
token (text: the <s> token, which RoBERTa's classification head reads); `frames`, every frame of an utterance
kept (speech, for the CTC probe). `FeatureSpec.layer` is the main block whose output is taken (negative counts
from the end; None = the last block, after the final norm where the encoder has one).

Inputs are fine-tuning's evaluation batches (pipeline/finetune/data.py LabeledBatches without an update: resize +
center crop + normalisation, per-utterance waveform normalisation, tokens truncated to the model's positions).

Which samples (`probe_positions`): `train`, `valid` and `test` subsamples of fixed sizes, drawn with a data seed
that does not depend on the pretraining run, so that every method, budget, seed and floor is probed on the same
items. A task without a validation split gets one carved from train (stratified, disjoint from the train
subsample); a task without a test split reports on its validation split and selects on a carved one.

Cache: `<path>.pt` holds plain tensors (torch.save, loaded with weights_only=True), `<path>.json` the key (what the
features are a function of) and metadata; both written atomically, the sidecar last, so a sidecar means a
complete cache. A cache whose key differs from the request is recomputed and replaced.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import UserInputError
from pipeline.io import atomic_write_bytes, atomic_write_json, files_digest

KINDS = ("checkpoint", "random_init", "raw_input")
POOLINGS = ("mean", "cls", "frames")
ROLES = ("train", "valid", "test")
TENSORS = ("features", "ids", "labels", "lengths", "targets", "target_lengths")
FBANK_BINS = 80


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Which features: the block, the pooling, and the extraction batch size (padding makes speech batches
    depend on it, so it is part of the cache key)."""

    layer: int | None = None
    pooling: str = "mean"
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise UserInputError(f"pooling {self.pooling!r}: choose one of {POOLINGS}")


@dataclasses.dataclass
class FeatureSet:
    """Features of N items of one split.

    features (N, D) pooled, or (sum of lengths, D) frames concatenated; ids (N,) positions in the split;
    labels (N,) class ids (classification tasks); lengths (N,) frames per item (`frames` pooling);
    targets (sum of target_lengths,) letter ids and target_lengths (N,) (speech); meta: the cache key and
    JSON metadata (speech: `references`, the normalised transcripts, and `vocab_size`).
    """

    features: torch.Tensor
    ids: torch.Tensor
    labels: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    target_lengths: torch.Tensor | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labeled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D), labels (N,)), what `probes.knn` and `probes.linear` take."""
        if self.labels is None or self.lengths is not None:
            raise UserInputError("knn/linear probes need pooled features of a labeled task (pooling mean or cls)")
        return self.features, self.labels


# ----------------------------------------------------------------------------------------------------
# sources


@dataclasses.dataclass(frozen=True)
class Source:
    """Where features come from: `kind` (see KINDS), the encoder config (the `model` section of a pretraining
    config; raw_input uses it for the input transform), what identifies it in a cache key, and the weights."""

    kind: str
    model_config: dict[str, Any]
    identity: dict[str, Any]
    state: dict[str, torch.Tensor] | None = dataclasses.field(default=None, compare=False, repr=False)
    seed: int = 0


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def from_checkpoint(path: Path) -> Source:
    """A pretraining checkpoint (pipeline/train/checkpoint.py): its student weights and encoder config."""
    from pipeline.train import checkpoint

    path = Path(path)
    ckpt = checkpoint.load(path)
    try:
        model_config, state = ckpt["config"]["model"], ckpt["student"]
    except (KeyError, TypeError):
        raise UserInputError(f"{path}: not a pretraining checkpoint (no config.model / student)") from None
    method = (ckpt["config"].get("pretrain") or {}).get("method") or model_config.get("method")
    identity = {"kind": "checkpoint", "path": str(path), "digest": files_digest([path]), "method": method,
                "update": int(ckpt.get("update", 0))}
    return Source("checkpoint", model_config, identity, state)


def random_init(model_config: Mapping[str, Any], seed: int) -> Source:
    """The encoder of `model_config` as a pretraining run with `seed` initialises it (its update 0)."""
    model_config = dict(model_config)
    identity = {"kind": "random_init", "config": _digest(model_config), "seed": int(seed)}
    return Source("random_init", model_config, identity, seed=int(seed))


def raw_input(model_config: Mapping[str, Any]) -> Source:
    """No encoder: the probe reads the input itself, transformed as for the encoder of `model_config`."""
    model_config = dict(model_config)
    return Source("raw_input", model_config, {"kind": "raw_input", "config": _digest(model_config)})


def build_encoder(source: Source) -> nn.Module | None:
    """The frozen encoder of a source in eval mode (None for raw_input)."""
    from model.build import build_model, config_from_dict

    if source.kind == "raw_input":
        return None
    cfg = config_from_dict(source.model_config)
    if source.kind == "random_init":
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
            torch.manual_seed(source.seed)
            model = build_model(cfg)
    else:
        model = build_model(cfg)
        model.load_state_dict(source.state)
    model.remove_pretraining_modules()
    return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------
# which samples


def subsample(positions: list[int], size: int, seed: int, purpose: int) -> list[int]:
    """`size` of `positions` (all of them when there are fewer), sorted: the first `size` of a permutation seeded
    by (seed, purpose), so a smaller subsample is part of a larger one."""
    order = np.random.default_rng([int(seed), int(purpose), 0xFEA7]).permutation(len(positions))
    return sorted(positions[i] for i in order[: max(0, min(size, len(positions)))])


def probe_positions(task, sizes: Mapping[str, int], seed: int = 0) -> dict[str, tuple[str, list[int]]]:
    """role (train, valid, test) -> (split name, sorted positions in it) for a task of
    pipeline/finetune/tasks.py; sizes: role -> number of items (fewer when the split has fewer)."""
    from pipeline.data.shard_reader import IndexedShards
    from pipeline.finetune import tasks as finetune_tasks

    def count(split: str) -> int:
        return len(IndexedShards(task.shard_dir, split))

    if task.valid is None and task.test is None:
        raise UserInputError(f"{task.shard_dir}: task {task.name!r} has neither a valid nor a test split; probes "
                             "select on one and report on the other")
    train_pool = list(range(count(task.train)))
    test_split = task.test or task.valid
    chosen = {"test": (test_split, subsample(list(range(count(test_split))), sizes["test"], seed, purpose=3))}
    if task.valid is not None and task.test is not None:
        chosen["valid"] = (task.valid, subsample(list(range(count(task.valid))), sizes["valid"], seed, purpose=2))
    else:  # selection needs a split of its own: carve it from train (stratified), disjoint from the train subsample
        labels = finetune_tasks.read_labels(task.shard_dir, task.train) if task.classes is not None else None
        size = min(sizes["valid"], len(train_pool) - 1)
        train_pool, carved = finetune_tasks.carve_validation(labels, len(train_pool), size, seed)
        chosen["valid"] = (task.train, subsample(carved, size, seed, purpose=2))  # per-class rounding may carve more
    chosen["train"] = (task.train, subsample(train_pool, sizes["train"], seed, purpose=1))
    return {role: chosen[role] for role in ROLES}


# ----------------------------------------------------------------------------------------------------
# extraction


def eval_config(modality: str):
    """The evaluation transform's settings when the caller gives none: the released fine-tuning recipe's."""
    from pipeline.finetune.config import released

    return released(modality, "")


def eval_dataset(model_config: Mapping[str, Any], shard_dir: Path, split: str, positions: list[int],
                 tokenizer_path: Path | None = None, eval_cfg=None):
    """Fine-tuning's evaluation batches of `positions` (eval_cfg: a FinetuneConfig; None = `eval_config`)."""
    from model.build import config_from_dict
    from pipeline.finetune.data import LabeledBatches

    model_cfg = config_from_dict(dict(model_config))
    return LabeledBatches(eval_cfg or eval_config(model_cfg.modality), model_cfg, shard_dir, split, positions,
                          tokenizer_path)


def pool(out: Mapping[str, torch.Tensor | None], pooling: str, modality: str) -> torch.Tensor | list[torch.Tensor]:
    """extract_features output -> (B, D) pooled, or per item (T_i, D) frames for `frames` pooling."""
    x, padding = out["x"], out["padding_mask"]
    keep = torch.ones(x.shape[:2], dtype=torch.bool) if padding is None else ~padding  # (B, T)
    if pooling == "frames":
        return [row[: int(n)] for row, n in zip(x, keep.sum(1))]
    if pooling == "mean":
        return (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
    if out["cls"] is not None:
        return out["cls"]
    if modality == "text":
        return x[:, 0]  # <s>: what RoBERTa's classification head (model/heads.py TextClassifier) reads
    raise UserInputError(f"{modality} encoders have no CLS token; use pooling mean or frames")


def raw_features(batch: Mapping[str, torch.Tensor], pooling: str, modality: str, vocab_size: int,
                 pad_idx: int) -> torch.Tensor | list[torch.Tensor]:
    """The raw_input floor for one batch: pixels (B, 3*H*W); fbank frames (T_i, 80) per utterance (mean-pooled
    unless `frames`); bag-of-tokens counts (B, vocab_size)."""
    if modality == "image":
        return batch["image"].flatten(1)
    if modality == "text":
        tokens = batch["tokens"]
        counts = torch.zeros(len(tokens), vocab_size).scatter_add_(1, tokens, torch.ones(tokens.shape))
        counts[:, pad_idx] = 0
        return counts
    import torchaudio

    frames = []
    for wave, padding in zip(batch["audio"], batch["padding_mask"]):
        wave = wave[~padding]
        frames.append(torchaudio.compliance.kaldi.fbank(wave[None], num_mel_bins=FBANK_BINS, sample_frequency=16000,
                                                        dither=0.0))  # dither off: deterministic
    return frames if pooling == "frames" else torch.stack([f.mean(0) for f in frames])


def extract(source: Source, dataset, spec: FeatureSpec, workers: int = 0) -> FeatureSet:
    """Features of every item of `dataset` (an `eval_dataset`), in order, without the cache."""
    from pipeline.finetune.data import eval_loader

    encoder = build_encoder(source)
    modality = dataset.modality
    if spec.pooling == "frames" and modality != "speech":
        raise UserInputError(f"pooling `frames` is for speech (the CTC probe); {modality} takes mean or cls")
    model_cfg = dataset.model_cfg
    vocab = (model_cfg.text.vocab_size, model_cfg.text.pad_idx) if modality == "text" else (0, 0)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in TENSORS}
    with torch.no_grad():
        for batch in eval_loader(dataset, spec.batch_size, 0, 1, workers):
            if encoder is None:
                pooled = raw_features(batch, spec.pooling, modality, *vocab)
            else:
                inputs = batch[{"image": "image", "speech": "audio", "text": "tokens"}[modality]]
                out = encoder.extract_features(inputs, batch.get("padding_mask"), layer=spec.layer)
                pooled = pool(out, spec.pooling, modality)
            if isinstance(pooled, list):
                parts["lengths"].append(torch.tensor([len(f) for f in pooled]))
                pooled = torch.cat(pooled)
            parts["features"].append(pooled.float())
            parts["ids"].append(batch["ids"])
            for key, name in (("target", "labels"), ("targets", "targets"), ("target_lengths", "target_lengths")):
                if key in batch:
                    parts[name].append(batch[key])
    tensors = {k: torch.cat(v).contiguous() if v else None for k, v in parts.items()}
    meta: dict[str, Any] = {"num_items": len(tensors["ids"]), "dim": int(tensors["features"].shape[1])}
    if modality == "speech":
        from pipeline.finetune.evaluate import reference_text

        meta["references"] = [reference_text(dataset.tokenizer, dataset.transcript(int(i))) for i in tensors["ids"]]
    return FeatureSet(**tensors, meta=meta)


# ----------------------------------------------------------------------------------------------------
# cache


def save_features(path: Path, features: FeatureSet) -> None:
    """`path` (.pt, the tensors) then its .json sidecar (the metadata), each written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({k: getattr(features, k) for k in TENSORS if getattr(features, k) is not None}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    atomic_write_json(path.with_suffix(".json"), features.meta)


def load_features(path: Path, key: Mapping[str, Any] | None = None) -> FeatureSet | None:
    """The cached features at `path`, or None when there are none or (given `key`) they were made for another key."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not (path.exists() and sidecar.exists()):
        return None
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    if key is not None and meta.get("key") != json.loads(json.dumps(dict(key))):
        return None
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the cache is unusable
        raise UserInputError(f"{path}: unreadable feature cache ({type(e).__name__}: {e}); delete it") from None
    return FeatureSet(**tensors, meta=meta)


def cache_key(source: Source, shard_dir: Path, split: str, positions: list[int], spec: FeatureSpec,
              tokenizer_path: Path | None = None, eval_cfg=None) -> dict[str, Any]:
    """What the features are a function of: the source, the shards and tokenizer (content digests), the items,
    the input transform and the spec."""
    modality = source.model_config["modality"]
    # the modality's section of the fine-tuning config holds the evaluation transform (and training-only fields,
    # which only make the key stricter than it needs to be)
    section = getattr(eval_cfg or eval_config(modality), modality)
    transform = dataclasses.asdict(section) if section is not None else None
    return {"source": source.identity, "shards": files_digest([Path(shard_dir) / "index.json"]), "split": split,
            "items": len(positions), "positions": _digest(list(positions)),
            "tokenizer": files_digest([Path(tokenizer_path)]) if tokenizer_path else None, "transform": transform,
            "layer": spec.layer, "pooling": spec.pooling, "batch_size": spec.batch_size}


def cached_features(source: Source, shard_dir: Path, split: str, positions: list[int], spec: FeatureSpec,
                    path: Path, tokenizer_path: Path | None = None, eval_cfg=None, workers: int = 0) -> FeatureSet:
    """The features of `positions` of `split`: read from the cache at `path` when its key matches, else
    extracted and written there. meta records the key, the source kind and the layer and pooling."""
    key = cache_key(source, shard_dir, split, positions, spec, tokenizer_path, eval_cfg)
    hit = load_features(path, key)
    if hit is not None:
        return hit
    dataset = eval_dataset(source.model_config, shard_dir, split, positions, tokenizer_path, eval_cfg)
    features = extract(source, dataset, spec, workers)
    features.meta = {"key": json.loads(json.dumps(key)), "kind": source.kind, "layer": spec.layer,
                     "pooling": spec.pooling, **features.meta}
    if source.model_config.get("modality") == "speech" and tokenizer_path is not None:
        from pipeline.finetune.model import speech_vocab_size

        features.meta["vocab_size"] = speech_vocab_size(Path(tokenizer_path))
    save_features(path, features)
    return features


def probe_features(source: Source, task, positions: Mapping[str, tuple[str, list[int]]], spec: FeatureSpec,
                   cache_dir: Path, tokenizer_path: Path | None = None, eval_cfg=None,
                   workers: int = 0) -> dict[str, FeatureSet]:
    """role -> features for every role of `probe_positions(...)`, cached under `cache_dir` (one folder per source)."""
    layer = "last" if spec.layer is None else spec.layer
    return {role: cached_features(source, task.shard_dir, split, ids, spec,
                                  Path(cache_dir) / f"{role}-{split}-{spec.pooling}-layer{layer}-n{len(ids)}.pt",
                                  tokenizer_path, eval_cfg, workers)
            for role, (split, ids) in positions.items()}


def letter_decoder(tokenizer_path: Path) -> Callable[[list[int]], str]:
    """Letter ids -> words with the speech tokenizer (as fine-tuning's evaluation decodes CTC output)."""
    from pipeline.data.tokenizer import load
    from pipeline.finetune.evaluate import letters_to_text

    tokenizer = load(Path(tokenizer_path))
    return lambda letters: letters_to_text(tokenizer, letters)
