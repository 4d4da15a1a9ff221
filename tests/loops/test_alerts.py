"""风险预警: alerts raised by the applier (缺环, 异常) and by the periodic scan (超时, 停滞, 危急值 → escalation),
each once; notifications to the responsible department; confirm/dismiss with a required reason; alert rate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.jobs import JOBS
from app.loops import services
from app.loops.alerts import LoopAlert, alert_rates, on_applier_alerts, scan_alerts
from app.loops.catalog import LOOPS
from app.notify.models import Notification

BASE = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=3)


def ev(order_no: str, loop: str, node: str, minute: int, **extra):
    body = {"source": "LIS", "event_id": f"{order_no}-{node}-{minute}", "order_no": order_no, "order_type": loop,
            "node": node, "occurred_at": (BASE + timedelta(minutes=minute)).isoformat(),
            "operator": {"id": "N1001", "name": "吴护士"}, "patient": {"id": "P1", "name": "王五"}, "dept": "1001"}
    body.update(extra)
    return body


def nodes_of(key: str) -> list[str]:
    return [n.key for n in next(d for d in LOOPS if d.key == key).nodes]


def apply(now: datetime | None = None) -> None:
    for _ in range(50):
        s = services.apply_pending(now=now)
        if s.orders == 0 or s.applied == 0:
            break


@pytest.fixture
def send(client, db_session):
    from app.auth.services import create_api_token

    token = create_api_token(system="LIS")
    db_session.commit()

    def post(events, *, now: datetime | None = None):
        resp = client.post("/api/v1/loop-events", json={"events": events}, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200 and resp.get_json()["rejected"] == 0, resp.get_data(as_text=True)
        apply(now)
        db_session.commit()

    return post


def alerts_of(db_session, order_no: str) -> list[LoopAlert]:
    return list(db_session.scalars(select(LoopAlert).where(LoopAlert.order_no == order_no).order_by(LoopAlert.id)))


def inbox(db_session, user, username: str) -> list[Notification]:
    return list(db_session.scalars(select(Notification).where(Notification.user_id == user(username).id,
                                                              Notification.kind == "alert")))


def test_the_alert_hook_and_job_are_registered(app):
    assert on_applier_alerts in services.ALERT_HOOKS
    assert "loops.alerts" in JOBS


def test_skipped_node_raises_an_alert_and_notifies_the_department(send, db_session, user):
    keys = nodes_of("lab")
    send([ev("AL-1", "lab", k, i * 5) for i, k in enumerate(keys[:6]) if k != "identify"],
         now=datetime.now(UTC) + timedelta(minutes=10))
    (alert,) = alerts_of(db_session, "AL-1")
    assert alert.kind == "skipped" and alert.node_key == "identify" and alert.node_name == "核对患者身份"
    assert alert.status == "open" and "缺环" in alert.message and alert.dept_id == user("nurse").dept_id
    # 普外科's loops.view holders: 吴护士 (nurse) and 张主任 (dept_head); not 心内科, not 药剂科
    assert alert.notified_count == 2
    (note,) = inbox(db_session, user, "nurse")
    assert "【缺环】检验闭环 医嘱 AL-1" == note.title and note.link == "/loops/orders/AL-1" and note.read_at is None
    assert inbox(db_session, user, "gs_head") and not inbox(db_session, user, "card_head")
    assert not inbox(db_session, user, "pharm")
    assert "王五" not in note.title + (note.body or "")  # no patient identity in messages


def test_abnormal_raises_one_alert_per_node(send, db_session, user):
    keys = nodes_of("lab")
    send([ev("AL-2", "lab", k, i) for i, k in enumerate(keys[:3])]
         + [ev("AL-2", "lab", "abnormal", 5, data={"reason": "条码打印失败"})])
    send([ev("AL-2", "lab", "abnormal", 6, data={"reason": "再次失败"})])
    (alert,) = alerts_of(db_session, "AL-2")
    assert alert.kind == "abnormal" and alert.node_key == keys[3] and "条码打印失败" in alert.message
    assert len(inbox(db_session, user, "nurse")) == 1


def test_overdue_node_is_found_by_the_scan_once(send, db_session):
    keys = nodes_of("lab")  # nurse_check: standard 30 minutes after senior_review
    send([ev("AL-3", "lab", k, i * 10) for i, k in enumerate(keys[:2])])
    reviewed = BASE + timedelta(minutes=10)
    assert scan_alerts(now=reviewed + timedelta(minutes=29))["overdue"] == 0
    assert alerts_of(db_session, "AL-3") == []
    counts = scan_alerts(now=reviewed + timedelta(minutes=42))
    assert counts["overdue"] >= 1
    (alert,) = alerts_of(db_session, "AL-3")
    assert alert.kind == "overdue" and alert.node_key == "nurse_check" and not alert.escalated
    assert "超出 12 分钟" in alert.message
    scan_alerts(now=reviewed + timedelta(minutes=50))
    assert len(alerts_of(db_session, "AL-3")) == 1


def test_stalled_loop_is_alerted_after_its_stall_threshold(send, db_session):
    send([ev("AL-4", "admission_discharge", "admission", 0), ev("AL-4", "admission_discharge", "ward_in", 60)])
    # ward_out has a 7200-minute standard, so only the stall threshold (1440 minutes) can fire
    scan_alerts(now=BASE + timedelta(minutes=60 + 1400))
    assert alerts_of(db_session, "AL-4") == []
    scan_alerts(now=BASE + timedelta(minutes=60 + 1441))
    (alert,) = alerts_of(db_session, "AL-4")
    assert alert.kind == "stalled" and alert.node_key == "ward_out" and "停滞" in alert.message
    scan_alerts(now=BASE + timedelta(minutes=60 + 2000))
    assert len(alerts_of(db_session, "AL-4")) == 1


def test_unacknowledged_critical_value_is_escalated_to_dept_head_and_mao(send, db_session, user):
    send([ev("AL-5", "critical_value", "request", 0)])  # senior_review: standard 30 minutes
    scan_alerts(now=BASE + timedelta(minutes=31))
    (alert,) = alerts_of(db_session, "AL-5")
    assert alert.kind == "critical_unacked" and alert.escalated and alert.escalated_at is not None
    titles = [n.title for n in inbox(db_session, user, "mao")]
    assert any(t.startswith("【升级·危急值未及时处置】危急值闭环 医嘱 AL-5") for t in titles)
    assert any("升级" in n.title for n in inbox(db_session, user, "gs_head"))
    assert not any("升级" in n.title for n in inbox(db_session, user, "card_head"))


def _two_alerts(send, db_session):
    keys = nodes_of("lab")
    send([ev("AL-6", "lab", k, i) for i, k in enumerate(keys[:3])]
         + [ev("AL-6", "lab", "abnormal", 5, data={"reason": "样本不足"})])
    send([ev("AL-7", "lab", k, i) for i, k in enumerate(keys[:3])]
         + [ev("AL-7", "lab", "abnormal", 5, data={"reason": "设备故障"})])
    return alerts_of(db_session, "AL-6")[0], alerts_of(db_session, "AL-7")[0]


def test_confirm_and_dismiss_need_a_reason_and_are_audited(client, login, send, db_session):
    first, second = _two_alerts(send, db_session)
    csrf = login("gs_head")
    page = client.get(f"/loops/alerts/{first.id}").get_data(as_text=True)
    assert 'id="handle-form"' in page
    resp = client.post(f"/loops/alerts/{first.id}/handle", data={"csrf_token": csrf, "decision": "confirm",
                                                                 "reason": "  "})
    assert resp.status_code == 400 and 'data-path="reason"' in resp.get_data(as_text=True)
    db_session.refresh(first)
    assert first.status == "open"
    resp = client.post(f"/loops/alerts/{first.id}/handle", data={"csrf_token": csrf, "decision": "confirm",
                                                                 "reason": "核实为标本采集不规范，已上报"})
    assert resp.status_code == 302
    resp = client.post(f"/loops/alerts/{second.id}/handle", data={"csrf_token": csrf, "decision": "dismiss",
                                                                  "reason": "设备误报"})
    assert resp.status_code == 302
    db_session.refresh(first)
    db_session.refresh(second)
    assert first.status == "confirmed" and first.handled_by is not None and first.reason.startswith("核实")
    assert second.status == "dismissed"
    assert client.post(f"/loops/alerts/{first.id}/handle", data={"csrf_token": csrf, "decision": "dismiss",
                                                                 "reason": "改判"}).status_code == 409
    assert db_session.scalar(select(func.count()).select_from(AuditLog)
                             .where(AuditLog.action.in_(["loops.alert.confirmed", "loops.alert.dismissed"]))) == 2


def test_nurse_cannot_handle_and_other_departments_cannot_see(client, login, send, db_session):
    from app.auth.models import Department
    from app.auth.services import create_user
    from app.demo import DEMO_PASSWORD

    first, _second = _two_alerts(send, db_session)
    csrf = login("nurse")
    assert "AL-6" in client.get("/loops/alerts/").get_data(as_text=True)
    assert client.post(f"/loops/alerts/{first.id}/handle", data={"csrf_token": csrf, "decision": "dismiss",
                                                                 "reason": "x"}).status_code == 403
    card = db_session.scalar(select(Department).where(Department.code == "CARD"))
    create_user(username="card_nurse2", name="心内护士", password=DEMO_PASSWORD, dept=card, roles=["nurse"],
                check_strength=False)
    db_session.commit()
    login("card_nurse2")
    assert "AL-6" not in client.get("/loops/alerts/").get_data(as_text=True)
    assert client.get(f"/loops/alerts/{first.id}").status_code == 403
    csrf = login("card_head")  # dept_head of 心内科: holds loops.alert_handle, but not for 普外科
    assert client.post(f"/loops/alerts/{first.id}/handle", data={"csrf_token": csrf, "decision": "dismiss",
                                                                 "reason": "x"}).status_code == 403


def test_alert_rate_is_confirmed_over_all_by_type(client, login, send, db_session, user):
    from app.loops.alerts import handle_alert

    first, second = _two_alerts(send, db_session)
    handle_alert(alert=first, decision="confirm", reason="属实", actor=user("mao"))
    db_session.commit()
    rates = {r["kind"] or "total": r for r in alert_rates(f=None)}
    assert rates["abnormal"]["total"] >= 2 and rates["abnormal"]["confirmed"] >= 1
    login("gs_head")
    html = client.get("/loops/alerts/?kind=abnormal&q=AL-6").get_data(as_text=True)
    assert "告警率" in html and 'data-kind="abnormal"' in html
    scoped = client.get("/loops/alerts/?status=open").get_data(as_text=True)
    row = scoped.split('data-kind="abnormal"')[1].split("</tr>")[0]
    assert ">2<" in row and "50.0%" in row  # the rate ignores the status filter
    assert "AL-7" in scoped and "AL-6" not in scoped.split('id="alert-list"')[1]
    assert client.get("/loops/alerts/?kind=bogus").status_code == 400
    resp = client.get("/loops/alerts/export.xlsx")
    assert resp.status_code == 200 and resp.data[:2] == b"PK"
