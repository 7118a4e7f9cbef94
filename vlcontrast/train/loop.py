"""The training loop: config -> model, objective, data -> steps -> checkpoints, logs, evals.

Built on ``accelerate`` (devices, DDP, process groups), so the same code runs in one CPU process,
on one GPU, and under ``torchrun``/``accelerate launch``; bf16/fp16 autocast is
``train/precision.py``. The loop never branches on the objective: an objective turns a batch into
``{"loss", "metrics"}``. Each feature (resume and checkpoints: ``train/resume.py``, the run
directory: ``train/run_dir.py``, evaluation, divergence checks) is a named helper.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from vlcontrast import config as config_lib
from vlcontrast import distributed
from vlcontrast.config import Config, ConfigError
from vlcontrast.data.bad_data import BadData
from vlcontrast.data.batching import iterate_epochs, to_device
from vlcontrast.data.shards import DataPosition
from vlcontrast.data.vocab import unknown_warning
from vlcontrast.distributed import print0
from vlcontrast.eval import report
from vlcontrast.eval.runner import check_evaluators, run_evaluators, scalar_metrics
from vlcontrast.models.build import has_text
from vlcontrast.models.text_tower import follow_tokenizer, load_tokenizer
from vlcontrast.objectives import build_objective
from vlcontrast.objectives.base import unwrap
from vlcontrast.train import checkpoint, fsdp
from vlcontrast.train import run_dir as run_dir_lib
from vlcontrast.train.curves import draw_curves
from vlcontrast.train.data_setup import (
    build_train_data,
    data_size,
    epoch_of,
    report_data,
    resolve_steps,
    set_streams,
)
from vlcontrast.train.ema import ModelEma
from vlcontrast.train.fit import check_batch_fits, fit_precision, fit_warmup
from vlcontrast.train.grad_cache import grad_cached_step
from vlcontrast.train.interrupt import StopRequest
from vlcontrast.train.metrics_log import MetricsLogger
from vlcontrast.train.model_setup import (
    build_training_model,
    keep_saved_shapes,
    resolve_model_settings,
    set_tf32,
    sync_batch_norm,
)
from vlcontrast.train.optim import build_optimizer, build_scheduler, set_weight_decay
from vlcontrast.train.precision import Precision
from vlcontrast.train.resume import resolve_resume, resume, save_checkpoint
from vlcontrast.train.task_state import TaskState


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN/inf; the message names the last good checkpoint."""


def train(cfg: Config) -> dict[str, Any]:
    """Run (or resume) training as ``cfg`` says; returns a summary of the run."""
    accelerator = make_accelerator()
    fit_precision(cfg, accelerator.device)
    precision = Precision(cfg.train.precision, accelerator.device)
    set_tf32(cfg.train.tf32, accelerator.device)
    set_seed(cfg.train.seed)
    run_dir = Path(cfg.train.output_dir)
    ckpt_root = run_dir / "checkpoints"
    resume_from = resolve_resume(cfg.train.resume, ckpt_root)
    run_dir_lib.check_writable(cfg)
    if accelerator.is_main_process:
        run_dir_lib.check_fresh(cfg, resume_from)

    resolve_model_settings(cfg)
    if resume_from is not None:
        keep_saved_shapes(cfg, checkpoint.read_config(resume_from))
    tokenizer = load_tokenizer(cfg.text) if has_text(cfg) else None
    follow_tokenizer(cfg.text, tokenizer)
    check_evaluators(cfg, tokenizer)  # a mistake stops the run now, not after the last step
    model = build_training_model(cfg, accelerator)  # the shared model: what checkpoints export
    check_vocab(model, tokenizer)
    task = build_objective(cfg.objective)  # owns the model, the method's heads and its state
    dataset, loader = build_train_data(cfg, tokenizer)
    global_batch = cfg.data.batch_size * accelerator.num_processes
    size, how = data_size(cfg, dataset)
    check_batch_fits(cfg, size, global_batch)
    resolve_steps(cfg, size, global_batch)
    fit_warmup(cfg)
    task.epoch_steps = math.ceil(size / global_batch) if size else 0
    task.setup(model, cfg, global_batch)
    task = sync_batch_norm(task, cfg, accelerator)
    task.to(accelerator.device)
    sharded = cfg.train.fsdp and accelerator.num_processes > 1
    if sharded:
        fsdp.check_task(task, cfg.objective.name)
        fsdp.shard(model, accelerator.device)
    optimizer = build_optimizer(task, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
    bad = BadData(cfg.data.max_bad_fraction, cfg.data.bad_min_samples)
    state = {"step": 0, "position": DataPosition(), "bad": bad}
    parts = {
        "objective": TaskState(task),
        "optimizer": fsdp.ShardedOptimizer(model, optimizer) if sharded else optimizer,
        "scheduler": scheduler,
        "data": state["position"],
        "bad_data": bad,
        "rng": checkpoint.RNGState(),
    }
    if precision.scaler is not None:
        parts["grad_scaler"] = precision.scaler
    ema = make_ema(model, cfg)
    if ema is not None:
        parts["ema"] = ema
    if resume_from is not None:
        state["step"] = resume(resume_from, task, parts, cfg)
    if accelerator.is_main_process:  # also a restart killed before its first checkpoint
        run_dir_lib.roll_back(run_dir, state["step"])
    set_streams(cfg, state["position"])
    dataset.check(state["position"].streams)
    trainee = task  # what the step calls: the task, DDP-wrapped unless FSDP2 holds the model
    if sharded:
        optimizer = accelerator.prepare(optimizer)
    else:
        trainee, optimizer = accelerator.prepare(task, optimizer)

    main = accelerator.is_main_process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.save(cfg, run_dir / "config.json")
        report_data(cfg, dataset, state["position"], size, how)
    logger = MetricsLogger(run_dir, enabled=main, tensorboard=cfg.train.tensorboard)
    batches = iterate_epochs(loader, dataset, state["position"], account=bad.add)
    bar = tqdm(
        total=cfg.train.steps,
        initial=state["step"],
        disable=not (main and cfg.train.progress),
        desc="train",
        unit="step",
    )
    window_start, window_steps, last_loss = time.perf_counter(), 0, None
    evals: dict[str, float] = {}

    stop, interrupted = StopRequest(), False
    with stop:
        while state["step"] < cfg.train.steps:
            batch = next(batches)
            if state["step"] == 0 and tokenizer is not None:
                warn_unknown_captions(tokenizer, batch.get("texts", []))
            bad.check_all_ranks(accelerator.device)
            set_weight_decay(optimizer, cfg.optim, state["step"], cfg.train.steps)
            loss, metrics = train_step(
                accelerator, precision, trainee, optimizer, batch, cfg, state
            )
            scheduler.step()
            state["step"] += 1
            if ema is not None:
                ema.update(state["step"])
            window_steps += 1
            step = state["step"]
            bar.update(1)

            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                elapsed = time.perf_counter() - window_start
                metrics.update(
                    loss=global_mean(accelerator, loss),
                    lr=scheduler.get_last_lr()[0],
                    epoch=epoch_of(state, cfg, global_batch, size),
                    samples_per_s=window_steps * global_batch / elapsed,
                    skipped=dict(bad.by_reason),
                    samples_read=bad.seen,
                )
                logger.log(step, {"train": metrics})
                last_loss = metrics["loss"]  # the last step always logs: the run's final loss
                print0(log_line(step, metrics))
                bar.set_postfix(
                    loss=f"{metrics['loss']:.4f}",
                    samples_s=f"{metrics['samples_per_s']:.0f}",
                    skipped=bad.skipped,
                )
                window_start, window_steps = time.perf_counter(), 0
            if step % cfg.train.save_every == 0 or step == cfg.train.steps:
                save_checkpoint(accelerator, ckpt_root, model, parts, state["step"], cfg, tokenizer)
            if eval_due(cfg, step):
                evals = run_evals(accelerator, model, tokenizer, cfg, step)
                logger.log(step, {"eval": evals})
                if evals:
                    print0(eval_line(step, evals))
            if stop.agreed(accelerator.device):  # Ctrl-C: this step is done and saved
                if step % cfg.train.save_every != 0 and step != cfg.train.steps:
                    save_checkpoint(accelerator, ckpt_root, model, parts, step, cfg, tokenizer)
                interrupted = True
                break

    bar.close()
    logger.close()
    curves = draw_curves(run_dir) if main else None
    summary = {
        "steps": state["step"],
        "final_loss": last_loss,
        "skipped": dict(bad.by_reason),
        "samples_read": bad.seen,
        "eval": evals,
        "checkpoint": str(checkpoint.latest(ckpt_root)),
        "interrupted": interrupted,
        "curves": str(curves) if curves else None,
    }
    print0(bad.summary())
    return summary


def make_ema(model, cfg: Config) -> ModelEma | None:
    """``train.ema``: the average of the shared model's weights (``train/ema.py``); under FSDP
    it averages each rank's shards, so it is made after ``fsdp.shard``."""
    if not cfg.train.ema:
        return None
    return ModelEma(model, cfg.train.ema, cfg.train.ema_warmup)


def eval_line(step: int, evals: dict[str, float]) -> str:
    """The headline numbers (counts and chance levels stay in the logs)."""
    counts = ("/n", "/chance", "/images", "/captions", "/mean_rank", "/weight_decay")
    shown = {k: v for k, v in evals.items() if not k.endswith(counts)}
    return f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items())


def make_accelerator() -> Accelerator:
    """Devices and process groups come from accelerate; mixed precision does not (see
    ``train/precision.py``), so runs with different precisions can share a process."""
    return Accelerator(cpu=not torch.cuda.is_available())


def log_line(step: int, metrics: dict[str, Any]) -> str:
    skipped = sum(metrics["skipped"].values())
    scale = f"scale {metrics['logit_scale']:.1f} " if "logit_scale" in metrics else ""
    return (
        f"step {step} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} {scale}"
        f"{metrics['samples_per_s']:.0f} samples/s epoch {metrics['epoch']:.3g} skipped {skipped}"
    )


def train_step(accelerator, precision, trainee, optimizer, batch, cfg: Config, state) -> tuple:
    """One optimizer step of the task (``trainee``: bare or DDP-wrapped); raises
    TrainingDiverged before a non-finite update touches weights."""
    trainee.train()
    step = state["step"] + 1

    def check_loss(loss: torch.Tensor) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise diverged("loss", value, step, cfg)

    with precision.autocast():
        out = grad_cached_step(
            trainee,
            to_device(batch, accelerator.device),
            cfg.train.grad_cache_steps,
            backward=precision.backward,
            check_loss=check_loss,
            forward_loss=compiled_step(trainee) if cfg.train.compile else None,
        )
    value = float(out["loss"].detach())
    metrics = {name: float(v) for name, v in out["metrics"].items()}  # tensors: after the step
    if cfg.optim.grad_clip > 0:
        precision.unscale(optimizer)
        grad_norm = float(accelerator.clip_grad_norm_(trainee.parameters(), cfg.optim.grad_clip))
        if not math.isfinite(grad_norm) and cfg.train.precision != "fp16":
            raise diverged("gradient norm", grad_norm, step, cfg)
        metrics["grad_norm"] = grad_norm
    precision.step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    unwrap(trainee).after_step(step)
    return value, metrics


def compiled_step(trainee) -> Any:
    """``train.compile``: the task's forward and loss as one compiled function (made once per
    task; tests/test_fast_paths.py checks that the CLIP and SigLIP steps trace as one graph)."""
    objective = unwrap(trainee)
    step = objective.__dict__.get("_compiled_step")
    if step is None:
        step = torch.compile(lambda batch: objective.loss(trainee(batch), batch))
        objective.__dict__["_compiled_step"] = step
    return step


def diverged(what: str, value: float, step: int, cfg: Config) -> TrainingDiverged:
    last = checkpoint.latest(Path(cfg.train.output_dir) / "checkpoints")
    where = f"last good checkpoint: {last}" if last else "no checkpoint was saved yet"
    return TrainingDiverged(
        f"{what} became {value} at step {step}; stopped before updating the weights ({where}). "
        f"Lower optim.lr, raise optim.warmup_steps or check the data, then resume with "
        f"train.resume=latest."
    )


def global_mean(accelerator: Accelerator, value: float) -> float:
    """The mean over ranks of a per-rank scalar (the logged loss is the global one)."""
    tensor = torch.tensor([value], device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="mean"))


def warn_unknown_captions(tokenizer, texts: list[str]) -> None:
    message = unknown_warning(tokenizer, texts, "caption") if distributed.is_main() else None
    if message:
        print0(message + " (measured on the first batch)")


def check_vocab(model, tokenizer) -> None:
    if tokenizer is None:
        return
    rows = model.text.vocab_rows
    if len(tokenizer) > rows:
        raise ConfigError(
            f"text.config.vocab_size: the tokenizer has {len(tokenizer)} tokens but the text "
            f"tower embeds only {rows}; set text.config.vocab_size={len(tokenizer)}"
        )


def eval_due(cfg: Config, step: int) -> bool:
    if not cfg.eval.evaluators:
        return False
    return step == cfg.train.steps or (cfg.eval.every > 0 and step % cfg.eval.every == 0)


def run_evals(accelerator, model, tokenizer, cfg: Config, step: int) -> dict[str, float]:
    """Every rank embeds its share of each evaluation set; the main process also writes the
    full results (per-class accuracies, confusion matrices) to ``eval/step_XXXXXXXX.json``."""
    with fsdp.unsharded(model) as bare:
        results = run_evaluators(bare, tokenizer, cfg, accelerator.device)
    if accelerator.is_main_process:
        report.write_json(results, Path(cfg.train.output_dir) / "eval" / f"step_{step:08d}.json")
    return scalar_metrics(results)
