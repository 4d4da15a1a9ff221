"""节点质控 (seed 003 §二.3 数据采集要求、质控规则、字段配置): the per-node data fields and QC rules configured in
the node editor are applied when an event completes the node: the event is still applied, the findings are stored
on the node, shown on the timeline and in the API, and raised once as a 质控不合格 alert to the department."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, select

from app.db import db
from app.loops import config, metrics, services
from app.loops.alerts import ALERT_KIND_LABELS, LoopAlert, alert_rates
from app.loops.catalog import LOOPS
from app.loops.models import EventStatus, LoopEvent, LoopNodeState, LoopOrder
from app.notify.models import Notification

BASE = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=2)
LAB = [n.key for n in next(d for d in LOOPS if d.key == "lab").nodes]
UP_TO_COLLECT = LAB[: LAB.index("collect") + 1]
COLLECT_FINDINGS_INCOMPLETE = ["采集标本缺少必填字段「检验样本编号」", "采集标本字段「标本量（ml）」不是数值格式"]


@pytest.fixture(autouse=True)
def fresh_caches():
    services.invalidate_types()
    yield
    services.invalidate_types()


@pytest.fixture
def lab_rules(db_session, user):
    """The group-standard lab loop with data fields and QC rules on 采集标本 (collect), saved through the editor's
    service as an administrator would."""
    spec = config.node_spec(config.group_type("lab"))
    collect = next(n for n in spec["nodes"] if n["key"] == "collect")
    collect["required_fields"] = [
        {"name": "sample_no", "label": "检验样本编号", "type": "string", "required": True},
        {"name": "volume", "label": "标本量（ml）", "type": "number", "required": False},
    ]
    collect["qc_rules"] = {"max_minutes": 45, "require_fields": True, "operator_required": True}
    config.save_loop_nodes(key="lab", campus=None, spec=spec, actor=user("admin"))
    db_session.commit()


def ev(order_no: str, node: str, minute: int, *, data: dict | None = None, **extra) -> dict:
    body = {"source": "LIS", "event_id": f"{order_no}-{node}", "order_no": order_no, "order_type": "lab",
            "node": node, "occurred_at": (BASE + timedelta(minutes=minute)).isoformat(),
            "operator": {"id": "N1001", "name": "吴护士"}, "patient": {"id": "P1", "name": "王五"}, "dept": "1001"}
    if data is not None:
        body["data"] = data
    body.update(extra)
    return body


def send(db_session, events: list[dict]) -> list[dict]:
    results = services.intake(events=events)
    for _ in range(20):
        s = services.apply_pending()
        if s.orders == 0 or s.applied == 0:
            break
    db_session.commit()
    return results


def lab_events(order_no: str, collect_data: dict | None, *, collect_minute: int | None = None, **collect_extra):
    out = []
    for i, key in enumerate(UP_TO_COLLECT):
        if key == "collect":
            out.append(ev(order_no, key, collect_minute if collect_minute is not None else i * 5,
                          data=collect_data, **collect_extra))
        else:
            out.append(ev(order_no, key, i * 5))
    return out


def states_of(db_session, order_no: str) -> dict[str, LoopNodeState]:
    order = db_session.scalar(select(LoopOrder).where(LoopOrder.order_no == order_no))
    return {s.node_key: s for s in order.states}


def qc_alerts(db_session, order_no: str) -> list[LoopAlert]:
    return list(db_session.scalars(select(LoopAlert).where(LoopAlert.order_no == order_no, LoopAlert.kind == "qc")))


def api_loop(client, order_no: str) -> dict:
    from app.auth.services import create_api_token

    token = create_api_token(system="LIS")
    db.session.commit()
    resp = client.get(f"/api/v1/orders/{order_no}/loop", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def test_incomplete_data_is_applied_with_findings_and_one_qc_alert(client, login, db_session, user, lab_rules):
    results = send(db_session, lab_events("QC-1", {"volume": "很多"}))
    assert {r["status"] for r in results} == {"accepted"}  # a bad format does not cost the hospital the step

    states = states_of(db_session, "QC-1")
    assert states["collect"].status == "done" and states["collect"].operator_id == "N1001"
    assert states["collect"].qc_findings == COLLECT_FINDINGS_INCOMPLETE
    assert all(s.qc_findings is None for k, s in states.items() if k != "collect")
    applied = db_session.scalar(select(LoopEvent).where(LoopEvent.event_id == "QC-1-collect"))
    assert applied.status == EventStatus.APPLIED

    (alert,) = qc_alerts(db_session, "QC-1")
    assert alert.node_key == "collect" and alert.node_name == "采集标本" and alert.status == "open"
    assert alert.message == "；".join(COLLECT_FINDINGS_INCOMPLETE)
    assert alert.dept_id == user("nurse").dept_id and alert.notified_count >= 1
    note = db_session.scalar(select(Notification).where(Notification.user_id == user("nurse").id,
                                                        Notification.kind == "alert"))
    assert note.title == "【质控不合格】检验闭环 医嘱 QC-1" and "检验样本编号" in note.body

    out = api_loop(client, "QC-1")
    nodes = {n["key"]: n for n in out["nodes"]}
    assert nodes["collect"]["qc"] == COLLECT_FINDINGS_INCOMPLETE
    assert all("qc" not in n for k, n in nodes.items() if k != "collect")

    login("nurse")
    html = client.get("/loops/orders/QC-1").get_data(as_text=True)
    assert "质控不合格" in html and "采集标本缺少必填字段「检验样本编号」" in html


def test_complete_data_gives_no_findings_and_no_alert(client, db_session, lab_rules):
    send(db_session, lab_events("QC-2", {"sample_no": "S20261120-001", "volume": 2.5}))
    states = states_of(db_session, "QC-2")
    assert states["collect"].status == "done" and states["collect"].qc_findings is None
    assert qc_alerts(db_session, "QC-2") == []
    assert all("qc" not in n for n in api_loop(client, "QC-2")["nodes"])


def test_timing_over_the_limit_and_a_missing_operator_are_findings(db_session, lab_rules):
    before = LAB.index("collect") * 5 - 5  # the node before collect
    events = lab_events("QC-3", {"sample_no": "S1"}, collect_minute=before + 50, operator=None)
    send(db_session, events)
    assert states_of(db_session, "QC-3")["collect"].qc_findings == [
        "采集标本距上一节点 50 分钟，超过质控上限 45 分钟", "采集标本未记录操作人"]
    (alert,) = qc_alerts(db_session, "QC-3")
    assert "超过质控上限" in alert.message


def test_a_late_node_is_checked_when_it_finally_arrives(db_session, lab_rules):
    events = [e for e in lab_events("QC-4", None) if e["node"] != "collect"] + [ev("QC-4", "transfer", 40)]
    services.intake(events=events)
    services.apply_pending(now=datetime.now(UTC) + timedelta(minutes=30))  # past the grace period: collect skipped
    db_session.commit()
    assert states_of(db_session, "QC-4")["collect"].status == "skipped"
    send(db_session, [ev("QC-4", "collect", 35, data={})])
    st = states_of(db_session, "QC-4")["collect"]
    assert st.status == "late" and st.qc_findings == ["采集标本缺少必填字段「检验样本编号」"]
    assert len(qc_alerts(db_session, "QC-4")) == 1


def test_nodes_and_loops_without_rules_are_untouched_and_cost_no_query(db_session, lab_rules, monkeypatch):
    monkeypatch.setattr(services, "CACHE_TTL_SECONDS", 10**9)  # the cache must not expire in the middle
    assert services.node_qc(services.type_info("exam").id) == {}
    lab = services.type_info("lab")
    assert set(services.node_qc(lab.id)) == {"collect"}
    assert services.node_qc(lab.id) is services.node_qc(lab.id)  # compiled once per version
    exam = [n.key for n in next(d for d in LOOPS if d.key == "exam").nodes]

    def exam_events(order_no: str) -> list[dict]:
        return [ev(order_no, k, i * 5, order_type="exam", data={"note": "无"}) for i, k in enumerate(exam)]

    send(db_session, lab_events("QC-5", {"sample_no": "S1"})[:2] + exam_events("QC-6")[:2])  # warm the caches
    statements: list[str] = []

    def spy(conn, cursor, statement, *args):
        statements.append(statement)

    bind = db.session.get_bind()
    event.listen(bind, "before_cursor_execute", spy)
    try:
        send(db_session, lab_events("QC-7", {"sample_no": "S1", "volume": 3}) + exam_events("QC-8"))
    finally:
        event.remove(bind, "before_cursor_execute", spy)
    assert statements and not [s for s in statements if "loop_nodes" in s]  # no rule lookups per event or order
    for order_no in ("QC-7", "QC-8"):
        assert all(s.status == "done" and s.qc_findings is None for s in states_of(db_session, order_no).values()
                   if s.node_key in UP_TO_COLLECT or order_no == "QC-8")
    assert db_session.scalar(select(LoopAlert.id).where(LoopAlert.order_no.in_(["QC-7", "QC-8"]))) is None


def test_qc_is_an_alert_kind_counted_in_the_alert_rate_panel(db_session, lab_rules):
    assert ALERT_KIND_LABELS["qc"] == "质控不合格" and metrics.alert_labels()["qc"] == "质控不合格"
    send(db_session, lab_events("QC-9", {}))
    row = next(r for r in alert_rates() if r["kind"] == "qc")
    assert row["label"] == "质控不合格" and row["total"] >= 1 and row["open"] >= 1
