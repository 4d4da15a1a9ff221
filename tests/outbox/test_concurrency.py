"""Two dispatchers at once on real commits: FOR UPDATE SKIP LOCKED never waits, never double-sends, and keeps
the per-key order."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from app import create_app
from app.db import db
from app.outbox import services as outbox
from app.outbox.models import OutboxMessage, OutboxStatus
from tests.conftest import PG_URL, ensure_database, make_config, reset_schema


@pytest.fixture(scope="module")
def committed_app():
    url = make_url(PG_URL)
    url = url.set(database=f"{url.database}_outbox").render_as_string(hide_password=False)
    ensure_database(url)
    application = create_app(make_config(url))
    reset_schema(application)
    yield application
    with application.app_context():
        db.engine.dispose()


def test_a_second_dispatcher_skips_locked_rows_and_respects_key_order(committed_app, monkeypatch):
    sent: list[str] = []
    holding = threading.Event()
    release = threading.Event()

    def send(message):
        if message.payload["name"] == "m1":
            holding.set()
            assert release.wait(10)
        sent.append(message.payload["name"])

    monkeypatch.setitem(outbox.CHANNELS, "conc", send)
    with committed_app.app_context():
        db.session.execute(text("truncate outbox_messages"))
        for name, key in (("m1", "k"), ("m2", "k"), ("m3", "j")):
            outbox.enqueue(channel="conc", event="e", payload={"name": name}, key=key)
        db.session.commit()
        db.session.remove()

    results: dict[str, dict] = {}

    def first():
        with committed_app.app_context():
            results["a"] = outbox.dispatch_due(limit=1)  # claims m1 and holds its lock while "sending"
            db.session.commit()
            db.session.remove()

    worker = threading.Thread(target=first)
    worker.start()
    assert holding.wait(10)
    with committed_app.app_context():
        results["b"] = outbox.dispatch_due(limit=10)  # must not wait for m1's lock
        db.session.commit()
        db.session.remove()
    assert results["b"]["claimed"] == 1 and sent == ["m3"]  # m1 locked (skipped), m2 behind m1 (blocked)
    release.set()
    worker.join(10)
    assert results["a"]["sent"] == 1 and sent == ["m3", "m1"]
    with committed_app.app_context():
        outbox.dispatch_due(limit=10)
        db.session.commit()
        statuses = {m.payload["name"]: m.status for m in db.session.scalars(select(OutboxMessage))}
        db.session.remove()
    assert sent == ["m3", "m1", "m2"]
    assert statuses == {"m1": OutboxStatus.SENT, "m2": OutboxStatus.SENT, "m3": OutboxStatus.SENT}
