"""OpenCLIP checkpoints in: ``open_clip_pytorch_model.bin`` / ``.safetensors`` with the model
config JSON (``open_clip_config.json``'s ``model_cfg``, or a ``model_configs/*.json`` file).

OpenCLIP's ViT CLIP is the same network as Hugging Face's ``CLIPModel`` under other names (fused
``in_proj`` attention, ``c_fc``/``c_proj`` MLPs, projections stored as (width, embed) matrices
used as ``x @ proj``), so the checkpoint is renamed into the ``CLIPModel`` layout with an
explicit table and imported by ``models.hf_clip`` from there. ViT image towers only (not the
ModifiedResNet or attention-pooled variants); the text tower pools the end-of-text token, the
highest id, as OpenCLIP's ``argmax`` pooling does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from vlcontrast.models.torch_format import load_tensors_only
from vlcontrast.schema import ConfigError


def read_model_cfg(path: str | Path) -> dict:
    values = json.loads(Path(path).read_text())
    cfg = values.get("model_cfg", values)
    if "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise ConfigError(
            f"--config: {path} is not an OpenCLIP model config (vision_cfg, text_cfg)"
        )
    vision = cfg["vision_cfg"]
    if isinstance(vision.get("layers"), list) or vision.get("timm_model_name"):
        raise ConfigError(f"--config: {path}: only OpenCLIP's ViT image towers import")
    if vision.get("attentional_pool") or cfg["text_cfg"].get("hf_model_name"):
        raise ConfigError(f"--config: {path}: attention pooling and HF text towers do not import")
    return cfg


def hf_config(cfg: dict):
    """The ``transformers.CLIPConfig`` of an OpenCLIP ViT model config."""
    from transformers import CLIPConfig

    act = "quick_gelu" if cfg.get("quick_gelu") else "gelu"
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    v_width, t_width = v["width"], t["width"]
    vocab = t.get("vocab_size", 49408)
    vision = {
        "hidden_size": v_width,
        "intermediate_size": int(v_width * v.get("mlp_ratio", 4.0)),
        "num_hidden_layers": v["layers"],
        "num_attention_heads": v_width // v.get("head_width", 64),
        "image_size": v["image_size"],
        "patch_size": v["patch_size"],
        "hidden_act": act,
    }
    text = {
        "vocab_size": vocab,
        "hidden_size": t_width,
        "intermediate_size": int(t_width * t.get("mlp_ratio", 4.0)),
        "num_hidden_layers": t["layers"],
        "num_attention_heads": t["heads"],
        "max_position_embeddings": t.get("context_length", 77),
        "hidden_act": act,
        # OpenCLIP pools the highest token id (end of text); CLIP's tokenizer gives it
        "eos_token_id": vocab - 1,
        "bos_token_id": vocab - 2,
        "pad_token_id": 0,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg["embed_dim"])


def _blocks(prefix: str, hf: str, depth: int) -> list[tuple[str, str]]:
    pairs = []
    for i in range(depth):
        a, b = f"{prefix}transformer.resblocks.{i}.", f"{hf}encoder.layers.{i}."
        for ours, theirs in (
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("attn.out_proj", "self_attn.out_proj"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        ):
            pairs += [
                (f"{a}{ours}.weight", f"{b}{theirs}.weight"),
                (f"{a}{ours}.bias", f"{b}{theirs}.bias"),
            ]
    return pairs


def openclip_to_hf(state: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """An OpenCLIP ViT CLIP state dict in the ``CLIPModel`` layout."""
    v_depth, t_depth = cfg["vision_cfg"]["layers"], cfg["text_cfg"]["layers"]
    pairs = [
        ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
        ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
        ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
        ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"),
        ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
        ("visual.ln_post.weight", "vision_model.post_layernorm.weight"),
        ("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
        ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
        ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
        ("ln_final.weight", "text_model.final_layer_norm.weight"),
        ("ln_final.bias", "text_model.final_layer_norm.bias"),
        ("logit_scale", "logit_scale"),
        *_blocks("visual.", "vision_model.", v_depth),
        *_blocks("", "text_model.", t_depth),
    ]
    missing = [ours for ours, _ in pairs if ours not in state]
    if missing:
        raise ConfigError(f"not an OpenCLIP ViT checkpoint of this config: no {missing[:3]}")
    out = {hf: state[ours] for ours, hf in pairs}
    out["visual_projection.weight"] = state["visual.proj"].T.contiguous()  # (E, W)
    out["text_projection.weight"] = state["text_projection"].T.contiguous()
    for prefix, hf, depth in (("visual.", "vision_model.", v_depth), ("", "text_model.", t_depth)):
        for i in range(depth):
            attn = f"{prefix}transformer.resblocks.{i}.attn."
            for kind in ("weight", "bias"):
                q, k, v = state[f"{attn}in_proj_{kind}"].chunk(3)
                for name, part in zip("qkv", (q, k, v), strict=True):
                    out[f"{hf}encoder.layers.{i}.self_attn.{name}_proj.{kind}"] = part
    return out


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = load_tensors_only(path, "vlcontrast import openclip")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    return {k.removeprefix("module."): v for k, v in state.items()}  # saved from DDP


def import_openclip(checkpoint: str | Path, config: str | Path, tokenizer_dir: str | None = None):
    """(model, tokenizer or None, config) of an OpenCLIP ViT checkpoint."""
    import tempfile

    from vlcontrast.models.hf_clip import import_hf

    cfg = read_model_cfg(config)
    hf_state = openclip_to_hf(read_state(checkpoint), cfg)
    with tempfile.TemporaryDirectory() as tmp:  # the CLIPModel layout, then the one importer
        from safetensors.torch import save_file

        hf_config(cfg).save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in hf_state.items()}, f"{tmp}/model.safetensors")
        model, _, ours = import_hf(tmp)
    tokenizer = None
    if tokenizer_dir:
        from vlcontrast.models.text_tower import load_tokenizer

        ours.text.tokenizer = str(tokenizer_dir)
        tokenizer = load_tokenizer(ours.text)
    return model, tokenizer, ours
