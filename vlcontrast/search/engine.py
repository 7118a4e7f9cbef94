"""The Python API of search: open an index, query it by text, by image or by an indexed item,
and read an item's image back from its shard.

    index = SearchIndex("vlcontrast_demo/index")
    for hit in index.search_text("a red circle", k=10):
        print(hit["score"], hit["key"], hit["caption"])

The model is rebuilt from the checkpoint named in the index's manifest (``models.load``), only
when a query needs it, so metadata look-ups and image-to-image search by row need no model.
The CLI (``vlcontrast search``) and the web page (``vlcontrast serve``) return these same records.
"""

from __future__ import annotations

import functools
import io
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlcontrast.data.image import decode_image, read_image_file
from vlcontrast.data.limits import MAX_FILE_BYTES
from vlcontrast.data.skip import SkipSample
from vlcontrast.embed import eval_transform
from vlcontrast.search.backends import open_backend
from vlcontrast.search.layout import IndexFiles, check_commands, is_remote
from vlcontrast.search.units import SourceSpec, read_image

MAX_QUERY_CHARS = 1000
MAX_K = 10_000


class QueryError(ValueError):
    """A query that cannot be answered: the message says why, for a person to read."""


class SearchIndex:
    """A built index, ready to query. ``backend``: auto (the saved faiss index when current,
    else exact), exact or faiss. ``checkpoint`` overrides the manifest's (a moved run)."""

    def __init__(
        self,
        index_dir: str | Path,
        backend: str = "auto",
        checkpoint: str | Path | None = None,
        device: str | torch.device = "cpu",
        allow_download: bool = False,
        allow_pipe: bool = False,
    ):
        self.files = IndexFiles.open(index_dir)
        check_commands(index_dir, self.files.manifest, allow_pipe)  # a stranger's pipe: URLs
        self.backend = open_backend(self.files, backend)
        self.checkpoint = Path(checkpoint or self.files.manifest["checkpoint"])
        self.device, self.allow_download = torch.device(device), allow_download
        self._model = None
        self._lock = threading.Lock()  # the web server queries from several threads
        self._search_lock = threading.Lock()
        self._collections: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.files)

    # -- queries -----------------------------------------------------------------------------
    def search_text(self, text: str, k: int = 10) -> list[dict[str, Any]]:
        text = (text or "").strip()
        if not text:
            raise QueryError("empty query: type a few words, e.g. 'a red circle'")
        if len(text) > MAX_QUERY_CHARS:
            raise QueryError(f"query too long ({len(text)} characters; at most {MAX_QUERY_CHARS})")
        model, tokenizer, cfg = self.model()
        if tokenizer is None or not hasattr(model, "encode_text"):
            raise QueryError("this index's model has no text tower: search by image instead")
        from vlcontrast.data.batching import Collate

        tokens = Collate(tokenizer, cfg.text.context_length).tokenize([text])
        with self._lock, torch.no_grad():
            ids = tokens["input_ids"].to(self.device)
            mask = tokens["attention_mask"].to(self.device)
            txt_emb = model.encode_text(ids, mask).float().cpu().numpy()  # (1, D)
        return self.search_vectors(txt_emb, k)[0]

    def search_image(
        self, image: bytes | str | Path | Image.Image, k: int = 10, max_pixels: int | None = None
    ) -> list[dict]:
        """Images like ``image`` (bytes, a path or a PIL image); an image over ``max_pixels``
        (default: the run's ``data.max_pixels``) is refused from its header."""
        model, _, cfg = self.model()
        if not hasattr(model, "encode_image"):
            raise QueryError("this index's model is text-only: search by text instead")
        transform = eval_transform(cfg)
        rng = random.Random(0)
        try:
            if isinstance(image, Image.Image):
                pixels = transform(image, rng)
            else:
                data = read_image_file(image) if isinstance(image, str | Path) else image
                limit = cfg.data.max_pixels if max_pixels is None else max_pixels
                pixels = decode_image(data, transform, rng, limit)
        except SkipSample as skip:
            if skip.reason == "too_large":
                raise QueryError(
                    f"the image is too large (too_large: over {limit / 1e6:g} megapixels); "
                    f"send a smaller one"
                ) from None
            raise QueryError(f"the upload is not an image we can read ({skip.reason})") from None
        with self._lock, torch.no_grad():
            img_emb = model.encode_image(pixels[None].to(self.device)).float().cpu().numpy()
        return self.search_vectors(img_emb, k)[0]

    def similar(self, row: int, k: int = 10) -> list[dict[str, Any]]:
        """The neighbours of indexed item ``row`` (itself first), from its stored embedding."""
        self._check_row(row)
        return self.search_vectors(self.files.vectors([row]), k)[0]

    def search_vectors(self, queries: np.ndarray, k: int = 10) -> list[list[dict[str, Any]]]:
        """Records of the top ``k`` rows for each of the (Q, D) unit-norm ``queries``."""
        if not 1 <= k <= MAX_K:
            raise QueryError(f"k must be between 1 and {MAX_K}, got {k}")
        if queries.shape[-1] != self.files.dim:
            raise QueryError(
                f"query dimension {queries.shape[-1]} != index dimension {self.files.dim}"
            )
        with self._search_lock:  # the exact backend fills its block cache on first use
            scores, rows = self.backend.search(queries, k)
        out = []
        for q_scores, q_rows in zip(scores, rows, strict=True):
            keep = q_rows >= 0  # an approximate index may return fewer than k
            records = self.files.records(q_rows[keep])
            for rank, (record, score) in enumerate(zip(records, q_scores[keep], strict=True)):
                record.update(rank=rank, score=float(score))
            out.append(records)
        return out

    def sample(self, k: int = 8) -> list[dict[str, Any]]:
        """``k`` records spread evenly over the index (what the page shows before a search)."""
        if not 1 <= k <= MAX_K:
            raise QueryError(f"k must be between 1 and {MAX_K}, got {k}")
        n = len(self)
        rows = sorted({i * n // k for i in range(min(k, n))})
        records = self.files.records(rows)
        for rank, record in enumerate(records):
            record.update(rank=rank, score=None)
        return records

    # -- items -------------------------------------------------------------------------------
    def record(self, row: int) -> dict[str, Any]:
        self._check_row(row)
        return self.files.records([row])[0]

    def image_bytes(self, row: int) -> tuple[bytes, str]:
        """(the image member's bytes, exactly as in the shard, and their content type). Only
        an image is returned, its type from its bytes: an index's records say where to read,
        and one that points at another kind of file (or past ``MAX_FILE_BYTES``) gets a
        QueryError, not the file. An image on another machine (an https, s3, gs, ... shard) is
        fetched only with ``allow_download``: the URLs are the index maker's choice."""
        record = self.record(row)
        unit = self.files.unit_of(row)
        where = record["where"]
        if int(where.get("size", 0)) > MAX_FILE_BYTES:
            raise QueryError(f"item {row}: its image is over {MAX_FILE_BYTES >> 20} MB")
        url = str(unit["url"])
        # a hub dataset: _collection's check
        hub = self.files.manifest["sources"][unit["source"]].get("format") == "hf"
        if not hub and is_remote(url) and not self.allow_download:  # the index maker's URLs
            raise QueryError(
                f"item {row}: its image would be fetched from another machine ({url[:120]}); "
                f"pass --allow-download to let this index fetch its images"
            )
        try:
            data = read_image(self._collection(unit["source"]), unit, where)
        except (OSError, SkipSample) as err:
            reason = err.reason if isinstance(err, SkipSample) else err
            raise QueryError(f"item {row}: its image cannot be read ({reason})") from None
        content_type = _sniff(data)
        if not content_type.startswith("image/"):
            raise QueryError(f"item {row}: what its record points at is not an image")
        return data, content_type

    @functools.cached_property
    def text_queries(self) -> bool:
        """Whether the index's model has a text tower (else it is searched by image), from the
        checkpoint's config alone (the model is not loaded for it), read once."""
        from vlcontrast.models.build import has_text
        from vlcontrast.models.load import read_config

        try:
            return has_text(self._model[2] if self._model else read_config(self.checkpoint))
        except (ValueError, OSError):  # unreadable: a text query will say why
            return True

    def model(self):
        """(model, tokenizer, config) of the index's checkpoint, loaded on first use."""
        if self._model is None:
            from vlcontrast.models.load import load_model

            model, tokenizer, cfg = load_model(self.checkpoint, self.allow_download)
            self._model = (model.to(self.device).eval(), tokenizer, cfg)
        return self._model

    def _collection(self, source: int):
        spec = SourceSpec(**self.files.manifest["sources"][source])
        if spec.format != "hf":
            return spec
        local = Path(spec.data.removeprefix("hf:")).exists()
        if not local and not self.allow_download:  # an index's hub name is a stranger's choice
            raise QueryError(
                f"this index reads its images from the Hugging Face dataset {spec.data!r}, which "
                f"is not on this machine; pass --allow-download to let it be fetched"
            )
        if source not in self._collections:  # a dataset is opened once, not per image
            from vlcontrast.search.units import open_collection

            self._collections[source] = open_collection(spec)
        return self._collections[source]

    def _check_row(self, row: int) -> None:
        if not 0 <= int(row) < len(self.files):
            raise QueryError(f"no item {row}: the index has rows 0..{len(self.files) - 1}")


def _sniff(data: bytes) -> str:
    """The MIME type of the image format PIL reads in ``data``'s header, else
    ``application/octet-stream``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return Image.MIME.get(img.format or "", "application/octet-stream")
    except Exception:  # noqa: BLE001
        return "application/octet-stream"
