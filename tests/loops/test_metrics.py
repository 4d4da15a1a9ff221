"""闭环看板 (seed 003 §二.2): each of the eight measures on a small hand-made set of orders with known answers,
sent through the intake API and applied; rollups equal the raw computation; drill-down lists; Excel exports;
data scope and permissions; the rollup job and the demo-feed command."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from io import BytesIO

import pytest
from openpyxl import load_workbook
from sqlalchemy import func, select

from app.auth.services import data_scope
from app.loops import metrics, services
from app.loops.catalog import loop_def
from app.loops.models_metrics import LoopDailyNodeStat, LoopDailyStat, LoopRollupDay

DAY = date(2025, 3, 10)  # far from any other test data; the orders start at 09:00 Beijing time
START = datetime(2025, 3, 10, 9, 0, tzinfo=UTC) - timedelta(hours=8)
GS, ORTH = "1001", "2001"  # 普外科 (总院), 骨科 (东院区)


def std(loop: str) -> list[int]:
    d = loop_def(loop)
    assert d is not None
    return [n.standard_minutes for n in d.nodes]


def events_for(order_no: str, loop: str, steps: list[int | None], *, dept: str, start: datetime = START,
               extra: list[tuple[int, str, dict]] | None = None) -> list[dict]:
    """One event per node: steps[i] = minutes after the previous node (None = never sent, 缺环); the list may be
    shorter than the loop. extra: (minute from start, reserved node, data) for cancelled/abnormal."""
    d = loop_def(loop)
    assert d is not None
    out, t = [], 0
    for node, step in zip(d.nodes, steps, strict=False):
        if step is None:
            t += d.nodes[[n.key for n in d.nodes].index(node.key)].standard_minutes
            continue
        t += step
        out.append(_ev(order_no, loop, node.key, start + timedelta(minutes=t), dept))
    for minute, node, data in extra or []:
        out.append(_ev(order_no, loop, node, start + timedelta(minutes=minute), dept, data=data))
    return out


def _ev(order_no, loop, node, when, dept, data=None):
    return {"source": "HIS", "event_id": f"{order_no}-{node}", "order_no": order_no, "order_type": loop, "node": node,
            "occurred_at": when.isoformat(), "operator": {"id": "N1001", "name": "吴护士"},
            "patient": {"id": "P900001", "name": "欧阳娜娜", "inpatient_no": "ZY20250001"}, "dept": dept,
            "terminal": "护士站-1", "data": data or {}}


def dataset() -> list[dict]:
    lab, exam, oral = std("lab"), std("exam"), std("oral_medication")
    return [
        *events_for("M-O1", "lab", lab, dept=GS),                              # every node on its standard
        *events_for("M-O2", "lab", [0] + [1] * 10, dept=GS),                   # every node early
        *events_for("M-O3", "lab", [0] + [2 * m for m in lab[1:]], dept=ORTH),  # every node twice the standard
        *events_for("M-O4", "exam", exam, dept=GS,                             # abnormal before 执行检查
                    extra=[(125 + 30 + 10 + 5, "abnormal", {"reason": "设备故障"})]),
        *events_for("M-O5", "unit_dose", [0, 10], dept=GS,                     # cancelled waiting for 药师审方
                    extra=[(25, "cancelled", {"reason": "医生停止医嘱"})]),
        *events_for("M-O6", "oral_medication", [0, 30, None, 30, *oral[4:]], dept=ORTH),  # 药师审方 never sent
        *events_for("M-O7", "iv_admixture", [0], dept=GS),                     # just started
        *events_for("M-O8", "consultation", std("consultation"), dept=ORTH,    # the next day
                    start=START + timedelta(days=1)),
    ]


@pytest.fixture
def loaded(db_session):
    results = services.intake(events=dataset())
    assert {r["status"] for r in results} == {"accepted"}
    for _ in range(20):
        s = services.apply_pending(now=datetime.now(UTC) + timedelta(hours=1))
        if s.orders == 0:
            break
    db_session.flush()
    return db_session


def F(**kw) -> metrics.Filters:
    return metrics.Filters(date_from=kw.pop("date_from", DAY), date_to=kw.pop("date_to", DAY), **kw)


EARLY_NOW = START + timedelta(hours=2)  # M-O7 (配液, 330 standard minutes in all) is not yet due then


def board(f=None, *, source="raw", now=None, scope=None):
    return metrics.dashboard(f=f or F(), scope=scope, source=source, now=now or EARLY_NOW)


def by(rows, key, value):
    return next(r for r in rows if r[key] == value)


def test_closure_rate_per_loop_type_category_and_total(loaded):
    c = board()["closure"]
    lab = by(c["rows"], "loop_type", "lab")
    assert (lab["started"], lab["due"], lab["closed_clean"], lab["rate"]) == (3, 3, 3, 1.0)
    oral = by(c["rows"], "loop_type", "oral_medication")
    assert (oral["closed"], oral["closed_clean"], oral["skipped_orders"], oral["rate"]) == (1, 0, 1, 0.0)
    unit = by(c["rows"], "loop_type", "unit_dose")
    assert (unit["interrupted"], unit["due"], unit["rate"]) == (1, 1, 0.0)
    iv = by(c["rows"], "loop_type", "iv_admixture")
    assert (iv["in_progress"], iv["overdue"], iv["due"], iv["rate"]) == (1, 0, 0, None)
    assert c["total"]["started"] == 7 and c["total"]["due"] == 6 and c["total"]["closed_clean"] == 4
    assert c["total"]["rate"] == round(4 / 6, 4)
    assert by(c["by_category"], "category", "药品")["due"] == 2
    assert by(c["by_category"], "category", "检验")["rate"] == 1.0
    assert c["trend"] == [{"day": DAY, "started": 7, "due": 6, "closed_clean": 4, "rate": round(4 / 6, 4)}]
    # later, the 配液 order is past its standard time: due and overdue
    iv = by(board(now=datetime.now(UTC))["closure"]["rows"], "loop_type", "iv_admixture")
    assert (iv["overdue"], iv["due"], iv["rate"]) == (1, 1, 0.0)


def test_timeliness_early_on_time_late_by_department(loaded, user):
    t = board()["timeliness"]
    gs = by(t["rows"], "dept_id", user("nurse").dept_id)
    # O1 10 on time, O2 10 early, O4 8 on time, O5 签收 10 of 30 minutes = early
    assert (gs["timed"], gs["early"], gs["on_time"], gs["late"]) == (29, 11, 18, 0)
    orth = by(t["rows"], "dept_name", "骨科")
    # O3 10 late by 360 minutes in all; O6 生成执行单 60 of 30 minutes (its predecessor is missing) late by 30
    assert (orth["timed"], orth["early"], orth["on_time"], orth["late"]) == (16, 0, 5, 11)
    assert orth["avg_late_minutes"] == round(390 / 11, 1) and orth["late_rate"] == round(11 / 16, 4)
    assert (t["total"]["timed"], t["total"]["early"], t["total"]["late"]) == (45, 11, 11)
    assert t["rows"][0]["dept_name"] == "骨科"  # worst first


def test_interruption_per_stage_with_minutes(loaded):
    i = board()["interruption"]
    assert i["started"] == 7
    review = by(i["stages"], "stage", "review")
    assert (review["interrupted"], review["rate"], review["avg_minutes"]) == (1, round(1 / 7, 4), 25.0)
    assert by(i["stages"], "stage", "execute")["interrupted"] == 0
    (node,) = i["nodes"]
    assert (node["loop_type"], node["node_key"], node["node_name"]) == ("unit_dose", "pharmacist_review", "药师审方")


def test_lab_exam_and_execution_turnaround(loaded):
    d = board()
    lab = by(d["lab"]["rows"], "loop_type", "lab")
    # O1 360, O2 10, O3 720 minutes from 检验申请 to 报告自动反馈
    assert (lab["count"], lab["avg"], lab["median"], lab["p90"]) == (3, round(1090 / 3, 1), 360.0, 648.0)
    assert lab["approx"] is False
    booking = by(d["exam"]["rows"], "measure", "booking")
    report = by(d["exam"]["rows"], "measure", "report")
    assert (booking["count"], booking["avg"], report["avg"]) == (1, 120.0, 460.0)
    ex = {r["loop_type"]: r for r in d["exec"]["rows"]}
    assert ex["lab"]["avg"] == round((295 + 8 + 590) / 3, 1) and ex["lab"]["exec_node_name"] == "执行检验"
    assert ex["exam"]["avg"] == 220.0 and ex["oral_medication"]["avg"] == 360.0
    assert "unit_dose" not in ex and "iv_admixture" not in ex  # never executed


def test_node_durations_against_standard(loaded):
    rows = board()["nodes"]["rows"]
    perform = next(r for r in rows if (r["loop_type"], r["node_key"]) == ("lab", "perform"))
    assert (perform["count"], perform["avg_actual"], perform["avg_standard"]) == (3, round(361 / 3, 1), 120.0)
    assert perform["avg_deviation"] == round(round(361 / 3, 1) - 120.0, 1) and perform["late"] == 1
    review = next(r for r in rows if (r["loop_type"], r["node_key"]) == ("oral_medication", "pharmacist_review"))
    assert (review["skipped"], review["count"]) == (1, 0)
    assert next(r for r in rows if (r["loop_type"], r["node_key"]) == ("exam", "perform"))["abnormal"] == 1
    lab_nodes = [r["node_key"] for r in rows if r["loop_type"] == "lab"]
    assert lab_nodes == [n.key for n in loop_def("lab").nodes]  # in the loop's order


def test_alert_rate_by_kind(loaded):
    A = metrics.alert_model()
    if A is None:
        a = metrics.alerts(F(), scope=None)
        assert a == {"available": False, "rows": [], "total": {"total": 0, "confirmed": 0, "rate": None}}
        return
    today = metrics.today()
    f = F(date_from=today, date_to=today)
    alerts = list(loaded.scalars(select(A).where(A.order_no.like("M-O%"))))
    assert {a.kind for a in alerts} >= {"skipped", "abnormal"}
    skipped = next(a for a in alerts if a.kind == "skipped")
    skipped.status = "confirmed"
    loaded.flush()
    before = {r["kind"]: r for r in metrics.alerts(f, scope=None)["rows"]}
    row = before["skipped"]
    assert row["confirmed"] >= 1 and row["rate"] == round(row["confirmed"] / row["total"], 4)
    assert row["label"] == "缺环"
    only_oral = {r["kind"]: r for r in metrics.alerts(F(date_from=today, date_to=today, loop_type="oral_medication"),
                                                      scope=None)["rows"]}
    assert "abnormal" not in only_oral or only_oral["abnormal"]["total"] < before["abnormal"]["total"]


def test_filters_campus_department_loop_type_category_and_days(loaded, user):
    assert board(F(loop_type="lab"))["closure"]["total"]["started"] == 3
    assert board(F(category="药品"))["closure"]["total"]["started"] == 3
    assert board(F(dept_id=user("orth_doc").dept_id))["closure"]["total"]["started"] == 2
    east = user("orth_doc").dept.campus_id
    assert board(F(campus_id=east))["closure"]["total"]["started"] == 2
    two_days = board(F(date_to=DAY + timedelta(days=1)))
    assert two_days["closure"]["total"]["started"] == 8
    assert by(two_days["exec"]["rows"], "loop_type", "consultation")["avg"] == 265.0
    assert board(F(date_from=DAY + timedelta(days=1), date_to=DAY + timedelta(days=1)))["closure"]["total"]["started"] == 1


def test_data_scope_limits_every_figure(loaded, user):
    nurse = data_scope(user("nurse"), "loops.view")  # 普外科 only
    d = board(scope=nurse)
    assert d["closure"]["total"]["started"] == 5
    assert [r["dept_name"] for r in d["timeliness"]["rows"]] == ["普外科"]
    assert "oral_medication" not in {r["loop_type"] for r in d["exec"]["rows"]}


def _strip_percentiles(d):
    for key in ("lab", "exam", "exec"):
        for r in d[key]["rows"]:
            for k in ("median", "p90", "approx"):
                r.pop(k, None)
    d.pop("plan")
    return d


def test_rollups_equal_the_raw_computation(loaded, user):
    now = datetime.now(UTC)
    result = metrics.refresh_rollups(start=DAY, end=DAY + timedelta(days=1), now=now)
    assert result == {"days": 2, "orders": 8, "seconds": result["seconds"]}
    assert loaded.scalar(select(func.count()).select_from(LoopRollupDay)
                         .where(LoopRollupDay.day.between(DAY, DAY + timedelta(days=1)))) == 2
    assert loaded.scalar(select(func.sum(LoopDailyStat.started)).where(LoopDailyStat.day == DAY)) == 7
    assert loaded.scalar(select(func.sum(LoopDailyNodeStat.interrupted)).where(LoopDailyNodeStat.day == DAY)) == 1
    f = F(date_to=DAY + timedelta(days=1))
    for scope in (None, data_scope(user("nurse"), "loops.view"), data_scope(user("quality"), "loops.view")):
        for flt in (f, F(date_to=DAY + timedelta(days=1), loop_type="lab"), F(dept_id=user("orth_doc").dept_id)):
            raw = board(flt, source="raw", now=now, scope=scope)
            rolled = board(flt, source="rollup", now=now, scope=scope)
            assert rolled["plan"]["description"].startswith("日汇总")
            assert _strip_percentiles(rolled) == _strip_percentiles(raw)
    # percentiles from buckets land in the right bucket
    lab = by(board(f, source="rollup", now=now)["lab"]["rows"], "loop_type", "lab")
    assert lab["approx"] is True and 360 <= lab["median"] <= 480 and 720 <= lab["p90"] <= 1080


def test_auto_source_mixes_rollups_and_raw_days(loaded):
    now = datetime.now(UTC)
    metrics.refresh_rollups(start=DAY, end=DAY, now=now)  # the next day is not rolled up
    f = F(date_to=DAY + timedelta(days=2))
    p = metrics.plan(f, source="auto", now=now)
    assert p.rollup == [(DAY, DAY)] and p.raw == [(DAY + timedelta(days=1), DAY + timedelta(days=2))]
    mixed = board(f, source="auto", now=now)
    raw = board(f, source="raw", now=now)
    assert _strip_percentiles(mixed) == _strip_percentiles(raw)
    assert metrics.plan(F(), source="auto", now=now).rollup == []  # a short range reads the raw tables


def test_rollup_job_refreshes_stale_recent_days(db_session):
    n = metrics.rollup_job(max_days=3)
    assert n == 3
    yesterday = metrics.today() - timedelta(days=1)
    assert db_session.get(LoopRollupDay, yesterday) is not None
    assert yesterday not in metrics.stale_days()
    from app.jobs import JOBS

    assert JOBS["loops.rollups"] is metrics.rollup_job


def test_bad_filters_are_400_with_field_messages(client, login, loaded):
    login("mao")
    resp = client.get("/loops/dashboard/?date_from=2025-13-01&dept=x&loop_type=nope",
                      headers={"Accept": "application/json"})
    assert resp.status_code == 400
    paths = {e["path"]: e["message"] for e in resp.get_json()["error"]["errors"]}
    assert set(paths) == {"date_from", "dept", "loop_type"} and "YYYY-MM-DD" in paths["date_from"]
    resp = client.get("/loops/dashboard/?date_from=2025-03-10&date_to=2025-03-01", headers={"Accept": "application/json"})
    assert resp.status_code == 400 and resp.get_json()["error"]["errors"][0]["path"] == "date_to"


# ---------------------------------------------------------------- pages

Q = "date_from=2025-03-10&date_to=2025-03-10"


def test_dashboard_page_shows_every_panel_with_drill_links(client, login, loaded):
    login("mao")
    html = client.get(f"/loops/dashboard/?{Q}").get_data(as_text=True)
    for title in ("医嘱闭环达成率", "执行及时率", "闭环中断率", "告警率", "检验周转时长", "检查预约周转时长", "医嘱执行周转时长",
                  "节点耗时分析"):
        assert title in html
    assert "echarts/dist/echarts.min.js" in html and "loops/dashboard.js" in html and "cdn" not in html.lower()
    assert 'data-chart=' in html and "/loops/dashboard/orders?" in html
    assert "实时明细" in html


def test_dashboard_json(client, login, loaded):
    login("mao")
    data = client.get(f"/loops/dashboard/data.json?{Q}").get_json()
    assert data["filters"]["date_from"] == "2025-03-10"
    assert data["closure"]["total"]["started"] == 7 and data["closure"]["trend"][0]["day"] == "2025-03-10"


def test_physician_without_loops_view_gets_403(client, login):
    login("gs_doc")
    assert client.get("/loops/dashboard/").status_code == 403
    assert client.get("/loops/dashboard/orders?panel=closure").status_code == 403
    assert client.get("/loops/dashboard/export.xlsx").status_code == 403
    assert client.get("/loops/dashboard/data.json").status_code == 403


def _orders_in(html: str) -> set[str]:
    import re

    return set(re.findall(r'href="/loops/orders/([^"]+)"', html))


@pytest.mark.parametrize(("query", "expected"), [
    ("panel=closure&d_kind=not_clean", {"M-O5", "M-O6", "M-O7"}),
    ("panel=closure&d_kind=closed_clean&d_loop_type=lab", {"M-O1", "M-O2", "M-O3"}),
    ("panel=closure&d_kind=due&d_category=药品", {"M-O5", "M-O6", "M-O7"}),
    ("panel=timeliness&d_kind=late", {"M-O3", "M-O6"}),
    ("panel=timeliness&d_kind=early", {"M-O2", "M-O5"}),
    ("panel=interruption&d_stage=review", {"M-O5"}),
    ("panel=interruption&d_loop_type=unit_dose&d_node=pharmacist_review", {"M-O5"}),
    ("panel=lab&d_loop_type=lab", {"M-O1", "M-O2", "M-O3"}),
    ("panel=exam_booking", {"M-O4"}),
    ("panel=exec", {"M-O1", "M-O2", "M-O3", "M-O4", "M-O6"}),
    ("panel=nodes&d_kind=late&d_loop_type=lab&d_node=perform", {"M-O3"}),
    ("panel=nodes&d_kind=skipped&d_loop_type=oral_medication&d_node=pharmacist_review", {"M-O6"}),
    ("panel=nodes&d_kind=abnormal&d_loop_type=exam&d_node=perform", {"M-O4"}),
])
def test_drill_down_lists_the_orders_behind_a_figure(client, login, loaded, query, expected):
    login("mao")
    resp = client.get(f"/loops/dashboard/orders?{Q}&{query}")
    assert resp.status_code == 200
    assert _orders_in(resp.get_data(as_text=True)) == expected


def test_drill_down_by_department_and_scope(client, login, loaded, user):
    login("mao")
    orth = user("orth_doc").dept_id
    html = client.get(f"/loops/dashboard/orders?{Q}&panel=timeliness&d_kind=on_time&d_dept={orth}").get_data(as_text=True)
    assert _orders_in(html) == {"M-O6"}
    login("nurse")  # 普外科 scope
    html = client.get(f"/loops/dashboard/orders?{Q}&panel=timeliness&d_kind=late").get_data(as_text=True)
    assert _orders_in(html) == set()
    assert "欧阳娜娜" in client.get(f"/loops/dashboard/orders?{Q}&panel=closure").get_data(as_text=True)


def test_drill_down_masks_patients_without_identity_permission(client, login, loaded):
    login("quality")  # campus scope (总院), no loops.patient_identity
    html = client.get(f"/loops/dashboard/orders?{Q}&panel=closure").get_data(as_text=True)
    assert "欧***" in html and "ZY******01" in html and "欧阳娜娜" not in html


def test_bad_drill_down_is_400(client, login, loaded):
    login("mao")
    resp = client.get(f"/loops/dashboard/orders?{Q}&panel=closure&d_kind=fly&d_stage=x",
                      headers={"Accept": "application/json"})
    assert resp.status_code == 400
    assert {e["path"] for e in resp.get_json()["error"]["errors"]} == {"d_kind", "d_stage"}


def test_every_table_exports_to_excel(client, login, loaded):
    login("mao")
    resp = client.get(f"/loops/dashboard/export.xlsx?{Q}")
    assert resp.status_code == 200 and resp.mimetype.endswith("spreadsheetml.sheet")
    wb = load_workbook(BytesIO(resp.data))
    assert {"闭环达成率-闭环类型", "闭环达成率-医嘱类别", "执行及时率", "中断率-阶段", "中断率-节点", "检验周转", "检查预约周转",
            "医嘱执行周转", "节点耗时"} <= set(wb.sheetnames)
    ws = wb["闭环达成率-闭环类型"]
    assert [c.value for c in ws[2]][:3] == ["闭环类型", "医嘱类别", "开始医嘱"]
    total = next(r for r in ws.iter_rows(values_only=True) if r[0] == "合计")
    assert total[2] == 7 and abs(total[-1] - 4 / 7) < 1e-3  # by now 配液 M-O7 is overdue too
    one = load_workbook(BytesIO(client.get(f"/loops/dashboard/export.xlsx?{Q}&panel=lab").data))
    assert one.sheetnames == ["检验周转"]
    assert client.get(f"/loops/dashboard/export.xlsx?{Q}&panel=nope").status_code == 400


def test_drill_down_exports_to_excel_and_is_audited(client, login, loaded, db_session):
    from app.audit.models import AuditLog

    login("quality")
    resp = client.get(f"/loops/dashboard/orders.xlsx?{Q}&panel=lab&d_loop_type=lab")
    ws = load_workbook(BytesIO(resp.data)).active
    rows = list(ws.iter_rows(min_row=3, values_only=True))
    assert {r[0] for r in rows} == {"M-O1", "M-O2"}  # 骨科 (东院区) is outside the 总院 scope
    assert rows[0][3] == "欧***" and rows[0][-1] == 360.0  # the largest first, masked
    log = db_session.scalar(select(AuditLog).where(AuditLog.action == "loops.dashboard_export")
                            .order_by(AuditLog.id.desc()))
    assert log is not None and log.extra["rows"] == 2


# ---------------------------------------------------------------- the command and the demo loader


def test_demo_feed_command_posts_applies_and_rolls_up(app, db_session):
    from app.loops.models import LoopOrder

    runner = app.test_cli_runner()
    result = runner.invoke(args=["loops", "demo-feed", "--orders", "40", "--days", "3", "--seed", "5",
                                 "--prefix", "CLI"])
    assert result.exit_code == 0, result.output
    assert "接收" in result.output and "日汇总" in result.output
    n = db_session.scalar(select(func.count()).select_from(LoopOrder).where(LoopOrder.order_no.like("CLI5-%")))
    assert n == 40
    pending = db_session.scalar(select(func.count()).select_from(LoopOrder)
                                .where(LoopOrder.order_no.like("CLI5-%"), LoopOrder.pending.is_(True)))
    assert pending == 0
    bad = runner.invoke(args=["loops", "rollup", "--from", "2025-03-02", "--to", "2025-03-01"])
    assert bad.exit_code != 0


def test_demo_loader_is_registered_and_idempotent(app, db_session, monkeypatch):
    from app.demo import EXTRA_LOADERS
    from app.loops import dashboard
    from app.loops.models import LoopOrder

    assert EXTRA_LOADERS["闭环演示数据"] is dashboard.load_demo_feed
    assert dashboard.load_demo_feed() == 0  # skipped under TESTING
    monkeypatch.setitem(app.config, "LOOPS_DEMO_FEED", True)
    monkeypatch.setattr(dashboard, "DEMO_ORDERS", 30)
    assert dashboard.load_demo_feed() == 30
    assert dashboard.load_demo_feed() == 0  # already there
    assert db_session.scalar(select(func.count()).select_from(LoopOrder)
                             .where(LoopOrder.order_no.like("DEMO2026-%"))) == 30
    assert db_session.get(LoopRollupDay, metrics.today() - timedelta(days=1)) is not None
