"""统一闭环视图: order search and the timeline page (icons + colours, deviations, skipped/abnormal/interrupted),
data scope, patient identity masking, source links, raw events, and the intake audit search with export."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from io import BytesIO

import pytest
from openpyxl import load_workbook
from sqlalchemy import select

from app.audit.models import AuditLog
from app.core.timefmt import SHANGHAI
from app.loops import services
from app.loops.catalog import LOOPS
from app.loops.views import SourceLink, fmt_deviation, fmt_minutes, mask_id, mask_name, render_source_url

BASE = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=1)


def ev(order_no: str, loop: str, node: str, minute: int, **extra):
    body = {
        "source": "HIS", "event_id": f"{order_no}-{node}-{minute}", "order_no": order_no, "order_type": loop,
        "node": node, "occurred_at": (BASE + timedelta(minutes=minute)).isoformat(),
        "operator": {"id": "N1001", "name": "吴护士"},
        "patient": {"id": "P20260001", "name": "张三丰", "inpatient_no": "ZY20260001"},
        "dept": "1001", "campus": "HQ", "terminal": "护士站-3",
    }
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
def his(client, db_session):
    from app.auth.services import create_api_token

    token = create_api_token(system="HIS")
    db_session.commit()

    def post(events):
        resp = client.post("/api/v1/loop-events", json={"events": events}, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_json()

    post.token = token
    return post


@pytest.fixture
def lab_order(his, db_session):
    """Lab order V-1 (普外科): request → senior_review 45 min (+15 over standard) → nurse_check → print_barcode,
    identify missing (skipped after the grace period), collect done, then an abnormal on transfer."""
    keys = nodes_of("lab")
    minutes = {"request": 0, "senior_review": 45, "nurse_check": 50, "print_barcode": 55, "collect": 70}
    his([ev("V-1", "lab", k, minutes[k]) for k in keys if k in minutes]
        + [ev("V-1", "lab", "abnormal", 80, data={"reason": "标本溶血"}, operator={"id": "L2001", "name": "钱检验"})])
    apply(now=datetime.now(UTC) + timedelta(minutes=10))
    db_session.commit()
    return "V-1"


@pytest.fixture
def card_nurse(db_session):
    from app.auth.models import Department
    from app.auth.services import create_user
    from app.demo import DEMO_PASSWORD

    dept = db_session.scalar(select(Department).where(Department.code == "CARD"))
    create_user(username="card_nurse", name="心内护士", password=DEMO_PASSWORD, dept=dept, roles=["nurse"],
                staff_no="N2001", check_strength=False)
    db_session.commit()
    return "card_nurse"


def cards(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-node="([^"]+)" data-status="([^"]+)"', html))


def test_masking_and_formatting_helpers():
    assert mask_name("张三") == "张*" and mask_name("欧阳娜娜") == "欧***" and mask_name(None) == ""
    assert mask_id("ZY20260001") == "ZY******01" and mask_id("ZY01") == "Z***"
    assert fmt_minutes(12) == "12 分钟" and fmt_minutes(75) == "1 小时 15 分钟" and fmt_minutes(1500) == "1 天 1 小时"
    assert fmt_deviation(12) == ("+12 分钟", "over") and fmt_deviation(-5) == ("-5 分钟", "early")
    assert fmt_deviation(0) == ("准时", "ontime")
    assert render_source_url("https://lis/r?o={order_no}&p={patient_id}", order_no="A 1", patient_id="P/1") \
        == "https://lis/r?o=A%201&p=P%2F1"
    assert render_source_url("https://lis/r?e={event_id}", order_no="A1") is None


def test_timeline_shows_node_cards_with_status_operator_and_deviation(client, login, lab_order):
    login("nurse")
    resp = client.get(f"/loops/orders/{lab_order}")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    status = cards(html)
    assert status["request"] == "done" and status["senior_review"] == "done"
    assert status["identify"] == "skipped" and status["collect"] == "done"
    assert status["transfer"] == "abnormal" and status["perform"] == "pending"
    assert "检验闭环 · 医嘱 V-1" in html and "进行中" in html
    assert "吴护士" in html and "N1001" in html
    assert '<span class="dev dev-over">+15 分钟</span>' in html  # 45 minutes against a 30-minute standard
    assert "缺环：超过等待时长仍未收到该节点" in html and "异常：标本溶血" in html
    assert "有缺环" in html and "有异常" in html
    # the nurse holds loops.patient_identity
    assert "张三丰" in html and "ZY20260001" in html and "已脱敏" not in html
    # raw events, collapsed, with their apply status
    assert '<details class="loop-events card" id="raw-events">' in html
    assert html.count('class="ev-status ev-applied"') == 6


def test_interrupted_loop_header_says_where_and_after_how_long(client, login, his, db_session):
    keys = nodes_of("transfusion")
    his([ev("V-2", "transfusion", k, i * 10) for i, k in enumerate(keys[:3])]
        + [ev("V-2", "transfusion", "cancelled", 95, data={"reason": "患者拒绝"})])
    apply()
    db_session.commit()
    login("mao")
    html = client.get("/loops/orders/V-2").get_data(as_text=True)
    assert "已中断" in html
    assert re.search(r"中断于「采集标本」，开始后 1 小时 35 分钟", html)


def test_nurse_of_another_department_is_refused(client, login, lab_order, card_nurse):
    login(card_nurse)
    assert client.get(f"/loops/orders/{lab_order}").status_code == 403
    html = client.get("/loops/orders?q=P20260001").get_data(as_text=True)
    assert "V-1" not in html and "没有找到符合条件的医嘱" in html
    login("pharm")  # 药剂科, dept scope
    assert client.get(f"/loops/orders/{lab_order}").status_code == 403


def test_role_without_patient_identity_sees_masked_identity(client, login, lab_order):
    login("quality")  # campus scope (总院), no loops.patient_identity
    html = client.get(f"/loops/orders/{lab_order}").get_data(as_text=True)
    assert "张三丰" not in html and "ZY20260001" not in html and "P20260001" not in html
    assert "张**" in html and "ZY******01" in html and "已脱敏" in html
    listing = client.get("/loops/orders?q=ZY20260001").get_data(as_text=True)
    assert "V-1" in listing and "张三丰" not in listing and "张**" in listing


def test_search_filters_scope_and_export(client, login, lab_order, his, db_session):
    his([ev("V-9", "exam", "request", 0, dept="2001", campus="EAST")])  # 骨科, 东院区
    apply()
    db_session.commit()
    login("nurse")
    html = client.get("/loops/orders").get_data(as_text=True)
    assert "V-1" in html and "V-9" not in html
    assert "V-1" in client.get("/loops/orders?q=P20260001&loop_type=lab&status=in_progress&flag=skipped").get_data(
        as_text=True)
    assert "V-1" not in client.get("/loops/orders?status=closed").get_data(as_text=True)
    day = BASE.astimezone(SHANGHAI).date()
    assert "V-1" in client.get(f"/loops/orders?start={day}&end={day}").get_data(as_text=True)
    assert "V-1" not in client.get(f"/loops/orders?start={day + timedelta(days=1)}").get_data(as_text=True)
    assert client.get("/loops/orders?start=2026-13-01").status_code == 400
    login("mao")
    html = client.get("/loops/orders").get_data(as_text=True)
    assert "V-1" in html and "V-9" in html
    login("quality")  # 总院 only
    assert "V-9" not in client.get("/loops/orders").get_data(as_text=True)
    resp = client.get("/loops/orders.xlsx?q=V-1")
    assert resp.status_code == 200
    ws = load_workbook(BytesIO(resp.data)).active
    rows = list(ws.iter_rows(values_only=True))
    assert rows[1][0] == "V-1" and rows[1][3] == "张**"


def test_unknown_order_is_a_chinese_404(client, login):
    login("nurse")
    resp = client.get("/loops/orders/NOPE-1")
    assert resp.status_code == 404 and "尚未收到医嘱号为「NOPE-1」" in resp.get_data(as_text=True)


def test_source_links_render_on_node_cards(client, login, lab_order, db_session):
    db_session.add(SourceLink(source="HIS", label="在 HIS 中查看",
                              url_template="https://his.example/order?no={order_no}&ev={event_id}"))
    db_session.commit()
    login("nurse")
    html = client.get(f"/loops/orders/{lab_order}").get_data(as_text=True)
    assert 'href="https://his.example/order?no=V-1&amp;ev=V-1-request-0"' in html
    assert "在 HIS 中查看 ↗" in html


def test_links_carrying_a_patient_id_are_hidden_from_masked_viewers(client, login, lab_order, db_session):
    db_session.add(SourceLink(source="HIS", label="患者视图", url_template="https://his.example/p/{patient_id}"))
    db_session.commit()
    login("quality")
    assert "his.example/p/" not in client.get(f"/loops/orders/{lab_order}").get_data(as_text=True)
    login("nurse")
    assert "https://his.example/p/P20260001" in client.get(f"/loops/orders/{lab_order}").get_data(as_text=True)


def test_source_link_settings_validate_and_audit(client, login, db_session):
    csrf = login("admin")
    resp = client.post("/loops/source-links", data={"csrf_token": csrf, "source": "LIS", "label": "LIS 报告",
                                                     "url_template": "javascript:alert({order_no})"})
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert 'data-path="url_template"' in html and "http://" in html
    resp = client.post("/loops/source-links", data={"csrf_token": csrf, "source": "LIS", "label": "LIS 报告",
                                                     "url_template": "https://lis/r?o={order}"})
    assert resp.status_code == 400 and "未知占位符 {order}" in resp.get_data(as_text=True)
    assert db_session.scalar(select(SourceLink).where(SourceLink.source == "LIS")) is None
    resp = client.post("/loops/source-links", data={"csrf_token": csrf, "source": "LIS", "label": "LIS 报告",
                                                     "url_template": "https://lis/r?o={order_no}"})
    assert resp.status_code == 302
    link = db_session.scalar(select(SourceLink).where(SourceLink.source == "LIS"))
    assert link is not None and link.is_active
    resp = client.post(f"/loops/source-links/{link.id}/active", data={"csrf_token": csrf, "active": "0"})
    assert resp.status_code == 302
    db_session.refresh(link)
    assert not link.is_active
    actions = set(db_session.scalars(select(AuditLog.action).where(AuditLog.entity_type == "loop_source_links")))
    assert {"loops.source_link.created", "loops.source_link.deactivated"} <= actions
    login("nurse")
    assert client.get("/loops/source-links").status_code == 403


def test_audit_search_by_patient_order_person_terminal_and_export(client, login, lab_order, db_session):
    db_session.add(AuditLog(actor_name="系统管理员", action="loop_type.updated", entity_type="loop_types",
                            entity_id="lab", terminal="信息科-PC1", before={"grace_minutes": 5},
                            after={"grace_minutes": 10}))
    db_session.commit()
    login("mao")
    html = client.get("/loops/audit?person=L2001").get_data(as_text=True)
    assert "钱检验" in html and html.count("<tr>") == 2  # header + the abnormal event
    html = client.get("/loops/audit?patient=ZY20260001&terminal=护士站").get_data(as_text=True)
    assert html.count('href="/loops/orders/V-1"') == 6
    assert "没有符合条件的接入事件" in client.get("/loops/audit?order_no=OTHER").get_data(as_text=True)
    html = client.get("/loops/audit?tab=config&person=系统管理员").get_data(as_text=True)
    assert "loop_type.updated" in html and "信息科-PC1" in html
    assert client.get("/loops/audit?start=bad").status_code == 400
    resp = client.get("/loops/audit.xlsx?order_no=V-1")
    assert resp.status_code == 200
    wb = load_workbook(BytesIO(resp.data))
    events = list(wb["接入事件"].iter_rows(values_only=True))
    assert len(events) == 7 and {r[5] for r in events[1:]} == {"V-1"}
    assert events[1][12] == "张三丰"  # 医务处 holds loops.patient_identity
    config = list(wb["配置变更"].iter_rows(values_only=True))
    assert config[0][0] == "时间"
    resp = client.get("/loops/audit.xlsx?terminal=信息科")
    config = list(load_workbook(BytesIO(resp.data))["配置变更"].iter_rows(values_only=True))
    assert any(r[2] == "loop_type.updated" for r in config[1:])
    assert db_session.scalar(select(AuditLog).where(AuditLog.action == "audit.loop_export")) is not None


def test_audit_search_needs_audit_permission_and_masks_for_quality(client, login, lab_order):
    login("nurse")
    assert client.get("/loops/audit").status_code == 403
    login("quality")  # audit.view at campus scope, no patient identity
    html = client.get("/loops/audit?order_no=V-1").get_data(as_text=True)
    assert "V-1" in html and "张三丰" not in html and "张**" in html
