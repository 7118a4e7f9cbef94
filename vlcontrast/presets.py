"""Named model presets (``model.preset``): OpenCLIP's model shapes in one word.

A preset fills the image tower, the text tower and the embedding size; a run file and the
command line still override any of its keys. The shapes follow OpenCLIP's model configs
(``ViT-S-32.json``, ``ViT-B-32.json``, ``ViT-B-16.json``): vision width/layers/patch, text
width/heads/layers, embed_dim; the image towers are timm's CLIP-layout ViTs (pre-norm), the text
towers transformers' CLIP text transformer (causal, pre-LN, eos pooling). ``tiny`` is for CPUs:
a 4-layer ViT at 32 px (0.8M parameters) and a 4-layer text transformer (1M plus
128 per vocabulary entry).
"""

from __future__ import annotations

from typing import Any


def _text(width: int, heads: int, layers: int) -> dict[str, Any]:
    return {
        "config": {
            "model_type": "clip_text_model",
            "hidden_size": width,
            "intermediate_size": 4 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "max_position_embeddings": 77,
        },
        "pooling": "eos",
        "context_length": 77,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "image": {
            "model": "vit_base_patch32_clip_224",
            "image_size": 32,
            "model_kwargs": {"patch_size": 4, "embed_dim": 128, "depth": 4, "num_heads": 4},
        },
        "text": {**_text(128, 4, 4), "context_length": 32},
        "model": {"embed_dim": 128},
    },
    "s32": {  # OpenCLIP ViT-S-32: vision 384 x 12, patch 32; text 384, 6 heads, 12 layers
        "image": {
            "model": "vit_base_patch32_clip_224",
            "image_size": 224,
            "model_kwargs": {"embed_dim": 384, "num_heads": 6},
        },
        "text": _text(384, 6, 12),
        "model": {"embed_dim": 384},
    },
    "b32": {  # OpenCLIP ViT-B-32: vision 768 x 12, patch 32; text 512, 8 heads, 12 layers
        "image": {"model": "vit_base_patch32_clip_224", "image_size": 224},
        "text": _text(512, 8, 12),
        "model": {"embed_dim": 512},
    },
    "b16": {  # OpenCLIP ViT-B-16: vision 768 x 12, patch 16; text 512, 8 heads, 12 layers
        "image": {"model": "vit_base_patch16_clip_224", "image_size": 224},
        "text": _text(512, 8, 12),
        "model": {"embed_dim": 512},
    },
}
