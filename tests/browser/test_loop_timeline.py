"""The unified loop view in Chromium (seed 003 §二.1-2): HIS/LIS send events through the API, the applier applies
them, a nurse searches the order and reads its timeline of node cards (icon + colour per status), the alert
reaches her inbox, and the HIS station opens the embedded view with a launch token (no login)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.browser.conftest import shot

pytestmark = pytest.mark.browser

ORDER = "BR-LAB-0001"
NODES = ["request", "senior_review", "nurse_check", "print_barcode", "identify", "collect", "transfer"]


def _event(node: str, minute: int, base: datetime, **extra) -> dict:
    body = {"source": "LIS", "event_id": f"{ORDER}-{node}", "order_no": ORDER, "order_type": "lab", "node": node,
            "occurred_at": (base + timedelta(minutes=minute)).isoformat(), "dept": "1001", "campus": "HQ",
            "operator": {"id": "N1001", "name": "吴护士"}, "terminal": "普外科护士站-2",
            "patient": {"id": "P0099", "name": "赵六", "inpatient_no": "ZY20260099"}}
    body.update(extra)
    return body


def test_nurse_reads_the_timeline_of_an_order(new_page, live_server):
    base_url, app = live_server["url"], live_server["app"]
    from app.auth.services import create_api_token
    from app.db import db
    from app.loops import services, tasks

    with app.app_context():
        token = create_api_token(system="LIS")
        db.session.commit()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    minutes = {"request": 0, "senior_review": 12, "nurse_check": 70, "print_barcode": 75, "collect": 90}
    events = [_event(n, m, start) for n, m in minutes.items()]  # identify never arrives
    abnormal = _event("abnormal", 95, start, event_id=f"{ORDER}-abn", data={"reason": "标本运送超时"})

    def post(batch: list[dict]) -> None:
        resp = requests.post(base_url + "/api/v1/loop-events", json={"events": batch},
                             headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert resp.status_code == 200 and resp.json()["accepted"] == len(batch), resp.text

    post(events)
    with app.app_context():
        tasks.drain()  # applies up to the gap; collect waits for identify during the grace period
        services.apply_pending(now=datetime.now(UTC) + timedelta(minutes=10))  # grace over: identify is 缺环
        db.session.commit()
        db.session.remove()
    post([abnormal])  # the specimen transfer, now the current node, goes wrong
    with app.app_context():
        tasks.drain()
        db.session.remove()
    events.append(abnormal)

    page = new_page("nurse")
    page.goto(base_url + "/loops/orders")
    page.fill("input[name=q]", "ZY20260099")
    page.click("#order-search button[type=submit]")
    page.locator("#order-list a", has_text=ORDER).click()
    page.wait_for_selector("#timeline")

    def status(node: str) -> str:
        return page.get_attribute(f"#timeline li[data-node={node}]", "data-status") or ""

    assert [status(n) for n in NODES] == ["done", "done", "done", "done", "skipped", "done", "abnormal"]
    assert status("perform") == "pending"
    assert page.inner_text("#loop-status") == "进行中"
    nurse_check = page.inner_text("#timeline li[data-node=nurse_check]")
    assert "吴护士" in nurse_check and "用时58 分钟" in nurse_check and "标准30 分钟" in nurse_check
    assert "+28 分钟" in nurse_check  # 58 minutes against a 30-minute standard
    over = page.locator("#timeline li[data-node=nurse_check] .dev-over")
    assert over.evaluate("e => getComputedStyle(e).color") == "rgb(214, 60, 60)"
    skipped = page.locator("#timeline li[data-node=identify] .node-card")
    assert skipped.evaluate("e => getComputedStyle(e).borderTopStyle") == "dashed"
    assert "缺环" in skipped.inner_text()
    assert "标本运送超时" in page.inner_text("#timeline li[data-node=transfer]")
    assert "赵六" in page.inner_text("#loop-header")
    page.click("#raw-events summary")
    assert page.locator("#raw-events tbody tr").count() == len(events)
    shot(page, "loop-1-timeline")

    page.goto(base_url + "/notifications/")
    assert f"【缺环】检验闭环 医嘱 {ORDER}" in page.inner_text("main")
    page.goto(base_url + "/loops/alerts/")
    alerts = page.inner_text("#alert-list")
    assert "缺环" in alerts and "环节异常" in alerts and ORDER in alerts
    shot(page, "loop-3-alerts")

    launch = requests.post(base_url + "/api/v1/launch-tokens", headers={"Authorization": f"Bearer {token}"},
                           json={"order_no": ORDER, "user": {"staff_no": "P1001", "name": "郑药师"}, "ttl": 120},
                           timeout=10)
    assert launch.status_code == 200, launch.text
    station = new_page()
    station.set_viewport_size({"width": 900, "height": 700})
    station.goto(launch.json()["url"])
    station.wait_for_selector("#timeline")
    header = station.inner_text("#loop-header")
    assert "检验闭环" in header and "赵*" in header and "赵六" not in header  # a pharmacist: identity masked
    assert station.locator(".mainnav").count() == 0
    shot(station, "loop-2-embedded")
    station.goto(base_url + f"/embed/orders/OTHER-1?token={launch.json()['token']}")
    assert "与所查看的医嘱不符" in station.inner_text("#embed-error")
