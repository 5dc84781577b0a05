"""The benchmark report from a small fixture metrics.json: every required section, correct speed-ups."""
import re

import pytest

from pipeline.benchmark.report import best_point, build, speedups, time_to_reach


def rec(modality, method, seconds, value, task="t", metric="top1"):
    return {"modality": modality, "method": method, "preset": "tiny", "pretrain_seconds": seconds, "pretrain_updates": int(seconds),
            "pretrain_samples": int(seconds) * 8, "device": "cpu", "world_size": 1, "task": task, "metric": metric,
            "value": value, "split": "test", "git_commit": "abc123def456", "dvc_stage_hash": "0123456789ab"}


FIXTURE = [
    rec("image", "data2vec2", 10, 0.70), rec("image", "data2vec2", 20, 0.80),
    {**rec("image", "data2vec2", 40, 0.85), "effective_batch": {"per_rank_micro_batch": 32, "world_size": 2, "grad_accum": 1,
                                                                "clone_batch": 4, "samples_per_update": 64}},
    rec("image", "mae", 10, 0.60), rec("image", "mae", 20, 0.70), rec("image", "mae", 40, 0.80),
    rec("image", "scratch", 0, 0.50),
    rec("speech", "data2vec2", 10, 0.9, "synth", "wer"), rec("speech", "data2vec2", 20, 0.5, "synth", "wer"),
    rec("speech", "wav2vec2", 10, 0.95, "synth", "wer"), rec("speech", "wav2vec2", 20, 0.40, "synth", "wer"),
]
THROUGHPUT = [{"modality": "image", "method": "data2vec2", "preset": "tiny", "device": "x86_64 CPU, 2 threads", "precision": "float32",
               "batch_size": 64, "clone_batch": 4, "train_samples_per_s": 266.9, "train_tokens_per_s": 13078.0,
               "loader_samples_per_s": 3501.0, "mfu": 0.31, "matmul_peak_flops_per_s": 2.1e11}]


def test_speedup_arithmetic():
    image = {"data2vec2": [(10, 0.70, {}), (20, 0.80, {}), (40, 0.85, {})], "mae": [(10, 0.6, {}), (20, 0.7, {}), (40, 0.8, {})]}
    assert best_point("top1", image["mae"]) == (0.8, 40)
    assert time_to_reach("top1", image["data2vec2"], 0.8) == 20
    assert speedups("top1", image)["mae"]["speedup"] == pytest.approx(2.0)  # MAE needs 40 s, data2vec 2.0 20 s
    speech = {"data2vec2": [(10, 0.9, {}), (20, 0.5, {})], "wav2vec2": [(10, 0.95, {}), (20, 0.4, {})]}
    row = speedups("wer", speech)["wav2vec2"]  # lower is better: 0.4 is never reached by data2vec 2.0
    assert row["baseline_best"] == 0.4 and row["data2vec2_time"] is None and row["speedup"] is None


def test_report_has_every_section(tmp_path):
    context = {"git_commit": "abc123", "dvc_lock_md5": "feedbeef", "hardware": "2-core CPU"}
    headline = build(FIXTURE, THROUGHPUT, tmp_path, context)
    md = (tmp_path / "benchmark.md").read_text()
    for section in ("## Headline", "## image: t", "## speech: synth", "## Where we agree and disagree with the paper", "## Throughput and MFU",
                    "## Effective batch per pretraining run", "## Provenance"):
        assert section in md
    assert "| mae | 0.8 | 40 | 20 | 2.00x |" in md
    # the headline: one row per modality, every method's best (columns data2vec2, mae, wav2vec2, scratch)
    assert "| image | t | top1 | 0.85 | 0.8 |  | 0.5 | 2.00x vs mae |" in md
    assert "| speech | synth | wer | 0.5 |  | 0.4 |  | not reached vs wav2vec2 |" in md
    assert "| image/data2vec2 | 32 x 2 x 1 x 4 | 64 |" in md  # the effective batch the sweep recorded
    assert "below the paper's 16.4x" in md  # 2x < 16.4x: stated plainly
    assert "did not reach wav2vec2's best wer" in md
    assert "2-core CPU" in md and "feedbeef" in md and "abc123" in md and "31.0%" in md
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["image-t-top1.png", "speech-synth-wer.png"]
    page = (tmp_path / "benchmark.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<script" not in page and 'src="http' not in page
    assert re.search(r"<td>mae</td><td>0.8</td>", page)
    assert headline["speedups"]["image-t-top1"]["mae"]["speedup"] == pytest.approx(2.0)


def test_a_record_without_required_fields_is_refused(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        build([{"modality": "image"}], [], tmp_path, {})


def test_flat_curves_and_pretraining_below_scratch_are_stated(tmp_path):
    records = [rec("speech", m, t, 1.0, "synth", "wer") for m in ("data2vec2", "wav2vec2") for t in (10, 20)]
    records += [rec("speech", "scratch", 0, 1.0, "synth", "wer")]
    records += [rec("text", "data2vec2", 10, 0.30, "lexname", "accuracy"), rec("text", "mlm", 10, 0.20, "lexname", "accuracy"),
                rec("text", "scratch", 0, 0.35, "lexname", "accuracy")]
    statements = build(records, [], tmp_path, {})["statements"]
    assert any(s.startswith("**speech (synth, wer)**: every method scores 1 at every budget") for s in statements)
    assert not any("speech" in s and "speed-up is" in s for s in statements)  # no speed-up read from flat curves
    assert any(s.startswith("**text (lexname, accuracy)**: data2vec 2.0's best (0.3) is worse than no pretraining") for s in statements)
    md = (tmp_path / "benchmark.md").read_text()
    assert "| speech | synth | wer | 1 | 1 |  | 1 | curves do not separate |"  # data2vec2 wav2vec2 mlm scratch in md
    # data2vec 2.0 had mlm's best at its first (and only) checkpoint: the speed-up is only a lower bound
    assert "| text | lexname | accuracy | 0.3 |  | 0.2 | 0.35 | ≥1.00x vs mlm |" in md
    assert any("speed-up is at least 1.00x; checkpoints this coarse cannot tell" in s for s in statements)


def test_the_report_reads_the_benchmark_sweeps_and_names_the_missing(tmp_path, monkeypatch, capsys):
    from pipeline.benchmark.report import benchmark_curves

    monkeypatch.chdir(tmp_path)
    for path in ("models/image/mae/sweep/fashion_mnist", "models/image/scratch/sweep/fashion_mnist", "models/image/mae/sweep/other"):
        (tmp_path / path).mkdir(parents=True)
        (tmp_path / path / "curve.json").write_text("[]")
    found = [str(p) for p in benchmark_curves()]
    assert found == ["models/image/mae/sweep/fashion_mnist/curve.json", "models/image/scratch/sweep/fashion_mnist/curve.json"]
    err = capsys.readouterr().err
    assert "10 of 12 benchmark sweeps not run yet" in err and "models/text/mlm/sweep/lexname/curve.json" in err
