"""/api/v1/technology: day-surgery cases from hospital systems (Bearer token) and the quality indicators."""

from __future__ import annotations

from datetime import date, timedelta

from flask import Blueprint, g, request
from flask_login import current_user

from app.auth.access import api_auth
from app.db import db
from app.errors import ValidationFailed
from app.technology.services import day_surgery as services
from app.technology.services.common import today

bp = Blueprint("technology_api", __name__, url_prefix="/api/v1/technology")


def _case_out(row, created: bool) -> dict:
    return {"id": row.id, "external_id": row.external_id, "source_system": row.source_system,
            "status": "created" if created else "duplicate", "voided": row.voided_at is not None,
            "surgeon_qualified": row.is_surgeon_qualified}


@bp.post("/day-surgery/cases")
@api_auth("technology.day_surgery")
def post_cases():
    """One case object, or {"cases": [...]} (all or nothing). Idempotent per (source system, external_id)."""
    body = request.get_json(silent=True)
    system = g.api_system
    actor = None if system else current_user._get_current_object()
    source = system or "manual"
    if isinstance(body, dict) and "cases" in body:
        results = services.record_cases(items=body["cases"], source_system=source, actor=actor)
    elif isinstance(body, dict):
        results = [services.record_case(data=body, actor=actor, source_system=source)]
    else:
        raise ValidationFailed({"": "请求体应为 JSON 对象（单条病例）或 {\"cases\": [...]}"})
    db.session.commit()
    created = any(c for _r, c in results)
    return {"results": [_case_out(r, c) for r, c in results]}, 201 if created else 200


def _date(name: str, default: date) -> date:
    raw = (request.args.get(name) or "").strip()
    if not raw:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise ValidationFailed({name: "日期格式应为 YYYY-MM-DD"}) from exc


@bp.get("/day-surgery/indicators")
@api_auth("technology.view")
def get_indicators():
    end = _date("end", today())
    start = _date("start", end - timedelta(days=89))
    dept = request.args.get("dept_id", "")
    if dept and not dept.isdigit():
        raise ValidationFailed({"dept_id": "科室编号应为整数"})
    viewer = None if g.api_system else current_user._get_current_object()
    f = services.indicators(viewer=viewer, start=start, end=end, dept_id=int(dept) if dept else None)
    f["start"], f["end"] = f["start"].isoformat(), f["end"].isoformat()
    f["per_grade"] = {str(k): v for k, v in f["per_grade"].items()}
    return f
