"""The integration contract of issue 4 as source systems see it: GET /api/v1/loop-types with each node's data
fields (group standard or a campus's version, cached), GET /api/v1/orders/{order_no}/loop with the fields and
values the issue names, and the background drain reaching due orders past a batch of waiting ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, select

from app.db import db
from app.loops import config, services, tasks
from app.loops.catalog import LOOPS
from app.loops.docs import components
from app.loops.models import EventStatus, LoopEvent, LoopOrder

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
LAB = [n.key for n in next(d for d in LOOPS if d.key == "lab").nodes]


@pytest.fixture(autouse=True)
def fresh_caches():
    services.invalidate_types()
    yield
    services.invalidate_types()


@pytest.fixture
def token(db_session):
    from app.auth.services import create_api_token

    value = create_api_token(system="LIS")
    db_session.commit()
    return value


def get(client, token, url):
    return client.get(url, headers={"Authorization": f"Bearer {token}"})


def ev(order_no: str, node: str, minute: int, **extra) -> dict:
    body = {"source": "LIS", "event_id": f"{order_no}-{node}-{minute}", "order_no": order_no, "order_type": "lab",
            "node": node, "occurred_at": (T0 + timedelta(minutes=minute)).isoformat(),
            "operator": {"id": "N1001", "name": "吴护士"}, "patient": {"id": "P1", "name": "王五"}, "dept": "1001"}
    body.update(extra)
    return body


def apply_all(now: datetime | None = None) -> None:
    for _ in range(20):
        if services.apply_pending(now=now).orders == 0:
            break


# ---------------------------------------------------------------- GET /api/v1/loop-types


def test_loop_types_list_every_nodes_data_fields(client, token, lab_fields):
    resp = get(client, token, "/api/v1/loop-types")
    assert resp.status_code == 200
    types = {t["key"]: t for t in resp.get_json()["loop_types"]}
    assert list(types) == [d.key for d in LOOPS]
    for t in types.values():
        assert t["campus"] is None
        for n in t["nodes"]:
            assert set(n) == {"key", "name", "standard_minutes", "fields"} and isinstance(n["fields"], list)
    lab = {n["key"]: n for n in types["lab"]["nodes"]}
    assert list(lab) == LAB
    assert lab["collect"]["fields"] == [
        {"key": "sample_no", "name": "检验样本编号", "type": "string", "required": True},
        {"key": "volume", "name": "标本量（ml）", "type": "number", "required": False}]
    assert lab["request"]["fields"] == [] and lab["perform"]["fields"] == []


def test_a_campus_sees_the_version_in_force_there(client, token, lab_fields):
    types = {t["key"]: t for t in get(client, token, "/api/v1/loop-types?campus=EAST").get_json()["loop_types"]}
    assert list(types) == [d.key for d in LOOPS]
    assert types["lab"]["campus"] == "EAST" and types["exam"]["campus"] is None  # no EAST version of exam
    lab = {n["key"]: n for n in types["lab"]["nodes"]}
    assert lab["collect"]["fields"] == []
    assert lab["perform"]["fields"] == [{"key": "instrument", "name": "检验仪器", "type": "string", "required": True}]
    # a campus without its own version gets the group standard
    hq = {t["key"]: t for t in get(client, token, "/api/v1/loop-types?campus=HQ").get_json()["loop_types"]}
    assert hq["lab"]["campus"] is None and hq["lab"]["nodes"] == get(
        client, token, "/api/v1/loop-types").get_json()["loop_types"][[d.key for d in LOOPS].index("lab")]["nodes"]
    bad = get(client, token, "/api/v1/loop-types?campus=MARS")
    assert bad.status_code == 400
    assert bad.get_json()["error"]["errors"] == [{"path": "campus", "message": "院区「MARS」不存在"}]


def test_loop_types_are_cached_and_a_configuration_change_shows_at_once(db_session, user):
    first = services.loop_types_out()
    statements: list[str] = []

    def spy(conn, cursor, statement, *args):
        statements.append(statement)

    bind = db.session.connection()
    event.listen(bind, "before_cursor_execute", spy)
    try:
        again = services.loop_types_out()
    finally:
        event.remove(bind, "before_cursor_execute", spy)
    assert again is first and statements == []  # no query while the cache holds
    spec = config.node_spec(config.group_type("lab"))
    spec["nodes"][0]["required_fields"] = [{"name": "his_no", "label": "HIS 申请单号", "type": "string",
                                            "required": True}]
    config.save_loop_nodes(key="lab", campus=None, spec=spec, actor=user("admin"))
    lab = next(t for t in services.loop_types_out() if t["key"] == "lab")
    assert lab["nodes"][0]["fields"] == [{"key": "his_no", "name": "HIS 申请单号", "type": "string", "required": True}]


def test_loop_types_match_the_issue_and_the_openapi_schema(client, token):
    schemas = components()["schemas"]
    out = get(client, token, "/api/v1/loop-types").get_json()
    for t in out["loop_types"]:
        assert {"key", "name", "nodes"} <= set(t) <= set(schemas["LoopType"]["properties"])
        for n in t["nodes"]:
            assert set(n) == set(schemas["LoopNodeDef"]["properties"])
    lab = next(t for t in out["loop_types"] if t["key"] == "lab")
    assert lab["name"] == "检验"
    assert [(n["key"], n["name"], n["standard_minutes"]) for n in lab["nodes"]] == [
        (n.key, n.name, n.standard_minutes) for n in next(d for d in LOOPS if d.key == "lab").nodes]


# ---------------------------------------------------------------- GET /api/v1/orders/{order_no}/loop

ORDER_STATUSES = {"in_progress", "closed", "interrupted"}
NODE_STATUSES = {"done", "current", "pending", "late", "skipped", "abnormal"}
NODE_FIELDS = {"key", "name", "status", "occurred_at", "operator", "minutes_since_previous", "standard_minutes"}


def check_contract(out: dict) -> None:
    schemas = components()["schemas"]
    assert {"order_no", "loop_type", "status", "nodes"} <= set(out) <= set(schemas["OrderLoop"]["properties"])
    assert out["status"] in ORDER_STATUSES
    for n in out["nodes"]:
        assert NODE_FIELDS <= set(n) <= set(schemas["OrderLoopNode"]["properties"])
        assert n["status"] in NODE_STATUSES
        assert n["operator"] is None or set(n["operator"]) == {"id", "name"}
        if n["occurred_at"] is not None:
            assert datetime.fromisoformat(n["occurred_at"]).tzinfo is not None
    assert set(schemas["OrderLoop"]["required"]) == {"order_no", "loop_type", "status", "nodes"}
    assert set(schemas["OrderLoopNode"]["required"]) == NODE_FIELDS


def test_order_loop_answer_has_the_fields_and_values_of_the_issue(client, token, db_session):
    # request and senior_review on time, nurse_check never scanned (skipped, then arrives late),
    # print_barcode done, then an abnormal step at collect
    services.intake(events=[ev("K-1", "request", 0), ev("K-1", "senior_review", 20),
                            ev("K-1", "print_barcode", 50)])
    apply_all(now=datetime.now(UTC) + timedelta(minutes=10))
    services.intake(events=[ev("K-1", "nurse_check", 40), ev("K-1", "abnormal", 60, data={"reason": "患者不在病房"})])
    apply_all()
    db_session.commit()
    out = get(client, token, "/api/v1/orders/K-1/loop").get_json()
    check_contract(out)
    assert out["order_no"] == "K-1" and out["loop_type"] == "lab" and out["status"] == "in_progress"
    assert [n["key"] for n in out["nodes"]] == LAB  # loop order
    nodes = {n["key"]: n for n in out["nodes"]}
    assert [nodes[k]["status"] for k in LAB[:6]] == ["done", "done", "late", "done", "abnormal", "pending"]
    assert nodes["request"]["minutes_since_previous"] is None and nodes["request"]["standard_minutes"] == 0
    assert nodes["senior_review"]["minutes_since_previous"] == 20 and nodes["senior_review"]["standard_minutes"] == 30
    assert nodes["senior_review"]["operator"] == {"id": "N1001", "name": "吴护士"}
    assert nodes["senior_review"]["occurred_at"] == (T0 + timedelta(minutes=20)).isoformat()
    assert nodes["print_barcode"]["minutes_since_previous"] == 30  # from senior_review, the previous node done then
    assert nodes["identify"]["occurred_at"] is None and nodes["identify"]["operator"] is None

    services.intake(events=[ev("K-2", "request", 0), ev("K-2", "cancelled", 5, data={"reason": "医嘱停止"})]
                    + [ev("K-3", key, i) for i, key in enumerate(LAB)])
    apply_all()
    db_session.commit()
    cancelled = get(client, token, "/api/v1/orders/K-2/loop").get_json()
    check_contract(cancelled)
    assert cancelled["status"] == "interrupted"
    assert [n["status"] for n in cancelled["nodes"]][:2] == ["done", "pending"]
    closed = get(client, token, "/api/v1/orders/K-3/loop").get_json()
    check_contract(closed)
    assert closed["status"] == "closed" and {n["status"] for n in closed["nodes"]} == {"done"}


# ---------------------------------------------------------------- the background drain


def test_orders_waiting_in_the_first_batch_do_not_block_due_ones(db_session):
    """The first batch holds only orders whose events wait for missing predecessors (nothing applies); the
    drain goes on to the next batch instead of leaving the due order to the periodic sweep."""
    assert db_session.scalar(select(func.count()).select_from(LoopOrder).where(LoopOrder.pending.is_(True))) == 0
    for order_no in ("W-1", "W-2"):  # claimed first (lower ids): only a later node, within the grace period
        services.intake(events=[ev(order_no, "collect", 30)])
    services.intake(events=[ev("D-1", "request", 0), ev("D-1", "senior_review", 10)])
    db_session.commit()
    applied = tasks.drain(batch=2)
    assert applied == 2
    due = db_session.scalar(select(LoopOrder).where(LoopOrder.order_no == "D-1"))
    assert not due.pending and due.current_node == "nurse_check"
    for order_no in ("W-1", "W-2"):
        waiting = db_session.scalar(select(LoopOrder).where(LoopOrder.order_no == order_no))
        assert waiting.pending and waiting.wait_until > datetime.now(UTC)
        assert db_session.scalar(select(LoopEvent.status).where(LoopEvent.order_no == order_no)) == EventStatus.PENDING


def test_drain_is_bounded_by_its_rounds(db_session):
    for order_no in ("R-1", "R-2", "R-3"):
        services.intake(events=[ev(order_no, "request", 0)])
    db_session.commit()
    assert tasks.drain(max_rounds=1, batch=2) == 2
    assert tasks.drain(batch=2) == 1
