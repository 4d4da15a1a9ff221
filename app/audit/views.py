"""Audit search page with export."""

from __future__ import annotations

from datetime import datetime, timedelta
from io import BytesIO

from flask import Blueprint, render_template, request, send_file
from openpyxl import Workbook
from sqlalchemy import func, or_, select

from app.audit.models import AuditLog
from app.auth.access import require
from app.core.paging import paginate
from app.core.timefmt import SHANGHAI, local
from app.db import db

bp = Blueprint("audit", __name__, url_prefix="/audit")


def _query():
    stmt = select(AuditLog).order_by(AuditLog.id.desc())
    q = (request.args.get("q") or "").strip()
    if q:
        like = f"%{q}%"
        stmt = stmt.where(or_(AuditLog.actor_name.like(like), AuditLog.action.like(like),
                              AuditLog.entity_id == q, AuditLog.terminal.like(like), AuditLog.address.like(like)))
    for field in ("action", "entity_type"):
        value = request.args.get(field)
        if value:
            stmt = stmt.where(getattr(AuditLog, field) == value)
    start = request.args.get("start")
    end = request.args.get("end")
    if start:
        stmt = stmt.where(AuditLog.at >= datetime.fromisoformat(start).replace(tzinfo=SHANGHAI))
    if end:
        stmt = stmt.where(AuditLog.at < datetime.fromisoformat(end).replace(tzinfo=SHANGHAI) + timedelta(days=1))
    return stmt


@bp.get("/")
@require("audit.view")
def index():
    page = paginate(_query())
    actions = db.session.scalars(select(AuditLog.action).group_by(AuditLog.action).order_by(func.min(AuditLog.action))).all()
    return render_template("audit/index.html", page=page, actions=actions)


@bp.get("/export.xlsx")
@require("audit.view")
def export():
    wb = Workbook()
    ws = wb.active
    ws.title = "审计日志"
    ws.append(["时间", "操作人", "动作", "对象类型", "对象", "地址", "终端", "变更前", "变更后", "附加"])
    from app.audit.services import dumps

    for row in db.session.scalars(_query().limit(50000)):
        ws.append([local(row.at), row.actor_name, row.action, row.entity_type, row.entity_id, row.address,
                   row.terminal, dumps(row.before) if row.before else "", dumps(row.after) if row.after else "",
                   dumps(row.extra) if row.extra else ""])
    buf = BytesIO()
    wb.save(buf)
    buf.seek(0)
    return send_file(buf, as_attachment=True, download_name="audit.xlsx",
                     mimetype="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
