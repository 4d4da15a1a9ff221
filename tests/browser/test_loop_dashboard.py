"""闭环看板 in Chromium (seed 003 §二.2): a generated feed goes through intake and the applier, the rollups are
built, 医务处 opens the dashboard, every panel's chart renders (ECharts canvas, served from node_modules), and a
click on a bar and on a table figure each lead to the matching orders, and from there to an order's timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.browser.conftest import shot

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def feed(live_server):
    from app.db import db
    from app.loops import metrics
    from app.loops.generator import generate_feed, post_feed

    app = live_server["app"]
    now = datetime.now(UTC)
    end = metrics.today(now)
    start = end - timedelta(days=9)
    with app.app_context():
        events = generate_feed(orders=150, seed=11, start=metrics.day_start(start), days=10, now=now, prefix="BRD")
        post_feed(events=events, commit=True)
        metrics.refresh_rollups(start=start, end=end - timedelta(days=1))
        db.session.commit()
        db.session.remove()
    return {"from": start.isoformat(), "to": end.isoformat()}


def test_dashboard_renders_charts_and_drills_down_to_orders(new_page, live_server, feed):
    base = live_server["url"]
    page = new_page("mao")
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/loops/orders")  # the nav has the dashboard
    page.hover(".navgroup-label:text('医疗闭环')")  # the menu opens on hover
    page.click(".navgroup-menu a:text('闭环看板')")
    page.wait_for_url("**/loops/dashboard/**")
    page.fill("input[name=date_from]", feed["from"])
    page.fill("input[name=date_to]", feed["to"])
    page.click("#dashboard-filters button[type=submit]")
    page.wait_for_selector("#chart-closure canvas")
    for chart in ("closure", "closure-trend", "timeliness", "interruption", "lab", "exam", "exec"):
        page.wait_for_selector(f"#chart-{chart}[data-rendered='1'] canvas")
    assert page.locator("[id^=chart-nodes-][data-rendered='1'] canvas").count() == 1  # one loop type shown
    assert "日汇总" in page.inner_text(".dash-plan") and "实时明细" in page.inner_text(".dash-plan")
    # switching the node-duration chart to another loop type draws it
    switch = page.locator(".dash-chart-switch")
    option = switch.locator("option").nth(1).get_attribute("value")
    switch.select_option(option)
    page.wait_for_selector(f"#{option}[data-rendered='1'] canvas")
    shot(page, "loop-dashboard")
    assert errors == []

    # a click on the first bar of 闭环达成率 opens the orders behind it
    box = page.locator("#chart-closure canvas").bounding_box()
    assert box is not None
    x, y = page.evaluate("""() => {
        const c = window.medloopDashboard.charts['chart-closure'];
        const v = c.getOption().series[0].data[0].value;
        return c.convertToPixel({seriesIndex: 0}, [0, v / 2]);
    }""")
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.wait_for_url("**/loops/dashboard/orders?**")
    assert "panel=closure" in page.url and "d_kind=due" in page.url
    assert page.locator("#drill-orders tbody tr").count() > 0
    assert "闭环达成" in page.inner_text("h1")

    # a figure in a table: the late nodes of the whole hospital
    page.go_back()
    page.wait_for_selector("#chart-closure canvas")
    late = page.locator("#panel-timeliness tr.total a.drill").nth(3)  # 延迟
    n = int(late.inner_text().replace(",", ""))
    late.click()
    page.wait_for_selector("#drill-orders")
    assert "执行及时 · 延迟" in page.inner_text("h1")
    listed = int(page.inner_text(".hint").split("共 ")[1].split(" 条")[0])
    assert 0 < listed <= n  # orders with at least one late node
    shot(page, "loop-dashboard-drill")
    first = page.locator("#drill-orders tbody tr a").first
    order_no = first.inner_text()
    first.click()
    page.wait_for_url(f"**/loops/orders/{order_no}")


def test_physician_cannot_open_the_dashboard(new_page, live_server):
    page = new_page("gs_doc")
    resp = page.goto(live_server["url"] + "/loops/dashboard/")
    assert resp is not None and resp.status == 403
    assert page.locator("nav.mainnav a:text('闭环看板')").count() == 0
