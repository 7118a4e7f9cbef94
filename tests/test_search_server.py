"""``vlcontrast serve`` under hostile requests, over raw sockets: whatever the headers claim
(negative, huge or non-numeric Content-Length, chunked bodies, a client that hangs up), the
server reads at most its limit, answers each within a second with a 4xx JSON message, logs a
hang-up as one line, refuses a decompression bomb as too_large from its header, and its memory
stays where it was; multipart form uploads and chunked bodies are read as a browser or curl
sends them."""

from __future__ import annotations

import io
import json
import socket
import time
import uuid

import pytest
from PIL import Image

from tests.test_search import build, planted, trained  # noqa: F401 - fixtures
from tests.test_search_page import served  # noqa: F401 - fixture
from vlcontrast.search import uploads
from vlcontrast.search.server import host_name


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def exchange(url: str, head: str, body=b"", hang_up: bool = False) -> tuple[int, dict]:
    """Send ``head`` (request line and headers) and ``body`` (bytes, or an iterable of byte
    chunks, sent until the server stops reading); the status and JSON answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        try:
            for chunk in [body] if isinstance(body, bytes) else body:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before reading the rest
        if hang_up:
            return 0, {}
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ")[1])
    return status, json.loads(payload) if payload else {}


def post(path: str, **headers: str) -> str:
    headers = {"Host": "127.0.0.1", **headers}
    lines = [f"POST {path} HTTP/1.1", *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A 7000 x 7000 PNG (49 megapixels) of about 50 kB."""
    buffer = io.BytesIO()
    Image.new("L", (7000, 7000)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def test_hostile_uploads_get_a_4xx_at_once_and_cost_no_memory(served, planted, bomb, capsys):  # noqa: F811
    _, url = served
    photo = planted["items"][9]["jpg"]
    status, answer = exchange(url, post("/api/image?k=3", Content_Length=str(len(photo))), photo)
    assert status == 200 and answer["results"][0]["key"] == planted["items"][9]["__key__"]
    big = b"\0" * (1 << 20)
    chunk = b"100000\r\n" + big + b"\r\n"  # 1 MiB chunks, sent 21 times: over 20 MB
    start = rss_mb()  # the model is loaded; nothing below may add to this
    cases = [
        ({"Content-Length": "-1"}, big, 400, "whole number"),
        ({"Content-Length": "abc"}, b"", 400, "whole number"),
        ({"Content-Length": "99999999999999999999"}, big, 413, "at most"),
        ({"Content-Length": str(200 << 20)}, big, 413, "at most"),  # claims 200 MB, sends 1
        ({}, big, 411, "Content-Length"),
        ({"Transfer-Encoding": "chunked"}, b"zz\r\n", 400, "chunk size"),
        (
            {"Transfer-Encoding": "chunked"},
            (chunk for _ in range(21)),
            413,
            "at most",
        ),
        ({"Content-Length": str(len(bomb))}, bomb, 400, "too_large"),
    ]
    for headers, body, want, words in cases:
        began = time.perf_counter()
        status, answer = exchange(url, post("/api/image", **headers), body)
        assert time.perf_counter() - began < 1, headers
        assert status == want and words in answer["error"], (headers, status, answer)
    status, answer = exchange(url, "GARBAGE\n")
    assert 400 <= status < 500 and answer["error"], answer
    for _ in range(5):  # clients that hang up mid-body: one line each, no traceback
        exchange(url, post("/api/image", Content_Length="1000"), b"x" * 10, hang_up=True)
    time.sleep(0.3)
    assert rss_mb() - start < 50
    err = capsys.readouterr().err
    assert "Traceback" not in err, err


def test_multipart_and_chunked_uploads_are_read(served, planted):  # noqa: F811
    _, url = served
    photo, key = planted["items"][9]["jpg"], planted["items"][9]["__key__"]
    boundary = uuid.uuid4().hex
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = post(
        "/api/image?k=2",
        Content_Type=f"multipart/form-data; boundary={boundary}",
        Content_Length=str(len(form)),
    )
    status, answer = exchange(url, head, form)
    assert status == 200 and answer["results"][0]["key"] == key, answer
    chunked = (
        b"".join(
            f"{len(photo[i : i + 1000]):x}\r\n".encode() + photo[i : i + 1000] + b"\r\n"
            for i in range(0, len(photo), 1000)
        )
        + b"0\r\n\r\n"
    )
    status, answer = exchange(url, post("/api/image?k=2", Transfer_Encoding="chunked"), chunked)
    assert status == 200 and answer["results"][0]["key"] == key, answer


def test_read_body_never_reads_past_the_limit():
    class Counting(io.BytesIO):
        def read(self, n=-1):
            assert 0 <= n <= 100, n
            return super().read(n)

    for headers in ({"Content-Length": "500"}, {"Content-Length": "-5"}, {}):
        with pytest.raises(uploads.UploadError):
            uploads.read_body(headers, Counting(b"x" * 500), limit=100)
    stream = Counting(b"40\r\n" + b"y" * 64 + b"\r\n" + b"40\r\n" + b"y" * 64 + b"\r\n0\r\n\r\n")
    with pytest.raises(uploads.UploadError, match="at most"):
        uploads.read_body({"Transfer-Encoding": "chunked"}, stream, limit=100)
    assert uploads.read_body({"Content-Length": "3"}, Counting(b"abcdef"), limit=100) == b"abc"


def test_a_page_elsewhere_rebound_to_this_machine_gets_nothing(served):  # noqa: F811
    """DNS rebinding: a browser sends the attacker's name in Host; bound to 127.0.0.1 the
    server answers 403 to it, and every name of this machine still works."""
    _, url = served
    port = url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "10.0.0.5"):
        status, answer = exchange(url, f"GET /api/info HTTP/1.1\nHost: {host}\n")
        assert status == 403 and "answers only to" in answer["error"], host
        status, answer = exchange(url, post("/api/image", Host=host, Content_Length="0"))
        assert status == 403, host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", ""):
        head = f"GET /api/info HTTP/1.1\nHost: {host}\n" if host else "GET /api/info HTTP/1.0\n"
        status, answer = exchange(url, head)
        assert status == 200 and answer["items"] == 48, host
    assert host_name("[::1]:80") == "::1" and host_name("::1") == "::1"
