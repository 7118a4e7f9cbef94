"""The search page in a real browser: Playwright driving Debian's ``chromium`` package (no
browser download; ``.ci/run`` installs it and sets VLCONTRAST_REQUIRE_BROWSER so CI cannot skip).
Types a query, checks the thumbnails against the Python API, clicks one, uploads an image, and
reads the messages for a bad query and a bad upload."""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.test_search import build, planted, trained  # noqa: F401 - fixtures
from vlcontrast.search.engine import SearchIndex
from vlcontrast.search.server import make_server

K = 6


def browser_or_skip():
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if executable and sync_playwright:
        return executable, sync_playwright
    if os.environ.get("VLCONTRAST_REQUIRE_BROWSER"):
        pytest.fail(
            "the browser test needs Debian's chromium and playwright (apt-get install -y "
            "chromium; pip install playwright)"
        )
    pytest.skip("no chromium or playwright here")


@pytest.fixture()
def served(tmp_path, trained, planted):  # noqa: F811
    build(tmp_path, trained, planted["pattern"])
    index = SearchIndex(tmp_path / "index")
    server = make_server(index, "127.0.0.1", 0, k=K)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield index, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def shown_keys(page) -> list[str]:
    return page.eval_on_selector_all("figure.hit", "els => els.map(e => e.dataset.key)")


def test_the_page_searches_by_text_by_click_and_by_upload(served, planted, tmp_path):  # noqa: F811
    executable, sync_playwright = browser_or_skip()
    index, url = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable)
        page = browser.new_page()
        page.goto(url + "/")  # before a search: the index's size and a few of its items
        page.wait_for_function("document.getElementById('status').textContent.includes('48 items')")
        assert shown_keys(page) == [hit["key"] for hit in index.sample(8)]
        page.goto(url + "/?q=" + "a red circle".replace(" ", "+"))  # a shared link
        page.wait_for_function(f"document.querySelectorAll('figure.hit').length === {K}")
        assert page.input_value("#q") == "a red circle"
        assert shown_keys(page) == [hit["key"] for hit in index.search_text("a red circle", K)]
        page.fill("#q", "a red circle")
        page.press("#q", "Enter")
        page.wait_for_function(f"document.querySelectorAll('figure.hit').length === {K}")
        expected = [hit["key"] for hit in index.search_text("a red circle", K)]
        assert shown_keys(page) == expected
        page.wait_for_function(
            "[...document.querySelectorAll('figure.hit img')].every(i => i.complete && "
            "i.naturalWidth === 64)"
        )  # every thumbnail is the 64-px image, read from its shard
        first = page.query_selector("figure.hit")
        row, key = int(first.get_attribute("data-row")), first.get_attribute("data-key")
        first.click()
        page.wait_for_function(f"document.getElementById('status').textContent.includes({key!r})")
        assert shown_keys(page) == [hit["key"] for hit in index.similar(row, K)]
        assert page.url.endswith(f"/?similar={row}")  # the click is in the URL: bookmarkable
        page.go_back()  # back to the text query
        page.wait_for_function("document.getElementById('status').textContent.includes('red')")
        page.goto(url + f"/?similar={row}")
        page.wait_for_function(f"document.querySelectorAll('figure.hit').length === {K}")
        assert shown_keys(page) == [hit["key"] for hit in index.similar(row, K)]

        upload = tmp_path / "upload.jpg"
        upload.write_bytes(planted["items"][9]["jpg"])
        page.set_input_files("#upload", str(upload))
        page.wait_for_function("document.getElementById('status').textContent.includes('upload')")
        assert shown_keys(page)[0] == planted["items"][9]["__key__"]

        page.fill("#q", "")
        page.click("#go")
        page.wait_for_selector("#status.error")
        assert "empty query" in page.text_content("#status")
        assert shown_keys(page) == []
        bad = tmp_path / "notes.jpg"
        bad.write_text("this is not an image")
        page.set_input_files("#upload", str(bad))
        page.wait_for_function(
            "document.getElementById('status').textContent.includes('not an image')"
        )
        browser.close()


def test_the_api_answers_bad_requests_with_a_message(served):
    index, url = served

    def get(path, data=None):
        request = urllib.request.Request(url + path, data=data, method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, response.read(), response.headers["Content-Type"]
        except urllib.error.HTTPError as err:
            return err.code, err.read(), err.headers["Content-Type"]

    status, body, _ = get("/api/search?q=" + "x" * 2000)
    assert status == 400 and "too long" in json.loads(body)["error"]
    status, body, _ = get("/api/similar?row=banana")
    assert status == 400 and "row must be a whole number" in json.loads(body)["error"]
    status, body, _ = get("/api/image?k=3", data=b"GIF89a-not-really")
    assert status == 400 and "not an image" in json.loads(body)["error"]
    status, body, _ = get("/image/999")
    assert status == 400 and "no item 999" in json.loads(body)["error"]
    status, body, kind = get("/image/4")
    assert status == 200 and kind == "image/jpeg" and body == index.image_bytes(4)[0]
    status, body, _ = get("/api/search?q=a%20green%20star&k=3")
    hits = json.loads(body)["results"]
    assert [h["key"] for h in hits] == [h["key"] for h in index.search_text("a green star", 3)]


def test_an_image_only_index_offers_image_search_only(tmp_path, planted):  # noqa: F811
    """An index of an image-only model (an SSL run, an imported backbone): /api/info says words
    cannot be searched, and the page greys out its text box and asks for an image."""
    byol = Path(__file__).parent / "data" / "format2" / "byol"
    summary = build(tmp_path, str(byol), planted["pattern"])
    assert summary["text_queries"] is False
    index = SearchIndex(tmp_path / "index")
    server = make_server(index, "127.0.0.1", 0, k=K)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with urllib.request.urlopen(url + "/api/info") as response:
            assert json.loads(response.read())["text_queries"] is False
        executable, sync_playwright = browser_or_skip()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable)
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_function(
                "document.getElementById('status').textContent.includes('Search by an image')"
            )
            assert page.is_disabled("#q") and page.is_disabled("#go")
            assert "no text tower" in page.get_attribute("#q", "placeholder")
            upload = tmp_path / "upload.jpg"
            upload.write_bytes(planted["items"][9]["jpg"])
            page.set_input_files("#upload", str(upload))
            page.wait_for_function(
                "document.getElementById('status').textContent.includes('upload')"
            )
            assert shown_keys(page)[0] == planted["items"][9]["__key__"]  # itself, first
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
