"""A worker killed mid-batch loses nothing and applies nothing twice: real `medloop loops work` processes on
their own database (real commits), SIGKILLed inside an uncommitted batch and at a random moment from outside,
then drained by another worker; the outcome must equal a clean in-process run of the same events."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Interval, func, literal, select, text, update

from app.db import db, utcnow
from app.loops import generator, services
from app.loops.alerts import LoopAlert
from app.loops.alerts import order_link as alert_link
from app.loops.models import EventStatus, LoopEvent, LoopNodeState, LoopOrder
from app.notify.models import Notification
from app.outbox.models import OutboxMessage
from app.workflow.models import ProcessInstance
from tests.conftest import own_database

ROOT = Path(__file__).resolve().parent.parent.parent
MEDLOOP = str(Path(sys.executable).parent / "medloop")
ORDERS = 300
SEED = 4
POLL = 0.02  # seconds between looks at the database while a worker runs
POLLS = 3000  # bound on those looks (a minute)


@pytest.fixture(scope="module")
def kill_db():
    """(app, url, now): a database of its own, since the workers commit; dropped afterwards."""
    with own_database("workerkill") as (application, url):
        yield application, url, utcnow()


def feed(prefix: str, now) -> list[dict[str, Any]]:
    """The same few thousand events for every prefix: several loop types, 缺环, cancellations, abnormal steps,
    the generator's re-sent duplicates plus 5 % more, the whole list shuffled (same order for every prefix)."""
    with pytest.MonkeyPatch.context() as mp:  # more of the rare paths than a ward has
        for name, rate in (("CANCEL_RATE", 0.08), ("ABNORMAL_RATE", 0.08), ("MISSING_RATE", 0.08),
                           ("DUPLICATE_RATE", 0.05)):
            mp.setattr(generator, name, rate)
        # the window ends tomorrow: the latest orders are still in progress at any time of day
        events = generator.generate_feed(orders=ORDERS, seed=SEED, start=now - timedelta(days=2), days=3, now=now,
                                         prefix=prefix)
    rng = random.Random(SEED)
    events = events + [dict(e) for e in rng.sample(events, k=len(events) // 20)]
    rng.shuffle(events)
    return events


def store(prefix: str, now) -> int:
    """Send the feed through the real intake service, committing each batch; returns how many were stored.
    The events are then dated two hours back (received while the workers were down), so every grace period
    is over and an order's outcome does not depend on when a worker gets to it."""
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
    events = feed(prefix, now)
    for i in range(0, len(events), 500):
        for r in services.intake(events=events[i:i + 500]):
            counts[r["status"]] += 1
        db.session.commit()
    db.session.execute(update(LoopEvent).where(LoopEvent.order_no.startswith(prefix))
                       .values(received_at=LoopEvent.received_at - literal(timedelta(hours=2), Interval())))
    db.session.commit()
    assert counts["rejected"] == 0, counts
    assert counts["duplicate"] >= len(events) // 20, counts
    stored = db.session.scalar(select(func.count()).select_from(LoopEvent)
                               .where(LoopEvent.order_no.startswith(prefix)))
    assert stored == counts["accepted"] >= 2000
    loop_types = db.session.scalar(select(func.count(func.distinct(LoopOrder.loop_type_key)))
                                   .where(LoopOrder.order_no.startswith(prefix)))
    assert loop_types >= 6
    return stored


def applied(app, prefix: str) -> int:
    """Committed, applied events of a prefix (as another connection sees them)."""
    with app.app_context():
        n = db.session.scalar(select(func.count()).select_from(LoopEvent)
                              .where(LoopEvent.order_no.startswith(prefix), LoopEvent.status != EventStatus.PENDING))
        db.session.remove()
    return n or 0


def snapshot(prefix: str) -> dict[str, Any]:
    """Everything applying produced for a prefix's orders, keyed without the prefix so runs compare."""
    cut = len(prefix)
    ev_ids = {i: e[cut:] for i, e in db.session.execute(select(LoopEvent.id, LoopEvent.event_id)
                                                        .where(LoopEvent.order_no.startswith(prefix)))}
    out: dict[str, Any] = {}
    for o in db.session.scalars(select(LoopOrder).where(LoopOrder.order_no.startswith(prefix))):
        out[o.order_no[cut:]] = {
            "order": (o.loop_type_key, o.status, o.current_node, o.interrupted_node, o.interrupted_minutes,
                      o.has_skipped, o.has_abnormal, o.started_at, o.ended_at, o.last_event_at, o.pending),
            "nodes": [(s.seq, s.node_key, s.status, s.occurred_at, s.operator_id, s.source, s.terminal,
                       s.minutes_since_previous, s.deviation_minutes, s.note, ev_ids.get(s.event_id or 0))
                      for s in o.states],
            "events": {}, "feedback": [], "alerts": [], "instances": [], "notified": 0,
        }
    for order_no, event_id, status in db.session.execute(
            select(LoopEvent.order_no, LoopEvent.event_id, LoopEvent.status)
            .where(LoopEvent.order_no.startswith(prefix))):
        out[order_no[cut:]]["events"][event_id[cut:]] = status
    for key, payload in db.session.execute(select(OutboxMessage.key, OutboxMessage.payload)
                                           .where(OutboxMessage.key.startswith(f"order:{prefix}"))
                                           .order_by(OutboxMessage.id)):
        out[key[len("order:") + cut:]]["feedback"].append((payload["status"], payload["current_node"]))
    for order_no, kind, node_key in db.session.execute(
            select(LoopAlert.order_no, LoopAlert.kind, LoopAlert.node_key)
            .where(LoopAlert.order_no.startswith(prefix)).order_by(LoopAlert.kind, LoopAlert.node_key)):
        out[order_no[cut:]]["alerts"].append((kind, node_key))
    link = alert_link(prefix)
    for target, n in db.session.execute(select(Notification.link, func.count()).where(Notification.link.startswith(link))
                                        .group_by(Notification.link)):
        out[target[len(link):]]["notified"] = n
    for business_key, status, current, done in db.session.execute(
            select(ProcessInstance.business_key, ProcessInstance.status, ProcessInstance.current_nodes,
                   ProcessInstance.done_nodes).where(ProcessInstance.business_key.startswith(prefix))):
        out[business_key[cut:]]["instances"].append((status, current, done))
    return out


@pytest.fixture(scope="module")
def reference(kill_db):
    """The same events applied in this process, batch after batch, without any kill."""
    app, _url, now = kill_db
    with app.app_context():
        store("REF", now)
        for _ in range(1000):
            stats = services.apply_pending(limit=50)
            db.session.commit()
            if stats.orders == 0:
                break
        snap = snapshot("REF")
        db.session.remove()
    assert all(o["events"] and EventStatus.PENDING not in o["events"].values() for o in snap.values())
    statuses = {o["order"][1] for o in snap.values()}
    assert statuses == {"closed", "in_progress", "interrupted"}, statuses
    assert any(o["order"][5] for o in snap.values()) and any(o["order"][6] for o in snap.values())  # 缺环, 异常
    assert any(o["alerts"] for o in snap.values()) and any(o["notified"] for o in snap.values())
    return snap


@pytest.fixture
def workers(kill_db):
    """Start `medloop loops work` processes on the test database; any still running at the end is killed."""
    _app, url, _now = kill_db
    started: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env["DATABASE_URL"] = f"{url}?application_name={name}"  # to find its database session
        proc = subprocess.Popen([MEDLOOP, "loops", "work", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def finish(proc: subprocess.Popen) -> int:
    """Wait for a worker that must drain and exit by itself; returns how many events it applied."""
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    m = re.search(r"已应用 (\d+) 个事件", out)
    assert m, out[-3000:]
    return int(m.group(1))


def killed(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, out[-3000:])


def wait_gone(app, name: str) -> None:
    """Wait until the killed worker's database session has ended (its open batch rolled back, locks freed)."""
    for _ in range(POLLS):
        with app.app_context():
            alive = db.session.scalar(text("select count(*) from pg_stat_activity where application_name = :n"),
                                      {"n": name})
            db.session.remove()
        if not alive:
            return
        time.sleep(POLL)
    raise AssertionError(f"the killed worker's database session {name} did not end")


def check(app, prefix: str, stored: int, reference: dict[str, Any]) -> None:
    """Nothing lost, nothing twice, nothing pending, nothing locked, and the same outcome as the clean run."""
    events = LoopEvent.order_no.startswith(prefix)
    orders = LoopOrder.order_no.startswith(prefix)
    with app.app_context():
        count = db.session.scalar(select(func.count()).select_from(LoopEvent).where(events))
        unapplied = db.session.scalar(select(func.count()).select_from(LoopEvent).where(
            events, (LoopEvent.status == EventStatus.PENDING) | LoopEvent.applied_at.is_(None)))
        pending_orders = db.session.scalar(select(func.count()).select_from(LoopOrder).where(orders, LoopOrder.pending))
        double_states = db.session.execute(
            select(LoopNodeState.order_id, LoopNodeState.node_key).join(LoopOrder, LoopOrder.id == LoopNodeState.order_id)
            .where(orders).group_by(LoopNodeState.order_id, LoopNodeState.node_key).having(func.count() > 1)).all()
        double_instances = db.session.execute(
            select(ProcessInstance.business_key).where(ProcessInstance.business_key.startswith(prefix))
            .group_by(ProcessInstance.business_key).having(func.count() > 1)).all()
        total = db.session.scalar(select(func.count()).select_from(LoopOrder).where(orders))
        # no order left locked: every one of them can be claimed at once
        claimable = len(db.session.scalars(select(LoopOrder.id).where(orders).with_for_update(skip_locked=True)).all())
        db.session.rollback()
        snap = snapshot(prefix)
        db.session.remove()
    assert count == stored
    assert unapplied == 0  # every stored event applied (applied / late / repeat / ignored), with its time
    assert pending_orders == 0
    assert double_states == [] and double_instances == []
    assert claimable == total
    assert snap.keys() == reference.keys()
    differing = sorted(k for k in reference if snap[k] != reference[k])
    assert not differing, (len(differing), differing[:5], snap[differing[0]], reference[differing[0]])


def test_worker_killed_inside_an_uncommitted_batch(kill_db, reference, workers):
    app, _url, now = kill_db
    with app.app_context():
        stored = store("HOOK", now)
        db.session.remove()
    die_after = stored // 3
    killed(workers("medloop-kill-hook-1", "--batch", "20", "--die-after", str(die_after)))
    wait_gone(app, "medloop-kill-hook-1")
    done = applied(app, "HOOK")
    # earlier batches were committed; the batch that reached die_after was flushed, never committed
    assert 0 < done < die_after, (done, die_after)
    rest = finish(workers("medloop-kill-hook-2", "--batch", "50"))
    assert done + rest == stored  # each event applied by exactly one committed batch
    check(app, "HOOK", stored, reference)


def test_worker_killed_at_a_random_moment_while_another_works(kill_db, reference, workers):
    app, _url, now = kill_db
    with app.app_context():
        stored = store("RAND", now)
        db.session.remove()
    threshold = random.randint(stored // 10, stored // 2)  # a different moment every run
    victim = workers("medloop-kill-rand-a", "--batch", "10")
    survivor = workers("medloop-kill-rand-b", "--batch", "10")
    for _ in range(POLLS):
        if applied(app, "RAND") >= threshold or victim.poll() is not None:
            break
        time.sleep(POLL)
    assert victim.poll() is None, f"the worker ended before it could be killed (threshold {threshold})"
    victim.send_signal(signal.SIGKILL)
    killed(victim)
    finish(survivor)  # it skipped the orders the victim held while its session lived
    wait_gone(app, "medloop-kill-rand-a")
    finish(workers("medloop-kill-rand-c", "--batch", "50"))
    check(app, "RAND", stored, reference)
