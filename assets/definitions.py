"""The Dagster code location: one asset graph per modality, asset checks, and the jobs CI and people run."""
from __future__ import annotations

import dagster as dg

from assets.data import build_data_assets
from assets.finetuning import build_finetune_asset
from assets.training import build_pretrain_asset

MODALITIES = ("image", "speech", "text")
METHODS = ("data2vec2",)

_built = {m: build_data_assets(m) for m in MODALITIES}
for _m, (_assets, _) in _built.items():
    _inputs = {a.key.path[-1]: a for a in _assets}
    _upstream = [_inputs["shards"]] + ([_inputs["tokenizer"]] if _m == "text" else [])
    _pretrained = [build_pretrain_asset(_m, method, _upstream) for method in METHODS]
    _data = [_inputs["shards"]] + ([_inputs["tokenizer"]] if "tokenizer" in _inputs else [])  # speech: CTC letters
    _finetuned = [build_finetune_asset(_m, method, _data + [pre]) for method, pre in zip(METHODS, _pretrained)]
    if _m == "image":
        _finetuned += [build_finetune_asset(_m, method, _data + [pre], mode="linear_probe") for method, pre in zip(METHODS, _pretrained)]
    _finetuned.append(build_finetune_asset(_m, "scratch", _data))
    _assets += _pretrained + _finetuned
ASSETS = [a for assets, _ in _built.values() for a in assets]
CHECKS = [c for _, checks in _built.values() for c in checks]

# Jobs select asset objects, never selection strings (shared/reference/ecosystem-notes.md §0).
# One step at a time: every training step already uses all cores (torch threads, or torchrun --nproc), and
# two of them side by side oversubscribe the CPU (measured: speech fine-tuning 17x slower) and skew timings.
ONE_STEP_AT_A_TIME = {"execution": {"config": {"multiprocess": {"max_concurrent": 1}}}}
JOBS = [
    dg.define_asset_job(f"{m}_pipeline", selection=dg.AssetSelection.assets(*_built[m][0]), config=ONE_STEP_AT_A_TIME,
                        description=f"Everything for {m}: embedded data -> shards -> (tokenizer) -> pretraining -> fine-tuning "
                        "(pretrained and scratch)")
    for m in MODALITIES
] + [
    dg.define_asset_job("demo", selection=dg.AssetSelection.assets(*ASSETS), config=ONE_STEP_AT_A_TIME,
                        description="The whole pipeline on the embedded default data with the tiny presets."),
]

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=JOBS,
    resources={"pipes_subprocess_client": dg.PipesSubprocessClient(forward_termination=True)},
)
