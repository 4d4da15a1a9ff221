"""风险预警 (seed 003 §二.2(4)): alerts on closed loops, raised by the applier (缺环, 环节异常, 质控不合格 = a
completed node breaking its configured data-field / QC rules, seed 003 §二.3) and by a periodic
scan (节点超时, 闭环停滞, 危急值未及时处置 → escalated to the department head and 医务处), delivered in-app to
the responsible department, handled on the alerts page (confirm as 风险事件 or dismiss, with a reason), and
counted into the alert rate = confirmed / all, by type.

Invariants:
- an alert is raised at most once per order, node and kind (unique constraint; a repeat is a no-op);
- raising an alert notifies the responsible department's users holding loops.view (the node's responsible role
  when one is configured), or 医务处 when the order has no department, in the applier's own transaction, so the
  message is there as soon as the event is applied;
- only open alerts are handled, by a holder of loops.alert_handle whose scope covers the alert's department; a
  reason is required; the handling is audited; alerts are never deleted;
- the scan takes `now` so tests and back-fills can run it at any time; services flush, callers commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from io import BytesIO
from typing import Any
from urllib.parse import quote

from flask import Blueprint, flash, redirect, render_template, request, send_file, url_for
from flask_login import current_user
from openpyxl import Workbook
from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, aliased, mapped_column, relationship

from app.audit import services as audit
from app.auth.access import require
from app.auth.models import Department, Role, RolePermission, User, UserRole
from app.auth.services import DataScope, data_scope, has_permission
from app.core.paging import paginate
from app.core.timefmt import SHANGHAI, local
from app.db import Model, db, utcnow
from app.errors import Forbidden, InvalidTransition, NotFound, ValidationFailed
from app.loops.models import BigId, LoopNode, LoopNodeState, LoopOrder, LoopType, NodeStatus, OrderStatus

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
OVERDUE_FACTOR = 1.0  # a current node is overdue once the previous node's time + standard × factor has passed
CRITICAL_LOOP = "critical_value"


class AlertKind(StrEnum):
    OVERDUE = "overdue"
    SKIPPED = "skipped"
    ABNORMAL = "abnormal"
    STALLED = "stalled"
    CRITICAL_UNACKED = "critical_unacked"
    QC = "qc"


ALERT_KIND_LABELS = {"overdue": "节点超时", "skipped": "缺环", "abnormal": "环节异常", "stalled": "闭环停滞",
                     "critical_unacked": "危急值未及时处置", "qc": "质控不合格"}


class AlertStatus(StrEnum):
    OPEN = "open"
    CONFIRMED = "confirmed"
    DISMISSED = "dismissed"


ALERT_STATUS_LABELS = {"open": "待处理", "confirmed": "已确认为风险事件", "dismissed": "已排除"}
AUDIT_LABELS = {"loops.alert.confirmed": "确认闭环告警为风险事件", "loops.alert.dismissed": "排除闭环告警"}


class LoopAlert(Model):
    __tablename__ = "loop_alerts"
    __table_args__ = (
        UniqueConstraint("order_id", "node_key", "kind"),
        Index("ix_loop_alerts_status_raised", "status", "raised_at"),
        Index("ix_loop_alerts_dept_raised", "dept_id", "raised_at"),
        {"comment": "闭环风险预警（每医嘱/节点/类型只告警一次；不删除）"},
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, comment="主键")
    order_id: Mapped[int] = mapped_column(BigId, ForeignKey("loop_orders.id"), index=True, comment="医嘱")
    order_no: Mapped[str] = mapped_column(String(64), index=True, comment="医嘱号")
    loop_type_key: Mapped[str] = mapped_column(String(64), comment="闭环类型")
    kind: Mapped[str] = mapped_column(String(24), index=True,
                                      comment="类型：overdue 节点超时/skipped 缺环/abnormal 异常/stalled 停滞/critical_unacked 危急值未处置/qc 质控不合格")
    node_key: Mapped[str] = mapped_column(String(64), default="", comment="节点标识（无具体节点时为空串）")
    node_name: Mapped[str | None] = mapped_column(String(64), comment="节点名称")
    message: Mapped[str] = mapped_column(String(500), comment="告警内容")
    dept_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), comment="责任科室")
    campus_id: Mapped[int | None] = mapped_column(ForeignKey("campuses.id"), comment="院区")
    status: Mapped[str] = mapped_column(String(16), default=AlertStatus.OPEN, comment="状态：open 待处理/confirmed 风险事件/dismissed 已排除")
    raised_at: Mapped[datetime] = mapped_column(default=utcnow, comment="告警时间")
    notified_count: Mapped[int] = mapped_column(default=0, comment="已通知人数")
    handled_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="处理人")
    handled_at: Mapped[datetime | None] = mapped_column(comment="处理时间")
    reason: Mapped[str | None] = mapped_column(Text, comment="处理说明（确认或排除的理由）")
    escalated: Mapped[bool] = mapped_column(default=False, comment="是否已升级（通知科主任与医务处）")
    escalated_at: Mapped[datetime | None] = mapped_column(comment="升级时间")

    handler: Mapped[User | None] = relationship(foreign_keys=[handled_by])
    dept: Mapped[Department | None] = relationship(foreign_keys=[dept_id])

    @property
    def kind_label(self) -> str:
        return ALERT_KIND_LABELS.get(self.kind, self.kind)

    @property
    def status_label(self) -> str:
        return ALERT_STATUS_LABELS.get(self.status, self.status)


# ---------------------------------------------------------------- raising


def _loop_name(key: str) -> str:
    from app.loops import services

    info = services.type_info(key)
    return info.name if info else key


def _users_with(*, permission: str | None = None, role: str | None = None, dept_id: int | None = None) -> list[int]:
    stmt = (select(User.id).join(UserRole, UserRole.user_id == User.id).join(Role, Role.id == UserRole.role_id)
            .where(User.is_active.is_(True), User.departed_at.is_(None)))
    if permission:
        stmt = stmt.join(RolePermission, RolePermission.role_id == Role.id).where(RolePermission.permission == permission)
    if role:
        stmt = stmt.where(Role.code == role)
    if dept_id is not None:
        stmt = stmt.where(User.dept_id == dept_id)
    return sorted(set(db.session.scalars(stmt)))


def recipients(*, order: LoopOrder, node_key: str | None) -> list[int]:
    """Who is told about an alert: the department's loops.view holders (narrowed to the node's responsible role
    when configured and present), else 医务处."""
    if order.dept_id is not None:
        role = None
        if node_key and order.loop_type_id:
            role = db.session.scalar(select(LoopNode.responsible_role).where(LoopNode.loop_type_id == order.loop_type_id,
                                                                             LoopNode.key == node_key))
        if role:
            ids = _users_with(permission="loops.view", role=role, dept_id=order.dept_id)
            if ids:
                return ids
        ids = _users_with(permission="loops.view", dept_id=order.dept_id)
        if ids:
            return ids
    return _users_with(role="mao")


def order_link(order_no: str) -> str:
    return f"/loops/orders/{quote(order_no, safe='')}"


def raise_alert(*, order: LoopOrder, kind: str, node_key: str | None, message: str, node_name: str | None = None,
                now: datetime | None = None) -> LoopAlert | None:
    """Record an alert and notify the responsible department (critical ones are escalated at once).
    Returns None when this order/node/kind was already alerted."""
    from app.notify.services import notify

    now = now or utcnow()
    node_key = node_key or ""
    if db.session.scalar(select(LoopAlert.id).where(LoopAlert.order_id == order.id, LoopAlert.node_key == node_key,
                                                    LoopAlert.kind == kind)) is not None:
        return None
    if node_name is None and node_key:
        node_name = next((s.name for s in order.states if s.node_key == node_key), None)
    alert = LoopAlert(order_id=order.id, order_no=order.order_no, loop_type_key=order.loop_type_key, kind=kind,
                      node_key=node_key, node_name=node_name, message=message[:500], dept_id=order.dept_id,
                      campus_id=order.campus_id, status=AlertStatus.OPEN, raised_at=now)
    try:
        with db.session.begin_nested():
            db.session.add(alert)
            db.session.flush()
    except IntegrityError:  # raised concurrently by another worker: once is enough
        return None
    title = f"【{ALERT_KIND_LABELS.get(kind, kind)}】{_loop_name(order.loop_type_key)}闭环 医嘱 {order.order_no}"
    users = recipients(order=order, node_key=node_key)
    notify(user_ids=users, title=title, body=message, link=order_link(order.order_no), kind="alert")
    alert.notified_count = len(users)
    if kind == AlertKind.CRITICAL_UNACKED:
        escalate(alert=alert, order=order, now=now)
    db.session.flush()
    return alert


def escalate(*, alert: LoopAlert, order: LoopOrder, now: datetime | None = None) -> list[int]:
    """Tell the department head(s) and 医务处 about an alert and mark it escalated. Returns who was told."""
    from app.notify.services import notify

    if alert.escalated:
        return []
    ids = set(_users_with(role="mao"))
    if order.dept_id is not None:
        ids.update(_users_with(role="dept_head", dept_id=order.dept_id))
    notify(user_ids=ids, title=f"【升级·{alert.kind_label}】{_loop_name(order.loop_type_key)}闭环 医嘱 {order.order_no}",
           body=alert.message, link=order_link(order.order_no), kind="alert")
    alert.escalated = True
    alert.escalated_at = now or utcnow()
    db.session.flush()
    return sorted(ids)


def on_applier_alerts(*, order: LoopOrder, alerts: list[tuple[str, str | None, str]]) -> None:
    """ALERT_HOOKS entry: the applier found skipped or abnormal nodes, or nodes failing their QC rules, while
    applying an order's events."""
    for kind, node_key, message in alerts:
        if kind in (AlertKind.SKIPPED, AlertKind.ABNORMAL, AlertKind.QC):
            raise_alert(order=order, kind=kind, node_key=node_key, message=message)


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def scan_alerts(*, now: datetime | None = None, factor: float = OVERDUE_FACTOR) -> dict[str, int]:
    """Periodic check: current nodes past their standard (危急值 loops: escalated), loops stalled longer than
    their type's stall_minutes. Each alert once. Returns how many of each kind were raised."""
    now = now or utcnow()
    counts = {AlertKind.OVERDUE.value: 0, AlertKind.CRITICAL_UNACKED.value: 0, AlertKind.STALLED.value: 0}
    cur = aliased(LoopNodeState)
    prev_state = aliased(LoopNodeState)
    prev = (select(func.max(prev_state.occurred_at))
            .where(prev_state.order_id == cur.order_id, prev_state.seq < cur.seq,
                   prev_state.status.in_([NodeStatus.DONE, NodeStatus.LATE]))
            .correlate(cur).scalar_subquery())
    already = exists().where(LoopAlert.order_id == cur.order_id, LoopAlert.node_key == cur.node_key,
                             LoopAlert.kind.in_([AlertKind.OVERDUE, AlertKind.CRITICAL_UNACKED]))
    rows = db.session.execute(
        select(cur.order_id, cur.node_key, cur.name, cur.standard_minutes, prev.label("prev"), LoopOrder.loop_type_key)
        .join(LoopOrder, LoopOrder.id == cur.order_id)
        .where(cur.status == NodeStatus.CURRENT, LoopOrder.status == OrderStatus.IN_PROGRESS,
               cur.standard_minutes > 0, prev < now, ~already)
    ).all()
    due = [r for r in rows if r.prev is not None and r.prev + timedelta(minutes=r.standard_minutes * factor) < now]
    orders = ({o.id: o for o in db.session.scalars(select(LoopOrder).where(LoopOrder.id.in_({r.order_id for r in due})))}
              if due else {})
    for r in due:
        waited = _minutes(now - r.prev)
        critical = r.loop_type_key == CRITICAL_LOOP
        kind = AlertKind.CRITICAL_UNACKED if critical else AlertKind.OVERDUE
        what = "危急值未及时处置" if critical else "超时"
        message = (f"{r.name}{what}：自上一节点起已 {waited} 分钟，标准 {r.standard_minutes} 分钟"
                   f"（超出 {waited - r.standard_minutes} 分钟）")
        if raise_alert(order=orders[r.order_id], kind=kind, node_key=r.node_key, node_name=r.name, message=message,
                       now=now) is not None:
            counts[kind.value] += 1

    min_stall = db.session.scalar(select(func.min(LoopType.stall_minutes))) or 0
    stalled_already = exists().where(LoopAlert.order_id == LoopOrder.id, LoopAlert.kind == AlertKind.STALLED,
                                     LoopAlert.node_key == func.coalesce(LoopOrder.current_node, ""))
    for order, stall in db.session.execute(
        select(LoopOrder, LoopType.stall_minutes).join(LoopType, LoopType.id == LoopOrder.loop_type_id)
        .where(LoopOrder.status == OrderStatus.IN_PROGRESS, LoopOrder.last_event_at.is_not(None),
               LoopOrder.last_event_at < now - timedelta(minutes=min_stall), ~stalled_already)
    ).all():
        assert order.last_event_at is not None
        if order.last_event_at + timedelta(minutes=stall) >= now:
            continue
        idle = _minutes(now - order.last_event_at)
        node_name = next((s.name for s in order.states if s.node_key == order.current_node), None)
        message = (f"闭环停滞：{idle} 分钟未有新进展（阈值 {stall} 分钟）"
                   + (f"，停在「{node_name}」" if node_name else ""))
        if raise_alert(order=order, kind=AlertKind.STALLED, node_key=order.current_node, node_name=node_name,
                       message=message, now=now) is not None:
            counts[AlertKind.STALLED.value] += 1
    return counts


def run_alert_job() -> dict[str, int]:
    """Periodic job (app.jobs): scan and commit."""
    counts = scan_alerts()
    db.session.commit()
    return counts


# ---------------------------------------------------------------- handling and reading


def handle_alert(*, alert: LoopAlert, decision: str, reason: str, actor: User, now: datetime | None = None) -> LoopAlert:
    """Confirm an open alert as a 风险事件 or dismiss it, with a reason (audited).
    Raises ValidationFailed (no reason / bad decision), Forbidden (outside scope), InvalidTransition (not open)."""
    errors: dict[str, str] = {}
    if decision not in ("confirm", "dismiss"):
        errors["decision"] = "请选择处理结果：确认为风险事件或排除"
    reason = (reason or "").strip()
    if not reason:
        errors["reason"] = "请填写处理说明（确认或排除的理由）"
    elif len(reason) > 2000:
        errors["reason"] = "处理说明不超过 2000 个字符"
    if errors:
        raise ValidationFailed(errors)
    if not data_scope(actor, "loops.alert_handle").allows(dept_id=alert.dept_id, campus_id=alert.campus_id):
        raise Forbidden("该告警不在您的处理范围内")
    if alert.status != AlertStatus.OPEN:
        raise InvalidTransition(f"该告警已处理（{alert.status_label}），不能重复处理", alert_id=alert.id)
    before = audit.snapshot(alert)
    alert.status = AlertStatus.CONFIRMED if decision == "confirm" else AlertStatus.DISMISSED
    alert.reason = reason
    alert.handled_by = actor.id
    alert.handled_at = now or utcnow()
    db.session.flush()
    audit.record(actor, f"loops.alert.{'confirmed' if decision == 'confirm' else 'dismissed'}", alert,
                 before=before, after=audit.snapshot(alert))
    return alert


@dataclass
class AlertFilter:
    kind: str = ""
    status: str = ""
    dept_id: int | None = None
    start: date | None = None
    end: date | None = None
    q: str = ""


def _day(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=SHANGHAI)


def alert_query(*, scope: DataScope, f: AlertFilter, with_status: bool = True):
    """select(LoopAlert) in scope, narrowed by the filters, newest first."""
    stmt = scope.filter(select(LoopAlert), dept_col=LoopAlert.dept_id, campus_col=LoopAlert.campus_id)
    if f.kind:
        stmt = stmt.where(LoopAlert.kind == f.kind)
    if f.status and with_status:
        stmt = stmt.where(LoopAlert.status == f.status)
    if f.dept_id:
        stmt = stmt.where(LoopAlert.dept_id == f.dept_id)
    if f.start:
        stmt = stmt.where(LoopAlert.raised_at >= _day(f.start))
    if f.end:
        stmt = stmt.where(LoopAlert.raised_at < _day(f.end) + timedelta(days=1))
    if f.q:
        stmt = stmt.where(LoopAlert.order_no == f.q)
    return stmt.order_by(LoopAlert.raised_at.desc(), LoopAlert.id.desc())


def alert_rates(*, scope: DataScope | None = None, f: AlertFilter | None = None) -> list[dict[str, Any]]:
    """告警率 (seed 003 §二.2(4)): per kind, confirmed / all alerts, with open and dismissed counts; the last row
    is the total. A status filter is ignored (the rate is over every alert)."""
    f = f or AlertFilter()
    base = alert_query(scope=scope, f=f, with_status=False) if scope is not None else None
    if base is None:
        base = select(LoopAlert)
        if f.start:
            base = base.where(LoopAlert.raised_at >= _day(f.start))
        if f.end:
            base = base.where(LoopAlert.raised_at < _day(f.end) + timedelta(days=1))
    sub = base.order_by(None).subquery()
    counts: dict[str, dict[str, int]] = {}
    for kind, status, n in db.session.execute(select(sub.c.kind, sub.c.status, func.count())
                                              .group_by(sub.c.kind, sub.c.status)):
        counts.setdefault(str(kind), {})[str(status)] = n  # type: ignore[assignment]
    rows: list[dict[str, Any]] = []
    for kind in [k.value for k in AlertKind] + sorted(set(counts) - {k.value for k in AlertKind}):
        c = counts.get(kind, {})
        total = sum(c.values())
        rows.append({"kind": kind, "label": ALERT_KIND_LABELS.get(kind, kind), "total": total,
                     "confirmed": c.get("confirmed", 0), "dismissed": c.get("dismissed", 0), "open": c.get("open", 0),
                     "rate": (c.get("confirmed", 0) / total) if total else None})
    total = sum(int(r["total"]) for r in rows)
    confirmed = sum(int(r["confirmed"]) for r in rows)
    rows.append({"kind": "", "label": "合计", "total": total, "confirmed": confirmed,
                 "dismissed": sum(int(r["dismissed"]) for r in rows), "open": sum(int(r["open"]) for r in rows),
                 "rate": confirmed / total if total else None})
    return rows


def alerts_workbook(alerts: list[LoopAlert], rates: list[dict[str, Any]]) -> bytes:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "风险预警"
    ws.append(["告警时间", "类型", "医嘱号", "闭环类型", "节点", "内容", "责任科室", "状态", "处理人", "处理时间", "处理说明",
               "已升级", "已通知人数"])
    for a in alerts:
        ws.append([local(a.raised_at), a.kind_label, a.order_no, _loop_name(a.loop_type_key), a.node_name or a.node_key,
                   a.message, a.dept.name if a.dept else "", a.status_label, a.handler.name if a.handler else "",
                   local(a.handled_at), a.reason or "", "是" if a.escalated else "", a.notified_count])
    ws2 = wb.create_sheet("告警率")
    ws2.append(["类型", "告警数", "确认为风险事件", "已排除", "待处理", "告警率（确认/全部）"])
    for r in rates:
        ws2.append([r["label"], r["total"], r["confirmed"], r["dismissed"], r["open"],
                    f"{r['rate'] * 100:.1f}%" if r["rate"] is not None else ""])
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


# ---------------------------------------------------------------- pages

bp = Blueprint("loop_alerts", __name__, url_prefix="/loops/alerts")


def _filter() -> AlertFilter:
    from app.loops.views import parse_day

    errors: dict[str, str] = {}
    dept = request.args.get("dept", "")
    f = AlertFilter(kind=request.args.get("kind", ""), status=request.args.get("status", ""),
                    dept_id=int(dept) if dept.isdigit() else None,
                    start=parse_day(request.args.get("start"), "start", errors),
                    end=parse_day(request.args.get("end"), "end", errors), q=(request.args.get("q") or "").strip()[:64])
    if f.kind and f.kind not in ALERT_KIND_LABELS:
        errors["kind"] = "未知的告警类型"
    if f.status and f.status not in ALERT_STATUS_LABELS:
        errors["status"] = "未知的处理状态"
    if errors:
        raise ValidationFailed(errors, message="查询条件有误")
    return f


def _get_alert(alert_id: int) -> LoopAlert:
    alert = db.session.get(LoopAlert, alert_id)
    if alert is None:
        raise NotFound("告警不存在", alert_id=alert_id)
    if not data_scope(current_user, "loops.view").allows(dept_id=alert.dept_id, campus_id=alert.campus_id):
        raise Forbidden("该告警不在您的数据范围内")
    return alert


@bp.get("/")
@require("loops.view")
def index():
    from app.loops.views import visible_departments

    scope = data_scope(current_user, "loops.view")
    f = _filter()
    page = paginate(alert_query(scope=scope, f=f))
    return render_template("loops/alerts.html", page=page, rates=alert_rates(scope=scope, f=f),
                           kind_labels=ALERT_KIND_LABELS, status_labels=ALERT_STATUS_LABELS,
                           departments=visible_departments(scope), loop_name=_loop_name,
                           can_handle=has_permission(current_user, "loops.alert_handle"))


@bp.get("/export.xlsx")
@require("loops.view")
def export():
    scope = data_scope(current_user, "loops.view")
    f = _filter()
    alerts = list(db.session.scalars(alert_query(scope=scope, f=f).limit(50000)))
    data = alerts_workbook(alerts, alert_rates(scope=scope, f=f))
    return send_file(BytesIO(data), as_attachment=True, mimetype=XLSX,
                     download_name=f"闭环风险预警_{utcnow().astimezone(SHANGHAI):%Y%m%d%H%M}.xlsx")


def _render_detail(alert: LoopAlert, *, errors: dict[str, str] | None = None, form: dict[str, str] | None = None,
                   status: int = 200):
    can_handle = (alert.status == AlertStatus.OPEN and has_permission(current_user, "loops.alert_handle")
                  and data_scope(current_user, "loops.alert_handle").allows(dept_id=alert.dept_id,
                                                                             campus_id=alert.campus_id))
    return render_template("loops/alerts_detail.html", alert=alert, loop_name=_loop_name(alert.loop_type_key),
                           can_handle=can_handle, errors=errors or {}, form=form or {}), status


@bp.get("/<int:alert_id>")
@require("loops.view")
def detail(alert_id: int):
    return _render_detail(_get_alert(alert_id))


@bp.post("/<int:alert_id>/handle")
@require("loops.alert_handle")
def handle(alert_id: int):
    alert = _get_alert(alert_id)
    form = {"decision": request.form.get("decision", ""), "reason": request.form.get("reason", "")}
    try:
        handle_alert(alert=alert, decision=form["decision"], reason=form["reason"], actor=current_user)
    except ValidationFailed as exc:
        return _render_detail(alert, errors={e["path"]: e["message"] for e in exc.errors}, form=form, status=400)
    db.session.commit()
    flash(f"告警已处理：{alert.status_label}", "success")
    return redirect(url_for("loop_alerts.index"))


def register(app) -> None:
    from app.jobs import register_job
    from app.loops import services
    from app.web import add_nav

    app.register_blueprint(bp)
    if on_applier_alerts not in services.ALERT_HOOKS:
        services.ALERT_HOOKS.append(on_applier_alerts)
    register_job("loops.alerts", run_alert_job)
    audit.ACTION_LABELS.update(AUDIT_LABELS)
    add_nav("loop_alerts.index", "风险预警", "loops.view", order=41)
