"""Locking towers (LiT, Zhai et al. 2022; OpenCLIP's ``--lock-image``/``--lock-text``).

``lock.image`` / ``lock.text`` freeze a tower with its projection, all of it or all but its last
``*_unlocked`` blocks (transformer blocks or layers; the final norm and the projection unlock
with them). Locked parameters get ``requires_grad=False``, so the optimizer never sees them and
DDP leaves them out of its buckets: no "unused parameters" error (OpenCLIP issue 283) and no
need for ``find_unused_parameters``. ``lock.norms_trainable`` keeps the locked part's
normalisation gains and biases trainable, ``lock.projections_trainable`` the projections (a
pretrained timm trunk comes with a random one). A fully locked tower stays in eval mode when
the loop calls ``train()`` (no dropout, batch-norm statistics frozen); in a partly locked one
the locked blocks do, and ``lock.freeze_bn_stats`` freezes every batch-norm statistic of the
image tower.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from vlcontrast.models.blocks import block_lists
from vlcontrast.schema import ConfigError

NORMS = (nn.LayerNorm, nn.GroupNorm, _BatchNorm)


def _blocks(tower: nn.Module, what: str) -> nn.Module:
    """The tower's sequence of transformer blocks: timm's ``blocks`` (ViTs), transformers'
    ``layers`` (CLIP) or ``layer`` (BERT)."""
    for blocks in block_lists(tower):
        return blocks
    raise ConfigError(
        f"lock.{what}_unlocked: the {what} tower has no transformer blocks to unlock (timm "
        f"'blocks', transformers 'layers'); lock the whole tower (lock.{what}_unlocked=0)"
    )


def _stay_eval(module: nn.Module) -> None:
    """``module.train()`` keeps it in eval mode from now on."""
    module.eval()
    module.train = lambda mode=True: nn.Module.train(module, False)  # type: ignore[method-assign]


def lock_tower(
    tower: nn.Module, unlocked: int, norms_trainable: bool, what: str, proj_trainable: bool = False
) -> None:
    tower.requires_grad_(False)
    if proj_trainable:
        tower.proj.requires_grad_(True)
    if unlocked <= 0:
        if norms_trainable:
            for module in tower.modules():
                if isinstance(module, NORMS):
                    module.requires_grad_(True)
        else:
            _stay_eval(tower)
        return
    blocks = _blocks(tower, what)
    if unlocked > len(blocks):
        raise ConfigError(
            f"lock.{what}_unlocked: {unlocked} blocks, but the tower has {len(blocks)}"
        )
    for block in list(blocks)[-unlocked:]:
        block.requires_grad_(True)
    # what comes after the blocks (final norm, projection) trains with them
    after = _after(tower, blocks)
    for module in after:
        module.requires_grad_(True)
    for block in list(blocks)[:-unlocked]:
        if norms_trainable:
            for module in block.modules():
                if isinstance(module, NORMS):
                    module.requires_grad_(True)
        else:
            _stay_eval(block)


def _after(tower: nn.Module, blocks: nn.ModuleList) -> list[nn.Module]:
    """Modules registered after the block list in the tower's own order: the final norms and
    heads (timm's ``norm``/``fc_norm``, CLIP's ``final_layer_norm``, our ``proj``)."""
    names = [name for name, _ in tower.named_modules()]
    block_name = next(name for name, module in tower.named_modules() if module is blocks)
    index = names.index(block_name)
    out = []
    for name, module in list(tower.named_modules())[index + 1 :]:
        if not name.startswith(block_name + ".") and not any(module is b for b in blocks):
            out.append(module)
    return out


def apply_locks(model: nn.Module, lock) -> None:
    """Lock what ``lock`` (``config.LockConfig``) says; a no-op by default."""
    if lock.image:
        lock_tower(
            model.image,
            lock.image_unlocked,
            lock.norms_trainable,
            "image",
            lock.projections_trainable,
        )
    if lock.freeze_bn_stats:
        for module in model.image.modules():
            if isinstance(module, _BatchNorm):
                _stay_eval(module)
    if lock.text:
        if getattr(model, "text", None) is None:
            raise ConfigError("lock.text: this model has no text tower")
        lock_tower(
            model.text, lock.text_unlocked, lock.norms_trainable, "text", lock.projections_trainable
        )
