"""Browser tests: a live MedLoop on its own PostgreSQL database, driven by Debian's Chromium via Playwright."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

from app import create_app
from app.db import db
from tests.conftest import PG_URL, ensure_database, make_config, reset_schema

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def live_server():
    url = make_url(PG_URL).set(database=f"{make_url(PG_URL).database}_browser").render_as_string(hide_password=False)
    ensure_database(url)
    application = create_app(make_config(url))
    reset_schema(application)
    with application.app_context():
        from app.demo import load_demo

        load_demo()
        db.session.commit()
    server = make_server("127.0.0.1", 0, application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{server.server_port}", "app": application}
    server.shutdown()
    with application.app_context():
        db.engine.dispose()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def new_page(browser, live_server):
    """Open a fresh browser context (own cookies) per role; screenshots go to test-artifacts/."""
    contexts = []

    def _open(username: str | None = None, password: str = "Medloop@2026"):
        ctx = browser.new_context(locale="zh-CN", viewport={"width": 1366, "height": 900})
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(15000)
        if username:
            page.goto(live_server["url"] + "/login")
            page.fill("input[name=username]", username)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_url("**/tasks/**")
        return page

    yield _open
    for ctx in contexts:
        ctx.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
