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
# The pretraining methods of each modality: data2vec 2.0 and 1.0, and the modality's own baseline (model/config.py
# METHODS and BASELINE_MODALITY say the same; here without torch, for the CLI to check --method before it starts).
PRETRAIN_METHODS = {"image": ("data2vec2", "data2vec1", "mae"), "speech": ("data2vec2", "data2vec1", "wav2vec2"),
                    "text": ("data2vec2", "data2vec1", "mlm")}
T = TypeVar("T")
Layer = tuple[str, Mapping[str, Any] | None]  # (where the values come from, for errors; the values)


class Params(dict):
    """The sections of a params file (a dict), remembering the file they were read from (`path`), so every error
    about them names the file the user passed (--params), not the default params.yaml."""

    def __init__(self, values: Mapping[str, Any], path: Path) -> None:
        super().__init__(values)
        self.path = path


def source(params: Mapping[str, Any]) -> str:
    """The params file `params` was read from, as errors name it: the path `load` read, else params.yaml (a plain
    dict, as tests and the Dagster config build them)."""
    return str(getattr(params, "path", DEFAULT_PARAMS))


def load(path: Path | str = DEFAULT_PARAMS) -> Params:
    """The params file at `path` as a Params (a dict of sections). Raises UserInputError naming `path` when it is
    missing or unreadable, not valid YAML (with the line) or not a mapping."""
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
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"{path}: cannot read the params file ({e.__class__.__name__}: "
                             f"{getattr(e, 'strerror', None) or e}); pass --params with a readable YAML file") from None
    if not isinstance(params, dict):
        raise UserInputError(f"{path}: expected a mapping of sections (seed, benchmark, pretrain, ...), got "
                             f"{type(params).__name__}; fix the file")
    return Params(params, path)


def check_method(modality: str, method: str, also: tuple[str, ...] = ()) -> None:
    """Raise UserInputError, naming the methods of `modality` (and `also`: the stage's floors, e.g. random_init,
    raw_input for the probes, scratch for fine-tuning), when `method` is none of them."""
    if method not in PRETRAIN_METHODS[modality] + also:
        other = [m for m, methods in PRETRAIN_METHODS.items() if method in methods]
        why = f" ({method} is the {other[0]} baseline)" if len(other) == 1 else ""
        kind = "a pretraining method" if not also else "a method of this stage"
        raise UserInputError(f"--method {method}: not {kind} for {modality}{why}; {modality} methods: "
                             f"{', '.join(PRETRAIN_METHODS[modality] + also)}")


def seed(params: Mapping[str, Any]) -> int:
    """params `seed` (default 0). Raises UserInputError naming the file when it is not a whole number."""
    value = params.get("seed", 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserInputError(f"{source(params)} seed: {value!r} must be a whole number")
    return value


def merge(base: T | type[T], *layers: Layer, inline: str | None = None) -> T:
    """`base` (a dataclass instance, e.g. a released recipe, or a dataclass type: its defaults) with each layer
    applied in order, later layers winning.

    A layer is (source, values), source naming where the values come from ("params.yaml finetune.image").
    A value for a field that is itself a dataclass (a section) is a mapping merged key by key into that section.
    `inline` names a section whose keys may also be given at the top level of a layer, so params.yaml keeps one
    flat block per modality. Lists become tuples where the field is a tuple.
    Raises UserInputError naming the source: for a layer that is not a mapping, an unknown key (with the known
    keys), a value of the wrong type (a number, text, true/false or list where the field's type says so) and the
    missing keys when a field without a default gets no value.
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
        if layer is not None and not isinstance(layer, Mapping):
            raise UserInputError(f"{source}: expected a mapping of keys ({', '.join(sorted(known))}), got "
                                 f"{type(layer).__name__} {layer!r}")
        layer = dict(layer or {})
        unknown = sorted(set(layer) - known)
        if unknown:
            raise UserInputError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
        inlined = {key: layer.pop(key) for key in routed & set(layer)}
        if inlined:
            layer[inline] = inlined
        for key, value in layer.items():
            section = _section_type(hints[key])
            if section is not None and value is not None:  # a section: a mapping merged key by key
                current = values.get(key)
                where = source if key == inline else f"{source}.{key}"
                values[key] = merge(section if current is None else current, (where, value))
            else:
                _check_type(f"{source}.{key}", value, hints[key])
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


# What a value of each checked type must be, as errors say it; other types (Any, Literal...) are not checked.
_EXPECTED = {bool: "true or false", int: "a whole number", float: "a number", str: "text", tuple: "a list",
             dict: "a mapping", type(None): "null"}


def _fits(value: Any, hint: Any) -> bool:
    kind = typing.get_origin(hint) or hint
    if kind not in _EXPECTED:
        return True
    if kind in (int, float) and isinstance(value, bool):  # YAML true is a bool, and bool an int subclass
        return False
    if not isinstance(value, {float: (int, float), tuple: (list, tuple), dict: Mapping}.get(kind, kind)):
        return False
    items = typing.get_args(hint) if kind is tuple else ()
    if len(items) == 2 and items[1] is Ellipsis:  # tuple[X, ...]: any length
        items = (items[0],) * len(value)
    return not items or len(items) == len(value) and all(_fits(v, t) for v, t in zip(value, items))


def _describe(hint: Any) -> str:
    """What a value of type `hint` must be, in words: "a list of 2 numbers" for tuple[float, float]."""
    kind = typing.get_origin(hint) or hint
    items = typing.get_args(hint) if kind is tuple else ()
    if not items or len(set(items) - {Ellipsis}) != 1:
        return _EXPECTED.get(kind, str(hint))
    count = "" if items[-1] is Ellipsis else f"{len(items)} "
    return f"a list of {count}{_EXPECTED.get(items[0], str(items[0])).removeprefix('a ')}s"


def _check_type(where: str, value: Any, hint: Any) -> None:
    """Raise UserInputError naming `where` when `value` fits none of the types `hint` allows."""
    allowed = _optional_args(hint)
    if any(_fits(value, t) for t in allowed):
        return
    expected = " or ".join(_describe(t) for t in allowed)
    hint_yaml = ""
    if isinstance(value, str) and any(t in (int, float) for t in allowed):
        try:
            float(value)
            hint_yaml = f" (YAML reads {value} as text: write a number with a dot and a signed exponent, e.g. 1.0e-3)"
        except ValueError:
            pass
    raise UserInputError(f"{where}: {value!r} must be {expected}{hint_yaml}")


def _section_type(hint: Any) -> type | None:
    return next((t for t in _optional_args(hint) if dataclasses.is_dataclass(t)), None)


def _is_tuple(hint: Any) -> bool:
    return any(t is tuple or typing.get_origin(t) is tuple for t in _optional_args(hint))


def section(params: dict[str, Any], cls: type[T], *keys: str) -> T:
    """Dataclass `cls` from the params file's params[keys[0]][keys[1]]...: missing keys take the defaults, unknown
    keys and wrong types are errors naming the file (`source`)."""
    return merge(cls, (f"{source(params)} {'.'.join(keys)}", subtree(params, *keys)))


def subtree(params: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    """params[keys[0]][keys[1]]..., {} where a key is missing or null. Raises UserInputError naming the file
    (`source`) and the place when a node on the way is not a mapping."""
    node: Any = params
    for depth in range(len(keys) + 1):
        if node is None:
            return {}
        if not isinstance(node, Mapping):
            raise UserInputError(f"{source(params)} {'.'.join(keys[:depth])}: expected a mapping of keys, got "
                                 f"{type(node).__name__} {node!r}")
        node = node.get(keys[depth]) if depth < len(keys) else node
    return node


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
        raise UserInputError(f"{source(params)}: no `benchmark` block (benchmark.<modality>.methods, .task); see the "
                             "repository's params.yaml")
    node = params["benchmark"]
    if not isinstance(node, Mapping):
        raise UserInputError(f"{source(params)} benchmark: expected a mapping (scale, scales, <modality>), got "
                             f"{type(node).__name__}")
    unknown = sorted(set(node) - set(MODALITIES) - set(SCALE_KEYS))
    if unknown:
        raise UserInputError(f"{source(params)} benchmark: unknown key(s) {unknown}; known: "
                             f"{[*SCALE_KEYS, *MODALITIES]}")
    runs = {m: merge(Benchmark, (f"{source(params)} benchmark.{m}", node[m])) for m in MODALITIES if m in node}
    for m, run in runs.items():
        where = f"{source(params)} benchmark.{m}"
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
    scales = node.get("scales") or {} if isinstance(node, Mapping) else {}
    name = node.get("scale") if isinstance(node, Mapping) else None
    if not isinstance(scales, Mapping) or name not in scales:
        raise UserInputError(f"{source(params)} benchmark.scale: {name!r} is not one of benchmark.scales "
                             f"{sorted(scales) if isinstance(scales, Mapping) else scales!r}")
    where = f"{source(params)} benchmark.scales.{name}"
    if not isinstance(scales[name] or {}, Mapping):
        raise UserInputError(f"{where}: expected a mapping (seeds, budget_fractions, ...), got {scales[name]!r}")
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
        raise UserInputError(f"{source(params)} benchmark.scales.{scale.name}.max_updates.{modality}.{method}: missing "
                             f"(the benchmark's largest budget of {method} on {modality}, in updates)")
    budgets = sorted({max(1, round(f * top)) for f in scale.budget_fractions})
    return [Run(seed, updates, f"s{seed}-u{updates}") for seed in sorted(set(scale.seeds)) for updates in budgets]
