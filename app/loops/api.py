"""Closed-loop integration API: loop types, event intake, an order's loop."""

from __future__ import annotations

from flask import Blueprint, request

from app.auth.access import api_auth
from app.db import db
from app.errors import NotFound, ValidationFailed
from app.loops import services, tasks

bp = Blueprint("loops_api", __name__, url_prefix="/api/v1")


@bp.get("/loop-types")
@api_auth("loops.view")
def loop_types():
    """Loop types with their nodes and data fields; ?campus=<code> for the versions in force at a campus."""
    return {"loop_types": services.loop_types_out(request.args.get("campus"))}


@bp.post("/loop-events")
@api_auth("loops.admin")
def loop_events():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationFailed({"": "请求体应为 JSON 对象：{\"events\": [...]}"})
    results = services.intake(events=body.get("events"), channel="rest")
    db.session.commit()  # durable before the answer
    tasks.wake()
    counts = {k: sum(1 for r in results if r["status"] == k) for k in ("accepted", "duplicate", "rejected")}
    return {"results": results, **counts}


@bp.get("/orders/<order_no>/loop")
@api_auth("loops.view")
def order_loop(order_no: str):
    out = services.order_loop(order_no)
    if out is None:
        raise NotFound(f"未找到医嘱 {order_no} 的闭环记录", order_no=order_no)
    return out
