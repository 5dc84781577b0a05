"""params.yaml into typed configs: the one merge (layers, unknown keys, tuples, sections), the released recipes,
and the benchmark lists DVC, Dagster and the report read."""
import dataclasses

import pytest
import yaml

from helpers import REPO
from pipeline import config as P
from pipeline.errors import UserInputError
from pipeline.finetune import config as finetune_config
from pipeline.pretrain import config as pretrain_config


@dataclasses.dataclass(kw_only=True)
class Section:
    size: int
    scale: tuple[float, float] = (0.5, 1.0)


@dataclasses.dataclass(kw_only=True)
class Config:
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    limit: int | None = None
    shape: tuple[int, ...] | None = None
    image: Section | None = None


def test_later_layers_win_and_earlier_values_stay():
    cfg = P.merge(Config(lr=1.0, limit=3), ("a", {"lr": 2.0}), ("b", {"lr": 3.0, "betas": [0.8, 0.9]}), ("c", None))
    assert (cfg.lr, cfg.betas, cfg.limit) == (3.0, (0.8, 0.9), 3)


def test_lists_become_tuples_where_the_field_is_a_tuple():
    cfg = P.merge(Config, ("params.yaml x", {"lr": 1.0, "shape": [2, 3], "betas": [0.1, 0.2]}))
    assert cfg.shape == (2, 3) and cfg.betas == (0.1, 0.2)
    assert P.merge(Config, ("x", {"lr": 1.0, "shape": None})).shape is None


def test_unknown_key_names_the_source_and_the_known_keys():
    with pytest.raises(UserInputError) as e:
        P.merge(Config(lr=1.0), ("params.yaml pretrain.image", {"lrr": 2.0}))
    assert str(e.value) == ("params.yaml pretrain.image: unknown key(s) ['lrr']; "
                            "known: ['betas', 'image', 'limit', 'lr', 'shape']")


def test_missing_required_key_is_named():
    with pytest.raises(UserInputError, match=r"params.yaml x: missing key\(s\) \['lr'\] for Config"):
        P.merge(Config, ("params.yaml x", {"limit": 1}))


def test_sections_merge_key_by_key_nested_or_inline():
    base = Config(lr=1.0, image=Section(size=4))
    nested = P.merge(base, ("checkpoint", {"image": {"scale": [0.2, 1.0]}}))
    assert nested.image == Section(size=4, scale=(0.2, 1.0))
    inline = P.merge(base, ("params.yaml finetune.image", {"lr": 2.0, "size": 8}), inline="image")
    assert (inline.lr, inline.image) == (2.0, Section(size=8))
    with pytest.raises(UserInputError, match=r"params.yaml finetune.image.image: unknown key\(s\) \['sizee'\]"):
        P.merge(base, ("params.yaml finetune.image", {"image": {"sizee": 1}}))
    with pytest.raises(UserInputError, match=r"unknown key\(s\) \['image'\]; known: \['betas', 'limit', 'lr', "
                                             r"'scale', 'shape', 'size'\]"):
        P.merge(base, ("params.yaml finetune.image", {"image": {"size": 1}}), inline="image")  # flat blocks stay flat


def test_section_reads_a_params_subtree():
    params = {"image": {"shard": {"max_samples_per_shard": 7}}}
    assert P.section(params, P.Shard, "image", "shard") == P.Shard(max_samples_per_shard=7)
    assert P.section({}, P.Shard, "image", "shard") == P.Shard()
    with pytest.raises(UserInputError, match=r"params.yaml image.shard: unknown key"):
        P.section({"image": {"shard": {"max_sample": 1}}}, P.Shard, "image", "shard")


@pytest.mark.parametrize("modality", P.MODALITIES)
def test_released_recipes_are_complete_and_only_the_modality_section_is_set(modality):
    for cfg in (pretrain_config.released(modality), finetune_config.released(modality, "task")):
        sections = {m: getattr(cfg, m) for m in P.MODALITIES}
        assert sections[modality] is not None and [s for m, s in sections.items() if m != modality] == [None, None]
        assert cfg.preset == "base"


def test_pretrain_layers_seed_block_then_command_line():
    params = {"seed": 5, "pretrain": {"speech": {"lr": 0.1, "crop_samples": 24000, "betas": [0.9, 0.9]}}}
    cfg = pretrain_config.build("speech", "wav2vec2", params, {"lr": 0.2})
    assert (cfg.seed, cfg.lr, cfg.betas, cfg.speech.crop_samples, cfg.method) == (5, 0.2, (0.9, 0.9), 24000, "wav2vec2")
    assert cfg.warmup_updates == pretrain_config.released("speech").warmup_updates
    with pytest.raises(UserInputError, match=r"params.yaml pretrain.image: unknown key\(s\) \['crop_samples'\]"):
        pretrain_config.build("image", "mae", params | {"pretrain": {"image": {"crop_samples": 1}}})


def test_finetune_modality_keys_go_to_the_modality_section():
    params = {"finetune": {"speech": {"mask_prob": 0.3, "lr": 0.5}, "image": {"mixup": 0.2}}}
    speech = finetune_config.build("speech", "synth", "finetune", params)
    assert (speech.lr, speech.speech.mask_prob, speech.speech.freeze_updates, speech.image) == (0.5, 0.3, 10_000, None)
    assert finetune_config.build("image", "fashion_mnist", "finetune", params).image.mixup == 0.2
    with pytest.raises(UserInputError, match=r"params.yaml finetune.text: unknown key\(s\) \['mask_prob'\]"):
        finetune_config.build("text", "lexname", "finetune", {"finetune": {"text": {"mask_prob": 0.3}}})
    with pytest.raises(UserInputError, match=r"finetune.image.linear_probe: unknown key\(s\) \['lrr'\]"):
        finetune_config.build("image", "fashion_mnist", "finetune", {"finetune": {"image": {"linear_probe": {"lrr": 1}}}})


def test_a_finetune_config_survives_its_checkpoint_dict():
    cfg = finetune_config.build("image", "fashion_mnist", "linear_probe", {"finetune": {"image": {"crop_scale": [0.3, 1.0]}}})
    assert finetune_config.from_dict(dataclasses.asdict(cfg)) == cfg


def test_the_repository_params_build_every_config():
    params = P.load(REPO / "params.yaml")
    for modality in P.MODALITIES:
        pretrain_config.build(modality, "data2vec2", params)
        finetune_config.build(modality, "t", "finetune", params)
    finetune_config.build("image", "t", "linear_probe", params)


def test_benchmark_lists_come_from_params_yaml():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    runs = P.benchmark(params)
    assert list(runs) == list(P.MODALITIES)
    assert runs["image"] == P.Benchmark(methods=("data2vec2", "data2vec1", "mae"), task="fashion_mnist",
                                        probes=("knn", "linear"), pooling="mean", layer=None, finetune="final")
    assert (runs["speech"].task, runs["speech"].probes, runs["speech"].pooling) == ("synth", ("ctc_probe",), "frames")
    assert runs["text"].methods[-1] == "mlm"
    with pytest.raises(UserInputError, match=r"unknown key\(s\) \['linear_probe'\]"):  # the linear protocol replaced it
        P.benchmark({"benchmark": {"image": {"methods": ["mae"], "task": "t", "linear_probe": ["data2vec2"]}}})
    with pytest.raises(UserInputError, match=r"missing key\(s\) \['task'\]"):
        P.benchmark({"benchmark": {"text": {"methods": ["mlm"]}}})
    with pytest.raises(UserInputError, match="no `benchmark` block"):
        P.benchmark({})
    with pytest.raises(UserInputError, match=r"benchmark.image.probes: 'ctc' is not one of"):
        P.benchmark({"benchmark": {"image": {"methods": ["mae"], "task": "t", "probes": ["knn", "ctc"]}}})
    with pytest.raises(UserInputError, match=r"benchmark: unknown key\(s\) \['video'\]"):
        P.benchmark({"benchmark": {"video": {}}})


def _scaled(**scale):
    """The repository's benchmark with one scale `s` of these settings."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    block = {"seeds": [0], "budget_fractions": [0.25, 0.5, 1.0], "probe_sizes": {"image": {"train": 8, "valid": 4, "test": 4}},
             "max_updates": {"image": {"mae": 100}}, "finetune": True} | scale
    params["benchmark"] |= {"scale": "s", "scales": {"s": block}}
    return params


def test_the_repository_scales_give_every_method_a_budget():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name in ("demo", "cpu"):
        params["benchmark"]["scale"] = name
        scale = P.benchmark_scale(params)
        assert scale.name == name and scale.budget_fractions == (0.25, 0.5, 1.0)
        for modality, run in P.benchmark(params).items():
            assert set(scale.max_updates[modality]) == set(run.methods)
            assert all(len(P.benchmark_runs(params, modality, method)) == 3 * len(scale.seeds) for method in run.methods)
    assert P.benchmark_scale(P.load(REPO / "params.yaml")).name == "demo"


def test_benchmark_runs_are_complete_runs_per_seed_and_budget():
    params = _scaled(seeds=[1, 0], max_updates={"image": {"mae": 100, "data2vec2": 2}})
    scale = P.benchmark_scale(params)
    assert (scale.seeds, scale.probe_sizes) == ((1, 0), {"image": {"train": 8, "valid": 4, "test": 4}})
    assert P.benchmark_runs(params, "image", "mae") == [
        P.Run(0, 25, "s0-u25"), P.Run(0, 50, "s0-u50"), P.Run(0, 100, "s0-u100"),
        P.Run(1, 25, "s1-u25"), P.Run(1, 50, "s1-u50"), P.Run(1, 100, "s1-u100")]
    # at least one update each, the same budget once: 0.25 x 2 and 0.5 x 2 both round to 1
    assert [(r.seed, r.updates) for r in P.benchmark_runs(params, "image", "data2vec2")] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    with pytest.raises(UserInputError, match=r"max_updates.image.data2vec1: missing"):
        P.benchmark_runs(params, "image", "data2vec1")


@pytest.mark.parametrize("scale, message", [
    ({"seed": [0]}, r"params.yaml benchmark.scales.s: unknown key\(s\) \['seed'\]"),
    ({"probe_sizes": {"image": {"train": 1, "valid": 1}}}, r"scales.s.probe_sizes.image: missing key\(s\) \['test'\]"),
    ({"probe_sizes": {"image": {"train": 1, "valid": 1, "test": 1, "dev": 1}}},
     r"scales.s.probe_sizes.image: unknown key\(s\) \['dev'\]"),
    ({"probe_sizes": {"train": 1, "valid": 1, "test": 1}}, r"scales.s.probe_sizes: expected \{modality"),
    ({"budget_fractions": [0.5, 2.0]}, r"every fraction in \(0, 1\]"),
    ({"seeds": []}, r"seeds and budget_fractions must be non-empty"),
    ({"max_updates": {"image": {"mlm": 10}}}, r"max_updates.image: unknown method\(s\) \['mlm'\]"),
    ({"max_updates": {"video": {}}}, r"max_updates: unknown modality \['video'\]"),
    ({"max_updates": {"image": {"mae": 0}}}, r"positive whole numbers of updates"),
])
def test_a_wrong_scale_is_refused_with_its_place(scale, message):
    with pytest.raises(UserInputError, match=message):
        P.benchmark_scale(_scaled(**scale))


def test_an_unknown_scale_is_refused():
    params = _scaled()
    params["benchmark"]["scale"] = "gpu"
    with pytest.raises(UserInputError, match=r"benchmark.scale: 'gpu' is not one of benchmark.scales \['s'\]"):
        P.benchmark_scale(params)


def test_warmup_fraction_sizes_the_warmup_to_each_budget():
    params = {"pretrain": {"image": {"warmup_fraction": 0.1}}}
    assert pretrain_config.build("image", "mae", params, {"max_updates": 480}).warmup_updates == 48
    assert pretrain_config.build("image", "mae", params, {"max_updates": 4}).warmup_updates == 1  # at least one
    assert pretrain_config.build("image", "mae", {}).warmup_updates == 50_040  # none: the recipe's own
    with pytest.raises(UserInputError, match=r"warmup_fraction: 1.5 must be in \[0, 1\)"):
        pretrain_config.build("image", "mae", {"pretrain": {"image": {"warmup_fraction": 1.5}}})


def test_modalities_are_the_models():
    from model.config import MODALITIES

    assert P.MODALITIES == MODALITIES


@pytest.mark.parametrize("text, message", [
    ("seed: 0\nbenchmark: [unclosed\n", r"bad\.yaml: not valid YAML \(line \d+\).*; fix the file"),
    ("- just\n- a list\n", r"bad\.yaml: expected a mapping of sections .*got list; fix the file"),
])
def test_a_malformed_params_file_is_one_line_naming_it(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(UserInputError, match=message):
        P.load(tmp_path / "bad.yaml")


def test_every_params_error_names_the_file_read_not_params_yaml(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("seed: 0\npretrain:\n  image: {lrr: 1}\nfinetune:\n  image: {lr: 1e-3}\n"
                    "image:\n  shard: {max_samples_per_shard: many}\n"
                    "benchmark: {scale: gpu, scales: {cpu: {}}, image: {methods: [mae]}}\n")
    params = P.load(path)
    calls = {"unknown key": lambda: pretrain_config.build("image", "mae", params),
             "wrong type": lambda: finetune_config.build("image", "fashion_mnist", "finetune", params),
             "section": lambda: P.section(params, P.Shard, "image", "shard"),
             "benchmark": lambda: P.benchmark(params),
             "scale": lambda: P.benchmark_scale(params)}
    for what, call in calls.items():
        with pytest.raises(UserInputError) as e:
            call()
        assert str(e.value).startswith(f"{path} "), (what, str(e.value))
    assert "params.yaml" not in str(e.value)


def test_cli_names_the_params_file_passed(tmp_path, capsys):
    from pipeline import cli

    path = tmp_path / "other.yaml"
    path.write_text("image:\n  prepare: {train_limit: ten}\n")
    assert cli.main(["prepare", "--modality", "image", "--out", str(tmp_path / "raw"), "--params", str(path)]) == 2
    assert f"{path} image.prepare.train_limit: 'ten' must be a whole number or null" in capsys.readouterr().err
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("values, message", [
    ({"lr": "1e-3"}, r"x.lr: '1e-3' must be a number \(YAML reads 1e-3 as text: write .* 1.0e-3\)"),
    ({"lr": True}, r"x.lr: True must be a number$"),
    ({"lr": 1, "betas": [0.9]}, r"x.betas: \[0.9\] must be a list of 2 numbers$"),
    ({"lr": 1, "limit": 2.5}, r"x.limit: 2.5 must be a whole number or null$"),
    ({"lr": 1, "shape": [1, "2"]}, r"x.shape: \[1, '2'\] must be a list of whole numbers or null$"),
    ({"lr": 1, "image": 3}, r"x.image: expected a mapping of keys \(scale, size\), got int 3$"),
])
def test_a_value_of_the_wrong_type_is_refused_with_its_place(values, message):
    with pytest.raises(UserInputError, match=message):
        P.merge(Config, ("x", values))


def test_a_block_that_is_not_a_mapping_is_refused_with_its_place():
    with pytest.raises(UserInputError, match=r"^params.yaml pretrain.image: expected a mapping of keys, got int 5$"):
        pretrain_config.build("image", "mae", {"pretrain": {"image": 5}})
    with pytest.raises(UserInputError, match=r"^params.yaml finetune: expected a mapping of keys, got list"):
        finetune_config.build("image", "t", "finetune", {"finetune": ["image"]})
    with pytest.raises(UserInputError, match=r"^params.yaml seed: 'one' must be a whole number$"):
        P.seed({"seed": "one"})


def test_pretrain_methods_are_the_models():
    from model.config import BASELINE_MODALITY, METHODS

    assert P.PRETRAIN_METHODS == {m: tuple(x for x in METHODS if BASELINE_MODALITY.get(x, m) == m) for m in P.MODALITIES}
