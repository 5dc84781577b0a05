"""Downstream metrics against hand-worked values: accuracy, top-k, confusion matrix, macro-F1, MCC, WER/CER,
and CTC best-path decoding down to words with the character tokenizer."""
import numpy as np
import pytest
import torch

from model.heads import greedy_decode
from pipeline.finetune.evaluate import letters_to_text, reference_text
from pipeline.finetune.metrics import (accuracy, classification_metrics, confusion_matrix, error_rates, macro_f1,
                              matthews_corrcoef, top_k_accuracy)
from pipeline.config import SpeechTokenizer
from pipeline.data.tokenizer import train_speech_tokenizer

TARGETS = [0, 0, 1, 1, 2, 2]
PREDICTIONS = [0, 1, 1, 1, 2, 0]


def test_confusion_matrix_rows_are_true_classes():
    assert confusion_matrix(TARGETS, PREDICTIONS, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert accuracy(TARGETS, PREDICTIONS) == pytest.approx(4 / 6)


def test_macro_f1_by_hand():
    # F1 per class: 0: tp 1, predicted 2, actual 2 -> 1/2; 1: tp 2, 3, 2 -> 4/5; 2: tp 1, 1, 2 -> 2/3
    assert macro_f1(confusion_matrix(TARGETS, PREDICTIONS, 3)) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # a class that is neither a target nor a prediction does not count (scikit-learn's labels=None)
    assert macro_f1(confusion_matrix(TARGETS, PREDICTIONS, 5)) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # a class only ever predicted counts as 0
    assert macro_f1(confusion_matrix([0, 0], [0, 1], 2)) == pytest.approx((2 / 3 + 0) / 2)


def test_matthews_correlation_by_hand():
    # multi-class (Gorodkin): n 6, correct 4, predicted (2, 3, 1), actual (2, 2, 2)
    expected = (4 * 6 - (2 * 2 + 3 * 2 + 1 * 2)) / np.sqrt((36 - 14) * (36 - 12))
    assert matthews_corrcoef(confusion_matrix(TARGETS, PREDICTIONS, 3)) == pytest.approx(expected)
    # binary: tp 2, fn 1, tn 1, fp 1 -> (2*1 - 1*1) / sqrt(3 * 3 * 2 * 2) = 1/6
    assert matthews_corrcoef(confusion_matrix([1, 1, 1, 0, 0], [1, 1, 0, 0, 1], 2)) == pytest.approx(1 / 6)
    assert matthews_corrcoef(confusion_matrix([0, 1, 0, 1], [0, 1, 0, 1], 2)) == pytest.approx(1.0)
    assert matthews_corrcoef(confusion_matrix([0, 1, 0, 1], [0, 0, 0, 0], 2)) == 0.0  # undefined -> 0


def test_top_k_and_the_metrics_dict():
    scores = np.array([[0.1, 0.5, 0.4, 0.0, 0.0, 0.0, 0.0],   # true 2: second best
                       [0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1],   # true 0: best
                       [0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4]])  # true 3: fourth best
    targets = [2, 0, 3]
    assert top_k_accuracy(targets, scores, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(targets, scores, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(targets, scores, 5) == pytest.approx(1.0)
    metrics, matrix = classification_metrics(targets, scores)
    assert metrics["top1"] == metrics["accuracy"] == pytest.approx(1 / 3) and metrics["top5"] == 1.0
    assert matrix.sum() == 3 and metrics["num_samples"] == 3


def test_word_and_character_error_rates_by_hand():
    # "sat" -> "sit" (1 substitution), "the" deleted: 2 errors over 6 reference words
    rates = error_rates(["the cat sat on the mat"], ["the cat sit on mat"])
    assert rates["wer"] == pytest.approx(2 / 6)
    assert (rates["substitutions"], rates["deletions"], rates["insertions"]) == (1, 1, 0)
    # characters: a -> i, and "the " (4 characters) deleted: 5 edits over 22 reference characters
    assert rates["cer"] == pytest.approx(5 / 22)
    # corpus rate = errors summed over utterances / reference words summed (not a mean of per-utterance rates)
    assert error_rates(["a b", "c d e f"], ["a", "c d e f"])["wer"] == pytest.approx(1 / 6)
    assert error_rates(["a b"], [""])["wer"] == 1.0


def test_ctc_greedy_decoding_merges_repeats_then_drops_blanks():
    def one_hot_path(path, vocab=10):
        return torch.log_softmax(torch.nn.functional.one_hot(torch.tensor(path), vocab).float() * 10, -1)

    # frames: _ c c _ c | | d _   -> c c | d   (a blank separates the two c's; repeats merge)
    log_probs = torch.stack([one_hot_path([0, 7, 7, 0, 7, 5, 5, 8, 0]), one_hot_path([3, 3, 3, 0, 0, 0, 9, 9, 9])])
    assert greedy_decode(log_probs) == [[7, 7, 5, 8], [3, 9]]
    # frames beyond an utterance's length are padding and ignored
    assert greedy_decode(log_probs, torch.tensor([9, 4])) == [[7, 7, 5, 8], [3]]


def test_letters_to_words_with_the_character_tokenizer():
    tok = train_speech_tokenizer(iter(["Hello world", "the cat"]), SpeechTokenizer())
    ids = tok.encode("hello world").ids
    assert tok.id_to_token(ids[5]) == "|"
    # a CTC path: blanks between letters, repeated frames, the boundary symbol twice
    path = [0]
    for i in ids:
        path += [i, i, 0]
    log_probs = torch.log_softmax(torch.nn.functional.one_hot(torch.tensor(path), tok.get_vocab_size()).float() * 10, -1)
    assert letters_to_text(tok, greedy_decode(log_probs[None])[0]) == "hello world"
    assert letters_to_text(tok, []) == ""
    tok.add_special_tokens(["|"])  # tokenizer files written by an earlier version flag `|` as special
    assert letters_to_text(tok, ids) == "hello world"
    assert reference_text(tok, "  Hello   World ") == "hello world"


def test_ctc_output_size_covers_every_letter_id(tmp_path):
    """Tokenizer files written by an earlier version skip id 4: the CTC head must still cover the largest id."""
    import json

    from pipeline.finetune.model import speech_vocab_size

    tok = train_speech_tokenizer(iter(["ab c"]), SpeechTokenizer())  # <pad> <s> </s> <unk> | a b c
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.to_str())
    assert speech_vocab_size(path) == 8
    spec = json.loads(tok.to_str())
    spec["model"]["vocab"] = {t: (i + 1 if i >= 4 else i) for t, i in spec["model"]["vocab"].items()}
    path.write_text(json.dumps(spec))
    assert speech_vocab_size(path) == 9  # ids 0-3 and 5-8: nine outputs for eight tokens
