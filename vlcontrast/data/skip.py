"""The one skip exception, and the error for data that cannot train.

The skip exception is a sample that cannot be used, with the reason it is counted under.

Every stage that reads data (training streams, evaluation and search collections, the shard
makers, ``shards inspect``) raises :class:`SkipSample` and counts it by ``reason``, so a bad
sample is never a crash and never silent. The reasons (the README lists them):

``unreadable_shard``, ``truncated_shard`` (the tar), ``missing_image``, ``corrupt_image``,
``transform_failed``, ``too_large``, ``not_a_file`` (the image; the last for a path that is a
device, a pipe or a folder, which the shard makers never read), ``missing_caption``,
``empty_caption``, ``bad_caption_encoding``, ``bad_json`` (the caption), ``missing_label``,
``bad_label`` (the label), ``tokenize_failed`` (the tokenizer).
"""

from __future__ import annotations


class SkipSample(Exception):
    """Raised for a sample to skip; ``reason`` is the counter key."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DataError(RuntimeError):
    """The data cannot train: no usable sample, too many failures, too few shards."""
