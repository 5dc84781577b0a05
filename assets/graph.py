"""The asset graph, one group per modality: embedded data -> shards -> (tokenizer) -> pretraining of every
method -> a fine-tuning sweep per method and from scratch (+ the image linear probe) -> throughput; then one
report over every sweep and throughput. It is the stage graph of dvc.yaml (tests/assets/test_orchestration.py
compares the two)."""
import dagster as dg

from assets.benchmark import build_report_asset, build_throughput_asset
from assets.data import build_data_assets
from assets.training import build_linear_probe_asset, build_pretrain_asset, build_sweep_asset
from pipeline.config import MODALITIES, benchmark


def modality_assets(modality: str) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """Every asset of one modality and the checks on its data."""
    data, checks = build_data_assets(modality)
    by_name = {a.key.path[-1]: a for a in data}
    tokenizer = [by_name["tokenizer"]] if "tokenizer" in by_name else []
    finetune_inputs = [by_name["shards"], *tokenizer]  # speech fine-tunes on CTC letters
    pretrain_inputs = [by_name["shards"], *(tokenizer if modality == "text" else [])]  # speech pretrains on audio alone
    run = benchmark()[modality]  # params.yaml benchmark.<modality>, which dvc.yaml's stage families run over
    pretrained = {m: build_pretrain_asset(modality, m, pretrain_inputs) for m in run.methods}
    sweeps = [build_sweep_asset(modality, m, [*finetune_inputs, p]) for m, p in pretrained.items()]
    sweeps.append(build_sweep_asset(modality, "scratch", finetune_inputs))
    probes = [build_linear_probe_asset(modality, m, [*finetune_inputs, pretrained[m]]) for m in run.linear_probe]
    throughput = build_throughput_asset(modality, pretrain_inputs)
    return [*data, *pretrained.values(), *sweeps, *probes, throughput], checks


BY_MODALITY = {m: modality_assets(m) for m in MODALITIES}
REPORT = build_report_asset([a for assets, _ in BY_MODALITY.values() for a in assets
                             if a.key.path[-1] in ("finetuned", "throughput")])
ASSETS = [a for assets, _ in BY_MODALITY.values() for a in assets] + [REPORT]
CHECKS = [c for _, checks in BY_MODALITY.values() for c in checks]
