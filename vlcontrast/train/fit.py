"""Fitting a run file to the machine and the data it meets, before anything is built: a run file
written for 8 GPUs and 400 shards still runs as written on a 2-core laptop with 5 shards, and
says what it changed (one ``note:`` line each).

* ``train.precision=auto`` (the default): bf16 autocast on a GPU that has it, float32 elsewhere.
  A CPU without native bf16 emulates it: a step of the README's CPU line took 90-100 s in bf16
  against 5-13 s in float32 (about 10x) on this project's 2-core test machine, so an explicit
  bf16 there gets a warning.
* ``data.num_workers=-1`` (the default): with a GPU, the cores this rank has minus one for the
  main process (at most 16); on a CPU, 2 (the training step needs the other cores). Then, set or
  not, at most the cores this rank has, and in epoch mode (where every stream needs a shard of
  its own) at most the shards each rank gets, when ``data.streams`` follows it.
* ``optim.warmup_steps=-1`` (the default): 500 steps, at most 10% of a short run's. A 500-step
  warm-up took the whole of a 337-step run and the learning rate never decayed.
* A batch larger than the data is refused now, not after the progress bar started.
"""

from __future__ import annotations

import os

import torch

from vlcontrast import distributed
from vlcontrast.config import Config, ConfigError
from vlcontrast.distributed import print0

DEFAULT_WARMUP = 500  # optim.warmup_steps=-1 for a long run (OpenCLIP's recipes: 500-10000)
WARMUP_FRACTION = 0.1


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matrix units in this CPU (oneDNN's own check)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def fit_precision(cfg: Config, device: torch.device) -> None:
    """Resolve ``train.precision=auto``; warn about bf16 on a CPU that emulates it."""
    train = cfg.train
    cuda = torch.device(device).type == "cuda"
    if train.precision == "auto":
        bf16 = cuda and torch.cuda.is_bf16_supported()
        train.precision = "bf16" if bf16 else "no"
        where = "this GPU has bf16" if bf16 else ("this GPU lacks bf16" if cuda else "CPU")
        print0(f"note: train.precision=auto -> {'bf16' if bf16 else 'fp32'} ({where})")
    elif train.precision == "bf16" and not cuda and not cpu_has_native_bf16():
        print0(
            "warning: train.precision=bf16 on a CPU without bf16 units is emulated, about 10x "
            "slower than fp32 (measured on a 2-core CPU); train.precision=auto picks fp32 here"
        )


def cores_per_rank() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


MAX_AUTO_WORKERS = 16  # decoding processes past this add memory more than speed
CPU_WORKERS = 2  # a CPU run: two decoders beside the step (benchmarks/loader.py)


def auto_workers(cuda: bool) -> int:
    """``data.num_workers=-1``: the decoding processes for this rank's cores."""
    if not cuda:
        return CPU_WORKERS
    return max(1, min(MAX_AUTO_WORKERS, cores_per_rank() - 1))


def fit_workers(cfg: Config, shards: int) -> None:
    """Resolve ``data.num_workers=-1``, then lower it to what the cores and, in epoch mode,
    the shards allow."""
    data, world = cfg.data, distributed.world_size()
    if data.num_workers < 0:
        data.num_workers = auto_workers(torch.cuda.is_available())
    limit, why = cores_per_rank(), "CPU cores for this process"
    if data.mode == "epoch" and not data.streams and shards // world < limit:
        limit, why = max(1, shards // world), f"shards per rank ({shards} over {world})"
    if data.num_workers > limit:
        print0(f"note: data.num_workers={data.num_workers} lowered to {limit}, the {why}")
        data.num_workers = limit


def fit_warmup(cfg: Config) -> None:
    """Resolve ``optim.warmup_steps=-1`` (the default): 500 steps, at most 10% of the run
    (``train.steps`` is resolved by now)."""
    optim, steps = cfg.optim, cfg.train.steps
    if optim.warmup_steps >= 0:
        return
    cap = max(1, int(WARMUP_FRACTION * steps))
    optim.warmup_steps = min(DEFAULT_WARMUP, cap)
    if cap < DEFAULT_WARMUP:
        print0(
            f"note: optim.warmup_steps {DEFAULT_WARMUP} is over 10% of this run's {steps} "
            f"steps; warming up for {cap} (set optim.warmup_steps to choose)"
        )


def check_batch_fits(cfg: Config, size: int | None, global_batch: int) -> None:
    """In epoch mode, a global batch larger than the whole dataset can never be formed."""
    if cfg.data.mode != "epoch" or not size or size >= global_batch:
        return
    world = distributed.world_size()
    fits = max(1, size // world)
    raise ConfigError(
        f"data.batch_size: the data holds {size} samples, fewer than one global batch of "
        f"{global_batch} ({world} rank(s) x {cfg.data.batch_size}); use data.batch_size={fits} "
        f"or less"
    )
