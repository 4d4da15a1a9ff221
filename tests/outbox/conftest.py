"""Outbox test helpers: a real HTTP server on 127.0.0.1 standing in for HIS, and throw-away channels."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class FakeHis:
    """Answers 500 for the first `fail_first` requests (or always, with fail_always), then 200."""

    url: str = ""
    fail_first: int = 0
    fail_always: bool = False
    received: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def fake_his() -> Iterator[FakeHis]:
    state = FakeHis()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            with state.lock:
                state.received.append(body)
                state.headers.append(dict(self.headers))
                failing = state.fail_always or len(state.received) <= state.fail_first
                status = 500 if failing else 200
                state.statuses.append(status)
            payload = ("HIS 内部错误" if failing else '{"ok": true}').encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):  # keep the test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/his/privileges"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def his_url(app, monkeypatch, fake_his) -> str:
    monkeypatch.setitem(app.config, "HIS_PRIVILEGE_URL", fake_his.url)
    return fake_his.url


@pytest.fixture
def channel(monkeypatch) -> Callable:
    """Register a throw-away channel for one test: channel(name, fn)."""
    from app.outbox import services

    def _register(name: str, fn: Callable) -> str:
        monkeypatch.setitem(services.CHANNELS, name, fn)
        return name

    return _register
