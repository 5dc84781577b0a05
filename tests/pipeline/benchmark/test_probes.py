"""The frozen-feature probes on synthetic features: separable -> high, random labels -> chance, deterministic."""
import math

import pytest
import torch

from pipeline.benchmark.features import FeatureSet
from pipeline.benchmark.probes import PrincipalAxes, ctc_feasible, ctc_probe, knn, knn_scores, lbfgs, linear, records


def blobs(n_per_class: int, num_classes: int = 4, dim: int = 16, seed: int = 0, separation: float = 4.0):
    """Gaussian blobs: (N, dim) features, (N,) labels, class means `separation` apart along their own axis."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    means = torch.zeros(num_classes, dim)
    means[torch.arange(num_classes), torch.arange(num_classes)] = separation
    return means[labels] + torch.randn(len(labels), dim, generator=gen), labels


@pytest.fixture(scope="module")
def separable():
    return blobs(60, seed=0), blobs(20, seed=1), blobs(40, seed=2)


@pytest.fixture(scope="module")
def random_labels(separable):
    gen = torch.Generator().manual_seed(3)
    return tuple((x, torch.randint(0, 4, (len(y),), generator=gen)) for x, y in separable)


def test_knn_votes_are_temperature_weighted_cosine_neighbours():
    train_x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    train_y = torch.tensor([0, 1, 1])
    query = torch.tensor([[3.0, 0.5]])
    votes = knn_scores(train_x, train_y, query, k=2, temperature=0.5, num_classes=2)
    cos = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(train_x, dim=1).T
    # the two nearest by cosine are items 0 (class 0) and 2 (class 1); item 1 is left out
    expected = torch.tensor([[math.exp(cos[0, 0] / 0.5), math.exp(cos[0, 2] / 0.5)]])
    assert torch.allclose(votes, expected)


def test_knn_separates_blobs_and_is_chance_on_random_labels(separable, random_labels):
    result = knn(*separable)
    assert result["metrics"]["top1"] > 0.95
    assert result["selected"] == {"k": 20, "temperature": 0.07}
    assert result["counts"] == {"train": 240, "valid": 80, "test": 160}
    assert knn(*random_labels)["metrics"]["top1"] < 0.45  # chance is 0.25


def test_knn_picks_k_on_validation(separable):
    result = knn(*separable, ks=(1, 20, 50))
    assert set(result["grid"]) == {"k=1", "k=20", "k=50"}
    assert result["valid_metrics"]["top1"] == max(result["grid"].values())


def test_linear_probe_converges_separates_and_is_chance_on_random_labels(separable, random_labels):
    result = linear(*separable, l2_grid=(1e-3, 1e-1))
    assert result["metrics"]["top1"] > 0.95
    assert result["selected"]["l2"] in (1e-3, 1e-1) and result["selected"]["refit"] is False
    assert all(fit["converged"] for fit in result["optimisation"].values())
    assert result["valid_metrics"]["top1"] == max(result["grid"].values())
    assert linear(*random_labels, l2_grid=(1e-3, 1e-1))["metrics"]["top1"] < 0.45


def test_logistic_regression_in_principal_axes_reaches_the_plain_optimum():
    """The change of variables keeps the optimum: plain L-BFGS on W (float64, well conditioned) finds the same
    weights; a redundant (duplicated) feature gets no axis of its own."""
    x, y = blobs(30, num_classes=3, dim=5, seed=4, separation=1.0)
    x = torch.cat([x, x[:, :1]], dim=1).double()  # a duplicate column: 5 axes of variance, not 6
    axes = PrincipalAxes(x)
    weight, bias, info = axes.fit(lambda logits: torch.nn.functional.cross_entropy(logits, y), 3, 1e-2, tolerance_grad=1e-9)
    assert axes.basis.shape == (6, 5) and info["converged"]
    w = torch.zeros(6, 3, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    plain = lbfgs([w, b], lambda: torch.nn.functional.cross_entropy(x @ w + b, y) + 0.5e-2 * w.pow(2).sum(), 1000, 1e-9)
    assert info["loss"] == pytest.approx(plain["loss"], abs=1e-8)
    assert torch.allclose(weight, w.detach(), atol=1e-3) and torch.allclose(bias, b.detach(), atol=1e-3)


def test_fewer_items_than_dimensions_give_the_covariance_axes_from_the_gram_matrix():
    """N < D (raw pixels, bags of tokens): the Gram path spans the same axes with the same variances as the
    (D, D) covariance's eigenvectors, orthonormal, and the logistic optimum is the plain one."""
    x, y = blobs(12, num_classes=2, dim=4, seed=5, separation=2.0)
    x = (x.double() @ torch.randn(4, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))  # (24, 40), rank 4
    axes = PrincipalAxes(x)
    centred = x - x.mean(0)
    variances, basis = torch.linalg.eigh(centred.T @ centred / len(x))
    keep = variances > 1e-9 * variances.max()
    assert axes.basis.shape == (40, 4) and int(keep.sum()) == 4
    assert torch.allclose(axes.variances.sort().values, variances[keep].sort().values, rtol=1e-9)
    assert torch.allclose(axes.basis.T @ axes.basis, torch.eye(4, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(axes.basis @ axes.basis.T, basis[:, keep] @ basis[:, keep].T, atol=1e-9)
    weight, bias, info = axes.fit(lambda logits: torch.nn.functional.cross_entropy(logits, y), 2, 1e-2, tolerance_grad=1e-9)
    w = torch.zeros(40, 2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    plain = lbfgs([w, b], lambda: torch.nn.functional.cross_entropy(x @ w + b, y) + 0.5e-2 * w.pow(2).sum(), 1000, 1e-9)
    assert info["converged"] and info["loss"] == pytest.approx(plain["loss"], abs=1e-8)


def test_probes_are_deterministic(separable):
    assert linear(*separable, l2_grid=(1e-2,)) == linear(*separable, l2_grid=(1e-2,))
    assert knn(*separable) == knn(*separable)


LETTERS = " abc"  # id 0 is the CTC blank


def alignment_task(num_utterances: int, seed: int, infeasible: int = 0) -> FeatureSet:
    """Utterances of 2-4 letters; each letter shows as 2 frames of its one-hot code (plus noise), letters
    separated by a blank frame. `infeasible` extra utterances have fewer frames than letters."""
    gen = torch.Generator().manual_seed(seed)
    frames, lengths, targets, target_lengths, references = [], [], [], [], []
    for u in range(num_utterances + infeasible):
        letters = torch.randint(1, 4, (int(torch.randint(2, 5, (1,), generator=gen)),), generator=gen).tolist()
        path = [0] + sum(([c, c, 0] for c in letters), [])
        if u >= num_utterances:
            path = path[: len(letters) - 1]  # too short for any alignment
        codes = torch.nn.functional.one_hot(torch.tensor(path), 4).float() * 3
        frames.append(codes + 0.3 * torch.randn(codes.shape, generator=gen))
        lengths.append(len(path))
        targets += letters
        target_lengths.append(len(letters))
        references.append(" ".join(LETTERS[c] for c in letters))
    return FeatureSet(torch.cat(frames), torch.arange(len(lengths)), lengths=torch.tensor(lengths),
                      targets=torch.tensor(targets), target_lengths=torch.tensor(target_lengths),
                      meta={"references": references, "vocab_size": 4})


def decode(letters: list[int]) -> str:
    return " ".join(LETTERS[c] for c in letters)


def test_ctc_feasibility_counts_repeated_letters():
    targets = torch.tensor([1, 1, 2, 3])  # "aab" then "c"
    assert ctc_feasible(targets, torch.tensor([3, 1]), torch.tensor([4, 1])).tolist() == [True, True]
    assert ctc_feasible(targets, torch.tensor([3, 1]), torch.tensor([3, 0])).tolist() == [False, False]


def test_ctc_probe_learns_a_synthetic_alignment_and_counts_infeasible_utterances():
    train, valid, test = alignment_task(40, 0, infeasible=2), alignment_task(10, 1), alignment_task(20, 2, infeasible=1)
    result = ctc_probe(train, valid, test, decode, l2_grid=(1e-3,), max_iter=200)
    assert result["metrics"]["cer"] < 0.1 and result["metrics"]["wer"] < 0.2, result
    assert result["counts"]["train_infeasible"] == 2 and result["counts"]["test_infeasible"] == 1
    assert result["counts"]["test"] == 21  # the infeasible utterance is decoded and scored too
    assert math.isfinite(result["metrics"]["ctc_loss"])
    again = ctc_probe(train, valid, test, decode, l2_grid=(1e-3,), max_iter=200)
    assert again["metrics"] == result["metrics"]


def test_records_follow_the_metrics_schema(separable):
    result = linear(*separable, l2_grid=(1e-2,))
    rows = records(result, modality="image", method="data2vec2", seed=0, pretrain_updates=100, task="fashion_mnist")
    assert rows == [{"modality": "image", "method": "data2vec2", "seed": 0, "pretrain_updates": 100,
                     "task": "fashion_mnist", "protocol": "linear", "metric": "top1",
                     "value": result["metrics"]["top1"], "split": "test", "valid_value": result["valid_metrics"]["top1"],
                     "selected": {"l2": 1e-2, "refit": False},
                     "counts": {"train": 240, "valid": 80, "test": 160, "principal_axes": 16}}]
