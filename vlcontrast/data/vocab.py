"""Tokenizers from captions, and how much of a text a tokenizer does not know.

``vlcontrast tokenizer train`` trains one on the captions of shards:

* ``bpe`` (default): byte-level BPE as in GPT-2/CLIP, lower-cased like the CLIP tokenizer. Every
  byte is in the alphabet, so no text is ever unknown (the "byte fallback"); words the corpus
  never saw become several tokens instead of one ``[UNK]``. Wrapped by ``<|startoftext|>`` and
  ``<|endoftext|>`` (the end token is also the pad token), as CLIP's.
* ``wordlevel``: one token per whitespace-separated word, ``[UNK]`` for the rest; small and fast
  for synthetic corpora (the demo's), but blind to unseen words.

Both are saved in transformers' layout (``save_pretrained``), which ``text.tokenizer`` reads.
:func:`unknown_rate` measures the share of ``[UNK]`` tokens in captions or zero-shot prompts, for
the warnings the trainer and the zero-shot evaluator print.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

from vlcontrast.data.captions import read_caption
from vlcontrast.data.skip import SkipSample
from vlcontrast.data.sources import expand_urls
from vlcontrast.data.tar_reader import iter_samples

KINDS = ("bpe", "wordlevel")
UNKNOWN_WARN = 0.03  # warn when more than 3% of the tokens are [UNK]


def caption_texts(
    pattern: str, caption_key: str = "txt", max_samples: int = 0, progress: bool = True
) -> Iterator[str]:
    """Every caption of the shards of ``pattern`` (all of a caption list), up to ``max_samples``
    samples; unreadable ones are skipped."""
    seen = 0
    for url in tqdm(expand_urls(pattern), desc="captions", unit="shard", disable=not progress):
        for raw in iter_samples(url, lambda reason: None):
            try:
                yield from read_caption(raw, caption_key)
            except SkipSample:
                continue
            seen += 1
            if max_samples and seen >= max_samples:
                return


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 0,
    kind: str = "bpe",
    lowercase: bool = True,
):
    """Train a ``kind`` tokenizer of at most ``vocab_size`` tokens (0: the trainer's default) on
    ``texts``; saved in ``out_dir`` and returned as a ``PreTrainedTokenizerFast``."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if kind not in KINDS:
        raise ValueError(f"--kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    size = {"vocab_size": vocab_size} if vocab_size else {}
    if kind == "bpe":
        special = ["<|startoftext|>", "<|endoftext|>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **size
        )
        wrap = {"bos_token": special[0], "eos_token": special[1], "pad_token": special[1]}
        template = "<|startoftext|> $A <|endoftext|>"
    else:
        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=special, **size)
        wrap = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]"}
        wrap["sep_token"] = "[SEP]"
        template = "[CLS] $A [SEP]"
    if lowercase:
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.train_from_iterator(texts, trainer)
    first, last = template.split()[0], template.split()[-1]
    tok.post_processor = processors.TemplateProcessing(
        single=template,
        special_tokens=[(first, tok.token_to_id(first)), (last, tok.token_to_id(last))],
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **wrap)
    fast.padding_side = "right"
    fast.save_pretrained(str(out_dir))
    return fast


def unknown_rate(tokenizer, texts: list[str]) -> tuple[float, list[str]]:
    """(share of ``[UNK]`` among the tokens of ``texts`` without special tokens, the words most
    often unknown). 0 for tokenizers without an unknown token (byte-level BPE)."""
    unk = tokenizer.unk_token_id
    if unk is None or not texts:
        return 0.0, []
    total, unknown, words = 0, 0, Counter()
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        total += len(ids)
        hits = sum(i == unk for i in ids)
        unknown += hits
        if hits:
            known = set(tokenizer.get_vocab())
            words.update(w for w in text.lower().split() if w not in known and w not in ("{}",))
    return (unknown / total if total else 0.0), [w for w, _ in words.most_common(5)]


def unknown_warning(tokenizer, texts: list[str], what: str) -> str | None:
    """A warning when more than :data:`UNKNOWN_WARN` of the tokens of ``texts`` are unknown."""
    rate, words = unknown_rate(tokenizer, texts)
    if rate <= UNKNOWN_WARN:
        return None
    examples = f" (e.g. {', '.join(repr(w) for w in words)})" if words else ""
    return (
        f"warning: {rate:.0%} of the {what} tokens are unknown to the tokenizer{examples}; "
        f"they all look alike to the text tower. Train a tokenizer on your captions "
        f"('vlcontrast tokenizer train') or use words it knows"
    )
