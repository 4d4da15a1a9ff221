"""Connector tests: a live MedLoop (own PostgreSQL database, committed data) served over real HTTP and TCP."""

from __future__ import annotations

import threading

import pytest
from werkzeug.serving import make_server

from app.db import db
from tests.conftest import own_database


@pytest.fixture(scope="session")
def live():
    """A MedLoop on <test db>_connectors with the demo data, served by werkzeug on 127.0.0.1."""
    from app.loops import services

    with own_database("connectors") as (application, _url):
        services.invalidate_types()  # another app in this process may have filled the caches
        server = make_server("127.0.0.1", 0, application, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield {"url": f"http://127.0.0.1:{server.server_port}", "app": application}
        server.shutdown()


@pytest.fixture
def live_ctx(live):
    """An app context on the live app (fresh session); mapping/type caches cleared around the test."""
    from app.loops import services

    app = live["app"]
    with app.app_context():
        services.invalidate_types()
        yield app
        db.session.remove()
    services.invalidate_types()


@pytest.fixture
def system_token(live):
    from app.auth.services import create_api_token

    with live["app"].app_context():
        token = create_api_token(system="ESB")
        db.session.commit()
    return token


def apply_all(app) -> int:
    """Apply every pending event now (what the background applier does)."""
    from app.loops import tasks

    with app.app_context():
        return tasks.drain()
