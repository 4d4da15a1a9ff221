"""Notification list page."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from app.auth.access import require
from app.core.paging import paginate
from app.db import db
from app.notify import services
from app.notify.models import Notification

bp = Blueprint("notify", __name__, url_prefix="/notifications")


@bp.get("/")
@require()
def index():
    stmt = select(Notification).where(Notification.user_id == current_user.id).order_by(Notification.id.desc())
    if request.args.get("unread"):
        stmt = stmt.where(Notification.read_at.is_(None))
    return render_template("notify/index.html", page=paginate(stmt))


@bp.post("/read")
@require()
def read():
    nid = request.form.get("id", type=int)
    services.mark_read(user_id=current_user.id, notification_id=nid)
    db.session.commit()
    target = request.form.get("next")
    if target and target.startswith("/") and not target.startswith("//"):
        return redirect(target)
    return redirect(url_for("notify.index"))
