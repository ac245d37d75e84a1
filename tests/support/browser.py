"""What the browser tests share: the system Chromium through Playwright, and pages served
from another origin than the gateway's (their own port), so every call is cross-origin.

Playwright drives the SYSTEM Chromium (Debian package ``chromium``; nothing is
downloaded); without it, or without Playwright, the tests are skipped with a message.
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HTML = "text/html; charset=utf-8"


def chromium_or_skip() -> Any:
    """Playwright's ``sync_playwright``, or a skip naming what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not os.path.exists(CHROMIUM):
        pytest.skip("the system Chromium is missing: apt-get install chromium")
    return sync_playwright


@contextmanager
def page_server() -> Iterator[tuple[str, dict[str, bytes | tuple[bytes, str]]]]:
    """An HTTP server on its own port: ``content[path]`` is what it serves, as bytes
    (HTML) or ``(bytes, content type)`` — ES modules need a JavaScript type."""
    content: dict[str, bytes | tuple[bytes, str]] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = content.get(self.path.split("?")[0])
            body, kind = found if isinstance(found, tuple) else (found, HTML)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", kind)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", content
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def browser_page(sync_playwright: Any) -> Iterator[tuple[Any, list[str]]]:
    """A fresh page in the system Chromium, and the list of every URL it requests (the
    tests check no session token ever appears in one)."""
    urls: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda request: urls.append(request.url))
            yield page, urls
        finally:
            browser.close()
