"""``vlcontrast serve``: a search web page over an index, on the standard library's HTTP server.

Routes (JSON unless said):
    GET  /                      the page (``page.html``): query box, result grid, image upload
    GET  /api/search?q=TEXT&k=N text-to-image search
    GET  /api/similar?row=R&k=N the neighbours of indexed item R (a click on a thumbnail)
    POST /api/image?k=N         image-to-image search; the body is the image file, or a
                                multipart form with it (``curl -F file=@x.png``)
    GET  /api/info              items, dimension, checkpoint, whether words can be searched
    GET  /api/sample?k=N        N items spread over the index (the page before a search)
    GET  /image/R               item R's image, the member's bytes read by offset from its shard

Bound to 127.0.0.1 by default: the page reads the collection's files, so exposing it is the
user's choice (``--host 0.0.0.0``). Bound to this machine, it answers only requests addressed to
it by name (``Host: localhost``, ``127.0.0.1`` or ``[::1]``, any port): a web page elsewhere
whose name an attacker points at 127.0.0.1 (DNS rebinding) gets 403, not the collection.
A bad query, and any malformed request, gets a 4xx status and ``{"error": message}`` that the
page shows; an unexpected failure gets 500 with the message, never a stack trace. Uploads are
bounded by what is read (``search/uploads.py``), an image over ``max_upload_pixels`` is refused
from its header (``too_large``), and uploads are decoded one at a time, so N hostile uploads
cost one decode's memory, not N. A client that hangs up is one log line.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlparse

from vlcontrast.search.engine import MAX_K, QueryError, SearchIndex
from vlcontrast.search.uploads import (
    MAX_UPLOAD,
    MAX_UPLOAD_PIXELS,
    UploadError,
    image_part,
    read_body,
)

TIMEOUT = 30  # seconds a client may take to send its request (slow-header sockets are closed)
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # the names this machine answers to


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port: ``[::1]:8000`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """One line, never a traceback: a client that hangs up early is routine."""
        err = sys.exc_info()[1]
        print(f"serve: {client_address[0]}: {type(err).__name__}: {err}", file=sys.stderr)


def page(k: int) -> bytes:
    html = resources.files("vlcontrast.search").joinpath("page.html").read_text()
    return html.replace("__K__", str(int(k))).encode()


def make_server(
    index: SearchIndex,
    host: str = "127.0.0.1",
    port: int = 8000,
    k: int = 24,
    max_upload_pixels: int = MAX_UPLOAD_PIXELS,
):
    """The HTTP server (not started); ``port=0`` picks a free port (``server.server_port``)."""
    body = page(k)
    decoding = threading.Lock()  # one upload decoded at a time
    loopback_only = host in LOOPBACK

    class Handler(BaseHTTPRequestHandler):
        timeout = TIMEOUT
        default_request_version = "HTTP/1.0"  # a garbled request line still gets a status line

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass  # one line per thumbnail would drown the terminal

        def send_error(self, code, message=None, explain=None):
            """The base class's malformed-request answers, as JSON like every other."""
            self.close_connection = True
            try:
                self.json(code, {"error": message or self.responses.get(code, ("error",))[0]})
            except OSError:
                pass

        def foreign(self) -> bool:
            """Answered with 403 if bound to this machine and addressed by another name (a
            missing Host header, as curl -0 sends, is this machine)."""
            name = host_name(self.headers.get("Host") or "localhost")
            if not loopback_only or name in LOOPBACK:
                return False
            self.close_connection = True
            self.json(403, {"error": f"this server answers only to {', '.join(LOOPBACK)}"})
            return True

        def do_GET(self):  # noqa: N802 - the base class's name
            if self.foreign():
                return
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path in ("/", "/index.html"):
                return self.send(200, body, "text/html; charset=utf-8")
            if url.path.startswith("/image/"):
                return self.answer(lambda: self.image(url.path.removeprefix("/image/")))
            if url.path == "/api/info":
                return self.json(200, info(index))
            if url.path == "/api/search":
                return self.results(lambda k: index.search_text(one(query, "q"), k), query)
            if url.path == "/api/similar":
                return self.results(lambda k: index.similar(number(query, "row"), k), query)
            if url.path == "/api/sample":
                return self.results(index.sample, query)
            return self.json(404, {"error": f"no page {url.path}"})

        def do_POST(self):  # noqa: N802
            if self.foreign():
                return
            url = urlparse(self.path)
            if url.path != "/api/image":
                self.close_connection = True  # its body, if any, is never read
                return self.json(404, {"error": f"no page {url.path}"})
            try:
                data = read_body(self.headers, self.rfile, MAX_UPLOAD)
                data = image_part(self.headers.get("Content-Type") or "", data)
            except UploadError as err:
                self.close_connection = True
                return self.json(err.status, {"error": str(err)})
            if not data:
                return self.json(400, {"error": "the upload is empty: choose an image file"})

            def search(k):
                with decoding:
                    return index.search_image(data, k, max_pixels=max_upload_pixels)

            return self.results(search, parse_qs(url.query))

        def results(self, run, query):
            def search():
                start = time.perf_counter()
                hits = run(min(number(query, "k", 24), MAX_K))
                ms = 1000 * (time.perf_counter() - start)
                return {"results": [slim(h) for h in hits], "ms": ms, "items": len(index)}

            self.answer(lambda: self.json(200, search()))

        def image(self, row: str):
            if not row.isdigit():
                raise QueryError(f"no item {row!r}")
            data, content_type = index.image_bytes(int(row))
            self.send(200, data, content_type, cache=True)

        def answer(self, respond):
            try:
                respond()
            except QueryError as err:
                self.json(400, {"error": str(err)})
            except Exception as err:  # noqa: BLE001 - the page shows a message, not a trace
                traceback.print_exc(file=sys.stderr)
                self.json(500, {"error": f"internal error: {type(err).__name__}: {err}"})

        def json(self, status: int, value) -> None:
            self.send(status, json.dumps(value).encode(), "application/json")

        def send(self, status: int, data: bytes, content_type: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Content-Type-Options", "nosniff")  # an image stays an image
            if cache:
                self.send_header("Cache-Control", "max-age=3600")
            self.end_headers()
            self.wfile.write(data)

    return Server((host, port), Handler)


def one(query: dict, name: str) -> str:
    values = query.get(name, [""])
    return values[0]


def number(query: dict, name: str, default: int | None = None) -> int:
    text = one(query, name)
    if not text and default is not None:
        return default
    try:
        return int(text)
    except ValueError:
        raise QueryError(f"{name} must be a whole number, got {text!r}") from None


def slim(hit: dict) -> dict:
    """What the page shows of a record."""
    return {name: hit.get(name) for name in ("rank", "row", "score", "key", "caption", "url")}


def info(index: SearchIndex) -> dict:
    return {
        "items": len(index),
        "dim": index.files.dim,
        "checkpoint": str(index.checkpoint),
        "backend": index.backend.name,
        "text_queries": index.text_queries,  # false: an image-only model, searched by image
    }


def serve(
    index: SearchIndex,
    host: str = "127.0.0.1",
    port: int = 8000,
    k: int = 24,
    max_upload_pixels: int = MAX_UPLOAD_PIXELS,
) -> None:
    server = make_server(index, host, port, k, max_upload_pixels)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    print(
        f"searching {len(index)} items ({index.backend.name} backend) at "
        f"http://{shown}:{server.server_port}/  (Ctrl-C stops)"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
