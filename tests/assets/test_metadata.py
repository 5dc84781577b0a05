"""What the UI shows of a training run, built from the run's folder after the stage has ended."""
import json

import dagster as dg

from assets import metadata as md

PNG = b"\x89PNG\r\n\x1a\n"  # embedding only base64-encodes the bytes


def _finetune_run(out, samples=None):
    out.mkdir(parents=True)
    metrics = {"top1": 0.5, "loss": 1.2, "confusion_matrix": [[1, 0], [0, 1]]}
    (out / "metrics.json").write_text(json.dumps({"metric": "top1", "value": 0.5, "split": "test", "metrics": metrics,
                                                  "finetune_updates": 4, "finetune_seconds": 2.5}))
    (out / "summary.json").write_text(json.dumps({"labeled_samples": 64, "stop_reason": "budget"}))
    (out / "loss_curve.png").write_bytes(PNG)
    if samples is None:
        (out / "confusion_matrix.png").write_bytes(PNG)
    else:
        (out / "samples.json").write_text(json.dumps(samples))
    return out


def test_finetune_run_shows_its_metric_and_confusion_matrix_or_transcriptions(tmp_path):
    image = md.finetune_metadata(_finetune_run(tmp_path / "image"))
    assert (image["metric"], image["top1"], image["split"]) == ("top1", 0.5, "test")
    assert "confusion_matrix" not in image["metrics"].value
    assert "data:image/png;base64" in image["confusion_matrix"].value and "data:image/png;base64" in image["loss_curve"].value
    speech = md.finetune_metadata(_finetune_run(tmp_path / "speech", [{"reference": "a cat", "hypothesis": ""}] * 20))
    assert "confusion_matrix" not in speech
    assert speech["samples"].value.count("| a cat | (empty) |") == md.SAMPLE_ROWS


def test_sweep_shows_its_curve_and_the_full_budget_run(tmp_path):
    run = _finetune_run(tmp_path / "budget-1")
    rows = [{"checkpoint": f"budget-{f}.pt", "pretrain_seconds": s, "pretrain_updates": u, "metric": m, "value": v}
            for f, s, u in ((0.5, 1.0, 2), (1, 2.0, 3)) for m, v in (("wer", 0.9), ("ctc_loss", 3.1))]
    (tmp_path / "curve.json").write_text(json.dumps(rows))
    metadata = md.sweep_metadata(tmp_path, run)
    assert metadata["curve"].value.splitlines()[0] == "| pretraining seconds | updates | wer | ctc_loss | checkpoint |"
    assert metadata["curve"].value.count("\n") == 4 and "| 2.0 | 3 | 0.9000 | 3.1000 | budget-1.pt |" in metadata["curve"].value
    assert metadata["metric"] == "top1"


def test_the_stage_report_is_kept_and_extended(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"effective_batch": {"samples_per_update": 8}}))
    (tmp_path / "loss_curve.png").write_bytes(PNG)
    reported = dg.MaterializeResult(metadata={"final_loss": 1.5, "path": dg.MetadataValue.path(str(tmp_path))},
                                    data_version=dg.DataVersion("v1"))
    merged = md.merged(reported, md.pretrain_metadata(md.reported_path(reported)))
    assert merged.metadata["final_loss"] == 1.5 and merged.data_version == dg.DataVersion("v1")
    assert merged.metadata["effective_batch"].value == {"samples_per_update": 8}
    assert "data:image/png;base64" in merged.metadata["loss_curve"].value
    assert md.merged(reported, {"final_loss": 0.0}).metadata["final_loss"] == 1.5  # the stage's own numbers win


def test_a_sweep_that_ran_nothing_still_shows_its_empty_curve(tmp_path):
    (tmp_path / "curve.json").write_text("[]")
    assert md.sweep_metadata(tmp_path, None)["curve"].value == "_no fine-tuning runs_"
    assert md.reported_path(dg.MaterializeResult(metadata={"path": dg.MetadataValue.path("x")}), "final_run") is None


def test_pretraining_runs_show_as_a_table_with_the_final_runs_loss_curve(tmp_path):
    runs = [{"seed": 0, "updates": u, "name": f"s0-u{u}", "train_seconds": 1.5 * u, "pretrain_flops": 1e9 * u}
            for u in (2, 4)]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    for run, loss in zip(runs, (2.0, 1.25)):
        (tmp_path / run["name"]).mkdir()
        (tmp_path / run["name"] / "summary.json").write_text(json.dumps({"final_loss": loss, "effective_batch": {"samples_per_update": 4}}))
    (tmp_path / "s0-u4" / "loss_curve.png").write_bytes(PNG)
    metadata = md.pretrain_runs_metadata(tmp_path)
    rows = [r.data for r in metadata["pretraining_runs"].value.records]
    assert [(r["run"], r["updates"], r["train seconds"], r["FLOPs"], r["final loss"]) for r in rows] == [
        ("s0-u2", "2", "3.0", "2e+09", "2.0000"), ("s0-u4", "4", "6.0", "4e+09", "1.2500")]
    assert "data:image/png;base64" in metadata["loss_curve"].value and metadata["effective_batch"].value == {"samples_per_update": 4}


def test_probe_records_show_one_row_per_source_and_protocol_and_the_final_sources_scores(tmp_path):
    records = [{"source": s, "seed": 0, "pretrain_updates": u, "protocol": p, "metric": m, "value": v,
                "selected": {"l2": 0.01} if p == "linear" else {"k": 20}}
               for s, u in (("s0-u2", 2), ("s0-u4", 4)) for p in ("knn", "linear") for m, v in (("top1", u / 10),)]
    (tmp_path / "records.json").write_text(json.dumps(records))
    metadata = md.probe_metadata(tmp_path / "records.json")
    rows = [r.data for r in metadata["probes"].value.records]
    assert [(r["source"], r["protocol"], r["top1"]) for r in rows] == [
        ("s0-u2", "knn", "0.2000"), ("s0-u2", "linear", "0.2000"), ("s0-u4", "knn", "0.4000"), ("s0-u4", "linear", "0.4000")]
    assert rows[1]["selected"] == '{"l2": 0.01}'
    assert (metadata["records"], metadata["knn_top1"], metadata["linear_top1"]) == (4, 0.4, 0.4)
