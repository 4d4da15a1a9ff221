"""闭环看板 (seed 003 §二.2): the eight measures with ECharts, drill-down to the orders behind every figure,
Excel export of every table; the rollup job, the demo feed loader and the `medloop loops …` commands.

Views stay thin: figures come from app.loops.metrics; this module only lays them out as tables and charts."""

from __future__ import annotations

from datetime import timedelta
from io import BytesIO
from typing import Any
from urllib.parse import quote

import click
from flask import Blueprint, current_app, render_template, request, send_file, url_for
from flask.cli import AppGroup, with_appcontext
from flask_login import current_user
from sqlalchemy import select

from app.audit import services as audit
from app.auth.access import require
from app.auth.models import Campus, Department
from app.auth.services import data_scope, has_permission
from app.core.paging import paginate
from app.core.timefmt import SHANGHAI, local
from app.db import db, utcnow
from app.errors import ValidationFailed
from app.loops import metrics
from app.loops.models import ORDER_STATUS_LABELS, LoopOrder

bp = Blueprint("loops_dashboard", __name__, url_prefix="/loops/dashboard")

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
IDENTITY = "loops.patient_identity"
PANEL_IDS = ("closure", "timeliness", "interruption", "alerts", "lab", "exam", "exec", "nodes")
DEMO_ORDERS = 300
DEMO_DAYS = 14
DEMO_PREFIX = "DEMO"


# ---------------------------------------------------------------- small presentation helpers


def mask_name(name: str | None) -> str:
    return (name[0] + "*" * max(1, len(name) - 1)) if name else ""


def mask_id(value: str | None) -> str:
    if not value:
        return ""
    if len(value) <= 4:
        return value[0] + "*" * (len(value) - 1)
    keep = 2 if len(value) >= 6 else 1
    return value[:keep] + "*" * (len(value) - 2 * keep) + value[-keep:]


def _cell(v: Any, fmt: str = "int", url: str | None = None) -> dict[str, Any]:
    return {"v": v, "fmt": fmt, "url": url}


def fmt_value(v: Any, fmt: str) -> str:
    if v is None or v == "":
        return "—"
    if fmt == "pct":
        return f"{v * 100:.1f}%"
    if fmt == "min":
        return f"{v:,.1f}"
    if fmt == "int":
        return f"{int(v):,}"
    return str(v)


def _filter_args(f: metrics.Filters) -> dict[str, Any]:
    args: dict[str, Any] = {"date_from": f.date_from.isoformat(), "date_to": f.date_to.isoformat()}
    if f.campus_id:
        args["campus"] = str(f.campus_id)
    if f.dept_id:
        args["dept"] = str(f.dept_id)
    if f.loop_type:
        args["loop_type"] = f.loop_type
    if f.category:
        args["category"] = f.category
    return args


class Layout:
    """Turns the measures into panels of tables (cells with drill-down links) and chart specifications."""

    def __init__(self, f: metrics.Filters) -> None:
        self.args: dict[str, Any] = dict(_filter_args(f))

    def url(self, **drill: Any) -> str:
        d = metrics.Drill(**drill)
        return url_for("loops_dashboard.orders", **self.args, **d.params())

    def panels(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        return [self.closure(data["closure"]), self.timeliness(data["timeliness"]),
                self.interruption(data["interruption"]), self.alerts(data["alerts"]), self.lab(data["lab"]),
                self.exam(data["exam"]), self.exec(data["exec"]), self.nodes(data["nodes"])]

    # 1
    def closure(self, m: dict[str, Any]) -> dict[str, Any]:
        heads = ["闭环类型", "医嘱类别", "开始医嘱", "应闭环", "完整闭环", "有缺环闭环", "中断", "进行中（未到期）",
                 "超时未闭环", "闭环达成率"]

        def row(label, second, r, **key):
            u = self.url
            return [_cell(label, "text"), _cell(second, "text"),
                    _cell(r["started"], url=u(panel="closure", kind="started", **key)),
                    _cell(r["due"], url=u(panel="closure", kind="due", **key)),
                    _cell(r["closed_clean"], url=u(panel="closure", kind="closed_clean", **key)),
                    _cell(r["closed"] - r["closed_clean"], url=u(panel="closure", kind="skipped", **key)),
                    _cell(r["interrupted"], url=u(panel="closure", kind="interrupted", **key)),
                    _cell(r["in_progress"] - r["overdue"], url=u(panel="closure", kind="in_progress", **key)),
                    _cell(r["overdue"], url=u(panel="closure", kind="overdue", **key)),
                    _cell(r["rate"], "pct", u(panel="closure", kind="not_clean", **key))]

        rows = [row(r["name"], r["category"], r, loop_type=r["loop_type"]) for r in m["rows"]]
        if m["rows"]:
            rows.append(row("合计", "", m["total"]))
        cat_rows = [row(r["category"], "", r, category=r["category"]) for r in m["by_category"]]
        chart = {"id": "chart-closure", "kind": "bar", "percent": True, "categories": [r["name"] for r in m["rows"]],
                 "series": [{"name": "闭环达成率", "data": [r["rate"] for r in m["rows"]],
                             "urls": [self.url(panel="closure", kind="due", loop_type=r["loop_type"])
                                      for r in m["rows"]]}]}
        trend = {"id": "chart-closure-trend", "kind": "line", "percent": True,
                 "categories": [r["day"].strftime("%m-%d") for r in m["trend"]],
                 "series": [{"name": "闭环达成率", "data": [r["rate"] for r in m["trend"]],
                             "urls": [url_for("loops_dashboard.orders", **{**self.args,
                                                                            "date_from": r["day"].isoformat(),
                                                                            "date_to": r["day"].isoformat()},
                                              **metrics.Drill(panel="closure", kind="due").params())
                                      for r in m["trend"]]}]}
        return {"id": "closure", "title": "① 医嘱闭环达成率",
                "note": "达成率 = 完整闭环（已闭环且无缺环）÷ 应闭环（已结束，或已超过该闭环各节点标准用时之和仍未结束）；"
                        "按医嘱开始日统计。",
                "charts": [chart, trend],
                "tables": [{"title": "按闭环类型", "sheet": "闭环达成率-闭环类型", "headers": heads, "rows": rows},
                           {"title": "按医嘱类别", "sheet": "闭环达成率-医嘱类别", "headers": ["医嘱类别", "", *heads[2:]],
                            "rows": cat_rows}]}

    # 2
    def timeliness(self, m: dict[str, Any]) -> dict[str, Any]:
        heads = ["科室", "有用时节点", "提前", "按时", "延迟", "提前率", "按时率", "延迟率", "平均延迟（分钟）"]

        def row(label, r, dept):
            u = self.url
            return [_cell(label, "text"), _cell(r["timed"], url=u(panel="timeliness", kind="timed", dept=dept)),
                    _cell(r["early"], url=u(panel="timeliness", kind="early", dept=dept)),
                    _cell(r["on_time"], url=u(panel="timeliness", kind="on_time", dept=dept)),
                    _cell(r["late"], url=u(panel="timeliness", kind="late", dept=dept)),
                    _cell(r["early_rate"], "pct", u(panel="timeliness", kind="early", dept=dept)),
                    _cell(r["on_time_rate"], "pct", u(panel="timeliness", kind="on_time", dept=dept)),
                    _cell(r["late_rate"], "pct", u(panel="timeliness", kind="late", dept=dept)),
                    _cell(r["avg_late_minutes"], "min", u(panel="timeliness", kind="late", dept=dept))]

        def dept_key(r):
            return str(r["dept_id"]) if r["dept_id"] else "none"

        rows = [row(r["dept_name"], r, dept_key(r)) for r in m["rows"]]
        if m["rows"]:
            rows.append(row("全院", m["total"], None))
        series = []
        for kind, name in (("early", "提前"), ("on_time", "按时"), ("late", "延迟")):
            series.append({"name": name, "stack": "t", "data": [r[f"{kind}_rate"] for r in m["rows"]],
                           "urls": [self.url(panel="timeliness", kind=kind, dept=dept_key(r)) for r in m["rows"]]})
        chart = {"id": "chart-timeliness", "kind": "bar", "percent": True,
                 "categories": [r["dept_name"] for r in m["rows"]], "series": series}
        return {"id": "timeliness", "title": "② 执行及时率",
                "note": f"每个节点与其标准用时比较：用时不足标准的 {int(m['early_ratio'] * 100)}% 为提前，不超过标准为按时，"
                        "超过标准为延迟；平均延迟为延迟节点超出标准的平均分钟数。",
                "charts": [chart],
                "tables": [{"title": "按科室", "sheet": "执行及时率", "headers": heads, "rows": rows}]}

    # 3
    def interruption(self, m: dict[str, Any]) -> dict[str, Any]:
        rows = [[_cell(s["label"], "text"),
                 _cell(s["interrupted"], url=self.url(panel="interruption", stage=s["stage"])),
                 _cell(s["rate"], "pct", self.url(panel="interruption", stage=s["stage"])),
                 _cell(s["avg_minutes"], "min", self.url(panel="interruption", stage=s["stage"]))] for s in m["stages"]]
        t = m["total"]
        rows.append([_cell("合计", "text"), _cell(t["interrupted"], url=self.url(panel="interruption")),
                     _cell(t["rate"], "pct", self.url(panel="interruption")),
                     _cell(t["avg_minutes"], "min", self.url(panel="interruption"))])
        node_rows = [[_cell(n["loop_name"], "text"), _cell(n["node_name"], "text"), _cell(n["stage_label"], "text"),
                      _cell(n["interrupted"], url=self.url(panel="interruption", loop_type=n["loop_type"],
                                                           node=n["node_key"])),
                      _cell(n["rate"], "pct"), _cell(n["avg_minutes"], "min")] for n in m["nodes"]]
        chart = {"id": "chart-interruption", "kind": "bar", "percent": True,
                 "categories": [s["label"] for s in m["stages"]],
                 "series": [{"name": "中断率", "data": [s["rate"] for s in m["stages"]],
                             "urls": [self.url(panel="interruption", stage=s["stage"]) for s in m["stages"]]}]}
        return {"id": "interruption", "title": "③ 闭环中断率",
                "note": f"中断率 = 中断医嘱 ÷ 开始医嘱（{m['started']:,} 条）；阶段按中断时等待的节点归入 开立—审核—执行—反馈，"
                        "平均用时为开始到中断的分钟数。",
                "charts": [chart],
                "tables": [{"title": "按环节阶段", "sheet": "中断率-阶段",
                            "headers": ["阶段", "中断医嘱", "中断率", "平均中断前用时（分钟）"], "rows": rows},
                           {"title": "按节点", "sheet": "中断率-节点",
                            "headers": ["闭环类型", "中断时所在节点", "阶段", "中断医嘱", "占开始医嘱", "平均中断前用时（分钟）"],
                            "rows": node_rows}]}

    # 4
    def alerts(self, m: dict[str, Any]) -> dict[str, Any]:
        rows = [[_cell(r["label"], "text"), _cell(r["total"], url=self.url(panel="alerts", alert_kind=r["kind"])),
                 _cell(r["confirmed"], url=self.url(panel="alerts", alert_kind=r["kind"], confirmed=True)),
                 _cell(r["dismissed"]), _cell(r["open"]),
                 _cell(r["rate"], "pct", self.url(panel="alerts", alert_kind=r["kind"], confirmed=True))]
                for r in m["rows"]]
        if m["rows"]:
            t = m["total"]
            rows.append([_cell("合计", "text"), _cell(t["total"], url=self.url(panel="alerts")),
                         _cell(t["confirmed"], url=self.url(panel="alerts", confirmed=True)),
                         _cell(sum(r["dismissed"] for r in m["rows"])), _cell(sum(r["open"] for r in m["rows"])),
                         _cell(t["rate"], "pct")])
        chart = {"id": "chart-alerts", "kind": "bar", "percent": False, "categories": [r["label"] for r in m["rows"]],
                 "series": [{"name": "告警", "data": [r["total"] for r in m["rows"]],
                             "urls": [self.url(panel="alerts", alert_kind=r["kind"]) for r in m["rows"]]},
                            {"name": "经核实", "data": [r["confirmed"] for r in m["rows"]],
                             "urls": [self.url(panel="alerts", alert_kind=r["kind"], confirmed=True)
                                      for r in m["rows"]]}]}
        note = "告警率 = 经核实为风险事件的告警 ÷ 告警总数，按告警类型统计（按告警产生日期）。"
        if not m["available"]:
            note += "告警模块未启用，暂无数据。"
        return {"id": "alerts", "title": "④ 告警率", "note": note, "charts": [chart],
                "tables": [{"title": "按告警类型", "sheet": "告警率",
                            "headers": ["告警类型", "告警数", "经核实", "已排除", "待处理", "告警率"], "rows": rows}]}

    def _tat_rows(self, items: list[dict[str, Any]], label_key: str, panel_of) -> list[list[dict[str, Any]]]:
        out = []
        for r in items:
            u = self.url(panel=panel_of(r), loop_type=r["loop_type"])
            out.append([_cell(r[label_key], "text"), _cell(r["count"], url=u), _cell(r["avg"], "min", u),
                        _cell(r["median"], "min", u), _cell(r["p90"], "min", u)])
        return out

    def _tat_chart(self, cid: str, items: list[dict[str, Any]], label_key: str, panel_of) -> dict[str, Any]:
        urls = [self.url(panel=panel_of(r), loop_type=r["loop_type"]) for r in items]
        return {"id": cid, "kind": "bar", "percent": False, "unit": "分钟", "categories": [r[label_key] for r in items],
                "series": [{"name": n, "data": [r[k] for r in items], "urls": urls}
                           for k, n in (("avg", "平均"), ("median", "中位数"), ("p90", "P90"))]}

    TAT_HEADS = ["样本数", "平均（分钟）", "中位数（分钟）", "P90（分钟）"]

    # 5
    def lab(self, m: dict[str, Any]) -> dict[str, Any]:
        return {"id": "lab", "title": "⑤ 检验周转时长", "note": "检验、危急值闭环（已闭环）从首个节点到最后节点的用时。",
                "charts": [self._tat_chart("chart-lab", m["rows"], "name", lambda r: "lab")],
                "tables": [{"title": "按闭环类型", "sheet": "检验周转", "headers": ["闭环类型", *self.TAT_HEADS],
                            "rows": self._tat_rows(m["rows"], "name", lambda r: "lab")}]}

    # 6
    def exam(self, m: dict[str, Any]) -> dict[str, Any]:
        def panel_of(r):
            return "exam_booking" if r["measure"] == "booking" else "exam_report"

        return {"id": "exam", "title": "⑥ 检查预约周转时长", "note": "检查闭环：检查申请到检查预约、到检查报告打印的用时。",
                "charts": [self._tat_chart("chart-exam", m["rows"], "label", panel_of)],
                "tables": [{"title": "检查闭环", "sheet": "检查预约周转", "headers": ["区间", *self.TAT_HEADS],
                            "rows": self._tat_rows(m["rows"], "label", panel_of)}]}

    # 7
    def exec(self, m: dict[str, Any]) -> dict[str, Any]:
        items = [{**r, "label": f"{r['name']}（→{r['exec_node_name']}）"} for r in m["rows"]]
        return {"id": "exec", "title": "⑦ 医嘱执行周转时长",
                "note": "从医嘱开立（首个节点）到执行完成节点的用时：药品闭环为执行用药，检验/检查为执行检验/检查。",
                "charts": [self._tat_chart("chart-exec", items, "name", lambda r: "exec")],
                "tables": [{"title": "按闭环类型", "sheet": "医嘱执行周转", "headers": ["闭环类型（执行节点）", *self.TAT_HEADS],
                            "rows": self._tat_rows(items, "label", lambda r: "exec")}]}

    # 8
    def nodes(self, m: dict[str, Any]) -> dict[str, Any]:
        rows = []
        charts = []
        by_loop: dict[str, list[dict[str, Any]]] = {}
        for r in m["rows"]:
            by_loop.setdefault(r["loop_type"], []).append(r)
            key = {"loop_type": r["loop_type"], "node": r["node_key"]}
            rows.append([_cell(r["loop_name"], "text"), _cell(r["node_name"], "text"),
                         _cell(r["count"], url=self.url(panel="nodes", kind="timed", **key)),
                         _cell(r["avg_actual"], "min", self.url(panel="nodes", kind="timed", **key)),
                         _cell(r["avg_standard"], "min"), _cell(r["avg_deviation"], "min"),
                         _cell(r["late"], url=self.url(panel="nodes", kind="late", **key)),
                         _cell(r["late_rate"], "pct", self.url(panel="nodes", kind="late", **key)),
                         _cell(r["skipped"], url=self.url(panel="nodes", kind="skipped", **key)),
                         _cell(r["abnormal"], url=self.url(panel="nodes", kind="abnormal", **key))])
        for loop, items in by_loop.items():
            items = [i for i in items if i["count"]]
            if not items:
                continue
            urls = [self.url(panel="nodes", kind="timed", loop_type=loop, node=i["node_key"]) for i in items]
            charts.append({"id": f"chart-nodes-{loop}", "kind": "bar", "percent": False, "unit": "分钟",
                           "label": items[0]["loop_name"], "group": "nodes",
                           "categories": [i["node_name"] for i in items],
                           "series": [{"name": "平均实际用时", "data": [i["avg_actual"] for i in items], "urls": urls},
                                      {"name": "标准用时", "data": [i["avg_standard"] for i in items], "urls": urls}]})
        return {"id": "nodes", "title": "⑧ 节点耗时分析",
                "note": "每个节点距上一节点的实际用时与标准用时（精确到分钟）；偏差 = 实际 − 标准，正数为超时。",
                "charts": charts,
                "tables": [{"title": "按节点", "sheet": "节点耗时",
                            "headers": ["闭环类型", "节点", "样本数", "平均实际（分钟）", "标准（分钟）", "平均偏差（分钟）",
                                        "延迟数", "延迟率", "缺环", "异常"], "rows": rows}]}


def workbook(panels: list[dict[str, Any]], *, only: str | None, f: metrics.Filters) -> bytes:
    """Every table of the chosen panel (or all) as one sheet each."""
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    wb.remove(wb.active)
    for panel in panels:
        if only and panel["id"] != only:
            continue
        for table in panel["tables"]:
            ws = wb.create_sheet(table["sheet"][:31])
            ws.append([f"{panel['title']} · {table['title']}（医嘱开始日 {f.date_from} 至 {f.date_to}）"])
            ws["A1"].font = Font(bold=True)
            ws.append(table["headers"])
            for row in table["rows"]:
                ws.append([c["v"] for c in row])
                r = ws.max_row
                for i, c in enumerate(row, start=1):
                    if c["fmt"] == "pct" and c["v"] is not None:
                        ws.cell(r, i).number_format = "0.0%"
                    elif c["fmt"] == "min" and c["v"] is not None:
                        ws.cell(r, i).number_format = "0.0"
            for idx in range(1, len(table["headers"]) + 1):
                ws.column_dimensions[get_column_letter(idx)].width = 16 if idx > 1 else 22
            ws.freeze_panes = "A3"
    if not wb.sheetnames:
        wb.create_sheet("无数据")
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


# ---------------------------------------------------------------- pages


def _scope():
    return data_scope(current_user, "loops.view")


def _options(scope) -> dict[str, Any]:
    campuses = list(db.session.scalars(select(Campus).where(Campus.is_active.is_(True)).order_by(Campus.id)))
    depts = select(Department).where(Department.is_active.is_(True), Department.kind != "admin")
    depts = scope.filter(depts, dept_col=Department.id, campus_col=Department.campus_id).order_by(Department.code)
    visible = list(db.session.scalars(depts))
    if scope.level.value != "group":
        campuses = [c for c in campuses if c.id in {d.campus_id for d in visible}]
    return {"campuses": campuses, "departments": visible, "loop_types": metrics.loop_names(),
            "categories": sorted(set(metrics.loop_categories().values()))}


@bp.get("/")
@require("loops.view")
def index():
    scope = _scope()
    f = metrics.parse_filters(request.args)
    data = metrics.dashboard(f=f, scope=scope, source=request.args.get("source") or "auto")
    panels = Layout(f).panels(data)
    return render_template("loops/dashboard.html", f=f, panels=panels, plan=data["plan"], options=_options(scope),
                           filter_args=_filter_args(f), fmt_value=fmt_value)


@bp.get("/data.json")
@require("loops.view")
def data_json():
    f = metrics.parse_filters(request.args)
    data = metrics.dashboard(f=f, scope=_scope(), source=request.args.get("source") or "auto")
    data["plan"]["refreshed_at"] = data["plan"]["refreshed_at"].isoformat() if data["plan"]["refreshed_at"] else None
    for r in data["closure"]["trend"]:
        r["day"] = r["day"].isoformat()
    return {"filters": _filter_args(f), **data}


@bp.get("/export.xlsx")
@require("loops.view")
def export():
    f = metrics.parse_filters(request.args)
    panel = request.args.get("panel") or None
    if panel and panel not in PANEL_IDS:
        raise ValidationFailed({"panel": f"没有名为「{panel}」的看板指标"})
    data = metrics.dashboard(f=f, scope=_scope())
    body = workbook(Layout(f).panels(data), only=panel, f=f)
    name = f"闭环看板_{f.date_from:%Y%m%d}-{f.date_to:%Y%m%d}.xlsx"
    return send_file(BytesIO(body), as_attachment=True, download_name=name, mimetype=XLSX)


def _order_rows(items: list[Any], *, show_identity: bool, unit: bool) -> list[dict[str, Any]]:
    names, nnames = metrics.loop_names(), metrics.node_names()
    depts = {d.id: d.name for d in db.session.scalars(select(Department))}
    rows = []
    for order, value in items:
        node = order.interrupted_node if order.status == "interrupted" else order.current_node
        rows.append({
            "order_no": order.order_no, "url": "/loops/orders/" + quote(order.order_no),
            "loop_name": names.get(order.loop_type_key, order.loop_type_key),
            "dept": depts.get(order.dept_id, order.dept_code or ""),
            "patient": order.patient_name if show_identity else mask_name(order.patient_name),
            "inpatient_no": order.inpatient_no if show_identity else mask_id(order.inpatient_no),
            "status": ORDER_STATUS_LABELS.get(order.status, order.status),
            "status_key": order.status, "started_at": local(order.started_at), "ended_at": local(order.ended_at),
            "node": nnames.get((order.loop_type_key, node or ""), node or ""),
            "flags": "、".join(x for x, on in (("缺环", order.has_skipped), ("异常", order.has_abnormal)) if on),
            "value": round(float(value), 1) if value is not None and unit else None,
        })
    return rows


@bp.get("/orders")
@require("loops.view")
def orders():
    scope = _scope()
    f = metrics.parse_filters(request.args)
    d = metrics.parse_drill(request.args)
    page = paginate(metrics.drill_query(f=f, scope=scope, d=d), scalars=False)
    unit = d.panel not in ("alerts", "timeliness")
    rows = _order_rows(page.items, show_identity=has_permission(current_user, IDENTITY), unit=unit)
    return render_template("loops/dashboard_orders.html", page=page, rows=rows, f=f, d=d,
                           title=metrics.drill_title(d), unit=unit, value_label=_value_label(d),
                           back=url_for("loops_dashboard.index", **_filter_args(f)))


def _value_label(d: metrics.Drill) -> str:
    return {"closure": "已用时（分钟）", "interruption": "中断前用时（分钟）", "nodes": "节点偏差（分钟）"}.get(
        d.panel, "周转时长（分钟）")


@bp.get("/orders.xlsx")
@require("loops.view")
def orders_export():
    from openpyxl import Workbook

    scope = _scope()
    f = metrics.parse_filters(request.args)
    d = metrics.parse_drill(request.args)
    items = list(db.session.execute(metrics.drill_query(f=f, scope=scope, d=d).limit(50000)))
    unit = d.panel not in ("alerts", "timeliness")
    rows = _order_rows(items, show_identity=has_permission(current_user, IDENTITY), unit=unit)
    wb = Workbook()
    ws = wb.active
    ws.title = "医嘱明细"
    ws.append([f"{metrics.drill_title(d)}（医嘱开始日 {f.date_from} 至 {f.date_to}）"])
    heads = ["医嘱号", "闭环类型", "科室", "患者", "住院号", "状态", "开始时间", "结束时间", "当前/中断节点", "标记"]
    ws.append(heads + ([_value_label(d)] if unit else []))
    for r in rows:
        ws.append([r["order_no"], r["loop_name"], r["dept"], r["patient"], r["inpatient_no"], r["status"],
                   r["started_at"], r["ended_at"], r["node"], r["flags"]] + ([r["value"]] if unit else []))
    ws.freeze_panes = "A3"
    buf = BytesIO()
    wb.save(buf)
    audit.record(current_user, "loops.dashboard_export", entity_type="loop_orders", entity_id=None,
                 extra={"filters": _filter_args(f), "drill": d.params(), "rows": len(rows)})
    db.session.commit()
    return send_file(BytesIO(buf.getvalue()), as_attachment=True, mimetype=XLSX,
                     download_name=f"闭环看板明细_{utcnow().astimezone(SHANGHAI):%Y%m%d%H%M}.xlsx")


# ---------------------------------------------------------------- demo data, job, commands


def load_demo_feed() -> int:
    """app.demo loader: ~300 demo orders over the last 14 days through intake + apply, then rollups.
    Idempotent (skipped when demo orders exist). Config LOOPS_DEMO_FEED: False never, True always, unset: not
    under TESTING (the test suites build their own loops)."""
    from app.loops.generator import generate_feed, post_feed

    wanted = current_app.config.get("LOOPS_DEMO_FEED")  # None: on, except under TESTING
    if wanted is False or (wanted is None and current_app.testing):
        return 0
    if db.session.scalar(select(LoopOrder.id).where(LoopOrder.order_no.like(f"{DEMO_PREFIX}%")).limit(1)):
        return 0
    now = utcnow()
    end = metrics.today(now)
    start = end - timedelta(days=DEMO_DAYS - 1)
    events = generate_feed(orders=DEMO_ORDERS, seed=2026, start=metrics.day_start(start), days=DEMO_DAYS, now=now,
                           prefix=DEMO_PREFIX)
    counts = post_feed(events=events, commit=False)
    metrics.refresh_rollups(start=start, end=end)
    return counts["orders"]


cli = AppGroup("loops", help="医疗流程闭环：演示数据、日汇总。")


@cli.command("demo-feed")
@click.option("--orders", "n_orders", default=1000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="医嘱数")
@click.option("--days", default=14, show_default=True, type=click.IntRange(1, 366), help="分布在最近多少天")
@click.option("--seed", default=1, show_default=True, type=int, help="随机种子（相同种子生成相同数据）")
@click.option("--prefix", default="FEED", show_default=True, help="医嘱号前缀")
@with_appcontext
def demo_feed_cmd(n_orders: int, days: int, seed: int, prefix: str) -> None:
    """生成演示闭环事件，经接口服务（intake）分批写入并应用，然后刷新日汇总。"""
    import time

    from app.loops.generator import generate_feed, post_feed

    now = utcnow()
    end = metrics.today(now)
    start = end - timedelta(days=days - 1)
    t0 = time.perf_counter()
    events = generate_feed(orders=n_orders, seed=seed, start=metrics.day_start(start), days=days, now=now,
                           prefix=prefix)
    click.echo(f"生成 {len(events)} 个事件（{n_orders} 条医嘱），{time.perf_counter() - t0:.1f} 秒")
    t1 = time.perf_counter()
    counts = post_feed(events=events, commit=True)
    click.echo(f"接收 {counts['accepted']}，重复 {counts['duplicate']}，拒绝 {counts['rejected']}，"
               f"应用 {counts['applied']}，{time.perf_counter() - t1:.1f} 秒")
    result = metrics.refresh_rollups(start=start, end=end)
    db.session.commit()
    click.echo(f"日汇总：{result['days']} 天，{result['orders']} 条医嘱，{result['seconds']} 秒")


@cli.command("rollup")
@click.option("--from", "date_from", required=True, help="开始日期 YYYY-MM-DD（医嘱开始日，北京时间）")
@click.option("--to", "date_to", required=True, help="结束日期 YYYY-MM-DD")
@with_appcontext
def rollup_cmd(date_from: str, date_to: str) -> None:
    """重新计算指定日期范围的闭环日汇总。"""
    from datetime import date

    try:
        a, b = date.fromisoformat(date_from), date.fromisoformat(date_to)
    except ValueError as exc:
        raise click.BadParameter("日期格式应为 YYYY-MM-DD") from exc
    if b < a:
        raise click.BadParameter("结束日期不能早于开始日期")
    result = metrics.refresh_rollups(start=a, end=b)
    db.session.commit()
    click.echo(f"日汇总：{result['days']} 天，{result['orders']} 条医嘱，{result['seconds']} 秒")


def register(app) -> None:
    from app.demo import EXTRA_LOADERS
    from app.jobs import register_job
    from app.web import add_nav

    app.register_blueprint(bp)
    add_nav("loops_dashboard.index", "闭环看板", "loops.view", order=41)
    register_job("loops.rollups", metrics.rollup_job)
    EXTRA_LOADERS["闭环演示数据"] = load_demo_feed
    audit.ACTION_LABELS["loops.dashboard_export"] = "导出闭环看板明细"
    group = app.cli.commands.get("loops")
    if isinstance(group, click.Group) and group is not cli:
        for name, command in cli.commands.items():
            group.add_command(command, name)
    else:
        app.cli.add_command(cli)
