"""Reading an upload for ``vlcontrast serve`` (``search/server.py``) bounded by what is read, never
by what the headers claim: at most ``limit`` bytes come off the socket whatever
``Content-Length`` says (negative, huge, not a number, absent) and whether the body is chunked;
a body over the limit is refused before it is read. A multipart form (what a browser form or
``curl -F file=@x.png`` sends) gives its file part; any other body is the image itself.
"""

from __future__ import annotations

import re
from email.parser import BytesParser
from email.policy import HTTP
from typing import BinaryIO

MAX_UPLOAD = 20 << 20  # bytes: a photo, not a collection
# A 12-megapixel phone photo and a 4K frame (8.3 MP) pass; one decode then takes at most about
# 64 MB (RGBA). A 49-megapixel PNG bomb of 50 kB is refused from its header instead of costing
# 8 s and 0.5 GB.
MAX_UPLOAD_PIXELS = 16_000_000
_DIGITS = re.compile(r"^[0-9]+$")


class UploadError(ValueError):
    """A request that cannot be read as an upload; ``status`` is the HTTP answer (4xx)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def read_body(headers, stream: BinaryIO, limit: int) -> bytes:
    """The request body: ``Content-Length`` bytes, or a chunked body, never over ``limit``."""
    length = headers.get("Content-Length")
    chunked = "chunked" in (headers.get("Transfer-Encoding") or "").lower()
    if length is None and not chunked:
        raise UploadError(411, "the upload has no Content-Length: send the file as the body")
    if chunked:
        return _read_chunked(stream, limit)
    length = length.strip()
    if not _DIGITS.match(length):
        raise UploadError(400, f"Content-Length must be a whole number of bytes, got {length!r}")
    size = int(length) if len(length) < 19 else 1 << 62  # no 10**1000-digit arithmetic
    if size > limit:
        raise UploadError(413, _too_big(size, limit))
    data = stream.read(size)
    if len(data) < size:
        raise UploadError(400, f"the upload ended after {len(data)} of {size} bytes")
    return data


def _read_chunked(stream: BinaryIO, limit: int) -> bytes:
    parts, total = [], 0
    while True:
        line = stream.readline(80)  # "SIZE[;extensions]\r\n"
        size_text = line.split(b";")[0].strip()
        if not line.endswith(b"\n") or not re.fullmatch(rb"[0-9a-fA-F]{1,15}", size_text):
            raise UploadError(400, "a chunked upload with a malformed chunk size")
        size = int(size_text, 16)
        if size == 0:
            while stream.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers, bounded
                pass
            return b"".join(parts)
        total += size
        if total > limit:
            raise UploadError(413, _too_big(total, limit))
        chunk = stream.read(size)
        if len(chunk) < size or stream.readline(3) not in (b"\r\n", b"\n"):
            raise UploadError(400, "a chunked upload ended mid-chunk")
        parts.append(chunk)


def _too_big(size: int, limit: int) -> str:
    return f"the upload is at least {size / 2**20:.1f} MB; at most {limit / 2**20:.0f} MB"


def image_part(content_type: str, body: bytes) -> bytes:
    """The image in ``body``: a multipart form's first file part (or its only part), else the
    body as it is."""
    if not content_type.lower().startswith("multipart/form-data"):
        return body
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise UploadError(400, "a multipart upload without parts (no boundary?)")
    parts = list(message.iter_parts())
    files = [p for p in parts if p.get_filename()] or parts
    if not files:
        raise UploadError(400, "the form holds no file: send it as file=@IMAGE")
    return files[0].get_payload(decode=True) or b""
