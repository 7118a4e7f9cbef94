"""OpenCLIP's initialisation for CLIP-layout towers built from scratch.

A timm CLIP ViT and transformers' ``CLIPTextModel`` come with their own initialisations (timm:
every linear layer N(0, 0.02), class token near zero, position embedding std 0.02; transformers:
q/k/v at width^-0.5 (2 layers)^-0.5 and the attention output at width^-0.5, the reverse of
OpenCLIP), and the projections with ``nn.Linear``'s default. OpenCLIP initialises the same
networks differently, and that is what learns: on the digits corpus of ``benchmarks/learning.py``
(``model.preset=tiny``, 30 epochs, defaults otherwise) the loss stayed at log(batch) for about
50 steps with the libraries' initialisation and reached zero-shot top-1 0.451, against 0.693 for
OpenCLIP's own trainer; imported from a fresh OpenCLIP model into the same run instead, it fell
from step 20. So :func:`openclip_init` sets, as OpenCLIP's ``VisionTransformer`` and
``TextTransformer`` do:

* image: class token and position embedding N(0, width^-0.5); the patch convolution and the MLPs
  at PyTorch's default; the fused qkv Xavier-uniform with zero bias (``nn.MultiheadAttention``),
  its output projection at the default with zero bias;
* text: token embedding N(0, 0.02), positions N(0, 0.01); q/k/v N(0, width^-0.5) with zero bias,
  attention output and the MLP's second layer N(0, width^-0.5 (2 layers)^-0.5), the MLP's first
  layer N(0, (2 width)^-0.5);
* both projections N(0, width^-0.5).
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def init_vit(trunk: nn.Module, proj: nn.Module | None) -> None:
    """A timm VisionTransformer (``cls_token``, ``pos_embed``, ``blocks``) as OpenCLIP's."""
    width = trunk.pos_embed.shape[-1]
    nn.init.normal_(trunk.cls_token, std=width**-0.5)
    nn.init.normal_(trunk.pos_embed, std=width**-0.5)
    trunk.patch_embed.proj.reset_parameters()
    for block in trunk.blocks:
        nn.init.xavier_uniform_(block.attn.qkv.weight)
        nn.init.zeros_(block.attn.qkv.bias)
        block.attn.proj.reset_parameters()
        nn.init.zeros_(block.attn.proj.bias)
        block.mlp.fc1.reset_parameters()
        block.mlp.fc2.reset_parameters()
    if isinstance(proj, nn.Linear):
        nn.init.normal_(proj.weight, std=width**-0.5)


@torch.no_grad()
def init_clip_text(encoder: nn.Module, proj: nn.Module | None) -> None:
    """transformers' ``CLIPTextModel`` (or its ``text_model``) as OpenCLIP's text transformer."""
    text = getattr(encoder, "text_model", encoder)
    width = text.embeddings.token_embedding.weight.shape[1]
    layers = text.encoder.layers
    attn_std = width**-0.5
    proj_std = width**-0.5 * (2 * len(layers)) ** -0.5
    fc_std = (2 * width) ** -0.5
    nn.init.normal_(text.embeddings.token_embedding.weight, std=0.02)
    nn.init.normal_(text.embeddings.position_embedding.weight, std=0.01)
    for layer in layers:
        for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            nn.init.normal_(linear.weight, std=attn_std)
            nn.init.zeros_(linear.bias)
        nn.init.normal_(layer.self_attn.out_proj.weight, std=proj_std)
        nn.init.zeros_(layer.self_attn.out_proj.bias)
        layer.mlp.fc1.reset_parameters()  # the bias as nn.Linear's default, as OpenCLIP's
        layer.mlp.fc2.reset_parameters()
        nn.init.normal_(layer.mlp.fc1.weight, std=fc_std)
        nn.init.normal_(layer.mlp.fc2.weight, std=proj_std)
    if isinstance(proj, nn.Linear):
        nn.init.normal_(proj.weight, std=width**-0.5)


def is_clip_vit(trunk: nn.Module) -> bool:
    names = ("cls_token", "pos_embed", "blocks", "patch_embed")
    return all(hasattr(trunk, n) for n in names) and trunk.cls_token is not None


def is_clip_text(encoder: nn.Module) -> bool:
    return getattr(getattr(encoder, "config", None), "model_type", "") == "clip_text_model"
