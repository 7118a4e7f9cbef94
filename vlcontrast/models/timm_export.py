"""``vlcontrast export CKPT --to timm DIR``: a checkpoint's image backbone as the folder timm
loads without vlcontrast (``timm.create_model("local-dir:DIR", pretrained=True)``):
``model.safetensors`` holds the trunk's weights under timm's own names (a ResNet's are
torchvision's, which detectron2's and mmsegmentation's converters read), ``config.json`` the
architecture, its arguments and the preprocessing it was trained with (timm's ``pretrained_cfg``:
input size, mean, std, crop share). The way out for the image-only methods' backbones (SimCLR,
MoCo, DINO, SwAV, DenseCL, ...) and for a CLIP's image tower; ``import backbone`` reads such a
folder's weights back.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from vlcontrast.config import Config


def timm_config(tower: nn.Module, cfg: Config) -> dict:
    """timm's ``config.json`` for the trunk of ``tower`` (an ``ImageTower``) as ``cfg`` built
    it, classifier-free, with the statistics the tower normalises with."""
    trunk, size = tower.trunk, cfg.image.image_size
    args = dict(cfg.image.model_kwargs)
    if "img_size" in inspect.signature(type(trunk).__init__).parameters:
        args.setdefault("img_size", size)  # a ViT's position embeddings
    return {
        "architecture": cfg.image.model,
        "num_classes": 0,
        "num_features": int(trunk.num_features),
        "model_args": args,
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "interpolation": "bicubic",
            "mean": list(tower.mean),
            "std": list(tower.std),
            "crop_pct": cfg.image.eval_crop,
            "crop_mode": "center",
            "num_classes": 0,
        },
    }


def export_timm(model: nn.Module, cfg: Config, out: str | Path) -> Path:
    """Write ``model``'s image trunk to the folder ``out`` (see the module); returns it."""
    image = getattr(model, "image", None)
    if image is None or not hasattr(image, "trunk"):
        raise ValueError("export --to timm: this checkpoint's model has no image tower")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"export --to timm: {out} is a file; name a folder to write")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in image.trunk.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    config = timm_config(image, cfg)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
