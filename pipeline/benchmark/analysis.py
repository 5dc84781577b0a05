"""Benchmark curves and verdicts as data (no rendering, no I/O): what the report draws and states.

Input: reports/metrics.json records, each with modality, method, seed, pretrain_updates, pretrain_seconds,
pretrain_flops, protocol, task, metric, value (and split). `method` is a pretraining method or a floor:
`random_init` (the same encoder at initialisation, same protocol), `raw_input` (the probe on the raw input) or
`scratch` (fine-tuned from random weights: the finetune protocol's random_init). Output, per (modality,
protocol, task, metric, split):
  curves    each method's points, one per update budget: mean and spread (sample standard deviation, 0 for one
            seed) of the score over seeds, the mean seconds and FLOPs, and whether the point lies below a floor;
  floors    mean and spread of each floor over its seeds;
  best      each method's best point (selected on the validation score where every point has one, else the test
            mean; the cheapest of equal scores) with its test score, the cheapest point within its spread, and
            how far it is from the random_init floor in the metric's direction (`vs_random_init`);
  speedups  data2vec 2.0 against each baseline, in seconds and in FLOPs, or "inconclusive" and why.

When is a speed-up stated? Two scores differ "beyond the spread" when their means differ by more than the sum of
their spreads plus `noise_floor` (their error bars do not overlap). The speed-up over a baseline is the ratio of
the costs at which each method first comes within the spread of the baseline's best score (the paper's
"reaches the baseline's accuracy in 1/x of the time"), stated only when
  1. both methods' best points are above the random_init floor (scratch for finetune) beyond the spread;
  2. each curve has at least `min_seeds` seeds at every point (one seed has no spread to compare against);
  3. the baseline's curve has more than one budget and is not flat (its best is beyond the spread of its cheapest
     point: otherwise its cost to reach its best is only the smallest budget tried);
  4. data2vec 2.0 comes within the spread of the baseline's best at some budget (else: "not_reached" when the
     baseline's best is above data2vec 2.0's beyond the spread, "within noise" otherwise).
  5. at equal cost (each curve interpolated linearly in log-cost, never extrapolated), the faster method's curve
     is somewhere above the other's beyond the spread (checked in seconds and in FLOPs separately: a ratio on an
     axis where the curves agree within noise is not stated; when neither axis separates: "within noise").
A ratio measured at data2vec 2.0's smallest budget is a lower bound (`at_least`).
Lower-is-better metrics (wer, cer, loss, ctc_loss) are compared with the sign flipped.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.finetune.metrics import LOWER_IS_BETTER

FLOORS = ("random_init", "raw_input", "scratch")
# the floor a speed-up must clear: the encoder at initialisation under the same protocol
RANDOM_INIT = ("random_init", "scratch")
REFERENCE = "data2vec2"
GROUP_KEYS = ("modality", "protocol", "task", "metric", "split")


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def summary(values: Iterable[float]) -> dict[str, float | int]:
    """mean, spread (sample standard deviation; 0 for one value), min, max and n of a list of scores (summed in
    sorted order, so the records' order does not change the last digit)."""
    values = sorted(float(v) for v in values)
    n = len(values)
    mean = sum(values) / n
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "spread": spread, "min": min(values), "max": max(values), "n": n}


def _mean(values: Iterable[Any]) -> float | None:
    values = sorted(float(v) for v in values if v is not None)
    return sum(values) / len(values) if values else None


def curve(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One method's points, by increasing pretrain_updates: the score summary over seeds, seeds, mean cost."""
    by_budget: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        by_budget[int(r.get("pretrain_updates") or 0)].append(r)
    return [{"pretrain_updates": updates, **summary(r["value"] for r in rs),
             "valid_mean": _mean(r.get("valid_value") for r in rs) if all(r.get("valid_value") is not None for r in rs) else None,
             "seeds": sorted({r.get("seed") for r in rs}, key=str),
             "seconds": _mean(r.get("pretrain_seconds") for r in rs), "flops": _mean(r.get("pretrain_flops") for r in rs)}
            for updates, rs in sorted(by_budget.items())]


class _Compare:
    """Score comparisons in the metric's direction, with the spread rule of the module doc."""

    def __init__(self, metric: str, noise_floor: float):
        self.sign = 1.0 if higher_is_better(metric) else -1.0
        self.noise_floor = noise_floor

    def above(self, a: Mapping[str, float], b: Mapping[str, float]) -> bool:
        """a is better than b beyond the spread."""
        return self.sign * (a["mean"] - b["mean"]) > a["spread"] + b["spread"] + self.noise_floor

    def within(self, a: Mapping[str, float], b: Mapping[str, float]) -> bool:
        """a is not worse than b beyond the spread."""
        return not self.above(b, a)

    def best(self, points: list[dict[str, Any]]) -> dict[str, Any]:
        """The budget with the best validation score (`valid_mean`) where every point has one, so the budget is
        selected on valid and its test score only reported; else the best (test) mean. The cheapest (fewest
        updates) of equal scores."""
        key = "valid_mean" if all(p.get("valid_mean") is not None for p in points) else "mean"
        return max(points, key=lambda p: (self.sign * p[key], -p["pretrain_updates"]))


def _cost(point: Mapping[str, Any]) -> dict[str, Any]:
    return {k: point[k] for k in ("pretrain_updates", "seconds", "flops")}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def _fmt(point: Mapping[str, float]) -> str:
    return f"{point['mean']:.4g} ± {point['spread']:.2g}"


def speedup(reference: list[dict[str, Any]], baseline: list[dict[str, Any]], floor: Mapping[str, float] | None,
            metric: str, min_seeds: int = 2, noise_floor: float = 0.0, names: tuple[str, str] = (REFERENCE, "baseline")
            ) -> dict[str, Any]:
    """The reference method's speed-up over a baseline (curves from `curve`, floor: random_init's `summary`).

    Returns {"verdict": "speedup" | "not_reached" | "inconclusive", "reason", "seconds", "flops" (ratios
    baseline cost / reference cost, > 1 = faster; None unless verdict is speedup), "at_least", "target"
    (the baseline's best), "reference_cost", "baseline_cost"}."""
    ref_name, base_name = names
    out: dict[str, Any] = {"verdict": "inconclusive", "reason": "", "seconds": None, "flops": None, "at_least": False,
                           "target": None, "reference_cost": None, "baseline_cost": None}
    if not reference or not baseline:
        return {**out, "reason": f"no curve for {ref_name if not reference else base_name}"}
    if floor is None:
        return {**out, "reason": "no random_init floor to compare against"}
    cmp = _Compare(metric, noise_floor)
    base_best, ref_best = cmp.best(baseline), cmp.best(reference)
    out["target"] = base_best["mean"]
    for name, best in ((base_name, base_best), (ref_name, ref_best)):
        if not cmp.above(best, floor):
            return {**out, "reason": f"below the floor: {name}'s best {_fmt(best)} is not above random_init "
                                     f"{_fmt(floor)} beyond the spread"}
    seeds = min(p["n"] for p in reference + baseline)
    if seeds < min_seeds:
        return {**out, "reason": f"{'one seed' if seeds == 1 else f'{seeds} seeds'}: spread unknown; a speed-up "
                                 f"needs {min_seeds} seeds per point"}
    if len(baseline) == 1:
        return {**out, "reason": f"one budget: {base_name} has a single point ({baseline[0]['pretrain_updates']} updates), "
                                 "so the cost at which it first reached its best is unknown"}
    if cmp.within(baseline[0], base_best):
        return {**out, "reason": f"flat: {base_name} is within the spread of its best {_fmt(base_best)} already at its "
                                 f"smallest budget ({baseline[0]['pretrain_updates']} updates)"}
    base_reach = next(p for p in baseline if cmp.within(p, base_best))
    ref_reach = next((p for p in reference if cmp.within(p, base_best)), None)
    if ref_reach is None:
        return {**out, "verdict": "not_reached" if cmp.above(base_best, ref_best) else "inconclusive",
                "reason": (f"{ref_name}'s best {_fmt(ref_best)} stays below {base_name}'s best {_fmt(base_best)}"
                           + (" beyond the spread" if cmp.above(base_best, ref_best) else ", within noise of it"))}
    ratios = {}
    for axis in ("seconds", "flops"):
        ratio = _ratio(base_reach[axis], ref_reach[axis])
        # the ratio is stated only where, at equal cost, the faster method's curve is above the other's beyond
        # the spread somewhere: costs that differ while the scores agree within noise say nothing
        faster, slower = (reference, baseline) if ratio is not None and ratio > 1 else (baseline, reference)
        ratios[axis] = ratio if ratio is not None and ratio != 1 and separated(faster, slower, axis, cmp) else None
    if ratios["seconds"] is None and ratios["flops"] is None:
        return {**out, "reason": f"within noise: at equal cost, {ref_name} and {base_name} are nowhere apart beyond "
                                 "the spread"}
    at_least = ref_reach is reference[0]
    within = [axis for axis, ratio in ratios.items() if ratio is None]
    return {**out, "verdict": "speedup", **ratios, "at_least": at_least,
            "reason": (f"{ref_name} is within the spread of {base_name}'s best {_fmt(base_best)} at "
                       f"{ref_reach['pretrain_updates']} updates, {base_name} at {base_reach['pretrain_updates']}"
                       + (" (the smallest budget: a lower bound)" if at_least else "")
                       + "".join(f"; in {axis}: within noise at equal cost" for axis in within)),
            "reference_cost": _cost(ref_reach), "baseline_cost": _cost(base_reach)}


def interpolate(points: list[dict[str, Any]], axis: str, cost: float | None) -> dict[str, float] | None:
    """A curve's mean and spread at `cost` on `axis` (seconds or flops): linear in log-cost between the two
    points around it; None outside the curve's cost range (no extrapolation) or without costs."""
    known = [p for p in points if p[axis]]
    if not cost or not known or not known[0][axis] <= cost <= known[-1][axis]:
        return None
    for left, right in zip(known, known[1:] + known[-1:]):
        if left[axis] <= cost <= right[axis]:
            span = math.log(right[axis]) - math.log(left[axis])
            w = (math.log(cost) - math.log(left[axis])) / span if span > 0 else 0.0
            return {k: (1 - w) * left[k] + w * right[k] for k in ("mean", "spread")}
    return None


def separated(upper: list[dict[str, Any]], lower: list[dict[str, Any]], axis: str, cmp: _Compare) -> bool:
    """Somewhere at equal cost on `axis`, `upper` is above `lower` beyond the spread (each curve's points against
    the other curve interpolated)."""
    return (any(q is not None and cmp.above(p, q) for p in upper for q in [interpolate(lower, axis, p[axis])])
            or any(q is not None and cmp.above(q, p) for p in lower for q in [interpolate(upper, axis, p[axis])]))


def analyse_group(records: list[Mapping[str, Any]], metric: str, reference: str = REFERENCE, min_seeds: int = 2,
                  noise_floor: float = 0.0) -> dict[str, Any]:
    """Curves, floors, best points and speed-ups of the records of one (modality, protocol, task, metric, split)."""
    cmp = _Compare(metric, noise_floor)
    by_method: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        by_method[r["method"]].append(r)
    floors = {m: summary(r["value"] for r in by_method[m]) for m in FLOORS if m in by_method}
    curves = {m: curve(rs) for m, rs in sorted(by_method.items()) if m not in FLOORS}
    for points in curves.values():
        for p in points:
            for name, floor in floors.items():
                p[f"below_{name}"] = cmp.sign * (p["mean"] - floor["mean"]) < 0
    floor_name = next((m for m in RANDOM_INIT if m in floors), None)
    floor = floors.get(floor_name)
    best = {}
    for method, points in curves.items():
        top = cmp.best(points)
        reach = next(p for p in points if cmp.within(p, top))
        # better_by > 0: better than the floor (higher accuracy, lower error), beyond_spread: by more than the spreads
        versus = None if floor is None else {"floor": floor_name, "better_by": cmp.sign * (top["mean"] - floor["mean"]),
                                             "beyond_spread": cmp.above(top, floor)}
        best[method] = {"mean": top["mean"], "spread": top["spread"], "n": top["n"], **_cost(top),
                        "reached_within_spread": _cost(reach), "vs_random_init": versus}
    speedups = {m: speedup(curves.get(reference, []), points, floor, metric, min_seeds, noise_floor, (reference, m))
                for m, points in curves.items() if m != reference}
    return {"higher_is_better": higher_is_better(metric), "floors": floors, "curves": curves, "best": best,
            "speedups": speedups}


def analyse(records: Iterable[Mapping[str, Any]], reference: str = REFERENCE, min_seeds: int = 2,
            noise_floor: float = 0.0) -> list[dict[str, Any]]:
    """Every (modality, protocol, task, metric, split) group of `records`, sorted, each as `analyse_group` plus its
    keys. min_seeds: the fewest seeds per point for a speed-up to be stated; noise_floor: an extra margin (in
    the metric's units) two scores must differ by, on top of their spreads."""
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        groups[tuple(r.get(k) for k in GROUP_KEYS)].append(r)
    return [{**dict(zip(GROUP_KEYS, key)), **analyse_group(rs, key[3], reference, min_seeds, noise_floor)}
            for key, rs in sorted(groups.items(), key=lambda item: tuple(str(k) for k in item[0]))]
