"""``image.checkpoint_path``: backbones saved the ways the reference trainers save them (DINO's
full checkpoint, MoCo's and DenseCL's ``state_dict`` of both encoders, SwAV's ``module.`` keys
with its head and prototypes, a timm safetensors file) load into the timm trunk with every
tensor equal to the encoder the authors evaluate; pickled code is refused; a file of another
architecture is one error naming a tensor."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vlcontrast import config as config_lib
from vlcontrast.config import ConfigError, ImageTowerConfig
from vlcontrast.models.backbone_weights import best_prefix
from vlcontrast.models.image_tower import create_trunk

RESNET = {"layers": [1, 1, 1, 1], "channels": [8, 8, 16, 16]}
VIT = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def tower(model="resnet18", kwargs=RESNET, path="", size=32) -> ImageTowerConfig:
    return ImageTowerConfig(
        model=model, model_kwargs=dict(kwargs), image_size=size, checkpoint_path=str(path)
    )


def random_trunk(cfg: ImageTowerConfig, seed: int):
    torch.manual_seed(seed)
    return create_trunk(cfg)


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def assert_same(trunk, state: dict):
    got = trunk.state_dict()
    assert set(got) == set(state)
    for key, value in state.items():
        assert torch.equal(got[key], value), key


def test_moco_state_dict_of_both_encoders_loads_the_query_encoder(tmp_path, capsys):
    """MoCo v2 / DenseCL (``module.encoder_q.`` and ``module.encoder_k.``, the MLP head under
    ``fc``, the queue): the query encoder, first in the file, as MoCo's lincls keeps it."""
    query = random_trunk(tower(), 1).state_dict()
    key = random_trunk(tower(), 2).state_dict()
    head = {"fc.0.weight": torch.randn(16, 16), "fc.2.weight": torch.randn(8, 16)}
    state = {
        **prefixed({**query, **head}, "module.encoder_q."),
        **prefixed({**key, **head}, "module.encoder_k."),
        "module.queue": torch.randn(8, 64),
    }
    path = tmp_path / "moco_v2_200ep.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state}, path)
    trunk = random_trunk(tower(path=path), 3)
    assert_same(trunk, query)
    printed = capsys.readouterr().out
    assert "under 'state_dict'" in printed and "prefix 'module.encoder_q.' removed" in printed
    assert "left out 2 not in the backbone" in printed  # the head; encoder_k is another prefix


def test_a_lightly_resnet_in_a_lightning_checkpoint_computes_torchvisions_features(
    tmp_path, capsys
):
    """lightly's examples keep torchvision's ResNet as ``nn.Sequential(*children()[:-1])``
    (``backbone.0.weight`` is ``conv1.weight``, ``backbone.4.0...`` is ``layer1.0...``) beside
    their projection head, in a Lightning checkpoint: the timm trunk then computes the features
    torchvision's own module does."""
    import torchvision
    from torch import nn

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    backbone = nn.Sequential(*list(resnet.children())[:-1]).eval()
    head = {"projection_head.layer.0.weight": torch.randn(16, 512)}
    state = {**prefixed(backbone.state_dict(), "backbone."), **head}
    assert "backbone.4.0.conv1.weight" in state  # lightly's layout indeed
    checkpoint = {
        "epoch": 9,
        "global_step": 990,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": state,
        "hyper_parameters": {"lr": 0.06, "max_epochs": 10},
    }
    path = tmp_path / "epoch=9-step=990.ckpt"
    torch.save(checkpoint, path)
    trunk = random_trunk(tower(kwargs={}, path=path, size=64), 1).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = backbone(images).flatten(1)  # (2, 512)
        got = trunk.forward_head(trunk.forward_features(images), pre_logits=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    printed = capsys.readouterr().out
    assert "prefix 'backbone.' removed" in printed and "lightly's layout" in printed
    assert f"{len(backbone.state_dict())} tensors from" in printed  # every one, head aside


def test_a_vissl_checkpoint_loads_its_trunk_from_deep_inside(tmp_path, capsys):
    """VISSL's model zoo (SwAV, SimCLR, Barlow Twins, ...) nests the trunk as
    ``classy_state_dict.base_model.model.trunk`` with ``_feature_blocks.`` keys, beside its
    heads, and its loss's state (a queue) sits shallower: the trunk is the dict that matches."""
    trunk_weights = random_trunk(tower(), 1).state_dict()
    checkpoint = {
        "phase_idx": 12,
        "iteration": 6000,
        "classy_state_dict": {
            "train": True,
            "loss": {"queue": torch.randn(2, 64, 16)},  # shallower, and not the trunk
            "base_model": {
                "model": {
                    "trunk": prefixed(trunk_weights, "_feature_blocks."),
                    "heads": {"0.projection_head.0.weight": torch.randn(16, 16)},
                },
                "meta": {"version": "0.1.6"},
            },
        },
    }
    path = tmp_path / "model_final_checkpoint_phase799.torch"
    torch.save(checkpoint, path)
    trunk = random_trunk(tower(path=path), 2)
    assert_same(trunk, trunk_weights)
    printed = capsys.readouterr().out
    assert "under 'classy_state_dict.base_model.model.trunk'" in printed
    assert "prefix '_feature_blocks.' removed" in printed


def test_dino_full_checkpoint_loads_the_teacher_backbone_resampled_to_the_size(tmp_path):
    """DINO's full checkpoint (student and teacher, ``module.backbone.`` / ``backbone.`` and the
    DINO head): the teacher's ViT, its position embeddings resampled from 32 to 64 px by timm."""
    small = tower("vit_tiny_patch16_224", VIT, size=32)
    teacher = random_trunk(small, 1).state_dict()
    student = random_trunk(small, 2).state_dict()
    dino_head = {"head.last_layer.weight_g": torch.ones(1, 4), "head.mlp.0.weight": torch.ones(4)}
    path = tmp_path / "dino_vitt8_full.pth"
    torch.save(
        {
            "student": prefixed({**student, **dino_head}, "module.backbone."),
            "teacher": {**prefixed(teacher, "backbone."), **dino_head},
            "epoch": 100,
            "args": argparse.Namespace(arch="vit_tiny", patch_size=8, lr=5e-4),  # as DINO's
        },
        path,
    )
    same_size = random_trunk(tower("vit_tiny_patch16_224", VIT, path, size=32), 3)
    assert_same(same_size, teacher)
    larger = random_trunk(tower("vit_tiny_patch16_224", VIT, path, size=64), 3)
    assert larger.pos_embed.shape == (1, 1 + 8 * 8, 32)
    for key, value in teacher.items():
        if key != "pos_embed":
            assert torch.equal(larger.state_dict()[key], value), key
    assert larger(torch.randn(2, 3, 64, 64)).shape == (2, 32)


def test_swav_module_keys_with_prototypes_and_a_timm_safetensors_file(tmp_path, capsys):
    backbone = random_trunk(tower(), 1).state_dict()
    swav = {
        **prefixed(backbone, "module."),
        "module.projection_head.0.weight": torch.randn(8, 16),
        "module.prototypes.weight": torch.randn(30, 8),
    }
    torch.save(swav, tmp_path / "swav_800ep_pretrain.pth.tar")
    assert_same(random_trunk(tower(path=tmp_path / "swav_800ep_pretrain.pth.tar"), 2), backbone)
    assert "left out 2" in capsys.readouterr().out
    save_file(backbone, str(tmp_path / "timm.safetensors"))
    assert_same(random_trunk(tower(path=tmp_path / "timm.safetensors"), 2), backbone)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    backbone = random_trunk(tower(), 1).state_dict()
    torch.save({"state_dict": backbone, "extra": Payload(marker)}, tmp_path / "evil.pth")
    # the error names what the file would have run
    with pytest.raises(ConfigError, match=r"refusing to load .* a pickled (posix|nt|os)\.system"):
        create_trunk(tower(path=tmp_path / "evil.pth"))
    hidden = {"state_dict": backbone, "args": argparse.Namespace(hook=Payload(marker))}
    torch.save(hidden, tmp_path / "evil_args.pth")  # the Namespace's values are checked too
    with pytest.raises(ConfigError, match="image.checkpoint_path: refusing to load"):
        create_trunk(tower(path=tmp_path / "evil_args.pth"))
    assert not marker.exists()


def test_an_old_torch_reads_no_pickle_at_all(tmp_path, monkeypatch):
    """torch before 2.10 has known holes in its weights_only unpickler: even a benign file is
    refused, with the upgrade to make, and the file is not opened."""
    from vlcontrast.models import torch_format

    torch.save(random_trunk(tower(), 1).state_dict(), tmp_path / "plain.pth")
    assert create_trunk(tower(path=tmp_path / "plain.pth"))  # today's torch reads it
    opened = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a))
    for version in ("2.5.1+cu121", "2.9.0"):
        monkeypatch.setattr(torch, "__version__", version)
        with pytest.raises(ConfigError, match=f"torch {re.escape(version)}.*pip install -U torch"):
            create_trunk(tower(path=tmp_path / "plain.pth"))
    assert not opened
    assert torch_format.torch_release("2.10.0a0+git") == (2, 10) > (2, 9)


def test_weights_of_another_architecture_are_one_error_naming_a_tensor(tmp_path):
    wider = random_trunk(tower(kwargs={**RESNET, "channels": [8, 8, 16, 32]}), 1).state_dict()
    torch.save(wider, tmp_path / "wider.pth")
    with pytest.raises(ConfigError, match=r"layer4\..* is \(32, .*has \(16, "):
        create_trunk(tower(path=tmp_path / "wider.pth"))
    vit = random_trunk(tower("vit_tiny_patch16_224", VIT), 1).state_dict()
    torch.save(vit, tmp_path / "vit.pth")
    with pytest.raises(ConfigError, match="lacks .* of image.model 'resnet18'.*set image.model"):
        create_trunk(tower(path=tmp_path / "vit.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ConfigError, match="holds a list"):
        create_trunk(tower(path=tmp_path / "list.pth"))


def test_prefix_is_the_one_that_matches_most_keys_first_on_a_tie():
    wanted = {"a.w", "b.w"}
    keys = ["m.q.a.w", "m.q.b.w", "m.k.a.w", "m.k.b.w", "m.q.fc.w"]
    assert best_prefix(keys, wanted) == "m.q."
    assert best_prefix(["a.w", "b.w", "x.a.w"], wanted) == ""
    assert best_prefix(["k.a.w", "q.a.w", "q.b.w"], wanted) == "q."
    assert best_prefix(["a.b.c.d." + "a.w", "a.b.c.d." + "b.w"], wanted) == "a.b.c.d."
    assert best_prefix(["." * 100_000 + "a.w"], wanted) == ""  # bounded work, nothing found


def test_a_run_started_from_a_file_evaluates_without_it(tmp_path):
    """The file a run started from is not read when the run's checkpoint is loaded: its
    weights are in model.safetensors, and the file may be gone (or named by a stranger)."""
    from vlcontrast.models import build_model
    from vlcontrast.models.load import load_model, save_model_dir

    backbone = random_trunk(tower(), 1).state_dict()
    source = tmp_path / "start.pth"
    torch.save(backbone, source)
    overrides = [
        "model.kind=image",
        "objective.name=simclr",
        "image.model=resnet18",
        f"image.model_kwargs={RESNET}",
        "image.image_size=32",
        f"image.checkpoint_path={source}",
    ]
    cfg = config_lib.load(None, overrides)
    model = build_model(cfg)
    save_model_dir(model, None, cfg, tmp_path / "run")
    source.unlink()
    loaded, _, loaded_cfg = load_model(tmp_path / "run")
    assert loaded_cfg.image.checkpoint_path == ""
    assert_same(loaded.image.trunk, backbone)


def test_import_backbone_then_dense_knn_through_the_cli(tmp_path, capsys):
    """``vlcontrast import backbone`` writes an image-only checkpoint with the encoder's weights
    and ImageNet's statistics, which ``eval dense-knn`` scores; bad flags are one message."""
    from vlcontrast import cli
    from vlcontrast.models.load import load_model

    query = random_trunk(tower(kwargs={**RESNET, "output_stride": 8}), 1).state_dict()
    state = {**prefixed(query, "module.encoder_q."), "module.queue": torch.randn(4, 8)}
    torch.save({"state_dict": state}, tmp_path / "densecl.pth")
    base = ["import", "backbone", str(tmp_path / "densecl.pth")]
    kwargs = "{layers: [1, 1, 1, 1], channels: [8, 8, 16, 16], output_stride: 8}"
    out = tmp_path / "ckpt"
    assert cli.main([*base, "--out", str(out)]) == 2
    assert "model: name the timm architecture" in capsys.readouterr().err
    assert cli.main([*base, "--model", "resnet18", "--model-kwargs", "[1]", "--out", str(out)]) == 2
    assert "--model-kwargs: '[1]' is not a mapping" in capsys.readouterr().err
    assert cli.main([*base, "--model", "resnet18", "--eval-crop", "2", "--out", str(out)]) == 2
    assert "--eval-crop: must be between" in capsys.readouterr().err
    assert not out.exists()
    flags = ["--model", "resnet18", "--model-kwargs", kwargs, "--image-size", "64"]
    assert cli.main([*base, *flags, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"vlcontrast eval dense-knn --checkpoint {out}" in printed
    assert f"vlcontrast train {out}/config.json model.init_from={out}" in printed
    model, _, cfg = load_model(out)
    assert_same(model.image.trunk, query)
    assert cfg.image.mean == [0.485, 0.456, 0.406] and cfg.image.checkpoint_path == ""
    assert cfg.image.eval_crop == 0.875  # ImageNet's resize 256, centre 224
    masks = tmp_path / "masks"
    assert cli.main(["data", "masks", str(masks), "--train", "12", "--heldout", "4"]) == 0
    capsys.readouterr()
    train, heldout = masks / "train" / "00000.tar", masks / "heldout" / "00000.tar"
    args = ["eval", "dense-knn", "--checkpoint", str(out), "--train-data", str(train)]
    assert cli.main([*args, "--data", str(heldout), "--k", "3"]) == 0
    printed = capsys.readouterr().out
    assert "dense_knn" in printed and "miou" in printed


def test_export_to_timm_loads_in_timm_alone_and_imports_back(tmp_path, capsys):
    """``export --to timm``: timm's own ``local-dir:`` loader builds the backbone with its
    weights and preprocessing, and it computes our image tower's features; ``import backbone``
    of its weights gives the same tensors back."""
    import timm

    from vlcontrast import cli
    from vlcontrast.models.load import load_model

    byol = Path(__file__).parent / "data" / "format2" / "byol"  # a ViT trained with BYOL
    out = tmp_path / "timm_vit"
    assert cli.main(["export", str(byol), "--to", "timm", str(out)]) == 0
    assert f'timm.create_model("local-dir:{out}", pretrained=True)' in capsys.readouterr().out
    ours = load_model(byol)[0].image.eval()
    theirs = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert_same(theirs, ours.trunk.state_dict())
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    cfg = theirs.pretrained_cfg
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        want = ours.features(images)
        got = theirs((images.float() / 255 - mean) / std)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert list(cfg["input_size"]) == [3, 32, 32]
    back = tmp_path / "back"
    kwargs = "{patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2}"  # byol's config.json
    flags = ["--model", "test_vit", "--model-kwargs", kwargs]
    args = ["import", "backbone", str(out / "model.safetensors"), *flags, "--image-size", "32"]
    assert cli.main([*args, "--out", str(back)]) == 0
    assert_same(load_model(back)[0].image.trunk, ours.trunk.state_dict())
    folder = tmp_path / "from_folder"  # the folder alone: its config names the rest
    assert cli.main(["import", "backbone", str(out), "--out", str(folder)]) == 0
    model, _, cfg = load_model(folder)
    assert_same(model.image.trunk, ours.trunk.state_dict())
    image = cfg.image
    assert (image.model, image.image_size, image.eval_crop) == ("test_vit", 32, 1.0)
    assert image.mean == list(ours.mean) and image.model_kwargs["embed_dim"] == 32
    assert cli.main(["export", str(back), "--to", "hf", str(tmp_path / "hf")]) == 2
