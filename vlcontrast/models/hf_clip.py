"""Released CLIP weights in and out: a Hugging Face ``CLIPModel`` directory <-> vlcontrast.

The vision tower becomes timm's CLIP-layout ViT (``vit_base_patch16_clip_quickgelu_224`` when
the release uses QuickGELU, as OpenAI's do, else ``vit_base_patch16_clip_224``, resized to the
release's patch, width, depth, heads and MLP ratio): class token, pre-norm, fused qkv. The text
tower is ``transformers``' own ``CLIPTextModel``, so its weights carry over under their names;
both projections and ``logit_scale`` too. The mapping is an explicit table with a shape check on
every tensor (torchtitan's state-dict adapters, nanoGPT's ``from_pretrained``), used in both
directions: ``import_hf`` builds a vlcontrast checkpoint, ``export_hf`` a directory that
``transformers.CLIPModel.from_pretrained`` loads without vlcontrast. A timm CLIP ViT with another
transformers text tower (BERT, ...) exports as a ``VisionTextDualEncoderModel`` when the text
tower was trained on its own pooler output (``text.pooling=pooler``), the feature that model
projects; cls or mean pooling have no transformers counterpart, so those are refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from vlcontrast import config as config_lib
from vlcontrast.config import Config
from vlcontrast.models.torch_format import load_tensors_only
from vlcontrast.schema import ConfigError

TIMM_CLIP_VIT = {
    "quick_gelu": "vit_base_patch16_clip_quickgelu_224",
    "gelu": "vit_base_patch16_clip_224",
}

# The CLIPTextConfig fields that fix the text tower's shape and tokens, both directions
TEXT_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def config_from_hf(hf_config) -> Config:
    """Our config for a ``transformers.CLIPConfig``: towers of the same shape, eos pooling."""
    v, t = hf_config.vision_config, hf_config.text_config
    if v.hidden_act not in TIMM_CLIP_VIT:
        raise ConfigError(
            f"model.init_from: vision hidden_act {v.hidden_act!r} has no timm CLIP ViT"
        )
    if abs(v.layer_norm_eps - 1e-5) > 1e-12:
        raise ConfigError(
            f"model.init_from: vision layer_norm_eps {v.layer_norm_eps} (timm's CLIP ViT: 1e-5)"
        )
    text = {
        "model_type": "clip_text_model",
        **{k: getattr(t, k) for k in TEXT_KEYS},
    }
    values = {
        "image": {
            "model": TIMM_CLIP_VIT[v.hidden_act],
            "image_size": v.image_size,
            "eval_resize": "shortest",  # CLIP's own preprocessing (CLIPImageProcessor)
            "model_kwargs": {
                "patch_size": v.patch_size,
                "embed_dim": v.hidden_size,
                "depth": v.num_hidden_layers,
                "num_heads": v.num_attention_heads,
                "mlp_ratio": v.intermediate_size / v.hidden_size,
            },
        },
        "text": {"config": text, "pooling": "eos", "context_length": t.max_position_embeddings},
        "model": {"embed_dim": hf_config.projection_dim, "proj_layers": 1, "logit_bias": False},
    }
    return config_lib.apply(Config(), values)


def _vision_pairs(depth: int) -> list[tuple[str, str]]:
    """(ours, Hugging Face's) names of the vision tensors that map one to one."""
    pairs = [
        ("image.trunk.patch_embed.proj.weight", "vision_model.embeddings.patch_embedding.weight"),
        ("image.trunk.norm_pre.weight", "vision_model.pre_layrnorm.weight"),
        ("image.trunk.norm_pre.bias", "vision_model.pre_layrnorm.bias"),
        ("image.trunk.norm.weight", "vision_model.post_layernorm.weight"),
        ("image.trunk.norm.bias", "vision_model.post_layernorm.bias"),
        ("image.proj.weight", "visual_projection.weight"),
    ]
    for i in range(depth):
        ours, hf = f"image.trunk.blocks.{i}.", f"vision_model.encoder.layers.{i}."
        for a, b in (
            ("norm1", "layer_norm1"),
            ("norm2", "layer_norm2"),
            ("attn.proj", "self_attn.out_proj"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ):
            pairs += [
                (f"{ours}{a}.weight", f"{hf}{b}.weight"),
                (f"{ours}{a}.bias", f"{hf}{b}.bias"),
            ]
    return pairs


def text_prefix(ours: dict[str, torch.Tensor]) -> str:
    """Where ``CLIPModel``'s ``text_model.`` tensors sit in our state dict: the encoder is the
    ``transformers`` text model itself, whose own names gained or lost the ``text_model.``
    level between versions."""
    nested = any(k.startswith("text.encoder.text_model.") for k in ours)
    return "text.encoder.text_model." if nested else "text.encoder."


def hf_to_ours(
    hf: dict[str, torch.Tensor], depth: int, prefix: str = "text.encoder."
) -> dict[str, torch.Tensor]:
    """A ``CLIPModel`` state dict -> ours (vision re-laid for timm, text under ``prefix``)."""
    out = {ours: hf[name] for ours, name in _vision_pairs(depth)}
    out["image.trunk.cls_token"] = hf["vision_model.embeddings.class_embedding"].reshape(1, 1, -1)
    out["image.trunk.pos_embed"] = hf["vision_model.embeddings.position_embedding.weight"][None]
    for i in range(depth):
        attn = f"vision_model.encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            qkv = [hf[f"{attn}{p}_proj.{kind}"] for p in "qkv"]
            out[f"image.trunk.blocks.{i}.attn.qkv.{kind}"] = torch.cat(qkv)  # (3D, D) / (3D,)
    for name, value in hf.items():
        if name.startswith("text_model.") and not name.endswith("position_ids"):
            out[prefix + name.removeprefix("text_model.")] = value
    out["text.proj.weight"] = hf["text_projection.weight"]
    out["logit_scale"] = hf["logit_scale"].reshape(())
    return out


def ours_to_hf(ours: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """The inverse of :func:`hf_to_ours`."""
    out = {name: ours[mine] for mine, name in _vision_pairs(depth)}
    out["vision_model.embeddings.class_embedding"] = ours["image.trunk.cls_token"].reshape(-1)
    out["vision_model.embeddings.position_embedding.weight"] = ours["image.trunk.pos_embed"][0]
    for i in range(depth):
        attn = f"vision_model.encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            q, k, v = ours[f"image.trunk.blocks.{i}.attn.qkv.{kind}"].chunk(3)
            out.update(
                {f"{attn}q_proj.{kind}": q, f"{attn}k_proj.{kind}": k, f"{attn}v_proj.{kind}": v}
            )
    prefix = text_prefix(ours)
    for name, value in ours.items():
        if name.startswith(prefix):
            out["text_model." + name.removeprefix(prefix)] = value
    out["text_projection.weight"] = ours["text.proj.weight"]
    out["logit_scale"] = ours["logit_scale"].reshape(())
    return out


def check_shapes(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    """Every tensor of ``want`` present in ``got`` with its shape; nothing extra."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        raise ValueError(f"{what}: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, tensor in want.items():
        if tuple(got[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{what}: {name} has shape {tuple(got[name].shape)}, expected {tuple(tensor.shape)}"
            )


def is_hf_clip(path: str | Path) -> bool:
    """A ``CLIPModel.save_pretrained`` directory (its config.json names a model type; ours
    holds run sections)."""
    try:
        values = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and "vision_config" in values and "text_config" in values


def read_hf_state(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if files:
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(str(file)))
        return state
    bins = sorted(path.glob("pytorch_model*.bin"))
    if not bins:
        raise ConfigError(f"model.init_from: {path} has no model.safetensors or pytorch_model.bin")
    state = {}
    for file in bins:
        state.update(load_tensors_only(file, "model.init_from"))
    return state


def import_hf(path: str | Path):
    """(model, tokenizer or None, config) from a ``CLIPModel.save_pretrained`` directory."""
    from transformers import AutoTokenizer, CLIPConfig

    from vlcontrast.models.build import build_model

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.init_from: {path} is not a Hugging Face model directory")
    hf_config = CLIPConfig.from_pretrained(path)
    cfg = config_from_hf(hf_config)
    processor = path / "preprocessor_config.json"
    if processor.is_file():
        values = json.loads(processor.read_text())
        cfg.image.mean = list(values.get("image_mean", cfg.image.mean))
        cfg.image.std = list(values.get("image_std", cfg.image.std))
    tokenizer = None
    if any((path / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        tokenizer = AutoTokenizer.from_pretrained(path)
        cfg.text.tokenizer = str(path)
    resolved = config_lib.resolve(cfg)
    with torch.device("meta"):  # shapes only: a config that its weights do not match (an
        skeleton = build_model(resolved).state_dict()  # absurd width) stops before allocating
    depth = hf_config.vision_config.num_hidden_layers
    state = hf_to_ours(read_hf_state(path), depth, text_prefix(skeleton))
    check_shapes(state, skeleton, f"{path}: its weights do not match its config.json")
    model = build_model(resolved)
    model.load_state_dict(state)
    return model.eval(), tokenizer, cfg


def clip_shaped(cfg: Config) -> bool:
    """Towers that ``CLIPModel`` holds: a timm CLIP ViT of any size (``vit_*_clip_*``, the
    presets' and the imports' alike; :func:`clip_vit` checks the built trunk), a
    ``clip_text_model`` text tower, linear projections and no logit bias."""
    return (
        cfg.model.kind == "dual"
        and re.fullmatch(r"vit_\w+_clip_(quickgelu_)?\d+", cfg.image.model.split(".")[0])
        is not None
        and (cfg.text.config or {}).get("model_type") == "clip_text_model"
        and cfg.model.proj_layers == 1
        and not cfg.model.logit_bias
    )


def clip_vit(trunk) -> bool:
    """A timm ViT laid out as CLIP's vision transformer: class token read out after the final
    norm, a norm before the blocks (CLIP's ``ln_pre``), fused qkv with biases, no layer scale,
    no query/key norms, LayerNorm eps 1e-5, GELU or QuickGELU."""
    from torch import nn

    blocks = getattr(trunk, "blocks", None)
    if not blocks or getattr(trunk, "cls_token", None) is None:  # a CNN, or no class token
        return False
    block = blocks[0]
    act = type(getattr(getattr(block, "mlp", None), "act", None)).__name__
    return (
        getattr(trunk, "global_pool", None) == "token"
        and isinstance(getattr(trunk, "norm_pre", None), nn.LayerNorm)
        and isinstance(getattr(trunk, "fc_norm", nn.Identity()), nn.Identity)
        and getattr(trunk, "attn_pool", None) is None
        and isinstance(getattr(block, "ls1", nn.Identity()), nn.Identity)
        and isinstance(getattr(block.attn, "q_norm", nn.Identity()), nn.Identity)
        and getattr(getattr(block.attn, "qkv", None), "bias", None) is not None
        and abs(getattr(trunk.norm, "eps", 0.0) - 1e-5) < 1e-12
        and act in ("GELU", "QuickGELU")
    )


def vision_config_of(model, cfg: Config) -> dict:
    """The ``CLIPVisionConfig`` values of a timm CLIP ViT image tower."""
    trunk = model.image.trunk
    return {
        "hidden_size": trunk.embed_dim,
        "intermediate_size": trunk.blocks[0].mlp.fc1.out_features,
        "num_hidden_layers": len(trunk.blocks),
        "num_attention_heads": trunk.blocks[0].attn.num_heads,
        "image_size": cfg.image.image_size,
        "patch_size": trunk.patch_embed.patch_size[0],
        "hidden_act": "quick_gelu"
        if type(trunk.blocks[0].mlp.act).__name__ == "QuickGELU"
        else "gelu",
        "layer_norm_eps": 1e-5,
    }


def hf_config_of(model, cfg: Config):
    """The ``transformers.CLIPConfig`` of a CLIP-shaped vlcontrast model."""
    from transformers import CLIPConfig

    text = {k: v for k, v in model.text.encoder.config.to_dict().items() if k in TEXT_KEYS}
    vision = vision_config_of(model, cfg)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=model.embed_dim)


def export_hf(model, tokenizer, cfg: Config, out: str | Path) -> Path:
    """Write ``out`` so that ``transformers`` loads this model without vlcontrast:
    ``CLIPModel.from_pretrained`` (and ``CLIPProcessor``) for CLIP-shaped towers,
    ``VisionTextDualEncoderModel.from_pretrained`` (and its processor) for a timm CLIP ViT with
    any other transformers text tower pooled by its own pooler (``text.pooling=pooler``).
    Refuses the rest, which transformers would not compute the same way."""
    from transformers import CLIPModel

    out = Path(out)
    clip_vision = cfg.model.kind == "dual" and clip_vit(model.image.trunk)
    plain = cfg.model.proj_layers == 1 and not cfg.model.logit_bias
    dual = not clip_shaped(cfg) and cfg.text.pooling == "pooler"
    if clip_vision and plain and (clip_shaped(cfg) or dual):
        hf_model = dual_encoder_of(model, cfg) if dual else CLIPModel(hf_config_of(model, cfg))
    else:
        raise ValueError(
            "export --to hf: transformers has no model that computes these towers' embeddings "
            "(CLIPModel: a timm CLIP ViT, vit_*_clip_*, with a clip_text_model text tower; "
            "VisionTextDualEncoderModel: a timm CLIP ViT with any text tower trained with "
            "text.pooling=pooler; both with linear projections and no logit bias); use --to "
            "safetensors for the plain state dict"
        )
    state = ours_to_hf(
        {k: v.detach().cpu() for k, v in model.state_dict().items()},
        len(model.image.trunk.blocks),
    )
    wanted = {k: v for k, v in hf_model.state_dict().items() if not k.endswith("position_ids")}
    if any(k.startswith("vision_model.vision_model.") for k in wanted):
        # a dual encoder's CLIPVisionModel holds its own vision_model (in some versions)
        state = {
            f"vision_model.{k}" if k.startswith("vision_model.") else k: v for k, v in state.items()
        }
    check_shapes(state, wanted, "export")
    hf_model.load_state_dict(state, strict=False)
    hf_model.save_pretrained(out)
    write_processor(model, cfg, tokenizer, out, dual)
    return out


def dual_encoder_of(model, cfg: Config):
    """An empty ``VisionTextDualEncoderModel`` of this model's shapes (a CLIP vision tower)."""
    from transformers import (
        CLIPVisionConfig,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
    )

    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        CLIPVisionConfig(**vision_config_of(model, cfg)),
        model.text.encoder.config,
        projection_dim=model.embed_dim,
    )
    return VisionTextDualEncoderModel(config)


def write_processor(model, cfg: Config, tokenizer, out: Path, dual: bool) -> None:
    """The image processor (our evaluation crop and normalisation) and the tokenizer, as
    ``CLIPProcessor`` or ``VisionTextDualEncoderProcessor`` reads them."""
    from transformers import CLIPImageProcessor, VisionTextDualEncoderProcessor

    size = cfg.image.image_size
    images = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(model.image.mean),
        image_std=list(model.image.std),
    )
    if dual and tokenizer is not None:
        VisionTextDualEncoderProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(
            out
        )
        return
    images.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
