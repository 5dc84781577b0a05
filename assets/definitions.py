"""The Dagster code location: one asset graph per modality, the benchmark report, asset checks, and the jobs
CI and people run."""
from __future__ import annotations

import dagster as dg

from assets.benchmark import build_report_asset, build_throughput_asset
from assets.data import build_data_assets
from assets.finetuning import build_linear_probe_asset, build_sweep_asset
from assets.training import build_pretrain_asset
from pipeline.paths import MODALITIES, PRETRAIN_METHODS

_built = {m: build_data_assets(m) for m in MODALITIES}
_finetuned, _throughput = [], []
for _m, (_assets, _) in _built.items():
    _inputs = {a.key.path[-1]: a for a in _assets}
    _data = [_inputs["shards"]] + ([_inputs["tokenizer"]] if "tokenizer" in _inputs else [])  # speech: CTC letters
    _pretrain_inputs = [_inputs["shards"]] + ([_inputs["tokenizer"]] if _m == "text" else [])
    _pretrained = {method: build_pretrain_asset(_m, method, _pretrain_inputs) for method in PRETRAIN_METHODS[_m]}
    _sweeps = [build_sweep_asset(_m, method, _data + [pre]) for method, pre in _pretrained.items()]
    _sweeps.append(build_sweep_asset(_m, "scratch", _data))
    _extra = [build_linear_probe_asset(_m, "data2vec2", _data + [_pretrained["data2vec2"]])] if _m == "image" else []
    _speed = build_throughput_asset(_m, _pretrain_inputs)
    _assets += [*_pretrained.values(), *_sweeps, *_extra, _speed]
    _finetuned += _sweeps
    _throughput.append(_speed)
REPORT = build_report_asset(_finetuned + _throughput)
ASSETS = [a for assets, _ in _built.values() for a in assets] + [REPORT]
CHECKS = [c for _, checks in _built.values() for c in checks]

# Jobs select asset objects, never selection strings (shared/reference/ecosystem-notes.md §0).
# One step at a time: every training step already uses all cores (torch threads, or torchrun --nproc), and
# two of them side by side oversubscribe the CPU (measured: speech fine-tuning 17x slower) and skew timings.
ONE_STEP_AT_A_TIME = {"execution": {"config": {"multiprocess": {"max_concurrent": 1}}}}
JOBS = [
    dg.define_asset_job(f"{m}_pipeline", selection=dg.AssetSelection.assets(*_built[m][0]), config=ONE_STEP_AT_A_TIME,
                        description=f"Everything for {m}: embedded data -> shards -> (tokenizer) -> pretraining of every "
                        "method -> fine-tuning sweeps (and scratch) -> throughput")
    for m in MODALITIES
] + [
    dg.define_asset_job("demo", selection=dg.AssetSelection.assets(*ASSETS), config=ONE_STEP_AT_A_TIME,
                        description="The whole pipeline on the embedded default data with the tiny presets, every "
                        "baseline, ending in the benchmark report."),
]

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=JOBS,
    resources={"pipes_subprocess_client": dg.PipesSubprocessClient(forward_termination=True)},
)
