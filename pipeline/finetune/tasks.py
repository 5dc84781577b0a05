"""Downstream tasks: which shard splits a task reads, its classes, and the deterministic choice of labeled
training samples (label fractions, a validation subset carved from train). No torch here.

Embedded tasks (data/shards/<modality>, the default data):
  image   fashion_mnist   splits train / test (no valid: `valid_size` samples are carved from train, stratified)
  speech  synth           splits train / valid / test (valid and test: flite voices never used in train)
  text    lexname, fortune  splits <task>_train / <task>_valid / <task>_test, classes in index.json `tasks`
Your own data (`--shards DIR`, written by `python -m pipeline shard --source ...`): any task name; splits
train / valid / test (valid and test optional); classes from index.json `classes` (ImageFolder, GLUE TSV).
A split without samples (e.g. every file of valid/ was skipped by `shard`) counts as absent: an empty valid is
carved from train, an empty test leaves the final metrics on the validation split, each with a note in the log;
an empty train split is an error.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from pipeline import paths
from pipeline.errors import UserInputError

EMBEDDED_TASKS = {"image": ("fashion_mnist",), "speech": ("synth",), "text": ("lexname", "fortune")}


@dataclasses.dataclass(frozen=True)
class Task:
    modality: str
    name: str
    shard_dir: Path
    train: str  # split names in the shards
    valid: str | None  # None: carve a validation subset from train
    test: str | None  # None: the final metrics are reported on the validation split
    classes: list[str] | None  # classification tasks; None for speech
    notes: tuple[str, ...] = ()  # what was made of empty splits, for the run's log

    @property
    def eval_role(self) -> str:
        """Where the final metrics are reported: `test`, or `valid` when the task has no test split."""
        return "test" if self.test else "valid"


def resolve(modality: str, task: str, shard_dir: Path | None = None) -> Task:
    own_data = shard_dir is not None
    shard_dir = Path(shard_dir) if own_data else paths.shards_dir(modality)
    index_path = shard_dir / "index.json"
    if not index_path.exists():
        raise UserInputError(f"{index_path}: no shards; run `python -m pipeline shard --modality {modality}"
                             + (" --source YOUR_DATA --out " + str(shard_dir) if own_data else "") + "` first")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    splits = index["splits"]
    tasks = index.get("tasks") or {}
    if tasks:  # the text corpus + tasks layout
        if task not in tasks:
            raise UserInputError(f"{index_path}: no task {task!r}; it has {sorted(tasks)}")
        names = {role: f"{task}_{role}" for role in ("train", "valid", "test")}
        classes = tasks[task]["classes"]
    else:
        if not own_data and task not in EMBEDDED_TASKS[modality]:
            raise UserInputError(f"unknown {modality} task {task!r}: the embedded data has {list(EMBEDDED_TASKS[modality])}; "
                                 "for your own data shard it and pass --shards DIR (see docs/own-data.md)")
        names = {role: role for role in ("train", "valid", "test")}
        classes = index.get("classes")
    if names["train"] not in splits:
        raise UserInputError(f"{index_path}: task {task!r} needs a {names['train']!r} split; it has {sorted(splits)}")
    if not splits[names["train"]]["num_samples"]:
        raise UserInputError(f"{index_path}: split {names['train']!r} has no samples (see `skipped` there for why); "
                             "fix or replace its files and re-run `python -m pipeline shard`")
    notes = []
    for role, instead in (("valid", f"a validation set is carved from {names['train']!r}"),
                          ("test", "the final metrics are reported on the validation set")):
        if names[role] in splits and not splits[names[role]]["num_samples"]:
            notes.append(f"{index_path}: split {names[role]!r} has no samples (see `skipped` there): {instead}, as "
                         "when it is absent")
            names[role] = None
    if modality != "speech" and not classes:
        raise UserInputError(f"{index_path}: no class labels; {modality} fine-tuning needs labeled shards "
                             "(an ImageFolder tree, or a TSV with a label column)")
    return Task(modality, task, shard_dir, names["train"], names["valid"] if names["valid"] in splits else None,
                names["test"] if names["test"] in splits else None, list(classes) if modality != "speech" else None,
                tuple(notes))


def read_labels(shard_dir: Path, split: str) -> list[int]:
    """The `.cls` of every sample of `split`, in index order (headers and the small label members only)."""
    from pipeline.data.shard_reader import IndexedShards

    samples = IndexedShards(shard_dir, split)
    labels: list[int] = []
    for i in range(len(samples)):
        label = samples.member(i, "cls")
        if label is None:
            raise UserInputError(f"{shard_dir}: sample {i} of split {split!r} has no label (.cls); re-shard labeled data")
        labels.append(int(label))
    return labels


def _rng(seed: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), purpose])


def stratified_subset(labels: list[int] | np.ndarray, fraction: float, seed: int, purpose: int = 1) -> list[int]:
    """Positions (sorted) of a `fraction` of the samples, the same fraction of every class: per class,
    round(fraction x count) samples (at least 1) of a seeded permutation. Deterministic in (labels, fraction, seed),
    and nested: a smaller fraction picks a subset of a larger one's samples."""
    labels = np.asarray(labels)
    chosen: list[int] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = members[_rng(seed, purpose * 1_000_003 + int(c)).permutation(len(members))]
        chosen.extend(order[: max(1, int(round(fraction * len(members))))].tolist())
    return sorted(chosen)


def random_subset(count: int, fraction: float, seed: int, purpose: int = 1) -> list[int]:
    """Positions (sorted) of round(fraction x count) samples (at least 1), from a seeded permutation (nested)."""
    order = _rng(seed, purpose).permutation(count)
    return sorted(order[: max(1, int(round(fraction * count)))].tolist())


def carve_validation(labels: list[int] | None, count: int, size: int, seed: int) -> tuple[list[int], list[int]]:
    """Split train positions into (train, valid) with `size` validation samples, stratified when labeled."""
    if size >= count:
        raise UserInputError(f"valid_size {size} leaves no training samples out of {count}; lower finetune.*.valid_size")
    fraction = size / count
    valid = stratified_subset(labels, fraction, seed, purpose=2) if labels is not None else random_subset(count, fraction, seed, purpose=2)
    valid_set = set(valid)
    return [i for i in range(count) if i not in valid_set], valid


def training_pool(task: Task, fraction: float, valid_size: int, seed: int) -> tuple[list[int], list[int] | None, list[int] | None]:
    """(labeled training positions, carved validation positions or None, labels of the train split or None)."""
    labels = read_labels(task.shard_dir, task.train) if task.classes is not None else None
    count = len(labels) if labels is not None else _num_samples(task.shard_dir, task.train)
    pool, valid = list(range(count)), None
    if task.valid is None:
        pool, valid = carve_validation(labels, count, valid_size, seed)
    if fraction < 1:
        if labels is not None:
            picked = stratified_subset([labels[i] for i in pool], fraction, seed)
        else:
            picked = random_subset(len(pool), fraction, seed)
        pool = [pool[i] for i in picked]
    return pool, valid, labels


def _num_samples(shard_dir: Path, split: str) -> int:
    return json.loads((shard_dir / "index.json").read_text(encoding="utf-8"))["splits"][split]["num_samples"]
