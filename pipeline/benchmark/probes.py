"""Frozen-feature probes of the benchmark: kNN, a linear classifier, and a linear CTC head for speech.

Every probe reads cached features (pipeline/benchmark/features.py), selects whatever it selects on the validation
split, and scores the test split once with the selected setting. Nothing is refit on train + valid: the test
score comes from the probe trained on the train subsample alone, so the train size stays the one parameter.
Everything is full-batch and starts from zeros: on CPU the same features give the same scores.

  knn        k-nearest neighbours on L2-normalised features, cosine similarity, each of the k neighbours voting
             for its class with weight exp(sim / T) (Wu et al. 2018 InstDisc; DINO `eval_knn.py`: k = 20,
             T = 0.07); `ks` may list several k, the best on valid is kept.
  linear     multinomial logistic regression on features standardised with the train mean and std, L2 penalty
             on the weights, trained to convergence by full-batch L-BFGS (strong Wolfe line search; stops when
             the largest gradient is below 1e-4, scikit-learn's tolerance, or the loss stops changing; solved
             in scaled principal axes, see `PrincipalAxes`); the L2 strength chosen on valid from `l2_grid`,
             which spans random-encoder features (best with almost none) to raw pixels (best near 1e-2).
  ctc_probe  a linear layer from standardised frame features to letters + blank (id 0), CTC loss, trained by
             the same full-batch L-BFGS (stopping at a largest |gradient| of 1e-3), greedy (best path)
             decoding, corpus WER and CER (jiwer); the L2 strength chosen on valid CER. Utterances whose transcript needs more frames than they have
             (label length + repeated neighbours > frames) have no CTC alignment: they are counted, left out of
             the loss, and still decoded and scored.

Each probe returns a plain dict: protocol, split ("test"), metrics {name: value}, valid_metrics, selected
(the hyper-parameters used for the test score), grid (valid score of every candidate), counts, and
optimisation details; `records` turns it into reports/metrics.json records.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.errors import UserInputError
from pipeline.finetune.metrics import ctc_feasible

KNN_K = 20
KNN_TEMPERATURE = 0.07
L2_GRID = (1e-8, 1e-6, 1e-4, 1e-2, 1.0)
# CTC: two strengths, fitted warm-started from the stronger one. With ~100 frames per utterance, frames outnumber
# the head's parameters by far and the two differ little on valid (random-init and pretrained features alike);
# each full-batch evaluation of the CTC loss and its gradient is the probe's whole cost (F.ctc_loss on CPU: ~1 ms
# per utterance), so the grid stays short.
CTC_L2_GRID = (1e-4, 1e-2)
# The per-letter CTC loss is flat near its optimum: the largest |gradient| falls from 1e-3 to 1e-4 over another
# ~150 L-BFGS iterations while valid CER moves by < 0.002 (measured on 200 utterances), so the CTC probe stops at
# 1e-3, a third of the evaluations.
CTC_TOLERANCE_GRAD = 1e-3

Labeled = tuple[torch.Tensor, torch.Tensor]  # features (N, D), labels (N,)


def _num_classes(*labels: torch.Tensor) -> int:
    return int(max(int(y.max()) for y in labels if len(y))) + 1


def knn_scores(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, k: int = KNN_K,
               temperature: float = KNN_TEMPERATURE, num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Class votes (Nq, C) of each query: the sum of exp(cos / T) over its k most similar train items per class."""
    num_classes = num_classes or _num_classes(train_y)
    k = min(k, len(train_x))
    train = F.normalize(train_x.float(), dim=1)
    query = F.normalize(query_x.float(), dim=1)
    votes = []
    for start in range(0, len(query), chunk):
        similarity, neighbours = (query[start : start + chunk] @ train.T).topk(k, dim=1)  # (B, k)
        weights = (similarity / temperature).exp()
        votes.append(torch.zeros(len(weights), num_classes).scatter_add_(1, train_y[neighbours], weights))
    return torch.cat(votes) if votes else torch.zeros(0, num_classes)


def _accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return float((scores.argmax(1) == labels).float().mean()) if len(labels) else 0.0


def knn(train: Labeled, valid: Labeled, test: Labeled, ks: Sequence[int] = (KNN_K,),
        temperature: float = KNN_TEMPERATURE, metric: str = "top1") -> dict[str, Any]:
    """kNN top-1: k chosen on valid among `ks` (the smallest on ties), test scored once. Returns the probe dict."""
    num_classes = _num_classes(train[1], valid[1], test[1])
    grid = {int(k): _accuracy(knn_scores(*train, valid[0], k, temperature, num_classes), valid[1]) for k in ks}
    best = max(grid, key=lambda k: (grid[k], -k))
    value = _accuracy(knn_scores(*train, test[0], best, temperature, num_classes), test[1])
    return {"protocol": "knn", "split": "test", "metrics": {metric: value}, "valid_metrics": {metric: grid[best]},
            "selected": {"k": best, "temperature": temperature}, "grid": {f"k={k}": v for k, v in grid.items()},
            "counts": {"train": len(train[1]), "valid": len(valid[1]), "test": len(test[1])}}


def standardise(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """(x - mean) / std with the train statistics (constant dimensions divided by 1)."""
    mean, std = train_x.mean(0), train_x.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return [(x - mean) / std for x in (train_x, *others)]


def lbfgs(params: list[torch.Tensor], objective: Callable[[], torch.Tensor], max_iter: int,
          tolerance_grad: float) -> dict[str, Any]:
    """Minimise `objective` over `params` (leaf tensors requiring grad) with full-batch L-BFGS + strong Wolfe,
    until the largest |gradient| is below tolerance_grad, the loss or the step stops changing (at float32
    resolution), or max_iter iterations. Returns {"iterations", "converged" (stopped before max_iter),
    "max_grad", "loss"}."""
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, history_size=20,
                                  tolerance_grad=tolerance_grad, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    loss = closure()
    iterations = int(optimizer.state[params[0]]["n_iter"])
    return {"iterations": iterations, "converged": iterations < max_iter,
            "max_grad": max(float(p.grad.abs().max()) for p in params), "loss": float(loss.detach())}


class PrincipalAxes:
    """Linear heads with an L2 penalty on fixed train features x (N, D), solved in the principal axes of x.

    Each axis is scaled by 1/sqrt(variance + l2): a change of variables, so the optimum is the same, that
    brings the Hessian of a logistic loss close to the identity; plain L-BFGS on strongly correlated features
    (a random encoder's, raw pixels) stops at 1,000 iterations short of the optimum. Axes along which the train
    features do not vary are left out: the optimum puts no weight on them. With fewer items than dimensions
    (raw pixels, bags of tokens) the axes come from the (N, N) Gram matrix: the same axes, a smaller eigenproblem."""

    def __init__(self, x: torch.Tensor):
        centred = (x - x.mean(0)).double()
        n, dim = centred.shape
        if n < dim:  # at most N axes vary: eigen-decompose the (N, N) Gram matrix, not the (D, D) covariance
            variances, left = torch.linalg.eigh(centred @ centred.T / n)
            basis = centred.T @ left / (variances.clamp(min=1e-300) * n).sqrt()  # unit axes where variance > 0
        else:
            variances, basis = torch.linalg.eigh(centred.T @ centred / n)
        keep = variances > 1e-9 * variances.max()  # above float64 rounding of exactly redundant axes
        self.basis, self.variances = basis[:, keep].to(x.dtype), variances[keep].to(x.dtype)  # (D, k), (k,)
        self.projected = x @ self.basis  # (N, k)

    def fit(self, loss: Callable[[torch.Tensor], torch.Tensor], num_outputs: int, l2: float, max_iter: int = 1000,
            tolerance_grad: float = 1e-4, init: tuple[torch.Tensor, torch.Tensor] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Minimise loss(x @ W + b) + l2/2 |W|^2 (the bias is not penalised): loss maps the train logits (N, C)
        to a scalar. Returns W (D, C), b (C,) and `lbfgs`'s info; init: a previous optimum to start from."""
        scale = (self.variances + l2).rsqrt()[:, None]  # W = basis @ (scale * u)
        z = self.projected * scale.T
        shape = (len(scale), num_outputs)
        u = (self.basis.T @ init[0] / scale if init else torch.zeros(shape, dtype=z.dtype)).requires_grad_(True)
        bias = (init[1].clone() if init else torch.zeros(num_outputs, dtype=z.dtype)).requires_grad_(True)
        info = lbfgs([u, bias], lambda: loss(z @ u + bias) + 0.5 * l2 * (scale * u).pow(2).sum(), max_iter, tolerance_grad)
        return (self.basis @ (scale * u)).detach(), bias.detach(), info


def l2_path(axes: PrincipalAxes, loss: Callable[[torch.Tensor], torch.Tensor], num_outputs: int,
            l2_grid: Sequence[float], max_iter: int, tolerance_grad: float,
            validate: Callable[[torch.Tensor, torch.Tensor], Any]) -> dict[float, tuple]:
    """l2 -> (W, b, optimisation info, validate(W, b)) for every strength of the grid, fitted from the strongest
    down, each from the previous optimum (the logistic loss is convex: the start changes the path, not the
    optimum; for CTC it is one deterministic choice of start)."""
    fits, init = {}, None
    for l2 in sorted(l2_grid, reverse=True):
        weight, bias, info = axes.fit(loss, num_outputs, l2, max_iter, tolerance_grad, init)
        init = (weight, bias)
        fits[l2] = (weight, bias, info, validate(weight, bias))
    return fits


def linear(train: Labeled, valid: Labeled, test: Labeled, l2_grid: Sequence[float] = L2_GRID, max_iter: int = 1000,
           tolerance_grad: float = 1e-4, metric: str = "top1") -> dict[str, Any]:
    """Linear probe top-1: the L2 strength chosen on valid (the strongest on ties), test scored once."""
    num_classes = _num_classes(train[1], valid[1], test[1])
    train_x, valid_x, test_x = standardise(train[0].float(), valid[0].float(), test[0].float())
    axes = PrincipalAxes(train_x)
    fits = l2_path(axes, lambda logits: F.cross_entropy(logits, train[1]), num_classes, l2_grid, max_iter, tolerance_grad,
                   lambda weight, bias: _accuracy(valid_x @ weight + bias, valid[1]))
    grid = {l2: fit[3] for l2, fit in fits.items()}
    best = max(grid, key=lambda l2: (grid[l2], l2))
    weight, bias, _, _ = fits[best]
    return {"protocol": "linear", "split": "test", "metrics": {metric: _accuracy(test_x @ weight + bias, test[1])},
            "valid_metrics": {metric: grid[best]}, "selected": {"l2": best, "refit": False},
            "grid": {f"l2={l2:g}": grid[l2] for l2 in sorted(grid)},
            "optimisation": {f"l2={l2:g}": fits[l2][2] for l2 in sorted(fits)},
            "counts": {"train": len(train[1]), "valid": len(valid[1]), "test": len(test[1]),
                       "principal_axes": len(axes.variances)}}


# ----------------------------------------------------------------------------------------------------
# speech


class _Utterances:
    """One split's frames (sum T, D), padded once into (T_max, N) positions for the CTC loss."""

    def __init__(self, features, x: torch.Tensor):
        self.x, self.lengths = x, features.lengths
        self.targets, self.target_lengths = features.targets, features.target_lengths
        self.references = list(features.meta["references"])
        self.feasible = torch.from_numpy(ctc_feasible(self.targets, self.target_lengths, self.lengths))
        rows = torch.repeat_interleave(torch.arange(len(self.lengths)), self.lengths)
        starts = torch.cumsum(self.lengths, 0) - self.lengths
        self.frame_index = (torch.arange(len(x)) - starts[rows], rows)  # (time, utterance) of every frame
        offsets = torch.cumsum(self.target_lengths, 0) - self.target_lengths
        longest = int(self.target_lengths.max()) if len(self.target_lengths) else 0
        self.padded_targets = torch.zeros(len(self.lengths), max(longest, 1), dtype=torch.long)
        for row, (offset, length) in enumerate(zip(offsets.tolist(), self.target_lengths.tolist())):
            self.padded_targets[row, :length] = self.targets[offset : offset + length]

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Frame logits (sum T, V) -> (T_max, N, V) log-probabilities; padded frames are ignored by the CTC loss
        and the decoding."""
        padded = torch.zeros(int(self.lengths.max()), len(self.lengths), logits.shape[1], dtype=logits.dtype)
        return padded.index_put(self.frame_index, logits).log_softmax(-1)

    def nll(self, log_probs: torch.Tensor, blank: int) -> torch.Tensor:
        """(N,) CTC negative log-likelihood of each transcript, in nats; 0 where infeasible (zero_infinity: an
        infinite loss would make the whole gradient NaN even when masked out afterwards)."""
        return F.ctc_loss(log_probs, self.padded_targets, self.lengths, self.target_lengths, blank=blank,
                          reduction="none", zero_infinity=True)


def _ctc_scores(data: _Utterances, weight: torch.Tensor, bias: torch.Tensor, blank: int,
                decode: Callable[[list[int]], str]) -> dict[str, float]:
    from model.heads import greedy_decode
    from pipeline.finetune.metrics import error_rates

    with torch.no_grad():
        log_probs = data.log_probs(data.x @ weight + bias)
        nll = data.nll(log_probs, blank)[data.feasible]
        hypotheses = [decode(letters) for letters in greedy_decode(log_probs.transpose(0, 1), data.lengths, blank)]
    rates = error_rates(data.references, hypotheses)
    return {"wer": rates["wer"], "cer": rates["cer"], "ctc_loss": float(nll.mean()) if len(nll) else float("nan")}


def ctc_probe(train, valid, test, decode: Callable[[list[int]], str], vocab_size: int | None = None, blank: int = 0,
              l2_grid: Sequence[float] = CTC_L2_GRID, max_iter: int = 300,
              tolerance_grad: float = CTC_TOLERANCE_GRAD) -> dict[str, Any]:
    """Linear CTC probe on frame features (FeatureSets with `frames` pooling; meta["references"] the transcripts).

    decode: letter ids -> text (features.letter_decoder). vocab_size: letters + blank (default: the features'
    meta, else the largest target id + 1). Returns the probe dict with test wer, cer and ctc_loss (mean NLL per
    feasible utterance, nats) and the infeasible counts per split."""
    vocab_size = vocab_size or train.meta.get("vocab_size") or int(max(int(s.targets.max()) for s in (train, valid, test))) + 1
    train_x, valid_x, test_x = standardise(train.features.float(), valid.features.float(), test.features.float())
    data = {"train": _Utterances(train, train_x), "valid": _Utterances(valid, valid_x), "test": _Utterances(test, test_x)}
    fit = data["train"]
    if not fit.feasible.any():
        raise UserInputError("ctc_probe: no training utterance has as many frames as its transcript needs")

    def loss(logits: torch.Tensor) -> torch.Tensor:
        nll = fit.nll(fit.log_probs(logits), blank)[fit.feasible]
        # per-letter NLL (F.ctc_loss reduction="mean") over the utterances that have an alignment
        return (nll / fit.target_lengths[fit.feasible]).mean()

    fits = l2_path(PrincipalAxes(train_x), loss, vocab_size, l2_grid, max_iter, tolerance_grad,
                   lambda weight, bias: _ctc_scores(data["valid"], weight, bias, blank, decode))
    grid = {l2: fit[3] for l2, fit in fits.items()}
    best = min(grid, key=lambda l2: (grid[l2]["cer"], -l2))
    weight, bias, _, _ = fits[best]
    return {"protocol": "ctc_probe", "split": "test", "metrics": _ctc_scores(data["test"], weight, bias, blank, decode),
            "valid_metrics": grid[best], "selected": {"l2": best, "refit": False, "selected_on": "cer"},
            "grid": {f"l2={l2:g}": grid[l2]["cer"] for l2 in sorted(grid)},
            "optimisation": {f"l2={l2:g}": fits[l2][2] for l2 in sorted(fits)},
            "counts": {**{role: len(d.lengths) for role, d in data.items()},
                       **{f"{role}_infeasible": int((~d.feasible).sum()) for role, d in data.items()}}}


def records(result: Mapping[str, Any], **fields: Any) -> list[dict[str, Any]]:
    """One reports/metrics.json record per metric of a probe result; `fields` adds the rest of the schema
    (modality, method, seed, pretrain_updates, task, ...). The selection and counts ride along, and valid_value: the
    same metric on the validation split for the selected setting (what selection saw; None where not measured)."""
    valid = result.get("valid_metrics") or {}
    return [{**fields, "protocol": result["protocol"], "metric": name, "value": value, "split": result["split"],
             "valid_value": valid.get(name), "selected": dict(result["selected"]), "counts": dict(result["counts"])}
            for name, value in result["metrics"].items()]
