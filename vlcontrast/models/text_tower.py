"""Text tower: any transformers encoder, pooled, projected and L2-normalised.

Sits between ``data`` (token ids + attention mask, right-padded) and the losses; ``forward``
returns the pooled features (before the projection) and the unit-norm embeddings. The encoder is
built from a hub name, a local directory (``save_pretrained`` layout) or an inline config dict
with a ``model_type`` for random initialisation, so tests and the demo never touch the network.
Pooling is a pure function of the hidden states and the mask: ``cls`` (first token), ``mean``
(mean over real tokens) or ``eos`` (last real token, as in CLIP's causal text transformer).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from vlcontrast.config import ConfigError, TextTowerConfig
from vlcontrast.hub import check_source
from vlcontrast.presets import PRESETS


def pool_cls(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


def pool_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def pool_eos(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    last = mask.long().sum(1).clamp(min=1) - 1  # (B,) index of the last real token (right pad)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


POOLINGS = {"cls": pool_cls, "mean": pool_mean, "eos": pool_eos}

# The default text tower: CLIP's text transformer (Radford et al. 2021, B/32 and B/16: 12 layers,
# width 512, 8 heads, causal attention mask, pre-LN, a final layer norm, the end-of-text token's
# state pooled), built inline by transformers (CLIPTextModel): the b32 preset's, defined there
# once. vocab_size follows the tokenizer.
DEFAULT_TEXT_CONFIG = dict(PRESETS["b32"]["text"]["config"])


def inline_config(cfg: TextTowerConfig) -> dict:
    """The inline config the tower is built from: ``text.config``, else (no ``text.model``
    either) the CLIP text transformer; empty when the tower comes from ``text.model``."""
    if cfg.config:
        return dict(cfg.config)
    return {} if cfg.model else dict(DEFAULT_TEXT_CONFIG)


def follow_tokenizer(cfg: TextTowerConfig, tokenizer) -> None:
    """An inline tower without ``vocab_size`` gets the tokenizer's size (written into
    ``text.config``, so the saved config rebuilds the same tower)."""
    values = inline_config(cfg)
    if values and tokenizer is not None:
        values.setdefault("vocab_size", len(tokenizer))
        ids = {
            "bos_token_id": getattr(tokenizer, "bos_token_id", None),
            "eos_token_id": getattr(tokenizer, "eos_token_id", None),
            "pad_token_id": getattr(tokenizer, "pad_token_id", None),
        }
        for key, value in ids.items():  # CLIP's own ids (49406...) would lie outside it
            if value is not None:
                values.setdefault(key, value)
        cfg.config = values


def build_encoder(cfg: TextTowerConfig) -> nn.Module:
    if inline_config(cfg):
        values = inline_config(cfg)
        model_type = values.pop("model_type", None)
        if not model_type:
            raise ConfigError("text.config: needs a model_type (e.g. bert) for random init")
        try:
            encoder = AutoModel.from_config(AutoConfig.for_model(model_type, **values))
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"text.config: {str(err).splitlines()[0]}") from None
    else:
        check_source("text.model", cfg.model, "a model directory")
        try:
            if cfg.pretrained:
                encoder = AutoModel.from_pretrained(cfg.model)
            else:
                encoder = AutoModel.from_config(AutoConfig.from_pretrained(cfg.model))
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"text.model: cannot load {cfg.model!r} ({first_line(err)})"
            ) from None
    positions = getattr(encoder.config, "max_position_embeddings", None)
    if positions is not None and cfg.context_length > positions:
        raise ConfigError(
            f"text.context_length: {cfg.context_length} tokens, but the text tower has only "
            f"{positions} positions (max_position_embeddings); lower text.context_length"
        )
    return encoder


def first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__


def load_tokenizer(cfg: TextTowerConfig) -> PreTrainedTokenizerBase:
    """Tokenizer from ``text.tokenizer`` (dir, hub name or tokenizer.json), else ``text.model``."""
    source = cfg.tokenizer or cfg.model
    key = "text.tokenizer" if cfg.tokenizer else "text.model"
    if not source:
        raise ConfigError(
            "text.tokenizer: set a tokenizer (a directory, tokenizer.json or hub name); make "
            "one from your captions with 'vlcontrast tokenizer train --shards URLS --out DIR'"
        )
    local = Path(source).exists()
    check_source(key, source, "a tokenizer directory or tokenizer.json")
    try:
        if source.endswith(".json") and Path(source).is_file():
            tok = PreTrainedTokenizerFast(tokenizer_file=source)
        else:
            tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as err:
        where = "" if local else " (not a local path: tried it as a hub name)"
        raise ConfigError(
            f"{key}: cannot load a tokenizer from {source}{where}: {first_line(err)}"
        ) from None
    tok.padding_side = "right"  # pool_eos relies on it
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


class TextTower(nn.Module):
    """``encoder`` (transformers), pooling and ``proj`` (the head)."""

    def __init__(self, cfg: TextTowerConfig, embed_dim: int):
        super().__init__()
        self.encoder = build_encoder(cfg)
        has_pooler = getattr(self.encoder, "pooler", None) is not None
        if cfg.pooling == "pooler":
            if not has_pooler and self.encoder.config.model_type != "clip_text_model":
                raise ConfigError(
                    f"text.pooling: pooler, but the {self.encoder.config.model_type} text "
                    f"tower has no pooler; use cls or mean"
                )
            self.pool = None  # the encoder's pooler_output
        else:
            if has_pooler:
                # We pool last_hidden_state ourselves; BERT-style poolers would be parameters
                # that never get a gradient, which DDP's reducer rejects (and waste memory).
                self.encoder.pooler = None
            self.pool = POOLINGS[cfg.pooling]
        self.num_features = self.encoder.config.hidden_size
        self.proj = nn.Linear(self.num_features, embed_dim, bias=False)

    @property
    def vocab_rows(self) -> int:
        """Rows of the token embedding table: the largest tokenizer this tower can take."""
        return self.encoder.get_input_embeddings().num_embeddings

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids and mask -> (B, H) pooled features."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        if self.pool is None:
            return out.pooler_output
        return self.pool(out.last_hidden_state, attention_mask)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features (B, H) and unit-norm embeddings (B, D)."""
        features = self.features(input_ids, attention_mask)
        return features, F.normalize(self.proj(features), dim=-1)
