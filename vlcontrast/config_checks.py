"""Cross-field checks of a run config that need neither data nor a model (one message naming
the key). ``config.load`` runs them, so ``vlcontrast config`` refuses what ``train`` would;
the trainer runs them again on a config built in code."""

from __future__ import annotations

from typing import Any

from vlcontrast.data.view_presets import check_view
from vlcontrast.schema import ConfigError

# timm.create_model's own ways to fetch or read weights: they would bypass the checks of
# image.pretrained (downloads only when asked) and image.checkpoint_path (never a pickle that
# runs code, never a file a saved config names), so model_kwargs may not carry them
TIMM_LOADING = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


def check_model_kwargs(model_kwargs: dict) -> None:
    """A ConfigError if ``image.model_kwargs`` holds one of :data:`TIMM_LOADING`."""
    found = [key for key in TIMM_LOADING if key in model_kwargs]
    if found:
        raise ConfigError(
            f"image.model_kwargs.{found[0]}: timm would fetch or read weights by it, past this "
            f"project's checks; use image.pretrained=true or image.checkpoint_path=FILE"
        )


def validate(cfg: Any) -> None:
    """The cross-field checks that need neither data nor a model, run by ``load`` so that
    ``vlcontrast config`` refuses what ``train`` would (one message naming the key)."""
    data = cfg.data
    check_model_kwargs(cfg.image.model_kwargs)
    if cfg.train.grad_cache_steps > data.batch_size:
        raise ConfigError(
            f"train.grad_cache_steps: {cfg.train.grad_cache_steps} micro-batches cannot split a "
            f"batch of data.batch_size={data.batch_size}; use at most the batch size"
        )
    if data.sampler == "class_balanced":
        check_balanced(cfg)
    if cfg.optim.layer_decay <= 0:
        raise ConfigError("optim.layer_decay: expected a value in (0, 1] (1: off), got 0")
    if data.weights and data.mode != "resampled":
        raise ConfigError("data.weights: source weights need data.mode=resampled")
    if len(data.crop_scale) != 2 or not 0 < data.crop_scale[0] <= data.crop_scale[1] <= 1:
        raise ConfigError(f"data.crop_scale: expected [low, high] in (0, 1], got {data.crop_scale}")
    for name in ("first", "second"):
        try:
            check_view(getattr(cfg.views, name), f"views.{name}")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    settings = getattr(cfg.objective, cfg.objective.name, None)
    if hasattr(settings, "check"):  # the objective's own cross-field checks
        settings.check()
    if cfg.model.bn_split > 1:
        if cfg.model.sync_bn:
            raise ConfigError("model.bn_split: splits batch norm; model.sync_bn joins it: pick one")
        if data.batch_size % cfg.model.bn_split:
            raise ConfigError(
                f"model.bn_split: data.batch_size={data.batch_size} does not split into "
                f"{cfg.model.bn_split} groups"
            )


def check_balanced(cfg: Any) -> None:
    """A class-balanced sampler plans whole epochs of P x K batches (the objective's side is
    checked with the model's, ``train/model_setup.py``)."""
    data = cfg.data
    if data.mode != "epoch":
        raise ConfigError("data.sampler: class_balanced plans epochs; it needs data.mode=epoch")
    if data.batch_size % data.samples_per_class or data.batch_size < 2 * data.samples_per_class:
        raise ConfigError(
            f"data.samples_per_class: data.batch_size={data.batch_size} must be a multiple of "
            f"samples_per_class={data.samples_per_class}, with at least 2 classes per batch"
        )
