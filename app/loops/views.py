"""统一闭环视图 (seed 003 §二.2): order search, the per-order timeline of node cards, one-click links to the
source systems (SourceLink settings), and the intake audit search with Excel export (seed 003 §二.4).

Invariants:
- every page checks loops.view and its data scope (dept → own department's orders, campus → campus, group → all);
  an order outside the scope is 403;
- patient identity (name, patient id, inpatient no) is masked for viewers without loops.patient_identity,
  in pages and exports alike, and no source link carrying a patient id is rendered for them;
- source links are configuration: changed by loops.admin, audited, deactivated rather than deleted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from io import BytesIO
from typing import Any
from urllib.parse import quote

from flask import Blueprint, flash, redirect, render_template, request, send_file, url_for
from flask_login import current_user
from openpyxl import Workbook
from sqlalchemy import String, false, func, or_, select
from sqlalchemy.orm import Mapped, mapped_column

from app.audit import services as audit
from app.audit.models import AuditLog
from app.auth.access import require
from app.auth.models import Campus, Department, Scope, User
from app.auth.services import DataScope, data_scope, has_permission, scope_of
from app.core.paging import paginate
from app.core.timefmt import SHANGHAI, local
from app.db import Model, db, utcnow
from app.errors import Forbidden, ValidationFailed
from app.loops import services
from app.loops.catalog import RESERVED_NODES
from app.loops.models import (
    NODE_STATUS_LABELS,
    ORDER_STATUS_LABELS,
    LoopEvent,
    LoopNodeState,
    LoopOrder,
    LoopType,
    NodeStatus,
)

bp = Blueprint("loop_views", __name__, url_prefix="/loops")

IDENTITY = "loops.patient_identity"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

# ---------------------------------------------------------------- model


class SourceLink(Model):
    __tablename__ = "loop_source_links"
    __table_args__ = {"comment": "源系统调阅链接（闭环节点一键调阅）"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    source: Mapped[str] = mapped_column(String(32), unique=True, comment="来源系统（与事件 source 一致，如 HIS/LIS/PACS）")
    label: Mapped[str] = mapped_column(String(64), comment="链接名称（如 在 LIS 中查看）")
    url_template: Mapped[str] = mapped_column(String(500), comment="链接模板，可用 {order_no} {patient_id} {event_id}")
    is_active: Mapped[bool] = mapped_column(default=True, comment="是否启用")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, comment="更新时间")


# ---------------------------------------------------------------- labels and formatting

EVENT_STATUS_LABELS = {"pending": "待应用", "applied": "已应用", "late": "补录（迟到）", "repeat": "重复",
                       "ignored": "已忽略"}
NODE_ICONS = {"done": "✓", "current": "▶", "pending": "○", "late": "⏱", "skipped": "✕", "abnormal": "!"}
PLACEHOLDERS = ("order_no", "patient_id", "event_id")
AUDIT_LABELS = {
    "loops.source_link.created": "新增源系统调阅链接",
    "loops.source_link.updated": "修改源系统调阅链接",
    "loops.source_link.deactivated": "停用源系统调阅链接",
    "loops.source_link.activated": "启用源系统调阅链接",
}
# audit rows that are loop configuration (the config pages write these entity types / action prefixes)
CONFIG_ENTITY_TYPES = ("loop_types", "loop_nodes", "interface_mappings", "loop_source_links")
CONFIG_ACTION_PREFIXES = ("loop_type", "loop_node", "interface_mapping", "loops.config", "loops.type", "loops.node",
                          "loops.mapping", "loops.source_link")


def mask_name(name: str | None) -> str:
    """张三 → 张*；欧阳娜娜 → 欧***."""
    if not name:
        return ""
    return name[0] + "*" * max(1, len(name) - 1)


def mask_id(value: str | None) -> str:
    """ZY202601 → ZY****01: the ends stay so staff can tell records apart; short values are mostly hidden."""
    if not value:
        return ""
    if len(value) <= 4:
        return value[0] + "*" * (len(value) - 1)
    keep = 2 if len(value) >= 6 else 1
    return value[:keep] + "*" * (len(value) - 2 * keep) + value[-keep:]


def fmt_minutes(minutes: int | None) -> str:
    if minutes is None:
        return ""
    sign = "-" if minutes < 0 else ""
    m = abs(minutes)
    if m < 60:
        return f"{sign}{m} 分钟"
    if m < 1440:
        return f"{sign}{m // 60} 小时 {m % 60} 分钟" if m % 60 else f"{sign}{m // 60} 小时"
    return f"{sign}{m // 1440} 天 {m % 1440 // 60} 小时" if m % 1440 // 60 else f"{sign}{m // 1440} 天"


def fmt_deviation(minutes: int | None) -> tuple[str, str]:
    """(+12 分钟, over) / (-5 分钟, early) / (准时, ontime)."""
    if minutes is None:
        return "", ""
    if minutes > 0:
        return "+" + fmt_minutes(minutes), "over"
    if minutes < 0:
        return fmt_minutes(minutes), "early"
    return "准时", "ontime"


def can_see_identity(user: Any) -> bool:
    return bool(user is not None and getattr(user, "is_authenticated", True) and has_permission(user, IDENTITY))


# ---------------------------------------------------------------- source links


def source_links() -> dict[str, SourceLink]:
    """Active links keyed by source system."""
    return {s.source: s for s in db.session.scalars(select(SourceLink).where(SourceLink.is_active.is_(True)))}


def render_source_url(template: str, *, order_no: str | None, patient_id: str | None = None,
                      event_id: str | None = None) -> str | None:
    """Fill {order_no} {patient_id} {event_id} (URL-encoded). None when a placeholder has no value."""
    values = {"order_no": order_no, "patient_id": patient_id, "event_id": event_id}
    out = template
    for name in PLACEHOLDERS:
        token = "{" + name + "}"
        if token in out:
            value = values[name]
            if not value:
                return None
            out = out.replace(token, quote(str(value), safe=""))
    return out


_URL_RE = re.compile(r"^(https?://[^\s]+|/[^\s]*)$")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")


def _link_errors(*, source: str, label: str, url_template: str, link: SourceLink | None) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not source:
        errors["source"] = "请填写来源系统（与事件的 source 一致，如 LIS）"
    elif len(source) > 32:
        errors["source"] = "来源系统不超过 32 个字符"
    else:
        other = db.session.scalar(select(SourceLink).where(SourceLink.source == source))
        if other is not None and (link is None or other.id != link.id):
            errors["source"] = f"来源系统「{source}」已配置链接，请直接修改"
    if not label:
        errors["label"] = "请填写链接名称"
    elif len(label) > 64:
        errors["label"] = "链接名称不超过 64 个字符"
    if not url_template:
        errors["url_template"] = "请填写链接模板"
    elif len(url_template) > 500:
        errors["url_template"] = "链接模板不超过 500 个字符"
    elif not _URL_RE.match(url_template):
        errors["url_template"] = "链接模板应以 http://、https:// 或 / 开头，且不含空格"
    else:
        unknown = [p for p in _PLACEHOLDER_RE.findall(url_template) if p not in PLACEHOLDERS]
        if unknown:
            errors["url_template"] = f"未知占位符 {{{unknown[0]}}}：只能使用 {{order_no}} {{patient_id}} {{event_id}}"
    return errors


def save_source_link(*, source: str, label: str, url_template: str, actor: Any,
                     link: SourceLink | None = None) -> SourceLink:
    """Create or change a source system's link template (audited). Raises ValidationFailed."""
    source, label, url_template = source.strip(), label.strip(), url_template.strip()
    errors = _link_errors(source=source, label=label, url_template=url_template, link=link)
    if errors:
        raise ValidationFailed(errors)
    if link is None:
        link = SourceLink(source=source, label=label, url_template=url_template, is_active=True)
        db.session.add(link)
        db.session.flush()
        audit.record(actor, "loops.source_link.created", link, after=audit.snapshot(link))
    else:
        before = audit.snapshot(link)
        link.source, link.label, link.url_template = source, label, url_template
        db.session.flush()
        audit.record(actor, "loops.source_link.updated", link, before=before, after=audit.snapshot(link))
    db.session.flush()
    return link


def set_source_link_active(*, link: SourceLink, active: bool, actor: Any) -> SourceLink:
    """Deactivate (never delete) or re-activate a link (audited)."""
    before = audit.snapshot(link)
    link.is_active = active
    db.session.flush()
    audit.record(actor, "loops.source_link.activated" if active else "loops.source_link.deactivated", link,
                 before=before, after=audit.snapshot(link))
    return link


# ---------------------------------------------------------------- timeline view model


@dataclass
class NodeCard:
    key: str
    name: str
    seq: int
    status: str
    label: str
    icon: str
    occurred_at: datetime | None = None
    operator: str = ""
    terminal: str = ""
    source: str = ""
    used: str = ""
    standard: str = ""
    deviation: str = ""
    deviation_kind: str = ""
    waiting: str = ""
    overdue: bool = False
    note: str = ""
    qc: list[str] = field(default_factory=list)  # 质控问题 found when the node was completed
    links: list[tuple[str, str]] = field(default_factory=list)


def _loop_names() -> dict[str, str]:
    return {k: n for k, n in db.session.execute(select(LoopType.key, LoopType.name).where(LoopType.campus_id.is_(None)))}


def timeline(order: LoopOrder, *, show_identity: bool, now: datetime | None = None) -> dict[str, Any]:
    """Everything the timeline partial shows for one order: header, node cards, raw events."""
    now = now or utcnow()
    info = services.type_info(order.loop_type_key, order.campus_id)
    states = sorted(order.states, key=lambda s: s.seq)
    if not states and info is not None:  # events stored but not yet applied
        states = [LoopNodeState(seq=i, node_key=k, name=n, standard_minutes=m, status=NodeStatus.PENDING)
                  for i, (k, n, m) in enumerate(info.nodes)]
    events = list(db.session.scalars(select(LoopEvent).where(LoopEvent.order_no == order.order_no)
                                     .order_by(LoopEvent.occurred_at, LoopEvent.id)))
    by_id = {e.id: e for e in events}
    links = source_links()
    patient_id = order.patient_id if show_identity else None

    def node_links(st: LoopNodeState) -> list[tuple[str, str]]:
        ev = by_id.get(st.event_id) if st.event_id else None
        out = []
        link = links.get(st.source or "") if st.source else None
        if link is not None:
            if "{patient_id}" in link.url_template and not show_identity:
                pass  # the URL would disclose the patient id
            else:
                url = render_source_url(link.url_template, order_no=order.order_no, patient_id=patient_id,
                                        event_id=ev.event_id if ev else None)
                if url:
                    out.append((link.label, url))
        return out

    cards: list[NodeCard] = []
    last_time: datetime | None = None
    for st in states:
        dev, dev_kind = fmt_deviation(st.deviation_minutes)
        card = NodeCard(
            key=st.node_key, name=st.name, seq=st.seq, status=st.status,
            label=NODE_STATUS_LABELS.get(st.status, st.status), icon=NODE_ICONS.get(st.status, "○"),
            occurred_at=st.occurred_at,
            operator="".join(x for x in (st.operator_name, f"（{st.operator_id}）" if st.operator_id else "") if x),
            terminal=st.terminal or "", source=st.source or "",
            used=fmt_minutes(st.minutes_since_previous),
            # the first node has nothing to be measured against
            standard=fmt_minutes(st.standard_minutes) if st.standard_minutes and st.seq > 0 else "",
            deviation=dev, deviation_kind=dev_kind, note=st.note or "", qc=list(st.qc_findings or ()),
            links=node_links(st),
        )
        if st.status in (NodeStatus.CURRENT, NodeStatus.ABNORMAL) and order.status == "in_progress" and last_time:
            waited = int((now - last_time).total_seconds() // 60)
            card.waiting = fmt_minutes(max(0, waited))
            card.overdue = bool(st.standard_minutes and waited > st.standard_minutes)
            if card.overdue and st.standard_minutes is not None:
                card.deviation, card.deviation_kind = "+" + fmt_minutes(waited - st.standard_minutes), "over"
        if st.occurred_at is not None and st.status in (NodeStatus.DONE, NodeStatus.LATE):
            last_time = max(last_time, st.occurred_at) if last_time else st.occurred_at
        cards.append(card)

    names = {s.node_key: s.name for s in states}
    names.update(RESERVED_NODES)
    dept = db.session.get(Department, order.dept_id) if order.dept_id else None
    campus = db.session.get(Campus, order.campus_id) if order.campus_id else None
    header_link = None
    lt = db.session.get(LoopType, order.loop_type_id) if order.loop_type_id else None
    if lt is not None and lt.source_url_template and (show_identity or "{patient_id}" not in lt.source_url_template):
        header_link = render_source_url(lt.source_url_template, order_no=order.order_no, patient_id=patient_id)
    end = order.ended_at or (now if order.status == "in_progress" else None)
    return {
        "order": order,
        "loop_name": info.name if info else order.loop_type_key,
        "status_label": ORDER_STATUS_LABELS.get(order.status, order.status),
        "patient_name": order.patient_name if show_identity else mask_name(order.patient_name),
        "patient_id": order.patient_id if show_identity else mask_id(order.patient_id),
        "inpatient_no": order.inpatient_no if show_identity else mask_id(order.inpatient_no),
        "masked": not show_identity,
        "dept_name": dept.name if dept else (order.dept_code or ""),
        "campus_name": campus.name if campus else (order.campus_code or ""),
        "duration": fmt_minutes(int((end - order.started_at).total_seconds() // 60))
        if end and order.started_at else "",
        "interrupted_node_name": names.get(order.interrupted_node or "", order.interrupted_node or ""),
        "interrupted_after": fmt_minutes(order.interrupted_minutes),
        "current_node_name": names.get(order.current_node or "", ""),
        "cards": cards,
        "done_count": sum(1 for c in cards if c.status in ("done", "late")),
        "events": [{
            "ev": e, "status_label": EVENT_STATUS_LABELS.get(e.status, e.status),
            "node_name": names.get(e.node_key, e.node_key),
            "patient": (e.patient_name or "") if show_identity else mask_name(e.patient_name),
        } for e in events],
        "header_link": header_link,
    }


# ---------------------------------------------------------------- scope and queries


def loops_scope(user: Any) -> DataScope:
    return data_scope(user, "loops.view")


def get_order_in_scope(*, order_no: str, viewer: Any) -> LoopOrder | None:
    """The order, or None when unknown. Raises Forbidden when it lies outside the viewer's loops.view scope."""
    order = db.session.scalar(select(LoopOrder).where(LoopOrder.order_no == order_no))
    if order is None:
        return None
    if not loops_scope(viewer).allows(dept_id=order.dept_id, campus_id=order.campus_id):
        raise Forbidden("该医嘱不在您的数据范围内（仅可查看本人权限范围内科室/院区的医嘱）", order_no=order_no)
    return order


def visible_departments(scope: DataScope) -> list[Department]:
    """The active departments of the scope (for the department filter); alerts.py shares it."""
    return scope.departments()


def parse_day(value: str | None, name: str, errors: dict[str, str]) -> date | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        errors[name] = "日期格式应为 YYYY-MM-DD"
        return None


def day_start(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=SHANGHAI)


@dataclass
class OrderFilter:
    q: str = ""
    loop_type: str = ""
    status: str = ""
    dept_id: int | None = None
    flag: str = ""
    start: date | None = None
    end: date | None = None


def order_query(*, scope: DataScope, f: OrderFilter):
    """select(LoopOrder) in scope, narrowed by the filters, newest first."""
    stmt = scope.filter(select(LoopOrder), dept_col=LoopOrder.dept_id, campus_col=LoopOrder.campus_id)
    if f.q:
        stmt = stmt.where(or_(LoopOrder.order_no == f.q, LoopOrder.order_no.like(f"{_escape(f.q)}%", escape="\\"),
                              LoopOrder.patient_id == f.q, LoopOrder.inpatient_no == f.q))
    if f.loop_type:
        stmt = stmt.where(LoopOrder.loop_type_key == f.loop_type)
    if f.status:
        stmt = stmt.where(LoopOrder.status == f.status)
    if f.dept_id:
        stmt = stmt.where(LoopOrder.dept_id == f.dept_id)
    if f.flag == "skipped":
        stmt = stmt.where(LoopOrder.has_skipped.is_(True))
    elif f.flag == "abnormal":
        stmt = stmt.where(LoopOrder.has_abnormal.is_(True))
    started = func.coalesce(LoopOrder.started_at, LoopOrder.created_at)
    if f.start:
        stmt = stmt.where(started >= day_start(f.start))
    if f.end:
        stmt = stmt.where(started < day_start(f.end) + timedelta(days=1))
    return stmt.order_by(LoopOrder.id.desc())


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def order_rows(orders: list[LoopOrder], *, show_identity: bool) -> list[dict[str, Any]]:
    names = _loop_names()
    dept_ids = {o.dept_id for o in orders if o.dept_id}
    depts = {d.id: d.name for d in db.session.scalars(select(Department).where(Department.id.in_(dept_ids)))} \
        if dept_ids else {}
    node_names: dict[tuple[str, str], str] = {}
    for key in {o.loop_type_key for o in orders}:
        info = services.type_info(key)
        if info:
            for k, n, _m in info.nodes:
                node_names[(key, k)] = n
    rows = []
    for o in orders:
        rows.append({
            "order": o, "loop_name": names.get(o.loop_type_key, o.loop_type_key),
            "status_label": ORDER_STATUS_LABELS.get(o.status, o.status),
            "patient_name": o.patient_name if show_identity else mask_name(o.patient_name),
            "patient_id": o.patient_id if show_identity else mask_id(o.patient_id),
            "inpatient_no": o.inpatient_no if show_identity else mask_id(o.inpatient_no),
            "dept_name": depts.get(o.dept_id or 0, o.dept_code or ""),
            "current_node": node_names.get((o.loop_type_key, o.current_node or ""), o.current_node or ""),
        })
    return rows


def orders_workbook(orders: list[LoopOrder], *, show_identity: bool) -> bytes:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "医嘱闭环"
    ws.append(["医嘱号", "闭环类型", "状态", "患者姓名", "患者 ID", "住院号", "科室", "当前节点", "开始时间", "结束时间",
               "中断节点", "中断前用时（分钟）", "缺环", "异常"])
    for r in order_rows(orders, show_identity=show_identity):
        o = r["order"]
        ws.append([o.order_no, r["loop_name"], r["status_label"], r["patient_name"], r["patient_id"],
                   r["inpatient_no"], r["dept_name"], r["current_node"], local(o.started_at), local(o.ended_at),
                   o.interrupted_node or "", o.interrupted_minutes, "是" if o.has_skipped else "",
                   "是" if o.has_abnormal else ""])
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


# ---------------------------------------------------------------- audit search (seed 003 §二.4)


@dataclass
class AuditFilter:
    patient: str = ""
    order_no: str = ""
    person: str = ""
    terminal: str = ""
    start: date | None = None
    end: date | None = None


def audit_scope(user: Any) -> DataScope:
    """The widest scope through which the user holds audit.view or loops.admin. Raises Forbidden."""
    best = None
    for perm in ("audit.view", "loops.admin"):
        level = scope_of(user, perm)
        if level is not None and (best is None or level.rank > best.rank):
            best = level
    if best is None:
        raise Forbidden("没有权限：查看审计日志")
    return DataScope(level=best, user_id=user.id, dept_id=user.dept_id, campus_id=user.campus_id)


def event_audit_query(*, scope: DataScope, f: AuditFilter):
    """Intake events (the append-only store) by patient, order, operator and terminal, newest first."""
    stmt = select(LoopEvent)
    if scope.level is not Scope.GROUP:
        orders = scope.filter(select(LoopOrder.order_no), dept_col=LoopOrder.dept_id, campus_col=LoopOrder.campus_id)
        stmt = stmt.where(LoopEvent.order_no.in_(orders))
    if f.patient:
        stmt = stmt.where(or_(LoopEvent.patient_id == f.patient, LoopEvent.inpatient_no == f.patient,
                              LoopEvent.patient_name == f.patient))
    if f.order_no:
        stmt = stmt.where(LoopEvent.order_no == f.order_no)
    if f.person:
        stmt = stmt.where(or_(LoopEvent.operator_id == f.person,
                              LoopEvent.operator_name.like(f"%{_escape(f.person)}%", escape="\\")))
    if f.terminal:
        stmt = stmt.where(LoopEvent.terminal.like(f"%{_escape(f.terminal)}%", escape="\\"))
    if f.start:
        stmt = stmt.where(LoopEvent.occurred_at >= day_start(f.start))
    if f.end:
        stmt = stmt.where(LoopEvent.occurred_at < day_start(f.end) + timedelta(days=1))
    return stmt.order_by(LoopEvent.occurred_at.desc(), LoopEvent.id.desc())


def config_audit_query(*, f: AuditFilter):
    """Audit records of loop configuration actions (loop types, nodes, interface dictionary, source links)."""
    is_config = or_(AuditLog.entity_type.in_(CONFIG_ENTITY_TYPES),
                    *[AuditLog.action.like(f"{_escape(p)}%", escape="\\") for p in CONFIG_ACTION_PREFIXES])
    stmt = select(AuditLog).where(is_config)
    if f.patient:  # configuration carries no patient
        stmt = stmt.where(false())
    if f.order_no:
        stmt = stmt.where(AuditLog.entity_id == f.order_no)
    if f.person:
        people = select(User.id).where(or_(User.staff_no == f.person, User.username == f.person))
        stmt = stmt.where(or_(AuditLog.actor_name.like(f"%{_escape(f.person)}%", escape="\\"),
                              AuditLog.actor_id.in_(people)))
    if f.terminal:
        like = f"%{_escape(f.terminal)}%"
        stmt = stmt.where(or_(AuditLog.terminal.like(like, escape="\\"), AuditLog.address.like(like, escape="\\")))
    if f.start:
        stmt = stmt.where(AuditLog.at >= day_start(f.start))
    if f.end:
        stmt = stmt.where(AuditLog.at < day_start(f.end) + timedelta(days=1))
    return stmt.order_by(AuditLog.id.desc())


def audit_workbook(events: list[LoopEvent], records: list[AuditLog], *, show_identity: bool) -> bytes:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "接入事件"
    ws.append(["发生时间", "接收时间", "来源系统", "来源事件 ID", "接入方式", "医嘱号", "闭环类型", "节点（原值）", "节点",
               "操作人工号", "操作人", "终端", "患者姓名", "患者 ID", "住院号", "科室编码", "应用状态", "应用时间", "节点数据"])
    for e in events:
        ws.append([local(e.occurred_at, "%Y-%m-%d %H:%M:%S"), local(e.received_at, "%Y-%m-%d %H:%M:%S"), e.source,
                   e.event_id, e.channel, e.order_no, e.loop_type_key, e.node, e.node_key, e.operator_id or "",
                   e.operator_name or "", e.terminal or "",
                   (e.patient_name or "") if show_identity else mask_name(e.patient_name),
                   (e.patient_id or "") if show_identity else mask_id(e.patient_id),
                   (e.inpatient_no or "") if show_identity else mask_id(e.inpatient_no), e.dept or "",
                   EVENT_STATUS_LABELS.get(e.status, e.status), local(e.applied_at, "%Y-%m-%d %H:%M:%S"),
                   audit.dumps(e.data) if e.data else ""])
    ws2 = wb.create_sheet("配置变更")
    ws2.append(["时间", "操作人", "动作", "动作说明", "对象类型", "对象", "地址", "终端", "变更前", "变更后", "附加"])
    for r in records:
        ws2.append([local(r.at, "%Y-%m-%d %H:%M:%S"), r.actor_name or "", r.action,
                    audit.ACTION_LABELS.get(r.action, ""), r.entity_type or "", r.entity_id or "", r.address or "",
                    r.terminal or "", audit.dumps(r.before) if r.before else "",
                    audit.dumps(r.after) if r.after else "", audit.dumps(r.extra) if r.extra else ""])
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


# ---------------------------------------------------------------- pages


def _order_filter() -> OrderFilter:
    errors: dict[str, str] = {}
    dept = request.args.get("dept", "")
    f = OrderFilter(q=(request.args.get("q") or "").strip()[:64], loop_type=request.args.get("loop_type", ""),
                    status=request.args.get("status", ""), dept_id=int(dept) if dept.isdigit() else None,
                    flag=request.args.get("flag", ""),
                    start=parse_day(request.args.get("start"), "start", errors),
                    end=parse_day(request.args.get("end"), "end", errors))
    if f.status and f.status not in ORDER_STATUS_LABELS:
        errors["status"] = "未知的闭环状态"
    if errors:
        raise ValidationFailed(errors, message="查询条件有误")
    return f


@bp.get("/orders")
@require("loops.view")
def search():
    scope = loops_scope(current_user)
    f = _order_filter()
    page = paginate(order_query(scope=scope, f=f))
    show = can_see_identity(current_user)
    return render_template("loops/search.html", page=page, rows=order_rows(page.items, show_identity=show),
                           loop_types=_loop_names(), status_labels=ORDER_STATUS_LABELS,
                           departments=visible_departments(scope), masked=not show)


@bp.get("/orders.xlsx")
@require("loops.view")
def export_orders():
    scope = loops_scope(current_user)
    orders = list(db.session.scalars(order_query(scope=scope, f=_order_filter()).limit(50000)))
    data = orders_workbook(orders, show_identity=can_see_identity(current_user))
    return send_file(BytesIO(data), as_attachment=True, mimetype=XLSX,
                     download_name=f"医嘱闭环_{utcnow().astimezone(SHANGHAI):%Y%m%d%H%M}.xlsx")


@bp.get("/orders/<path:order_no>")
@require("loops.view")
def order(order_no: str):
    found = get_order_in_scope(order_no=order_no, viewer=current_user)
    if found is None:
        return render_template("loops/timeline_missing.html", order_no=order_no), 404
    view = timeline(found, show_identity=can_see_identity(current_user))
    return render_template("loops/timeline.html", **view)


@bp.get("/source-links")
@require("loops.admin")
def links():
    return _render_links()


def _render_links(*, errors: dict[str, str] | None = None, form: dict[str, str] | None = None,
                  editing: SourceLink | None = None, status: int = 200):
    rows = list(db.session.scalars(select(SourceLink).order_by(SourceLink.source)))
    if form is None and editing is not None:
        form = {"source": editing.source, "label": editing.label, "url_template": editing.url_template}
    return render_template("loops/timeline_links.html", rows=rows, errors=errors or {}, form=form or {},
                           editing=editing), status


@bp.get("/source-links/<int:link_id>")
@require("loops.admin")
def edit_link(link_id: int):
    link = db.get_or_404(SourceLink, link_id)
    return _render_links(editing=link)


@bp.post("/source-links")
@bp.post("/source-links/<int:link_id>")
@require("loops.admin")
def save_link(link_id: int | None = None):
    link = db.get_or_404(SourceLink, link_id) if link_id else None
    form = {k: request.form.get(k, "") for k in ("source", "label", "url_template")}
    try:
        saved = save_source_link(source=form["source"], label=form["label"], url_template=form["url_template"],
                                 actor=current_user, link=link)
    except ValidationFailed as exc:
        return _render_links(errors={e["path"]: e["message"] for e in exc.errors}, form=form, editing=link,
                             status=400)
    db.session.commit()
    flash(f"已保存「{saved.source}」的调阅链接", "success")
    return redirect(url_for("loop_views.links"))


@bp.post("/source-links/<int:link_id>/active")
@require("loops.admin")
def toggle_link(link_id: int):
    link = db.get_or_404(SourceLink, link_id)
    set_source_link_active(link=link, active=request.form.get("active") == "1", actor=current_user)
    db.session.commit()
    flash(f"已{'启用' if link.is_active else '停用'}「{link.source}」的调阅链接", "success")
    return redirect(url_for("loop_views.links"))


def _audit_filter() -> AuditFilter:
    errors: dict[str, str] = {}
    f = AuditFilter(patient=(request.args.get("patient") or "").strip()[:64],
                    order_no=(request.args.get("order_no") or "").strip()[:64],
                    person=(request.args.get("person") or "").strip()[:64],
                    terminal=(request.args.get("terminal") or "").strip()[:128],
                    start=parse_day(request.args.get("start"), "start", errors),
                    end=parse_day(request.args.get("end"), "end", errors))
    if f.start and f.end and f.start > f.end:
        errors["end"] = "结束日期不能早于开始日期"
    if errors:
        raise ValidationFailed(errors, message="查询条件有误")
    return f


@bp.get("/audit")
@require("audit.view", "loops.admin")
def audit_search():
    scope = audit_scope(current_user)
    f = _audit_filter()
    tab = "config" if request.args.get("tab") == "config" else "events"
    show = can_see_identity(current_user)
    if tab == "events":
        page = paginate(event_audit_query(scope=scope, f=f))
        names = {e.node_key: e.node_key for e in page.items}
        for key in {e.loop_type_key for e in page.items}:
            info = services.type_info(key)
            if info:
                names.update({k: n for k, n, _m in info.nodes})
        names.update(RESERVED_NODES)
    else:
        page = paginate(config_audit_query(f=f))
        names = {}
    return render_template("loops/events_audit.html", page=page, tab=tab, masked=not show, node_names=names,
                           status_labels=EVENT_STATUS_LABELS, action_labels=audit.ACTION_LABELS,
                           mask_name=mask_name, mask_id=mask_id)


@bp.get("/audit.xlsx")
@require("audit.view", "loops.admin")
def audit_export():
    scope = audit_scope(current_user)
    f = _audit_filter()
    events = list(db.session.scalars(event_audit_query(scope=scope, f=f).limit(50000)))
    records = list(db.session.scalars(config_audit_query(f=f).limit(50000)))
    data = audit_workbook(events, records, show_identity=can_see_identity(current_user))
    audit.record(current_user, "audit.loop_export", entity_type="loop_events", entity_id=None,
                 extra={"filters": {k: str(v) for k, v in vars(f).items() if v}, "events": len(events),
                        "records": len(records)})
    db.session.commit()
    return send_file(BytesIO(data), as_attachment=True, mimetype=XLSX,
                     download_name=f"闭环审计_{utcnow().astimezone(SHANGHAI):%Y%m%d%H%M}.xlsx")


def register(app) -> None:
    from app.web import add_nav

    app.register_blueprint(bp)
    audit.ACTION_LABELS.update(AUDIT_LABELS)
    audit.ACTION_LABELS["audit.loop_export"] = "导出闭环审计记录"
    app.jinja_env.globals.setdefault("loop_node_icons", NODE_ICONS)
    add_nav("loop_views.search", "闭环查询", "loops.view", order=40)
    add_nav("loop_views.audit_search", "闭环审计", "audit.view", order=89)
    add_nav("loop_views.links", "调阅链接", "loops.admin", order=48)

