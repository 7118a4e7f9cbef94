"""Typed run configuration: one dataclass per concern, defaults in one place.

Every run is described by a :class:`Config`. A run file (YAML) holds only what differs from these
defaults; dotted command-line overrides (``optim.lr=3e-4``) are applied on top. Both are checked
against the schema: an unknown key or a value of the wrong type raises :class:`ConfigError` naming
the key and what was expected. The resolved config is saved beside every run and inside every
checkpoint (``to_dict``/``from_dict``), so evaluation rebuilds the model from a checkpoint alone.

Strings are coerced to the field's type, because PyYAML reads ``3e-4`` as a string (YAML 1.1
needs ``3.0e-4``) and command-line values are always strings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlcontrast.config_checks import validate
from vlcontrast.config_layouts import (
    MOVED_TO_OBJECTIVE,
    PROJECTOR_SHAPE,
    migrate_evaluators,
    place_moved,
    renamed,
)
from vlcontrast.data.limits import IMAGE_EXTENSIONS, MAX_PIXELS
from vlcontrast.data.view_presets import METHOD_VIEWS, ViewConfig, method_views
from vlcontrast.data.view_presets import PRESETS as VIEW_PRESETS
from vlcontrast.eval_config import EvalConfig, EvaluatorConfig
from vlcontrast.objective_settings import USES_LOGIT_BIAS, ObjectiveConfig
from vlcontrast.optim_config import OptimConfig
from vlcontrast.presets import PRESETS
from vlcontrast.schema import (
    NON_NEGATIVE,
    POSITIVE,
    ConfigError,
    between,
    choices,
    describe,
    fields_of,
    set_value,
)

__all__ = ["Config", "ConfigError", "EvalConfig", "EvaluatorConfig", "OptimConfig"]


_choices = choices


@dataclass
class DataConfig:
    """The training data (see vlcontrast.data)."""

    # Brace-expandable shard pattern(s), several sources joined by ``::``; local paths, pipe:
    # commands and fsspec URLs (http, s3, gs)
    train_shards: str = ""
    # resampled mode: each source's share of samples
    weights: list[float] = field(default_factory=list)
    # epoch: every sample at most once per epoch (each stream drops its last partial batch);
    # resampled: shards drawn with replacement, endless
    mode: str = field(default="epoch", metadata=_choices("epoch", "resampled"))
    # stream: shards read in order through the shuffle window; class_balanced: every batch is
    # data.batch_size / data.samples_per_class classes x samples_per_class samples (metric
    # learning), planned per epoch from a one-pass label index (data/balanced.py); epoch mode
    sampler: str = field(default="stream", metadata=_choices("stream", "class_balanced"))
    # K of a class-balanced P x K batch: 4, pytorch-metric-learning's benchmark setting (m=4,
    # batch 32, as in Musgrave et al. 2020's runs)
    samples_per_class: int = field(default=4, metadata=POSITIVE)
    # dataset size; 0: sizes.json, _stats.json, or count once (cached)
    num_samples: int = field(default=0, metadata=NON_NEGATIVE)
    # Per rank; the contrastive batch is the global one (x ranks x grad-cache micro-batches)
    batch_size: int = field(default=256, metadata=POSITIVE)
    # Decoding processes per rank; -1 (auto): on a GPU every core of this rank but the main
    # process's (at most 16), since one ViT-B/32 GPU step outruns many decoding cores
    # (benchmarks/gpu.py prints samples/s per worker); on a CPU 2, which keep two cores busy
    # decoding beside the training step (benchmarks/loader.py)
    num_workers: int = field(default=-1, metadata=between(-1, 1024))
    # Logical streams per rank, fixed for a run (saved in checkpoints); the sample order depends on
    # it but not on num_workers, so a run resumes exactly with any worker count. 0: num_workers.
    streams: int = field(default=0, metadata=NON_NEGATIVE)
    shuffle_buffer: int = field(default=1000, metadata=POSITIVE)  # samples per shuffle window
    image_keys: str = ";".join(IMAGE_EXTENSIONS)  # first present extension wins
    caption_key: str = "txt"  # or json.FIELD; a JSON list gives several captions, one is picked
    label_key: str = "cls"  # class index for objectives that use labels (supcon), or json.FIELD
    # Training crop: random_resized with scale (0.9, 1.0), OpenCLIP's default; evaluation always
    # takes the centre crop. With OpenAI's mean/std and the CLIP text tower it took a real-corpus
    # run from about 32% to 83.6% zero-shot top-1 (measured when this recipe was chosen).
    # center: for captions that name positions (the demo).
    crop: str = field(default="random_resized", metadata=_choices("center", "random_resized"))
    crop_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])  # random_resized area range
    draft: bool = True  # reduced-size JPEG decoding when the crop is at least 2x the output
    # Images with more pixels are skipped (too_large) from their header, before decoding; 0: no
    # limit. 50 MP keeps 50-megapixel photos and 8K frames (see data/image.py:MAX_PIXELS).
    max_pixels: int = field(default=MAX_PIXELS, metadata=NON_NEGATIVE)
    # stop when more than this fraction of samples fail ...
    max_bad_fraction: float = field(default=0.2, metadata=NON_NEGATIVE)
    # ... once at least this many samples were read
    bad_min_samples: int = field(default=1000, metadata=NON_NEGATIVE)


@dataclass
class ImageTowerConfig:
    # Any timm model name. CLIP's ViT layout (pre-norm, as OpenAI's and OpenCLIP's B/32).
    model: str = "vit_base_patch32_clip_224"
    pretrained: bool = False  # timm weights by name (downloads them); False: random init
    image_size: int = field(default=224, metadata=POSITIVE)  # CLIP B/32 and B/16 resolution
    model_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model
    # Weights from a local file instead of the hub: a timm/torch state dict (.safetensors, or
    # .pth read tensors-only) or a released DINO/SwAV/MoCo/DenseCL checkpoint, its encoder found
    # under its wrapper and prefix (models/backbone_weights.py). Read when the run starts only.
    checkpoint_path: str = ""
    # FLIP (Li et al. 2023): drop this fraction of patch tokens in training (ViTs; evaluation
    # sees every patch). 0.5: 1.50x the samples/s and 0.64x the memory of a ViT-S/32 step on
    # CPU (benchmarks/train_step.py --switches), at a small accuracy cost (FLIP, table 1)
    patch_dropout: float = field(default=0.0, metadata=between(0.0, 1.0, high_open=True))
    # Normalisation; empty: a pretrained tower's own (timm's pretrained_cfg), else OpenAI CLIP's
    # mean/std (Radford et al. 2021), the statistics CLIP-style training uses from scratch.
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)  # as mean
    # Evaluation and search preprocessing. crop: the largest centred square, resized to
    # image_size (what training's centre crop does here). shortest: the shortest side resized to
    # image_size (bicubic, antialiased), then a centred square cut: CLIP's and OpenCLIP's
    # preprocessing, which `vlcontrast import` sets so that an imported model sees the pixels of
    # transformers' CLIPImageProcessor (they differ on non-square images).
    eval_resize: str = field(default="crop", metadata=_choices("crop", "shortest"))
    # The share of the centred square kept, either way: 1 keeps all of it (CLIP's); 0.875 is
    # ImageNet evaluation's resize to 256, centre 224 (timm's crop_pct; the protocol DINO's,
    # SwAV's and MoCo's published kNN and linear figures use), which `import backbone` sets.
    eval_crop: float = field(default=1.0, metadata=between(0.1, 1.0))
    # A ViT takes images of any size, its position embeddings interpolated (timm's
    # dynamic_img_size): multi-crop's local crops. The swav and dino objectives set it.
    dynamic_size: bool = False


@dataclass
class TextTowerConfig:
    model: str = ""  # hub name or local directory of a transformers encoder
    config: dict = field(default_factory=dict)  # inline config (with model_type) for random init
    pretrained: bool = True  # load weights from `model`; ignored when `config` is given
    tokenizer: str = ""  # hub name, local dir or tokenizer.json; defaults to `model`
    # eos: the last real token's state, CLIP's pooling for its causal text transformer (the
    # default text tower); cls or mean for BERT-style encoders.
    # pooler: the encoder's own pooler_output (BERT's tanh layer on [CLS]; eos for CLIP's), what
    # transformers' VisionTextDualEncoderModel reads, so such a model exports to it
    pooling: str = field(default="eos", metadata=_choices("cls", "mean", "eos", "pooler"))
    context_length: int = field(default=77, metadata=POSITIVE)  # CLIP's caption length


@dataclass
class ModelConfig:
    # dual: image and text towers (CLIP, SigLIP); image: image tower only (SimCLR, MoCo, ...);
    # text: text tower only (text_pairs: sentence embeddings, SimCSE)
    kind: str = field(default="dual", metadata=_choices("dual", "image", "text"))
    # A named shape (vlcontrast/presets.py): tiny (CPU), s32, b32, b16 as OpenCLIP's ViT-S-32,
    # ViT-B-32, ViT-B-16; applied under the run file and the command line.
    preset: str = field(default="", metadata=_choices("", *PRESETS))
    embed_dim: int = field(default=512, metadata=POSITIVE)  # CLIP B/32 and B/16
    # Dual models' projections to the shared space: 1 layer is CLIP's linear projection, 2-3 an
    # MLP (ReLU between layers) of width proj_hidden (0: the tower's feature width). An image-only
    # model has none: its methods own their heads (objective.<name>.projector).
    proj_layers: int = field(default=1, metadata=POSITIVE)
    proj_hidden: int = field(default=0, metadata=NON_NEGATIVE)
    # Start from these weights: a vlcontrast checkpoint (``vlcontrast import hf`` makes one from
    # a released CLIP) or a Hugging Face CLIPModel directory; the towers configured here must
    # have its shapes (start the run file from CKPT/config.json). Optimizer state starts fresh.
    init_from: str = ""
    # Batch norm over the global batch under DDP (torch's SyncBatchNorm, CUDA only): SimCLR and
    # BYOL use it so that BN statistics cannot leak which views pair up on one device
    sync_bn: bool = False
    # One process normalising each of N slices of its batch apart, as N devices would (MoCo's
    # SplitBatchNorm), so a CPU run reproduces a multi-GPU run's batch-norm statistics; 0 = off
    bn_split: int = field(default=0, metadata=NON_NEGATIVE)
    # A learnable logit bias (SigLIP paper, section 3.3). None: on for objectives that use one.
    logit_bias: bool | None = None
    # ln of the initial logit scale; None: ln(1/0.07) (CLIP paper) without a bias, ln(10) with
    # one (SigLIP paper)
    init_logit_scale: float | None = None
    init_logit_bias: float = -10.0  # SigLIP paper
    max_logit_scale: float = 4.605170185988092  # ln(100), CLIP paper


@dataclass
class LockConfig:
    """Locked towers (LiT; vlcontrast/train/locking.py): frozen weights out of the optimizer and
    DDP, locked parts in eval mode."""

    image: bool = False  # LiT: a pretrained image tower, locked, and a text tower trained to it
    image_unlocked: int = field(default=0, metadata=NON_NEGATIVE)  # last N blocks still train
    text: bool = False
    text_unlocked: int = field(default=0, metadata=NON_NEGATIVE)
    norms_trainable: bool = False  # layer/batch-norm gains and biases of locked parts train
    # the locked towers' projections still train: for a pretrained trunk with a new, random
    # projection (LiT from a timm ViT); off for a locked pretrained CLIP tower
    projections_trainable: bool = False
    freeze_bn_stats: bool = False  # image tower: batch-norm running statistics stay fixed


@dataclass
class ViewsConfig:
    """The two augmented views of each image that the image-only objectives compare
    (vlcontrast/data/augment.py; SLIP adds them to CLIP's plain crop). ``preset`` fills
    ``first`` and ``second`` from a paper's recipe before the run file and the command line,
    so ``views.second.solarize=0.1`` changes one parameter of it."""

    # a two-view method that names none gets its paper's (small at 96 px or less; a note says
    # which: data/view_presets.py METHOD_VIEWS); "" given: one generic pair
    preset: str = field(default="", metadata=_choices("", *VIEW_PRESETS))
    first: ViewConfig = field(default_factory=ViewConfig)
    second: ViewConfig = field(default_factory=ViewConfig)


@dataclass
class TrainConfig:
    # How long to train: exactly one of steps (optimizer steps) and epochs (passes over the
    # dataset, whose size the loader knows: steps = ceil(epochs x samples / global batch)).
    steps: int = field(default=0, metadata=NON_NEGATIVE)
    epochs: float = field(default=0.0, metadata=NON_NEGATIVE)  # passes over the data (or steps)
    seed: int = 0  # fixes the data order, the crops and the initialisation
    # auto: bf16 on a GPU that has it, else fp32 (a CPU without bf16 units emulates bf16 about
    # 10x slower, measured on a 2-core CPU); no: float32; bf16 / fp16: autocast
    precision: str = field(default="auto", metadata=_choices("auto", "no", "bf16", "fp16"))
    output_dir: str = "runs/default"  # config.json, metrics.jsonl, tensorboard/, checkpoints/
    log_every: int = field(default=10, metadata=POSITIVE)  # steps between log rows
    save_every: int = field(default=1000, metadata=POSITIVE)  # steps between checkpoints
    # the newest N checkpoints are kept; 2 so that one survives a crash while the next is saved
    keep_checkpoints: int = field(default=2, metadata=POSITIVE)
    # Gradient caching: split each batch into this many micro-batches for the forward/backward
    # passes (activation memory of one micro-batch); the loss still sees the whole batch.
    grad_cache_steps: int = field(default=1, metadata=POSITIVE)
    # Recompute activations in the backward pass of both towers: memory for time
    grad_checkpointing: bool = False
    # FSDP2 (torch's fully_shard, one unit per transformer block) instead of DDP, for towers that
    # do not fit one device (vlcontrast/train/fsdp.py)
    fsdp: bool = False
    # Under train.fsdp, each rank writes its own shards with torch.distributed.checkpoint (no
    # rank gathers the whole model; the layout reshards onto any world size, and
    # 'vlcontrast checkpoint consolidate' makes single files of it); false gathers the full
    # state on rank 0 into the usual single files
    sharded_checkpoints: bool = True
    # An exponential moving average of the model's weights, updated after every step and saved
    # in every checkpoint (train/ema.py; eval and export read it with --weights ema): its decay,
    # 0 = off. timm's ModelEmaV3 recipes use 0.9998-0.9999 for runs of 10^5 steps and more.
    ema: float = field(default=0.0, metadata=between(0.0, 1.0, high_open=True))
    # timm's warm-up: the decay after step s is min(ema, 1 - (1 + s)^(-2/3)), so early steps
    # are not averaged with the random initialisation
    ema_warmup: bool = True
    # Scaled-dot-product attention (torch's flash / memory-efficient kernels on CUDA) in both
    # towers: timm's fused_attn and transformers' sdpa; off: the explicit softmax(QK^T)V. Same
    # numbers within float tolerance (tests/test_fast_paths.py)
    sdpa: bool = True
    # TF32 tensor-core matmuls and convolutions on Ampere and later GPUs (10-bit mantissa in the
    # products, fp32 accumulation); ignored on CPU and where bf16 autocast already runs the model
    tf32: bool = True
    # torch.compile the training step, model and loss as one graph (with gradient caching the
    # model alone); off: compile time is minutes, and not every model compiles
    compile: bool = False
    # NHWC memory layout for CNN image towers (faster convolutions on GPUs with tensor cores)
    channels_last: bool = False
    resume: str = ""  # "" (fresh), "latest" (newest in output_dir) or a checkpoint directory
    # A fresh run in a directory that holds another run moves that run aside instead of refusing
    overwrite: bool = False
    progress: bool = True  # a progress bar on the terminal
    tensorboard: bool = True  # scalars in {output_dir}/tensorboard as well as metrics.jsonl


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    lock: LockConfig = field(default_factory=LockConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _set(cfg: Config, path: list[str], value: Any) -> None:
    """Set a dotted key of ``cfg``, old names migrated (an old run file's ``loss:`` section,
    ``model.predictor_hidden`` and the other head settings that moved to the objectives)."""
    path = renamed(path)
    if path[0] in ("loss", "model") and len(path) == 1 and isinstance(value, dict):
        for sub, sub_value in value.items():
            _set(cfg, [path[0], str(sub)], sub_value)
        return
    if path[0] == "model" and len(path) == 2 and path[1] in (*MOVED_TO_OBJECTIVE, *PROJECTOR_SHAPE):
        cfg.__dict__.setdefault("_moved", {})[path[1]] = value
        if path[1] in MOVED_TO_OBJECTIVE:
            return
    set_value(cfg, path, value)


def apply(cfg: Config, values: dict[str, Any]) -> Config:
    """Apply a nested mapping (a parsed run file) onto ``cfg`` in place and return it."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    for key, value in values.items():
        _set(cfg, [str(key)], value)
    return cfg


def parse_override(text: str) -> tuple[list[str], str]:
    """Split ``optim.lr=3e-4`` into (["optim", "lr"], "3e-4")."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. optim.lr=3e-4")
    key, value = text.split("=", 1)
    if not key or "." not in key:
        raise ConfigError(f"override '{text}' must name a section and a key, e.g. optim.lr=3e-4")
    return key.split("."), value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    for text in overrides:
        path, value = parse_override(text)
        _set(cfg, path, value)
    return cfg


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the ``model.preset`` named by the overrides or the run file, then the run
    file at ``path`` (YAML or JSON), then dotted ``overrides``."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:  # JSON by its own parser: YAML 1.1 reads 1e-05 (no dot) as a string
            text = path.read_text()
            values = (json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)) or {}
        except (yaml.YAMLError, ValueError) as err:
            raise ConfigError(
                f"{path} is not valid {path.suffix[1:].upper() or 'YAML'}: {err}"
            ) from None
    return build(values, overrides)


def build(values: dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Defaults, then the presets named, then ``values`` (a parsed run file), then
    ``overrides``, merged and checked the same way for every command (``load``, ``demo``)."""
    cfg = Config()
    preset = _preset_named(values, overrides or [])
    if preset:
        apply(cfg, {"model": {"preset": preset}})  # checks the name
        apply(cfg, PRESETS[preset])
        # the preset's model.embed_dim is its shared space's size, not an image-only method's
        # projection (what the key meant in run files before methods owned their heads)
        cfg.__dict__.pop("_moved", None)
        # another tower named over a preset replaces the preset's tower, not only its name
        if _named(values, overrides or [], "image", "model") not in (None, cfg.image.model):
            cfg.image.model_kwargs = {}
        if _named(values, overrides or [], "text", "model"):
            cfg.text.config = {}
    views = _preset_named(values, overrides or [], "views")
    if not _sets(values, overrides or [], "views", "preset"):
        views = _method_views(cfg, values, overrides or [])
    if views:
        apply(cfg, {"views": {"preset": views}})  # checks the name
        first, second = VIEW_PRESETS[views]
        apply(cfg, {"views": {"first": first, "second": second}})
    apply(cfg, values)
    apply_overrides(cfg, overrides or [])
    place_moved(cfg)
    _command_line_sets_the_length(cfg, overrides or [])
    validate(cfg)
    return cfg


def _method_views(cfg: Config, values: dict[str, Any], overrides: list[str]) -> str:
    """The views of a two-view method that names no ``views.preset``: its paper's, or
    ``small`` for images of 96 px or less (``data.view_presets.method_views``), with a note."""
    method = str(_named(values, overrides, "objective", "name") or cfg.objective.name)
    size = _named(values, overrides, "image", "image_size") or cfg.image.image_size
    try:
        views = method_views(method, int(size))
    except (TypeError, ValueError):  # a bad size: the schema names it below
        return ""
    if views and os.environ.get("RANK", "0") == "0":
        why = f"{method}'s paper's views"
        if views == "small":
            why = f"{size}-px images, which {method}'s own ({METHOD_VIEWS[method]}) would blur away"
        print(f"note: views.preset={views} ({why}; set views.preset to choose)", file=sys.stderr)
    return views


def _command_line_sets_the_length(cfg: Config, overrides: list[str]) -> None:
    """``train.steps`` and ``train.epochs`` are one choice: the one given on the command line
    replaces the other from the run file (or a preset), with a note."""
    given = [k for k in ("steps", "epochs") if any(o.startswith(f"train.{k}=") for o in overrides)]
    if len(given) != 1 or not getattr(cfg.train, given[0]):
        return
    other = "epochs" if given[0] == "steps" else "steps"
    if getattr(cfg.train, other):
        if os.environ.get("RANK", "0") == "0":
            print(
                f"note: train.{given[0]}={getattr(cfg.train, given[0]):g} on the command line "
                f"replaces the run file's train.{other}={getattr(cfg.train, other):g}",
                file=sys.stderr,
            )
        setattr(cfg.train, other, type(getattr(cfg.train, other))(0))


def _named(values: Any, overrides: list[str], section: str, key: str) -> Any:
    """The value the command line (last one wins) or else the run file gives ``section.key``;
    None when neither does."""
    for text in reversed(overrides):
        if text.startswith(f"{section}.{key}="):
            return text.split("=", 1)[1]
    part = values.get(section) if isinstance(values, dict) else None
    return part.get(key) if isinstance(part, dict) else None


def _sets(values: Any, overrides: list[str], section: str, key: str) -> bool:
    """Whether the run file or the command line sets ``section.key``."""
    if any(
        text.startswith(f"{section}.{key}=") or text.startswith(f"{section}.{key}.")
        for text in overrides
    ):
        return True
    part = values.get(section) if isinstance(values, dict) else None
    return isinstance(part, dict) and key in part


def _preset_named(values: Any, overrides: list[str], section: str = "model") -> str:
    """The ``section.preset`` of the command line (last one wins), else of the run file."""
    for text in reversed(overrides):
        if text.startswith(f"{section}.preset="):
            return text.split("=", 1)[1]
    part = values.get(section) if isinstance(values, dict) else None
    return str(part.get("preset") or "") if isinstance(part, dict) else ""


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(values: dict[str, Any]) -> Config:
    """A saved config (``config.json`` of a run or checkpoint), older layouts migrated."""
    old_layout = "predictor_hidden" in (values.get("model") or {})  # saved before tasks
    cfg = apply(Config(), migrate_evaluators(values))
    place_moved(cfg, old_layout)
    return resolve(cfg)


def resolve(cfg: Config) -> Config:
    """Fill the keys left for others to decide, so that a saved config rebuilds the same model
    without knowing the objective: ``model.logit_bias`` None -> whether the objective uses a
    bias (configs saved before that key existed included)."""
    if cfg.model.logit_bias is None:
        cfg.model.logit_bias = cfg.objective.name in USES_LOGIT_BIAS
    return cfg


def save(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


def diff(cfg: Config) -> dict[str, Any]:
    """The entries of ``cfg`` that differ from the defaults, as a nested mapping."""
    out: dict[str, Any] = {}
    default = to_dict(Config())
    for section, values in to_dict(cfg).items():
        changed = {k: v for k, v in values.items() if default[section][k] != v}
        if changed:
            out[section] = changed
    return out


def keys() -> list[str]:
    """Every dotted key of the schema with its type and default, for --help."""
    out = []
    for section, (_, typ) in fields_of(Config).items():
        out.extend(describe(f"{section}.", typ))
    return out
