"""params.yaml, the one place hyper-parameters and data sizes live: loading it, the one `merge` that turns its
blocks into typed configs, the modalities, and what the benchmark runs: per modality (`benchmark`), at which
scale (`benchmark_scale`: seeds, update budgets, probe sizes) and which pretraining runs that makes
(`benchmark_runs`).

No torch here: the Dagster code location and DVC-facing code import this module at load time.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.errors import UserInputError

DEFAULT_PARAMS = Path("params.yaml")
# The modalities of data2vec 2.0 (one encoder each; model/config.py names the same three for the model).
MODALITIES = ("image", "speech", "text")
T = TypeVar("T")
Layer = tuple[str, Mapping[str, Any] | None]  # (where the values come from, for errors; the values)


def load(path: Path | str = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: params file not found; run from the repository root or pass --params PATH")
    try:
        with open(path, encoding="utf-8") as f:
            params = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise UserInputError(f"{path}: not valid YAML{line}: {getattr(e, 'problem', None) or e}; fix the file") from None
    if not isinstance(params, dict):
        raise UserInputError(f"{path}: expected a mapping of sections (seed, benchmark, pretrain, ...), got "
                             f"{type(params).__name__}; fix the file")
    return params


def seed(params: dict[str, Any]) -> int:
    return int(params.get("seed", 0))


def merge(base: T | type[T], *layers: Layer, inline: str | None = None) -> T:
    """`base` (a dataclass instance, e.g. a released recipe, or a dataclass type: its defaults) with each layer
    applied in order, later layers winning.

    A layer is (source, values), source naming where the values come from ("params.yaml finetune.image").
    A value for a field that is itself a dataclass (a section) is a mapping merged key by key into that section.
    `inline` names a section whose keys may also be given at the top level of a layer, so params.yaml keeps one
    flat block per modality. Lists become tuples where the field is a tuple.
    Raises UserInputError naming the source and the known keys for an unknown key, and naming the missing keys
    when a field without a default gets no value.
    """
    cls = base if isinstance(base, type) else type(base)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {} if isinstance(base, type) else {name: getattr(base, name) for name in names}
    known = set(names)
    routed: set[str] = set()
    if inline:  # flat: the plain fields and the inline section's, no section given by name
        routed = {f.name for f in dataclasses.fields(_section_type(hints[inline]))} - known
        known = {name for name in names if _section_type(hints[name]) is None} | routed
    for source, layer in layers:
        layer = dict(layer or {})
        unknown = sorted(set(layer) - known)
        if unknown:
            raise UserInputError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
        inlined = {key: layer.pop(key) for key in routed & set(layer)}
        if inlined:
            layer[inline] = inlined
        for key, value in layer.items():
            section = _section_type(hints[key])
            if section is not None and isinstance(value, Mapping):
                current = values.get(key)
                where = source if key == inline else f"{source}.{key}"
                values[key] = merge(section if current is None else current, (where, value))
            else:
                values[key] = tuple(value) if isinstance(value, list) and _is_tuple(hints[key]) else value
    missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in values
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        sources = ", ".join(source for source, _ in layers) or "the defaults"
        raise UserInputError(f"{sources}: missing key(s) {missing} for {cls.__name__}")
    return cls(**values)


def _optional_args(hint: Any) -> tuple[Any, ...]:
    """The types a hint allows: (X,) for X, (X, NoneType) for X | None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _section_type(hint: Any) -> type | None:
    return next((t for t in _optional_args(hint) if dataclasses.is_dataclass(t)), None)


def _is_tuple(hint: Any) -> bool:
    return any(t is tuple or typing.get_origin(t) is tuple for t in _optional_args(hint))


def section(params: dict[str, Any], cls: type[T], *keys: str) -> T:
    """Dataclass `cls` from params.yaml params[keys[0]][keys[1]]...: missing keys take the defaults, unknown
    keys are an error."""
    node: Any = params
    for key in keys:
        node = (node or {}).get(key, {})
    return merge(cls, (f"params.yaml {'.'.join(keys)}", node))


# ---------------------------------------------------------------------------------------------------------------
# data preparation, shards, tokenizers: params.yaml <modality>.prepare / .shard / .tokenizer


@dataclasses.dataclass(frozen=True)
class ImagePrepare:
    train_limit: int | None = None
    test_limit: int | None = None


@dataclasses.dataclass(frozen=True)
class SpeechPrepare:
    train_utterances: int = 1200
    valid_utterances: int = 120
    test_utterances: int = 120
    sample_rate: int = 16000


@dataclasses.dataclass(frozen=True)
class TextPrepare:
    corpus_limit: int | None = None
    valid_fraction: float = 0.01
    lexname_train: int = 20000
    lexname_valid: int = 2000
    lexname_test: int = 4000
    fortune_valid_fraction: float = 0.1
    fortune_test_fraction: float = 0.1
    fortune_min_per_category: int = 100


@dataclasses.dataclass(frozen=True)
class Shard:
    max_samples_per_shard: int = 10000
    max_bytes_per_shard: int = 1 << 30
    # speech only: shorter utterances are skipped (listed in index.json `skipped`). 0.1 s is 4 frames of the
    # wav2vec 2.0 feature extractor (400-sample receptive field, 320-sample stride at 16 kHz)
    min_seconds: float = 0.1


@dataclasses.dataclass(frozen=True)
class TextTokenizer:
    vocab_size: int = 4096
    min_frequency: int = 2


@dataclasses.dataclass(frozen=True)
class SpeechTokenizer:
    lowercase: bool = True


PREPARE = {"image": ImagePrepare, "speech": SpeechPrepare, "text": TextPrepare}
TOKENIZER = {"speech": SpeechTokenizer, "text": TextTokenizer}  # the modalities with a tokenizer


# ---------------------------------------------------------------------------------------------------------------
# the benchmark: params.yaml benchmark, read by dvc.yaml (foreach), the Dagster graph, the pretrain stage
# (--benchmark), the probes, the sweeps and the report

PROBES = ("knn", "linear", "ctc_probe")  # frozen-feature protocols (pipeline/benchmark/probes.py)
POOLINGS = ("mean", "cls", "frames")  # of patches / tokens / frames (pipeline/benchmark/features.py)
FINETUNE = ("final", "none")  # fine-tune the final (largest-budget) run of every seed, or nothing
SPLITS = ("train", "valid", "test")
SCALE_KEYS = ("scale", "scales")  # the other keys of `benchmark` are modalities


@dataclasses.dataclass(frozen=True, kw_only=True)
class Benchmark:
    """What the benchmark runs for one modality."""

    methods: tuple[str, ...]  # pretraining methods compared
    task: str  # the labeled task of the probes and fine-tuning (pipeline/finetune/tasks.py)
    probes: tuple[str, ...] = ()  # frozen-feature protocols, each a subset of PROBES
    pooling: str = "mean"  # one of POOLINGS
    layer: int | None = None  # the encoder block whose output is probed; None: the final (normalized) output
    finetune: str = "final"  # one of FINETUNE


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProbeSizes:
    """Items per split the probes subsample (fixed seed), at most the split's size."""

    train: int
    valid: int
    test: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Scale:
    """One entry of params.yaml benchmark.scales: how much the benchmark runs."""

    name: str
    seeds: tuple[int, ...]  # every run, probe and fine-tuning is repeated per seed
    budget_fractions: tuple[float, ...]  # each a complete pretraining run of round(f x max_updates) updates
    probe_sizes: dict[str, dict[str, int]]  # {modality: {train, valid, test}}
    max_updates: dict[str, dict[str, int]]  # {modality: {method: the largest budget, in updates}}
    finetune: bool  # run the fine-tuning protocol (benchmark.<modality>.finetune) at this scale


@dataclasses.dataclass(frozen=True)
class Run:
    """One pretraining run of the benchmark: its seed, its budget and its folder name under pretrain/."""

    seed: int
    updates: int
    name: str


def benchmark(params: dict[str, Any] | None = None) -> dict[str, Benchmark]:
    """params.yaml `benchmark`, per modality in MODALITIES order (`params` default: load ./params.yaml).
    Raises UserInputError for a missing block, an unknown key or value."""
    params = load() if params is None else params
    if not params.get("benchmark"):
        raise UserInputError("params.yaml: no `benchmark` block (benchmark.<modality>.methods, .task); see the "
                             "repository's params.yaml")
    node = params["benchmark"]
    unknown = sorted(set(node) - set(MODALITIES) - set(SCALE_KEYS))
    if unknown:
        raise UserInputError(f"params.yaml benchmark: unknown key(s) {unknown}; known: {[*SCALE_KEYS, *MODALITIES]}")
    runs = {m: merge(Benchmark, (f"params.yaml benchmark.{m}", node[m])) for m in MODALITIES if m in node}
    for m, run in runs.items():
        where = f"params.yaml benchmark.{m}"
        _choices(f"{where}.probes", run.probes, PROBES)
        _choices(f"{where}.pooling", (run.pooling,), POOLINGS)
        _choices(f"{where}.finetune", (run.finetune,), FINETUNE)
    return runs


def _choices(where: str, values: tuple, known: tuple) -> None:
    wrong = [v for v in values if v not in known]
    if wrong:
        raise UserInputError(f"{where}: {wrong[0]!r} is not one of {list(known)}")


def benchmark_scale(params: dict[str, Any] | None = None) -> Scale:
    """params.yaml benchmark.scales.<benchmark.scale>: seeds, budget fractions, probe subsample sizes per modality
    and every (modality, method)'s largest budget in updates. Raises UserInputError for an unknown scale or key, a
    fraction outside (0, 1], a non-positive budget, or a method the benchmark does not run."""
    params = load() if params is None else params
    node = params.get("benchmark") or {}
    scales = node.get("scales") or {}
    name = node.get("scale")
    if name not in scales:
        raise UserInputError(f"params.yaml benchmark.scale: {name!r} is not one of benchmark.scales {sorted(scales)}")
    where = f"params.yaml benchmark.scales.{name}"
    block = dict(scales[name] or {})
    sizes = block.pop("probe_sizes", None)
    if not isinstance(sizes, dict) or not sizes or set(sizes) - set(MODALITIES):
        raise UserInputError(f"{where}.probe_sizes: expected {{modality: {{train, valid, test}}}} with modalities "
                             f"among {list(MODALITIES)} (got {sizes!r})")
    sizes = {m: dataclasses.asdict(merge(ProbeSizes, (f"{where}.probe_sizes.{m}", n))) for m, n in sizes.items()}
    scale = merge(Scale, (where, {**block, "name": name, "probe_sizes": sizes}))
    if not isinstance(scale.finetune, bool):
        raise UserInputError(f"{where}.finetune: {scale.finetune!r} must be true or false")
    if not scale.seeds or not scale.budget_fractions or not all(0 < f <= 1 for f in scale.budget_fractions):
        raise UserInputError(f"{where}: seeds and budget_fractions must be non-empty, every fraction in (0, 1] "
                             f"(got {list(scale.seeds)}, {list(scale.budget_fractions)})")
    methods = {m: run.methods for m, run in benchmark(params).items()}
    unknown = sorted(set(scale.max_updates) - set(methods))
    if unknown:
        raise UserInputError(f"{where}.max_updates: unknown modality {unknown}; known: {list(methods)}")
    for m, budgets in scale.max_updates.items():
        unknown = sorted(set(budgets) - set(methods[m]))
        if unknown:
            raise UserInputError(f"{where}.max_updates.{m}: unknown method(s) {unknown}; benchmark.{m}.methods: "
                                 f"{list(methods[m])}")
        wrong = {k: v for k, v in budgets.items() if not isinstance(v, int) or v < 1}
        if wrong:
            raise UserInputError(f"{where}.max_updates.{m}: {wrong} must be positive whole numbers of updates")
    return scale


def benchmark_runs(params: dict[str, Any] | None, modality: str, method: str) -> list[Run]:
    """The pretraining runs of `method` on `modality` at the current scale, ordered by (seed, updates): per seed,
    one complete run per budget fraction f of updates = max(1, round(f x max_updates)), duplicates dropped.
    Raises UserInputError when the scale has no budget for (modality, method)."""
    params = load() if params is None else params
    scale = benchmark_scale(params)
    top = scale.max_updates.get(modality, {}).get(method)
    if top is None:
        raise UserInputError(f"params.yaml benchmark.scales.{scale.name}.max_updates.{modality}.{method}: missing "
                             f"(the benchmark's largest budget of {method} on {modality}, in updates)")
    budgets = sorted({max(1, round(f * top)) for f in scale.budget_fractions})
    return [Run(seed, updates, f"s{seed}-u{updates}") for seed in sorted(set(scale.seeds)) for updates in budgets]
