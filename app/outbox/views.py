"""Operator page 接口发件箱: outbound messages with status/channel filters, errors, replay of dead ones."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app.auth.access import require
from app.core.paging import paginate
from app.db import db
from app.outbox import services
from app.outbox.models import OUTBOX_STATUS_LABELS

bp = Blueprint("outbox", __name__, url_prefix="/admin/outbox")


def _filters() -> dict[str, str]:
    status = request.args.get("status", "")
    return {"status": status if status in OUTBOX_STATUS_LABELS else "",
            "channel": (request.args.get("channel") or "").strip()[:32],
            "q": (request.args.get("q") or "").strip()[:100]}


@bp.get("/")
@require("integration.admin")
def index():
    f = _filters()
    page = paginate(services.message_query(status=f["status"] or None, channel=f["channel"] or None,
                                           q=f["q"] or None))
    return render_template("outbox/index.html", page=page, filters=f, status_labels=OUTBOX_STATUS_LABELS,
                           counts=services.status_counts(), channels=services.known_channels(),
                           channel_labels=services.CHANNEL_LABELS, blocked=services.blocked_ids(page.items))


@bp.get("/<int:message_id>")
@require("integration.admin")
def detail(message_id: int):
    message = services.get_message(message_id)
    return render_template("outbox/detail.html", message=message, channel_labels=services.CHANNEL_LABELS,
                           blocked=services.blocked_ids([message]))


def _back() -> str:
    target = request.form.get("next") or ""
    if target.startswith("/admin/outbox") and not target.startswith("//"):
        return target
    return url_for("outbox.index")


@bp.post("/<int:message_id>/replay")
@require("integration.admin")
def replay(message_id: int):
    message = services.replay(message_id=message_id, actor=current_user)
    db.session.commit()
    flash(f"消息 {message.id} 已重新排队，将由后台任务发送", "success")
    return redirect(_back())


@bp.post("/dispatch")
@require("integration.admin")
def dispatch():
    result = services.dispatch_due(limit=100)
    db.session.commit()
    flash(f"本次发送：取出 {result['claimed']} 条，成功 {result['sent']} 条，待重试 {result['retried']} 条，"
          f"转死信 {result['dead']} 条，未配置接口 {result['not_configured']} 条", "success")
    return redirect(_back())
