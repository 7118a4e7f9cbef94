"""The trainer's side of the data: build the dataset from the config, fix the streams, report
the dataset, and express progress in epochs.
"""

from __future__ import annotations

import math
from typing import Any

from vlcontrast import config as config_lib
from vlcontrast import distributed
from vlcontrast.config import Config, ConfigError
from vlcontrast.data.augment import Augment, check_view
from vlcontrast.data.balanced import BalancedDataset, LabelIndex, build_index, check_index
from vlcontrast.data.batching import Collate, make_loader
from vlcontrast.data.decode import Decoder
from vlcontrast.data.image import CropResize
from vlcontrast.data.shards import DataError, DataPosition, ShardDataset
from vlcontrast.data.sources import dataset_size, missing_shards, parse_sources
from vlcontrast.data.transforms import MultiView
from vlcontrast.distributed import print0
from vlcontrast.objectives import objective_class
from vlcontrast.train.fit import fit_workers


def build_train_data(cfg: Config, tokenizer) -> tuple[ShardDataset, Any]:
    """The training stream; ``tokenizer`` None means an image-only model: captions are not
    read, so a source without captions trains."""
    data = cfg.data
    config_lib.validate(cfg)  # a config built in code, not by config.load
    if not data.train_shards:
        raise ConfigError("data.train_shards: set a shard pattern, e.g. data/{00000..00099}.tar")
    try:
        sources = parse_sources(data.train_shards, data.weights)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    urls = [url for source in sources for url in source.urls]
    check_shards_exist(urls)
    fit_workers(cfg, len(urls))
    transform = train_transform(cfg)
    cls = objective_class(cfg.objective.name)
    caption_key = data.caption_key if "text" in cls.modalities else ""
    label_key = data.label_key if cls.needs_labels else ""
    image_keys = tuple(data.image_keys.split(";")) if "image" in cls.modalities else ()
    decoder = Decoder(
        transform, image_keys, caption_key, data.max_pixels, label_key, **pair_keys(cfg)
    )
    common = dict(mode=data.mode, seed=cfg.train.seed, shuffle_buffer=data.shuffle_buffer)
    collate = Collate(tokenizer if "text" in cls.modalities else None, cfg.text.context_length)
    if data.sampler == "class_balanced":
        index = shared_index(cfg, urls)
        per_class = data.samples_per_class
        extra = dict(index=index, classes=data.batch_size // per_class, per_class=per_class)
        dataset = BalancedDataset(sources, decoder, collate, data.batch_size, **common, **extra)
    else:
        dataset = ShardDataset(sources, decoder, collate, data.batch_size, **common)
    return dataset, make_loader(dataset, data.num_workers)


def shared_index(cfg: Config, urls: list[str]) -> LabelIndex:
    """The label index of a class-balanced run, built on the main process and shared; refused
    (one message) when it cannot fill a batch."""
    data = cfg.data
    index = None
    if distributed.is_main():
        keys = tuple(data.image_keys.split(";"))
        index = build_index(urls, keys, data.label_key, cfg.train.progress)
    index = distributed.all_gather_objects(index)[0]
    try:
        notes = check_index(
            index, data.batch_size // data.samples_per_class, data.samples_per_class
        )
    except DataError as err:
        raise ConfigError(str(err)) from None
    classes = len(set(index.label))
    print0(
        f"data.sampler=class_balanced: {len(index)} labelled samples of {classes} classes "
        f"indexed; skipped: {index.skipped or 'none'}"
    )
    for note in notes:
        print0(f"warning: {note}")
    return index


def pair_keys(cfg: Config) -> dict[str, Any]:
    """What a text-pair task reads beside the anchor caption (``objective.text_pairs``)."""
    if cfg.objective.name != "text_pairs":
        return {}
    c = cfg.objective.text_pairs
    return {
        "positive_key": c.positive_key if c.mode == "pairs" else "",
        "negatives_key": c.negatives_key,
        "negatives": c.negatives,
    }


def train_transform(cfg: Config) -> CropResize | MultiView:
    """The training crop, or the objective's augmented views (``views.first``/``second``) cut
    from one decode; an objective with a text side keeps the plain crop as view 0 (SLIP)."""
    data = cfg.data
    plain = CropResize(cfg.image.image_size, data.crop, tuple(data.crop_scale), draft=data.draft)
    cls = objective_class(cfg.objective.name)
    groups = cls.view_groups(cfg)
    if groups:
        return group_transform(cfg, groups)
    if not cls.views:
        return plain
    chosen = [cfg.views.first, cfg.views.second][: cls.views]
    for name, view in zip(("views.first", "views.second"), chosen, strict=False):
        try:
            check_view(view, name)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    crops = [
        CropResize(cfg.image.image_size, "random_resized", tuple(v.scale), draft=data.draft)
        for v in chosen
    ]
    augments: list = [Augment(v) for v in chosen]
    if "text" in cls.modalities:
        crops, augments = [plain, *crops], [None, *augments]
    return MultiView(crops, augments)


def group_transform(cfg: Config, groups: list) -> MultiView:
    """Every view of every group (``ViewGroup``: name, size, count, augmentations) cut from one
    decode, returned per group."""
    crops, augments = [], []
    for group in groups:
        for k, view in enumerate(group.settings()):
            try:
                check_view(view, f"{group.name} view {k}")
            except ValueError as err:
                raise ConfigError(str(err)) from None
            crops.append(
                CropResize(group.size, "random_resized", tuple(view.scale), draft=cfg.data.draft)
            )
            augments.append(Augment(view))
    return MultiView(crops, augments, [(g.name, g.count) for g in groups])


def check_shards_exist(urls: list[str]) -> None:
    """Say before training how many of the named local shards do not exist: all of them is an
    error, some of them a warning (they are counted as unreadable_shard when their turn comes)."""
    missing = missing_shards(urls)
    if not missing:
        return
    text = f"{len(missing)} of the {len(urls)} shard(s) named do not exist (first: {missing[0]})"
    if len(missing) == len(urls):
        raise ConfigError(f"data.train_shards: {text}")
    print0(f"warning: data.train_shards: {text}; they will be counted as unreadable_shard")


def set_streams(cfg: Config, position: DataPosition) -> None:
    """A fresh run takes ``data.streams`` (default ``data.num_workers``); a resumed run keeps its
    checkpoint's count, which fixes its sample order."""
    if not position.streams:
        position.reset(cfg.data.streams or max(1, cfg.data.num_workers))
    elif cfg.data.streams and cfg.data.streams != position.streams:
        print0(
            f"data.streams={cfg.data.streams} ignored: the run resumes with its checkpoint's "
            f"{position.streams} stream(s), which fix its sample order"
        )


def data_size(cfg: Config, dataset: ShardDataset) -> tuple[int, str]:
    """The dataset size in samples and where it came from (``sizes.json``, ``_stats.json``,
    ``data.num_samples`` or a cached count), taken on the main process and shared."""
    found = None
    if distributed.is_main():
        found = dataset_size(dataset.urls, cfg.data.num_samples, cfg.train.progress)
    return distributed.all_gather_objects(found)[0]


def report_data(cfg: Config, dataset: ShardDataset, position: DataPosition, size, how) -> None:
    """Print what the run reads."""
    sources = len(dataset.sources)
    dropped = dataset.world * position.streams * (cfg.data.batch_size - 1)
    partial = f"; up to {dropped} samples an epoch end in partial batches, not used"
    if isinstance(dataset, BalancedDataset):
        partial = (
            f"; class-balanced batches of {dataset.classes} classes x {dataset.per_class} "
            f"samples, a class's remainder waits for another epoch"
        )
    print0(
        f"data: {size} samples in {len(dataset.urls)} shard(s) from {sources} source(s) "
        f"({how}); {cfg.data.mode} mode, {position.streams} stream(s) per rank"
        + (partial if cfg.data.mode == "epoch" else "")
    )


def resolve_steps(cfg: Config, size: int, global_batch: int) -> None:
    """``train.steps`` from ``train.epochs`` (exactly one of them is set): the dataset size
    over the global batch, rounded up."""
    t = cfg.train
    if (t.steps > 0) == (t.epochs > 0):
        raise ConfigError(
            "train.steps: set exactly one of train.steps and train.epochs "
            f"(got steps={t.steps}, epochs={t.epochs})"
        )
    if t.epochs <= 0:
        return
    t.steps = max(1, math.ceil(t.epochs * size / global_batch))
    print0(
        f"train.epochs={t.epochs:g}: {size} samples / global batch {global_batch} -> "
        f"train.steps={t.steps}"
    )
    t.epochs = 0.0  # the saved config (and a resume) train for exactly these steps


def epoch_of(state: dict[str, Any], cfg: Config, global_batch: int, size: int) -> float:
    """Epoch mode: the epoch being read; resampled mode: samples trained on / dataset size."""
    if cfg.data.mode == "epoch" or not size:
        return state["position"].epoch
    return state["step"] * global_batch / size
