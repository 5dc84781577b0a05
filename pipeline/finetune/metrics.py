"""Downstream metrics: classification (accuracy, top-k, macro-F1, Matthews correlation, confusion matrix) and
speech recognition (word and character error rates, with jiwer; which utterances CTC can align at all). Plain
numpy in, Python floats out."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The metric a fine-tuning run selects best.pt by and the benchmark compares, per modality.
PRIMARY_METRIC = {"image": "top1", "speech": "wer", "text": "accuracy"}
# Error rates and losses: a smaller value is better (every other metric: larger).
LOWER_IS_BETTER = frozenset({"wer", "cer", "loss", "ctc_loss"})


def confusion_matrix(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def accuracy(targets: Sequence[int], predictions: Sequence[int]) -> float:
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    return float((targets == predictions).mean()) if len(targets) else 0.0


def top_k_accuracy(targets: Sequence[int], scores: np.ndarray, k: int) -> float:
    """Fraction of samples whose true class is among the k highest scores: scores (N, C)."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((top == np.asarray(targets)[:, None]).any(1).mean()) if len(scores) else 0.0


def macro_f1(matrix: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes that occur as a target or a prediction (scikit-learn's
    `f1_score(average="macro")`); a class with no true positives scores 0."""
    tp = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(0), matrix.sum(1)
    present = (predicted + actual) > 0
    if not present.any():
        return 0.0
    f1 = np.divide(2 * tp, predicted + actual, out=np.zeros_like(tp), where=(predicted + actual) > 0)
    return float(f1[present].mean())


def matthews_corrcoef(matrix: np.ndarray) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K, scikit-learn's `matthews_corrcoef`); 0 when undefined."""
    matrix = matrix.astype(float)
    n, correct = matrix.sum(), np.trace(matrix)
    predicted, actual = matrix.sum(0), matrix.sum(1)
    numerator = correct * n - predicted @ actual
    denominator = np.sqrt((n**2 - predicted @ predicted) * (n**2 - actual @ actual))
    return float(numerator / denominator) if denominator > 0 else 0.0


def classification_metrics(targets: Sequence[int], scores: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Everything for a classification task from the class scores (N, C): the metrics dict (top1, top5 when
    there are more than 5 classes, accuracy (= top1), macro_f1, mcc) and the confusion matrix."""
    scores = np.asarray(scores)
    predictions = scores.argmax(1)
    matrix = confusion_matrix(targets, predictions, scores.shape[1])
    top1 = accuracy(targets, predictions)
    metrics = {"top1": top1, "accuracy": top1, "macro_f1": macro_f1(matrix), "mcc": matthews_corrcoef(matrix),
               "num_samples": len(predictions)}
    if scores.shape[1] > 5:
        metrics["top5"] = top_k_accuracy(targets, scores, 5)
    return metrics, matrix


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus WER and CER (edit operations summed over utterances / reference words or characters)."""
    import jiwer

    words = jiwer.process_words(list(references), list(hypotheses))
    chars = jiwer.process_characters(list(references), list(hypotheses))
    return {"wer": float(words.wer), "cer": float(chars.cer), "num_samples": len(references),
            "substitutions": int(words.substitutions), "deletions": int(words.deletions), "insertions": int(words.insertions)}


def ctc_feasible(targets: Sequence[int], target_lengths: Sequence[int], lengths: Sequence[int]) -> np.ndarray:
    """(N,) bool: True where a CTC alignment exists, i.e. frames >= letters + repeated neighbours (a blank must
    separate two equal letters). `targets`: every utterance's letter ids concatenated (sum of target_lengths,);
    `target_lengths`, `lengths` (frames): (N,). Elsewhere CTC's likelihood is 0 (loss inf; 0 with zero_infinity):
    such an utterance cannot be scored by its loss, only by its decoding."""
    targets = np.asarray(targets)
    ends = np.cumsum(np.asarray(target_lengths, dtype=np.int64))
    feasible = np.zeros(len(ends), dtype=bool)
    for row, (start, end) in enumerate(zip(ends - np.asarray(target_lengths, dtype=np.int64), ends)):
        letters = targets[start:end]
        repeats = int((letters[1:] == letters[:-1]).sum())
        feasible[row] = int(lengths[row]) >= len(letters) + repeats
    return feasible
