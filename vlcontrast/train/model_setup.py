"""Model-side setup of a training run: the model keys the objective decides, the check that
the model has the towers the objective feeds, initial weights (``model.init_from``), locking,
the efficiency switches, and synchronised (DDP) or split (one process) batch norm."""

from __future__ import annotations

from torch import nn

from vlcontrast import config as config_lib
from vlcontrast.config import Config, ConfigError
from vlcontrast.data.view_presets import vit_patch
from vlcontrast.distributed import print0
from vlcontrast.models.build import has_text
from vlcontrast.models.split_bn import split_batch_norm
from vlcontrast.objectives import objective_class


def fit_local_size(cfg: Config, groups: list) -> None:
    """Write the local crops' fitted size (``crops.local_size: 0``) into the config, so the
    saved config says it, with a note."""
    crops = getattr(getattr(cfg.objective, cfg.objective.name, None), "crops", None)
    local = next((group.size for group in groups if group.name == "local"), 0)
    if crops is None or crops.local_size or not local:
        return
    crops.local_size = local
    patch = vit_patch(cfg.image.model, cfg.image.model_kwargs)
    grid = f", a multiple of the patch {patch}" if patch > 1 else ""
    print0(
        f"note: objective.{cfg.objective.name}.crops.local_size=0 -> {local} (96/224 of "
        f"image.image_size={cfg.image.image_size}{grid})"
    )


# Keys whose default (0) is fitted when a run starts and that shape weights: a resumed run
# keeps the value its checkpoint was made with, as a default fitted otherwise since (say, by
# a newer version) would no longer fit the saved tensors.
FITTED_SHAPES = ("objective.dino.out_dim",)


def keep_saved_shapes(cfg: Config, saved: Config) -> None:
    """Give ``cfg``'s fitted shape keys (:data:`FITTED_SHAPES`) left at 0 the values of the
    checkpoint's config ``saved``, with a note."""
    for key in FITTED_SHAPES:
        *path, name = key.split(".")
        here, there = cfg, saved
        for part in path:
            here, there = getattr(here, part), getattr(there, part, None)
        value = getattr(there, name, 0) if there is not None else 0
        if not getattr(here, name) and value:
            setattr(here, name, value)
            print0(f"note: {key}=0 -> {value} (the value the resumed checkpoint was made with)")


def resolve_model_settings(cfg: Config) -> None:
    """Fill the model keys the objective decides (``model.logit_bias`` left at None;
    ``image.dynamic_size`` for views of several sizes), so the saved config rebuilds the same
    model without knowing the objective; check the model has the towers the objective feeds."""
    cls = objective_class(cfg.objective.name)
    config_lib.resolve(cfg)
    groups = cls.view_groups(cfg) or []
    if any(group.size != cfg.image.image_size for group in groups):
        cfg.image.dynamic_size = True  # multi-crop: a ViT takes the local crops at their size
    fit_local_size(cfg, groups)
    if "text" in cls.modalities and not has_text(cfg):
        raise ConfigError(
            f"model.kind: objective {cfg.objective.name!r} trains on image-text pairs; "
            f"set model.kind=dual (model.kind={cfg.model.kind} has no text tower)"
        )
    if cfg.data.sampler == "class_balanced" and (not cls.needs_labels or "text" in cls.modalities):
        raise ConfigError(
            f"data.sampler: class_balanced batches are for labelled image-only objectives "
            f"(metric, supcon), not objective.name={cfg.objective.name}"
        )
    if cls.modalities == ("text",) and cfg.model.kind != "text":
        raise ConfigError(
            f"model.kind: objective {cfg.objective.name!r} trains the text tower alone; set "
            f"model.kind=text (an image tower would take no gradient)"
        )
    if "image" in cls.modalities and cfg.model.kind == "text":
        raise ConfigError(
            f"model.kind: objective {cfg.objective.name!r} needs images; model.kind=text has "
            f"no image tower"
        )
    if cls.uses_text_tower and cfg.model.kind != "dual":
        raise ConfigError(
            f"model.kind: objective {cfg.objective.name!r} makes its head with the text tower; "
            f"set model.kind=dual (start from a CLIP with model.init_from)"
        )
    if "text" not in cls.modalities and cfg.model.kind != "image" and not cls.uses_text_tower:
        raise ConfigError(
            f"model.kind: objective {cfg.objective.name!r} trains on images only; set "
            f"model.kind=image (a text tower would take no gradient)"
        )


def sync_batch_norm(model: nn.Module, cfg: Config, accelerator) -> nn.Module:
    """``model.sync_bn``: batch-norm layers (of the model and the task's heads) that normalise
    over the global batch; ``model.bn_split``: over slices of this process's batch, as that
    many devices would."""
    if cfg.model.bn_split > 1:
        if cfg.model.sync_bn:
            raise ConfigError("model.bn_split: splits batch norm; model.sync_bn joins it: pick one")
        if cfg.data.batch_size % cfg.model.bn_split:
            raise ConfigError(
                f"model.bn_split: data.batch_size={cfg.data.batch_size} does not split into "
                f"{cfg.model.bn_split} groups"
            )
        return split_batch_norm(model, cfg.model.bn_split)
    if not cfg.model.sync_bn or accelerator.num_processes == 1:
        return model
    if accelerator.device.type != "cuda":
        raise ConfigError("model.sync_bn: torch's SyncBatchNorm runs on CUDA devices only")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def init_weights(model: nn.Module, cfg: Config) -> None:
    """``model.init_from``: load a checkpoint's or a Hugging Face CLIP's weights, every tensor
    with its shape checked, before training (a resume then overrides them)."""
    from pathlib import Path

    from vlcontrast.models.load import is_checkpoint, load_weights

    source = cfg.model.init_from
    if not source:
        return
    from vlcontrast.models.hf_clip import is_hf_clip

    path = Path(source)
    if is_checkpoint(path) and not is_hf_clip(path):
        try:
            load_weights(path, model)
        except RuntimeError as err:
            raise ConfigError(f"model.init_from: {err}") from None
        return
    if is_hf_clip(path):
        from transformers import CLIPConfig

        from vlcontrast.models.hf_clip import check_shapes, hf_to_ours, read_hf_state, text_prefix

        depth = CLIPConfig.from_pretrained(path).vision_config.num_hidden_layers
        wanted = model.state_dict()
        state = hf_to_ours(read_hf_state(path), depth, text_prefix(wanted))
        try:
            check_shapes(state, wanted, f"model.init_from: {path}")
        except ValueError as err:
            raise ConfigError(
                f"{err}; start the run file from the config that 'vlcontrast import "
                f"hf {path} --out CKPT' writes"
            ) from None
        model.load_state_dict(state)
        return
    raise ConfigError(
        f"model.init_from: {path} is neither a vlcontrast checkpoint nor a Hugging "
        f"Face model directory"
    )


def efficiency_switches(model: nn.Module, cfg: Config) -> nn.Module:
    """``train.grad_checkpointing`` (both towers), ``train.channels_last`` (the image tower's
    weights and inputs in NHWC) and, with gradient caching, ``train.compile``
    (``nn.Module.compile`` in place, so the weights keep their names in checkpoints). Patch
    dropout is built into the tower (``image.patch_dropout``)."""
    import torch

    t = cfg.train
    if t.grad_checkpointing:
        trunk = model.image.trunk
        if not hasattr(trunk, "set_grad_checkpointing"):
            raise ConfigError(f"train.grad_checkpointing: timm {cfg.image.model!r} cannot")
        trunk.set_grad_checkpointing(True)
        text = getattr(model, "text", None)
        if text is not None:
            if not getattr(text.encoder, "supports_gradient_checkpointing", False):
                raise ConfigError("train.grad_checkpointing: the text encoder does not support it")
            kwargs = {"use_reentrant": False}
            if hasattr(text.encoder, "activation_checkpointing_enable"):  # transformers >= 5
                text.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                text.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    set_sdpa(model, t.sdpa)
    if t.channels_last:
        model.image.to(memory_format=torch.channels_last)
        model.image.channels_last = True
    if t.compile and t.grad_cache_steps > 1:
        # gradient caching runs the forward apart from the loss: the model alone is compiled;
        # the plain step compiles model and loss as one graph (loop.compiled_step)
        model.compile()
    return model


def set_sdpa(model: nn.Module, on: bool) -> None:
    """``train.sdpa``: torch's scaled-dot-product attention, or the explicit softmax, in every
    attention layer of both towers (timm's ``fused_attn`` flag, transformers' attention
    implementation)."""
    for module in model.modules():
        if hasattr(module, "fused_attn"):  # timm attention layers
            module.fused_attn = on
    text = getattr(model, "text", None)
    encoder = getattr(text, "encoder", None)
    if encoder is not None and hasattr(encoder, "set_attn_implementation"):
        try:
            encoder.set_attn_implementation("sdpa" if on else "eager")
        except (ValueError, ImportError):  # a tower without an sdpa path keeps its own
            pass


def set_tf32(on: bool, device) -> None:
    """``train.tf32`` on a CUDA device: TF32 for fp32 matmuls and cuDNN convolutions."""
    import torch

    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def build_training_model(cfg: Config, accelerator) -> nn.Module:
    """The model to train: built, started from ``model.init_from``, locked (``lock.*``), with
    the efficiency switches applied. The batch-norm mode (:func:`sync_batch_norm`) is applied
    to the task once it owns the model and its heads."""
    from vlcontrast.models.build import build_model
    from vlcontrast.train.locking import apply_locks

    model = build_model(cfg)
    init_weights(model, cfg)
    apply_locks(model, cfg.lock)
    return efficiency_switches(model, cfg)
