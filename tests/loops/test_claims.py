"""Intake never waits for a batch being applied, and an event that arrives while its order is in a batch is
applied by the next batch (real commits, two connections)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text

from app.db import db
from app.loops import services
from app.loops.models import EventStatus, LoopEvent, LoopOrder
from tests.conftest import own_database
from tests.loops.test_loops import ev, nodes_of


@pytest.fixture(scope="module")
def claims_app():
    with own_database("claims") as (application, _url):
        yield application


def test_intake_does_not_wait_for_an_open_batch_and_late_arrivals_are_applied(claims_app, monkeypatch):
    app = claims_app
    lab = nodes_of("lab")
    with app.app_context():
        assert [r["status"] for r in services.intake(events=[ev("CL-1", "lab", lab[0], 0),
                                                             ev("CL-1", "lab", lab[1], 5)])] == ["accepted"] * 2
        db.session.commit()

    inside = threading.Event()
    release = threading.Event()
    real_apply = services._apply_order
    outcome: dict[str, object] = {}

    def held_apply(*args, **kwargs):
        result = real_apply(*args, **kwargs)
        inside.set()  # the order is claimed and half applied, nothing flushed yet
        release.wait(30)
        return result

    monkeypatch.setattr(services, "_apply_order", held_apply)

    def worker() -> None:
        with app.app_context():
            try:
                outcome["first"] = services.apply_pending(limit=10).applied
                db.session.commit()
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                outcome["error"] = exc
                db.session.rollback()
            finally:
                db.session.remove()

    t = threading.Thread(target=worker)
    t.start()
    assert inside.wait(30)
    try:
        with app.app_context():
            # a row lock held by the batch would make this fail after 2 s instead of answering at once
            db.session.execute(text("set local lock_timeout = '2s'"))
            [result] = services.intake(events=[ev("CL-1", "lab", lab[2], 9)])
            db.session.commit()
            assert result["status"] == "accepted"
            db.session.remove()
    finally:
        release.set()
        t.join(60)
    assert "error" not in outcome and outcome["first"] == 2
    monkeypatch.setattr(services, "_apply_order", real_apply)
    with app.app_context():
        order = db.session.scalar(select(LoopOrder).where(LoopOrder.order_no == "CL-1"))
        assert order.pending is True  # flagged again for the event that arrived during the batch
        assert services.apply_pending(limit=10).applied == 1
        db.session.commit()
        states = {s.node_key: s.status for s in db.session.scalar(
            select(LoopOrder).where(LoopOrder.order_no == "CL-1")).states}
        assert [states[k] for k in lab[:3]] == ["done", "done", "done"]
        assert db.session.scalar(select(LoopEvent.id).where(LoopEvent.order_no == "CL-1",
                                                             LoopEvent.status == EventStatus.PENDING)) is None
        db.session.remove()


def test_two_workers_never_claim_the_same_order(claims_app):
    app = claims_app
    lab = nodes_of("lab")
    with app.app_context():
        services.intake(events=[ev(f"CL2-{i}", "lab", lab[0], i) for i in range(6)])
        db.session.commit()
        first = db.session()
        claimed = {o.order_no for o in services._claim(3, services.utcnow())}
        assert len(claimed) == 3
        with app.app_context():  # a second worker, its own connection and transaction
            other = {o.order_no for o in services._claim(10, services.utcnow())}
            assert other and not (other & claimed)
            db.session.rollback()
            db.session.remove()
        first.rollback()
        db.session.remove()
