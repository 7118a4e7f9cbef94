"""The typed schema: defaults, dotted overrides, run files, presets and the merges between them,
migrations of earlier layouts, cross-field checks, and every run file in configs/."""

from pathlib import Path

import pytest
import yaml

from vlcontrast import config as config_lib
from vlcontrast.config import Config, ConfigError
from vlcontrast.demo import demo_config
from vlcontrast.objectives import objective_class
from vlcontrast.train.data_setup import train_transform

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_typed_and_complete():
    cfg = Config()
    assert cfg.optim.lr == 5e-4 and cfg.data.batch_size == 256 and cfg.text.pooling == "eos"
    assert cfg.data.crop == "random_resized" and cfg.data.crop_scale == [0.9, 1.0]


def test_dotted_overrides_are_coerced_to_the_schema_types():
    cfg = config_lib.load(
        None,
        [
            "optim.lr=3e-4",
            "data.batch_size=64",
            "train.progress=false",
            "eval.evaluators=[{kind: knn, data: x.tar, templates: ['a {}'], k: '20'}]",
            "image.model_kwargs.depth=2",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.data.batch_size == 64 and cfg.train.progress is False
    (knn,) = cfg.eval.evaluators
    assert knn.kind == "knn" and knn.templates == ["a {}"] and knn.k == 20
    assert cfg.image.model_kwargs == {"depth": 2}


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'"),
        ("optimizer.lr=1", "unknown config key 'optimizer'"),
        ("optim.lr=fast", "optim.lr: expected float, got 'fast'"),
        ("data.batch_size=1.5", "data.batch_size: expected int"),
        ("data.batch_size=0", "data.batch_size: expected a positive number"),
        ("train.precision=fp8", "train.precision: expected one of auto, no, bf16, fp16"),
        ("train.progress=maybe", "train.progress: expected bool"),
        ("optim.lr.value=1", "optim.lr has no sub-keys"),
        ("lr=1", "must name a section and a key"),
        ("optim.lr", "must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config_lib.load(None, [override])


def test_run_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 3e-4\n  warmup_steps: 7\ndata:\n  batch_size: 32\n")
    cfg = config_lib.load(path, ["data.batch_size=8"])
    assert cfg.optim.lr == pytest.approx(3e-4)  # YAML reads 3e-4 as a string: coerced
    assert cfg.optim.warmup_steps == 7 and cfg.data.batch_size == 8


def test_bad_run_file_names_the_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.stepz'"):
        config_lib.load(path)
    with pytest.raises(ConfigError, match="config file not found"):
        config_lib.load(tmp_path / "missing.yaml")


def test_roundtrip_through_dict_and_json(tmp_path):
    cfg = config_lib.load(None, ["optim.lr=1e-3", "text.config={model_type: bert}"])
    config_lib.save(cfg, tmp_path / "c.json")
    again = config_lib.from_dict(yaml.safe_load((tmp_path / "c.json").read_text()))
    assert config_lib.diff(cfg) == {
        "optim": {"lr": 1e-3},
        "text": {"config": {"model_type": "bert"}},
    }
    assert again == config_lib.resolve(cfg)  # saved configs name the objective-decided keys


def test_configs_dir_files_load_and_the_demo_runs_its_run_file(tmp_path):
    for path in (ROOT / "configs").glob("*.yaml"):
        config_lib.load(path)
    from_file = config_lib.to_dict(config_lib.load(ROOT / "configs" / "demo.yaml"))
    corpus = {"train_shards": "s/{0..1}.tar", "tokenizer": "tok"}
    demo = config_lib.to_dict(demo_config(tmp_path, corpus, []))
    moved = {("data", "train_shards"), ("text", "tokenizer"), ("train", "output_dir")}
    moved.add(("eval", "evaluators"))  # the demo evaluates after training, as `vlcontrast eval`
    for section, values in from_file.items():
        for key, value in values.items():
            if (section, key) not in moved:
                assert demo[section][key] == value, f"{section}.{key}"
    assert demo["data"]["train_shards"] == "s/{0..1}.tar"


def test_a_config_saved_before_the_seams_migrates():
    """Checkpoints of earlier versions: ``loss.*`` keys and no ``model.logit_bias``."""
    old = {
        "loss": {"name": "siglip", "gather": "global", "tiled": "on", "tile_size": 64},
        "model": {"embed_dim": 32},
    }
    cfg = config_lib.from_dict(old)
    assert cfg.objective.name == "siglip" and cfg.model.logit_bias is True
    assert cfg.objective.clip.gather == "global" and cfg.objective.clip.tile_size == 64
    assert config_lib.from_dict({"loss": {"name": "clip"}}).model.logit_bias is False
    cfg = config_lib.load(None, ["loss.name=siglip", "loss.tiled_from=16"])  # old overrides
    assert cfg.objective.name == "siglip" and cfg.objective.clip.tiled_from == 16


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=nan", "optim.lr: expected a finite number"),
        ("optim.lr=1e39", "optim.lr: expected a finite number"),
        ("data.crop_scale=[0.5, x]", "data.crop_scale[1]: expected float"),
        ("data.weights=3", "data.weights: expected list[float]"),
        ("eval.evaluators=[{kind: knn, k: -5}]", "eval.evaluators[0].k: expected a number >= 0"),
        ("eval.evaluators=[7]", "eval.evaluators[0]: expected a mapping"),
        ("objective.clip.tile_size=0", "objective.clip.tile_size: expected a positive"),
        ("model.kind=audio", "model.kind: expected one of dual, image, text"),
    ],
)
def test_typed_containers_and_declared_checks_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_lib.load(None, [override])


def test_keys_lists_nested_objective_settings():
    listed = config_lib.keys()
    assert any(k.startswith("objective.clip.tiled ") for k in listed)
    assert any(k.startswith("eval.evaluators[i].k ") for k in listed)
    # a nested section shows its owner's defaults: SimCLR's projector, MoCo's, not HeadConfig's
    assert "objective.simclr.projector.out_norm (str, default 'bn')" in listed
    assert any(k.startswith("objective.moco.projector.bn (bool, default False)") for k in listed)


def test_config_refuses_what_train_would_before_anything_runs(capsys):
    """Cross-field checks run when the config is read: `vlcontrast config` says what `train`
    would, naming the key."""
    from vlcontrast import cli

    for override, message in (
        ("data.crop_scale=[0.5]", "data.crop_scale: expected [low, high]"),
        ("views.second.scale=[0.9, 0.1]", "views.second.scale: expected [lo, hi]"),
        ("train.grad_cache_steps=999", "train.grad_cache_steps: 999 micro-batches"),
        ("model.bn_split=3", "model.bn_split: data.batch_size=256 does not split into 3"),
    ):
        assert cli.main(["config", override]) == 2
        assert message in capsys.readouterr().err


def test_the_demo_applies_a_preset_as_train_does(tmp_path):
    from vlcontrast.presets import PRESETS

    corpus = {"train_shards": "x/{0..1}.tar", "tokenizer": "tok"}
    cfg = demo_config(tmp_path, corpus, ["model.preset=s32", "image.image_size=32"])
    assert cfg.model.preset == "s32" and cfg.model.embed_dim == PRESETS["s32"]["model"]["embed_dim"]
    assert cfg.data.train_shards == "x/{0..1}.tar" and cfg.image.image_size == 32


def test_mappings_merge_the_same_way_from_run_files_and_the_command_line(tmp_path):
    """A mapping over a preset's merges key by key, as the dotted form does; another model
    named over a preset drops the preset's kwargs for its own model; an empty mapping or one
    with another model_type replaces."""
    run = tmp_path / "run.yaml"
    run.write_text("model:\n  preset: tiny\nimage:\n  model_kwargs:\n    depth: 2\n")
    from_file = config_lib.load(run)
    dotted = config_lib.load(None, ["model.preset=tiny", "image.model_kwargs.depth=2"])
    inline = config_lib.load(None, ["model.preset=tiny", "image.model_kwargs={depth: 2}"])
    want = {"patch_size": 4, "embed_dim": 128, "depth": 2, "num_heads": 4}
    assert from_file.image.model_kwargs == dotted.image.model_kwargs == inline.image.model_kwargs
    assert inline.image.model_kwargs == want
    other = config_lib.load(None, ["model.preset=tiny", "image.model=test_vit"])
    assert other.image.model_kwargs == {}
    cleared = config_lib.load(None, ["model.preset=tiny", "image.model_kwargs={}"])
    assert cleared.image.model_kwargs == {}
    bert = config_lib.load(None, ["model.preset=tiny", "text.config={model_type: bert}"])
    assert bert.text.config == {"model_type": "bert"}
    deeper = config_lib.load(None, ["model.preset=tiny", "text.config={num_hidden_layers: 2}"])
    assert deeper.text.config["num_hidden_layers"] == 2
    assert deeper.text.config["model_type"] == "clip_text_model"


# Every run file in configs/ loads, names a known objective on a model of the right kind, and
# builds its training transform and optimizer settings (paths are not opened).
RUN_FILES = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", RUN_FILES, ids=[str(p.relative_to(ROOT)) for p in RUN_FILES])
def test_every_run_file_loads_and_is_consistent(path):
    cfg = config_lib.resolve(config_lib.load(path))
    cls = objective_class(cfg.objective.name)
    kinds = {("image", "text"): "dual", ("image",): "image", ("text",): "text"}
    want = "dual" if cls.uses_text_tower else kinds[tuple(sorted(cls.modalities))]
    assert want == cfg.model.kind, path.name
    transform = train_transform(cfg)
    assert bool(cls.views) == hasattr(transform, "views")
    comments = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(" -m vlcontrast.cli train " in c or "vlcontrast train " in c for c in comments)


def test_the_ssl_run_files_cover_every_image_objective():
    names = {config_lib.load(p).objective.name for p in RUN_FILES if "ssl" in p.parts}
    assert names >= {"simclr", "moco", "mocov3", "byol", "simsiam", "barlow_twins"}
