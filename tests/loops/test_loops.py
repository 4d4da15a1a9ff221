"""Closed loops on PostgreSQL: intake results, every loop end to end, duplicates, shuffled and late events,
skipped nodes after the grace period, cancellation, abnormal steps, mapped status codes, a crashed apply."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.loops import services
from app.loops.catalog import LOOPS
from app.loops.models import InterfaceMapping, LoopEvent, LoopOrder

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def ev(order_no: str, loop: str, node: str, minute: int, *, source="HIS", eid=None, **extra):
    body = {
        "source": source, "event_id": eid or f"{order_no}-{node}-{minute}", "order_no": order_no,
        "order_type": loop, "node": node, "occurred_at": (T0 + timedelta(minutes=minute)).isoformat(),
        "operator": {"id": "N1001", "name": "吴护士"}, "patient": {"id": "P001", "name": "张三", "inpatient_no": "ZY001"},
        "dept": "1001", "campus": "HQ", "terminal": "护士站-1",
    }
    body.update(extra)
    return body


def nodes_of(key: str) -> list[str]:
    return [n.key for n in next(d for d in LOOPS if d.key == key).nodes]


def apply(now: datetime | None = None):
    total = services.ApplyStats()
    for _ in range(50):
        s = services.apply_pending(now=now)
        total.applied += s.applied
        if s.orders == 0 or s.applied == 0:
            break
    return total


@pytest.fixture
def his(client, db_session):
    from app.auth.services import create_api_token

    token = create_api_token(system="HIS")
    db_session.commit()

    def post(events):
        resp = client.post("/api/v1/loop-events", json={"events": events}, headers={"Authorization": f"Bearer {token}"})
        return resp

    post.token = token
    return post


def loop_of(client, token, order_no):
    resp = client.get(f"/api/v1/orders/{order_no}/loop", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


@pytest.mark.parametrize("loop", [d.key for d in LOOPS])
def test_every_loop_closes_from_first_to_last_node(his, client, db_session, loop):
    order_no = f"O-{loop}"
    events = [ev(order_no, loop, node, i * 7) for i, node in enumerate(nodes_of(loop))]
    resp = his(events)
    assert resp.status_code == 200
    assert resp.get_json()["accepted"] == len(events)
    apply()
    out = loop_of(client, his.token, order_no)
    assert out["status"] == "closed"
    assert [n["key"] for n in out["nodes"]] == nodes_of(loop)
    assert all(n["status"] == "done" for n in out["nodes"])
    assert out["nodes"][1]["minutes_since_previous"] == 7
    assert out["nodes"][1]["deviation_minutes"] == 7 - out["nodes"][1]["standard_minutes"]
    order = db_session.scalar(select(LoopOrder).where(LoopOrder.order_no == order_no))
    from app.workflow.models import ProcessInstance

    assert db_session.get(ProcessInstance, order.instance_id).status == "completed"


def test_loop_types_api_lists_nodes_in_order(client, his):
    resp = client.get("/api/v1/loop-types", headers={"Authorization": f"Bearer {his.token}"})
    types = {t["key"]: t for t in resp.get_json()["loop_types"]}
    assert len(types) == 11
    assert [n["name"] for n in types["transfusion"]["nodes"]][:3] == ["配血申请", "上级医师审核", "签收配血医嘱"]
    assert {"key", "name", "standard_minutes"} <= set(types["lab"]["nodes"][0])


def test_duplicates_are_acknowledged_and_change_nothing(his, db_session):
    events = [ev("D-1", "lab", n, i) for i, n in enumerate(nodes_of("lab")[:3])]
    assert his(events).get_json()["accepted"] == 3
    again = his(events + [events[0]]).get_json()
    assert [r["status"] for r in again["results"]] == ["duplicate"] * 4
    assert db_session.scalar(select(func.count()).select_from(LoopEvent).where(LoopEvent.order_no == "D-1")) == 3


def test_one_bad_event_does_not_reject_the_others(his, db_session):
    good = ev("B-1", "lab", "request", 0)
    bad_time = ev("B-1", "lab", "senior_review", 1, occurred_at="2026-11-20 08:01")
    bad_type = ev("B-2", "nonsense", "request", 1)
    bad_node = ev("B-3", "lab", "fly", 1)
    missing = {k: v for k, v in ev("B-4", "lab", "request", 1).items() if k != "order_no"}
    out = his([good, bad_time, bad_type, bad_node, missing]).get_json()
    statuses = [r["status"] for r in out["results"]]
    assert statuses == ["accepted", "rejected", "rejected", "rejected", "rejected"]
    paths = [r["errors"][0]["path"] for r in out["results"][1:]]
    assert paths == ["events/1/occurred_at", "events/2/order_type", "events/3/node", "events/4/order_no"]
    assert "时区" in out["results"][1]["reason"]
    assert db_session.scalar(select(func.count()).select_from(LoopEvent).where(LoopEvent.order_no.like("B-%"))) == 1


def test_intake_refuses_a_bad_body_and_unauthenticated_callers(client, his):
    assert client.post("/api/v1/loop-events", json={"events": []}).status_code == 401
    resp = his([])
    assert resp.status_code == 400 and resp.get_json()["error"]["errors"][0]["path"] == "events"
    assert his([{}] * 1001).status_code == 400


def test_shuffled_events_within_grace_are_applied_in_loop_order(his, client):
    keys = nodes_of("exam")
    events = [ev("S-1", "exam", n, i * 5) for i, n in enumerate(keys)]
    random.Random(7).shuffle(events)
    for chunk in (events[:4], events[4:]):
        his(chunk)
        apply()
    out = loop_of(client, his.token, "S-1")
    assert out["status"] == "closed"
    assert all(n["status"] == "done" for n in out["nodes"])


def test_missing_node_waits_then_is_skipped_and_a_late_arrival_is_kept(his, client, db_session):
    keys = nodes_of("lab")
    sent = [ev("G-1", "lab", n, i * 3) for i, n in enumerate(keys) if n != "identify"]
    his(sent)
    apply()
    out = loop_of(client, his.token, "G-1")
    assert out["status"] == "in_progress"
    assert [n["status"] for n in out["nodes"]][:5] == ["done", "done", "done", "done", "current"]
    later = datetime.now(UTC) + timedelta(minutes=10)
    apply(now=later)
    out = loop_of(client, his.token, "G-1")
    statuses = {n["key"]: n["status"] for n in out["nodes"]}
    assert statuses["identify"] == "skipped" and out["status"] == "closed"
    order = db_session.scalar(select(LoopOrder).where(LoopOrder.order_no == "G-1"))
    assert order.has_skipped
    his([ev("G-1", "lab", "identify", 13)])
    apply(now=later)
    out = loop_of(client, his.token, "G-1")
    late = next(n for n in out["nodes"] if n["key"] == "identify")
    assert late["status"] == "late" and late["operator"]["name"] == "吴护士"
    assert out["status"] == "closed"


def test_cancellation_interrupts_with_node_and_duration(his, client, db_session):
    keys = nodes_of("transfusion")
    his([ev("C-1", "transfusion", n, i * 10) for i, n in enumerate(keys[:4])]
        + [ev("C-1", "transfusion", "cancelled", 45, data={"reason": "患者拒绝输血"})])
    apply()
    out = loop_of(client, his.token, "C-1")
    assert out["status"] == "interrupted" and out["interrupted_node"] == keys[4]
    order = db_session.scalar(select(LoopOrder).where(LoopOrder.order_no == "C-1"))
    assert order.interrupted_minutes == 45
    his([ev("C-1", "transfusion", keys[5], 60)])
    apply()
    assert loop_of(client, his.token, "C-1")["status"] == "interrupted"  # nothing rolls it back


def test_abnormal_flags_the_current_node_and_keeps_the_loop_open(his, client):
    keys = nodes_of("lab")
    his([ev("A-1", "lab", n, i) for i, n in enumerate(keys[:7])]
        + [ev("A-1", "lab", "abnormal", 9, data={"reason": "标本溶血，拒收"})])
    apply()
    out = loop_of(client, his.token, "A-1")
    current = next(n for n in out["nodes"] if n["key"] == keys[7])
    assert out["status"] == "in_progress" and current["status"] == "abnormal" and "溶血" in current["note"]
    his([ev("A-1", "lab", n, 20 + i) for i, n in enumerate(keys[7:])])
    apply()
    assert loop_of(client, his.token, "A-1")["status"] == "closed"


def test_source_codes_are_mapped_through_the_interface_dictionary(his, client, db_session):
    db_session.add_all([
        InterfaceMapping(source="LIS", kind="order_type", code="JY", target="lab"),
        InterfaceMapping(source="LIS", kind="node:lab", code="SC", target="collect"),
        InterfaceMapping(source="*", kind="node", code="CA", target="cancelled"),
    ])
    db_session.flush()
    services.invalidate_types()
    out = his([ev("M-1", "JY", "request", 0, source="LIS"), ev("M-1", "JY", "SC", 5, source="LIS"),
               ev("M-1", "JY", "CA", 9, source="LIS")]).get_json()
    assert out["accepted"] == 3
    apply(now=datetime.now(UTC) + timedelta(hours=1))
    loop = loop_of(client, his.token, "M-1")
    assert loop["loop_type"] == "lab" and loop["status"] == "interrupted"
    assert {n["key"]: n["status"] for n in loop["nodes"]}["collect"] == "done"


def test_a_crashed_apply_loses_nothing_and_applies_nothing_twice(his, client, db_session):
    keys = nodes_of("consultation")
    his([ev("K-1", "consultation", n, i) for i, n in enumerate(keys)])
    with db_session.begin_nested() as sp:  # the worker dies mid-batch: its transaction never commits
        services.apply_pending()
        sp.rollback()
    db_session.expire_all()
    assert db_session.scalar(select(func.count()).select_from(LoopEvent)
                             .where(LoopEvent.order_no == "K-1", LoopEvent.status == "pending")) == len(keys)
    apply()
    out = loop_of(client, his.token, "K-1")
    assert out["status"] == "closed"
    assert db_session.scalar(select(func.count()).select_from(LoopEvent)
                             .where(LoopEvent.order_no == "K-1", LoopEvent.status == "applied")) == len(keys)


def test_unknown_order_is_404_with_chinese_message(client, his):
    resp = client.get("/api/v1/orders/NOPE/loop", headers={"Authorization": f"Bearer {his.token}"})
    assert resp.status_code == 404 and "NOPE" in resp.get_json()["error"]["message"]


def test_status_feedback_is_queued_in_the_outbox_in_order(his, db_session):
    from app.outbox.models import OutboxMessage

    keys = nodes_of("lab")
    his([ev("F-1", "lab", n, i) for i, n in enumerate(keys[:2])])
    apply()
    his([ev("F-1", "lab", "abnormal", 3, data={"reason": "标本凝固"})])
    apply()
    his([ev("F-1", "lab", n, 10 + i) for i, n in enumerate(keys[2:4])])
    apply()
    his([ev("F-1", "lab", n, 20 + i) for i, n in enumerate(keys[4:])])
    apply()
    rows = db_session.scalars(select(OutboxMessage).where(OutboxMessage.key == "order:F-1")
                              .order_by(OutboxMessage.id)).all()
    assert [r.payload["status"] for r in rows] == ["received", "abnormal", "in_progress", "done"]
    assert {r.channel for r in rows} == {"order_feedback"} and all(r.status == "pending" for r in rows)
