"""Curves and verdicts from fixture records: speed-ups only above the floor and beyond the seed spread."""
import pytest

from pipeline.benchmark.analysis import analyse, curve, speedup, summary

UPDATES = (100, 200, 400)
# seconds and FLOPs per update: data2vec 2.0 is 1.5x as costly per update as the baseline
COST = {"data2vec2": (1.5, 3e12), "mae": (1.0, 2e12), "data2vec1": (1.2, 2.5e12)}


def records(method: str, means: list[float], jitter: float = 0.005, seeds=(0, 1, 2), metric: str = "top1",
            task: str = "fashion_mnist", protocol: str = "linear", modality: str = "image") -> list[dict]:
    """One record per (budget, seed): the mean plus -jitter, 0, +jitter over the three seeds."""
    out = []
    for updates, mean in zip(UPDATES, means):
        for seed in seeds:
            seconds, flops = COST[method]
            out.append({"modality": modality, "method": method, "seed": seed, "pretrain_updates": updates,
                        "pretrain_seconds": seconds * updates * (1 + 0.01 * seed), "pretrain_flops": flops * updates,
                        "protocol": protocol, "task": task, "metric": metric, "split": "test",
                        "value": mean + jitter * (seed - 1)})
    return out


def floor(method: str, value: float, seeds=(0, 1, 2), jitter: float = 0.005, **keys) -> list[dict]:
    base = {"modality": "image", "protocol": "linear", "task": "fashion_mnist", "metric": "top1", "split": "test"}
    return [{**base, **keys, "method": method, "seed": s, "pretrain_updates": 0, "pretrain_seconds": 0.0,
             "pretrain_flops": 0.0, "value": value + jitter * (s - 1)} for s in seeds]


def one(groups):
    assert len(groups) == 1
    return groups[0]


def test_curve_means_and_spreads_over_seeds():
    points = curve(records("mae", [0.5, 0.6, 0.7], jitter=0.01))
    assert [p["pretrain_updates"] for p in points] == list(UPDATES)
    assert [p["mean"] for p in points] == pytest.approx([0.5, 0.6, 0.7])
    assert points[0]["spread"] == pytest.approx(0.01) and points[0]["n"] == 3 and points[0]["seeds"] == [0, 1, 2]
    assert points[2]["seconds"] == pytest.approx(400 * 1.01) and points[2]["flops"] == 2e12 * 400
    assert summary([0.3])["spread"] == 0.0


def test_speedup_in_seconds_and_flops_when_curves_separate_above_the_floor():
    data = (records("data2vec2", [0.60, 0.70, 0.80]) + records("mae", [0.55, 0.62, 0.70])
            + floor("random_init", 0.50) + floor("raw_input", 0.45, seeds=(0,)))
    group = one(analyse(data))
    assert group["floors"]["random_init"]["mean"] == pytest.approx(0.50)
    assert group["best"]["data2vec2"]["mean"] == pytest.approx(0.80) and group["best"]["data2vec2"]["pretrain_updates"] == 400
    verdict = group["speedups"]["mae"]
    # data2vec 2.0 reaches mae's best (0.70, at 400 updates) at 200 updates
    assert verdict["verdict"] == "speedup" and not verdict["at_least"]
    assert verdict["seconds"] == pytest.approx((400 * 1.01) / (1.5 * 200 * 1.01))
    assert verdict["flops"] == pytest.approx((2e12 * 400) / (3e12 * 200))
    assert verdict["reference_cost"]["pretrain_updates"] == 200 and verdict["baseline_cost"]["pretrain_updates"] == 400
    assert not any(p["below_random_init"] for points in group["curves"].values() for p in points)


def test_no_speedup_within_the_seed_spread():
    data = records("data2vec2", [0.60, 0.64, 0.70], jitter=0.04) + records("mae", [0.58, 0.66, 0.69], jitter=0.04)
    verdict = one(analyse(data + floor("random_init", 0.40)))["speedups"]["mae"]
    assert verdict["verdict"] == "inconclusive" and verdict["seconds"] is None and verdict["flops"] is None
    assert verdict["reason"].startswith("within noise")


def test_no_speedup_over_a_flat_baseline():
    data = records("data2vec2", [0.60, 0.70, 0.80]) + records("mae", [0.70, 0.70, 0.705]) + floor("random_init", 0.5)
    verdict = one(analyse(data))["speedups"]["mae"]
    assert verdict["verdict"] == "inconclusive" and verdict["reason"].startswith("flat")


def test_no_speedup_below_the_random_init_floor():
    data = records("data2vec2", [0.30, 0.35, 0.41]) + records("mae", [0.28, 0.33, 0.39]) + floor("random_init", 0.556)
    group = one(analyse(data))
    verdict = group["speedups"]["mae"]
    assert verdict["verdict"] == "inconclusive" and verdict["reason"].startswith("below the floor")
    assert verdict["seconds"] is None
    assert all(p["below_random_init"] for p in group["curves"]["data2vec2"])


def test_no_speedup_with_one_seed_or_without_a_floor():
    data = records("data2vec2", [0.60, 0.70, 0.80], seeds=(0,)) + records("mae", [0.55, 0.62, 0.70], seeds=(0,))
    verdict = one(analyse(data + floor("random_init", 0.5, seeds=(0,))))["speedups"]["mae"]
    assert verdict["verdict"] == "inconclusive" and "seed" in verdict["reason"]
    # a caller may accept one seed with an explicit margin instead of a measured spread
    assert one(analyse(data + floor("random_init", 0.5, seeds=(0,)), min_seeds=1, noise_floor=0.02)
               )["speedups"]["mae"]["verdict"] == "speedup"
    verdict = one(analyse(records("data2vec2", [0.6, 0.7, 0.8]) + records("mae", [0.55, 0.62, 0.7])))["speedups"]["mae"]
    assert verdict["verdict"] == "inconclusive" and "floor" in verdict["reason"]


def test_not_reached_when_the_baseline_is_better_beyond_the_spread():
    data = records("data2vec2", [0.60, 0.62, 0.64]) + records("mae", [0.62, 0.70, 0.80]) + floor("random_init", 0.5)
    verdict = one(analyse(data))["speedups"]["mae"]
    assert verdict["verdict"] == "not_reached" and verdict["seconds"] is None


def test_lower_is_better_metrics_and_flat_wer():
    keys = {"metric": "wer", "protocol": "ctc_probe", "task": "synth", "modality": "speech"}
    wer = records("data2vec2", [0.60, 0.40, 0.30], **keys) + records("data2vec1", [0.70, 0.55, 0.40], **keys)
    group = one(analyse(wer + floor("random_init", 0.95, **keys)))
    assert group["higher_is_better"] is False and group["best"]["data2vec2"]["mean"] == pytest.approx(0.30)
    verdict = group["speedups"]["data2vec1"]
    assert verdict["verdict"] == "speedup" and verdict["reference_cost"]["pretrain_updates"] == 200
    # WER 1.0 for every method at every budget (the floor too): nothing to state
    flat = records("data2vec2", [1.0, 1.0, 1.0], **keys) + records("data2vec1", [1.0, 1.0, 1.0], **keys)
    verdict = one(analyse(flat + floor("random_init", 1.0, **keys)))["speedups"]["data2vec1"]
    assert verdict["verdict"] == "inconclusive" and verdict["reason"].startswith("below the floor")


def test_groups_are_separate_and_the_analysis_is_pure():
    data = (records("data2vec2", [0.6, 0.7, 0.8]) + records("mae", [0.55, 0.62, 0.7]) + floor("random_init", 0.5)
            + records("data2vec2", [0.5, 0.6, 0.7], protocol="knn") + floor("random_init", 0.45, protocol="knn"))
    groups = analyse(data)
    assert [(g["protocol"], g["metric"]) for g in groups] == [("knn", "top1"), ("linear", "top1")]
    assert groups[0]["speedups"] == {}  # knn has no baseline curve here
    assert analyse(list(reversed(data))) == groups


def test_speedup_from_the_smallest_budget_is_a_lower_bound():
    ref = curve(records("data2vec2", [0.75, 0.78, 0.80]))
    base = curve(records("mae", [0.55, 0.62, 0.70]))
    verdict = speedup(ref, base, summary([0.5, 0.51, 0.49]), "top1", names=("data2vec2", "mae"))
    assert verdict["verdict"] == "speedup" and verdict["at_least"] is True
    assert verdict["reference_cost"]["pretrain_updates"] == 100


def test_scratch_is_the_finetune_protocols_random_init_floor():
    keys = {"protocol": "finetune", "metric": "accuracy"}
    data = (records("data2vec2", [0.30, 0.35, 0.41], **keys) + records("mae", [0.28, 0.33, 0.39], **keys)
            + floor("scratch", 0.5, **keys))
    group = one(analyse(data))
    assert "scratch" in group["floors"] and "scratch" not in group["curves"]
    assert all(p["below_scratch"] for p in group["curves"]["data2vec2"])
    assert group["speedups"]["mae"]["reason"].startswith("below the floor")


def test_one_seed_says_the_spread_is_unknown_and_below_the_floor_comes_first():
    data = records("data2vec2", [0.60, 0.70, 0.80], seeds=(0,)) + records("mae", [0.55, 0.62, 0.70], seeds=(0,))
    reason = one(analyse(data + floor("random_init", 0.5, seeds=(0,))))["speedups"]["mae"]["reason"]
    assert reason.startswith("one seed: spread unknown")
    reason = one(analyse(data + floor("random_init", 0.9, seeds=(0,))))["speedups"]["mae"]["reason"]
    assert reason.startswith("below the floor")


def test_each_best_is_placed_against_the_random_init_floor():
    keys = {"metric": "wer", "protocol": "ctc_probe", "task": "synth", "modality": "speech"}
    data = records("data2vec2", [0.9, 0.8, 0.7], **keys) + records("data2vec1", [0.99, 0.98, 0.97], **keys)
    best = one(analyse(data + floor("random_init", 0.95, **keys)))["best"]
    assert best["data2vec2"]["vs_random_init"]["better_by"] == pytest.approx(0.25)  # WER 0.70 against 0.95
    assert best["data2vec2"]["vs_random_init"]["beyond_spread"] is True
    assert best["data2vec1"]["vs_random_init"]["better_by"] < 0 and not best["data2vec1"]["vs_random_init"]["beyond_spread"]
    assert one(analyse(data))["best"]["data2vec2"]["vs_random_init"] is None


def test_a_baseline_with_one_budget_gives_no_speedup():
    keys = {"protocol": "finetune", "metric": "accuracy"}
    data = ([r for r in records("data2vec2", [0.6, 0.7, 0.8], **keys) if r["pretrain_updates"] == 400]
            + [r for r in records("mae", [0.55, 0.62, 0.70], **keys) if r["pretrain_updates"] == 400]
            + floor("scratch", 0.5, **keys))
    verdict = one(analyse(data))["speedups"]["mae"]
    assert verdict["verdict"] == "inconclusive" and verdict["reason"].startswith("one budget: mae has a single point")


def test_the_best_budget_is_chosen_on_valid_and_its_test_score_reported():
    """With valid scores on every point, the best budget is the best on valid (here 200 updates), whose test
    score is reported even where another budget has a higher test score; without them, the best test mean."""
    data = records("data2vec2", [0.80, 0.78, 0.79])
    valid = {100: 0.70, 200: 0.75, 400: 0.74}
    with_valid = [{**r, "valid_value": valid[r["pretrain_updates"]]} for r in data]
    best = one(analyse(with_valid + floor("random_init", 0.5)))["best"]["data2vec2"]
    assert best["pretrain_updates"] == 200 and best["mean"] == pytest.approx(0.78)
    best = one(analyse(data + floor("random_init", 0.5)))["best"]["data2vec2"]
    assert best["pretrain_updates"] == 100 and best["mean"] == pytest.approx(0.80)
    # a curve where one seed lacks its valid score falls back to the test means
    partial = with_valid[:-1] + [data[-1]]
    assert one(analyse(partial + floor("random_init", 0.5)))["best"]["data2vec2"]["pretrain_updates"] == 100
