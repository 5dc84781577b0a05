"""The asset graph, one group per modality: embedded data -> shards -> (tokenizer, text token ids) -> pretraining
of every method (every run of the benchmark scale) -> the frozen-feature probes of every method and of the floors
random_init and raw_input, and the fine-tuning protocol per method and from scratch -> throughput; then one report
over all of them. It is the stage graph of dvc.yaml (tests/assets/test_orchestration.py compares the two)."""
import dagster as dg

from assets.benchmark import build_floor_check, build_probe_asset, build_report_asset, build_throughput_asset
from assets.data import build_data_assets
from assets.training import build_pretrain_asset, build_sweep_asset
from pipeline.benchmark.probe import FLOORS
from pipeline.config import MODALITIES, benchmark

REPORT_INPUTS = ("_probed", "_finetuned", "throughput")


def modality_assets(modality: str) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """Every asset of one modality and the checks on its data."""
    data, checks = build_data_assets(modality)
    by_name = {a.key.path[-1]: a for a in data}
    tokenizer = [by_name["tokenizer"]] if "tokenizer" in by_name else []
    task_inputs = [by_name["shards"], *tokenizer]  # the labeled task: speech CTC letters, text tokens
    tokens = [by_name["tokens"]] if "tokens" in by_name else []  # the text corpus as token ids
    pretrain_inputs = [by_name["shards"], *(tokenizer if modality == "text" else []), *tokens]  # speech: audio alone
    run = benchmark()[modality]  # params.yaml benchmark.<modality>, which dvc.yaml's stage families run over
    pretrained = {m: build_pretrain_asset(modality, m, pretrain_inputs) for m in run.methods}
    probed = {m: build_probe_asset(modality, m, [*task_inputs, p]) for m, p in pretrained.items()}
    floors = {floor: build_probe_asset(modality, floor, task_inputs) for floor in FLOORS}
    checks += [build_floor_check(modality, m, a, floors["random_init"]) for m, a in probed.items()]
    finetuned = [build_sweep_asset(modality, m, [*task_inputs, p]) for m, p in pretrained.items()]
    finetuned.append(build_sweep_asset(modality, "scratch", task_inputs))
    throughput = build_throughput_asset(modality, pretrain_inputs)
    return [*data, *pretrained.values(), *probed.values(), *floors.values(), *finetuned, throughput], checks


BY_MODALITY = {m: modality_assets(m) for m in MODALITIES}
REPORT = build_report_asset([a for assets, _ in BY_MODALITY.values() for a in assets if a.key.path[-1].endswith(REPORT_INPUTS)])
ASSETS = [a for assets, _ in BY_MODALITY.values() for a in assets] + [REPORT]
CHECKS = [c for _, checks in BY_MODALITY.values() for c in checks]
