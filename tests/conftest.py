"""Shared fixtures: a tiny synthetic corpus in tmp_path and tiny-model overrides (CPU, offline)."""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

import pytest
import torch

from vlcontrast.data.synthetic import make_corpus

torch.set_num_threads(2)
# The multi-process tests start their ranks from one fork server per session that has imported
# these once: a spawned rank imported them afresh, several seconds a rank on 2 cores, in every
# such test. (A plain fork of this process is no way out: its OpenMP threads do not survive it
# and the ranks hang.)
multiprocessing.set_forkserver_preload(
    [
        "torch",
        "torch.distributed",
        "timm",
        "transformers",
        "vlcontrast.models",
        "vlcontrast.train.loop",
    ]
)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """4 train shards of 64 samples, 1 held-out shard, a trained tokenizer."""
    out = tmp_path_factory.mktemp("corpus")
    return make_corpus(out, n_train=256, n_heldout=64, per_shard=64)


@pytest.fixture(scope="session")
def masked(tmp_path_factory):
    """The demo's shapes with masks (``make_masked_set``): 40 training and 12 held-out images
    at 64 px, the paths of their shards."""
    from vlcontrast.data.synthetic import make_masked_set

    out = tmp_path_factory.mktemp("masked")
    make_masked_set(out, n_train=40, n_heldout=12, side=64)
    return {
        "train": str(out / "train" / "00000.tar"),
        "heldout": str(out / "heldout" / "00000.tar"),
    }


def tiny_overrides(corpus, out_dir, steps: int = 4) -> list[str]:
    """A CLIP small enough to take a few hundred ms per step."""
    return [
        f"data.train_shards={corpus['train_shards']}",
        "data.batch_size=16",
        "data.num_workers=0",
        "data.shuffle_buffer=32",
        "image.model=test_vit",
        "image.image_size=32",
        "image.model_kwargs={patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2}",
        "text.config={model_type: bert, vocab_size: 64, hidden_size: 32, num_hidden_layers: 1, "
        "num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 32}",
        f"text.tokenizer={corpus['tokenizer']}",
        "text.pooling=mean",
        "text.context_length=16",
        "model.embed_dim=16",
        "optim.warmup_steps=2",
        f"train.steps={steps}",
        "train.log_every=1",
        "train.save_every=2",
        "train.progress=false",
        "train.tensorboard=false",
        f"train.output_dir={out_dir}",
    ]


def tiny_vit(depth: int = 2) -> list[str]:
    """Overrides that swap tiny_overrides' image tower for a CLIP-layout ViT of ``depth``
    blocks at 32 px (patch 8, width 32, 2 heads): for what only ViTs have (blocks to lock or
    shard, patch dropout)."""
    return [
        "image.model=vit_base_patch16_clip_224",
        "image.image_size=32",
        f"image.model_kwargs={{patch_size: 8, embed_dim: 32, depth: {depth}, num_heads: 2}}",
    ]


def tiny_vit_config(corpus, out_dir, *extra: str, depth: int = 2):
    """The resolved config of tiny_overrides with :func:`tiny_vit` and ``extra`` on top."""
    from vlcontrast import config as config_lib

    overrides = [*tiny_overrides(corpus, out_dir), *tiny_vit(depth), *extra]
    return config_lib.resolve(config_lib.load(None, overrides))


def run_file(directory) -> str:
    """An empty run file: every setting comes from the command-line overrides."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "run.yaml"
    path.write_text("# all settings are dotted overrides\n")
    return str(path)


def crash_after(monkeypatch, batches_before_crash: int):
    """Make the next training run die (as a preemption would) after this many batches; returns
    the function that undoes it."""
    from vlcontrast.train import loop

    real = loop.iterate_epochs

    def crashing(*args, **kwargs):
        for index, batch in enumerate(real(*args, **kwargs)):
            if index == batches_before_crash:
                raise KeyboardInterrupt("simulated preemption")
            yield batch

    monkeypatch.setattr(loop, "iterate_epochs", crashing)
    return lambda: monkeypatch.setattr(loop, "iterate_epochs", real)


def start_ranks(worker, world: int, *args) -> None:
    """``mp.spawn(worker, args, nprocs=world)``, each rank forked from the session's fork server
    (see ``set_forkserver_preload`` above) with this process's environment as it is now: the
    server's was fixed when it started, and a test may have set a variable since."""
    import torch.multiprocessing as mp

    env = dict(os.environ)
    mp.start_processes(
        with_environment, (env, worker, *args), nprocs=world, join=True, start_method="forkserver"
    )


def with_environment(rank: int, env: dict, worker, *args) -> None:
    os.environ.clear()
    os.environ.update(env)
    worker(rank, *args)


def run_python(command: list[str], cwd, timeout: float | None = None):
    """``subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)`` for
    ``command = [sys.executable, SCRIPT, *ARGS]``: SCRIPT runs as ``__main__`` with those
    arguments in a process forked from the session's fork server, so it does not import torch,
    timm and transformers afresh (about 8 s a script on this 2-core machine). Its stdout and
    stderr, file descriptors included, are captured; its exit status is SystemExit's code (1 for
    an exception, whose traceback is in stderr). Unlike a fresh interpreter it does not read
    thread counts from the environment (``OMP_NUM_THREADS``): the server's torch already has."""
    import subprocess
    import tempfile

    assert command[0] == sys.executable and command[1].endswith(".py"), command
    context = multiprocessing.get_context("forkserver")
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        process = context.Process(
            target=run_script, args=(command[1:], str(cwd), str(out), str(err), dict(os.environ))
        )
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(command, timeout)
        return subprocess.CompletedProcess(
            command,
            process.exitcode,
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
        )


def run_script(argv: list[str], cwd: str, out: str, err: str, env: dict) -> None:
    """The child of :func:`run_python`: ``python ARGV`` from ``cwd`` with ``env``."""
    import runpy
    import traceback

    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    multiprocessing.set_start_method(None, force=True)  # the platform's default, as a fresh one
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    script = str(Path(argv[0]).resolve())
    sys.argv = [argv[0], *argv[1:]]
    sys.path.insert(0, str(Path(script).parent))  # as `python SCRIPT` puts it first
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        if isinstance(stop.code, int):
            code = stop.code
        elif stop.code is not None:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def spawn_gloo(worker, world: int, tmp_dir, *args, attempts: int = 3) -> None:
    """``start_ranks(worker, world, world, INIT_FILE, *args)`` for the gloo tests. A rank
    killed by a signal (gloo's teardown has aborted a worker with "terminate called without an
    active exception" now and then in CI runs on this 2-core machine, never reproduced alone) is
    retried, up to ``attempts`` runs in all, with a fresh rendezvous file; a worker that raises,
    or an abort on the last attempt, fails the test. Results are asserted by the caller, so a
    retry cannot turn a wrong result green."""
    import torch.multiprocessing as mp

    for attempt in range(attempts):
        init = str(Path(tmp_dir) / f"init{attempt}")
        try:
            start_ranks(worker, world, world, init, *args)
            return
        except mp.ProcessExitedException as err:
            if err.signal_name is None or attempt == attempts - 1:
                raise
            print(f"gloo worker died by {err.signal_name}; retrying", file=sys.stderr)


def import_openclip_model(reference: torch.nn.Module, model_cfg: dict, directory: Path):
    """``import_openclip``'s (model, tokenizer, config) of an OpenCLIP model, written to
    ``directory`` as OpenCLIP saves one (safetensors weights + ``open_clip_config.json``)."""
    import json

    from safetensors.torch import save_file

    from vlcontrast.models.openclip import import_openclip

    weights, config = directory / "open_clip_model.safetensors", directory / "open_clip_config.json"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    config.write_text(json.dumps({"model_cfg": model_cfg}))
    return import_openclip(weights, config)


@pytest.fixture
def tokenizer(corpus):
    """The corpus's trained tokenizer, loaded."""
    from vlcontrast.config import TextTowerConfig
    from vlcontrast.models.text_tower import load_tokenizer

    return load_tokenizer(TextTowerConfig(tokenizer=corpus["tokenizer"]))


@pytest.fixture
def saved_checkpoint(corpus, tmp_path):
    """A tiny CLIP trained for 2 steps: (its latest checkpoint, the overrides that made it)."""
    from vlcontrast import cli
    from vlcontrast.train import checkpoint

    overrides = tiny_overrides(corpus, tmp_path / "run", steps=2)
    assert cli.main(["train", run_file(tmp_path / "run"), *overrides]) == 0
    return checkpoint.latest(tmp_path / "run" / "checkpoints"), overrides
