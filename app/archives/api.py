"""JSON API: HR/HRP staff push (seed 000 §三 接口 1) and archive records for logged-in users."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request
from flask_login import current_user

from app.auth.access import api_auth
from app.auth.models import User
from app.db import db
from app.errors import NotFound, ValidationFailed

from . import hr, services
from .models import ArchiveRecord

bp = Blueprint("archives_api", __name__, url_prefix="/api/v1")


def _json_body() -> Any:
    body = request.get_json(silent=True)
    if body is None:
        raise ValidationFailed({"": "请求体应为 JSON"})
    return body


@bp.post("/hr/staff")
@api_auth("archives.manage")
def hr_staff() -> Any:
    """Body: {"staff": [{"staff_no", "name", "dept_code", "title", "phone", "id_number", "hire_date", "status",
    "departure_date"}, ...]} (or the list itself; status optional: 在职/离职/退休/辞退 or
    active/resigned/retired/dismissed, a departure is flagged to 医务处, never applied; departure_date optional,
    "2024-05-01", kept with the flag). Returns the batch summary and every rejected row with field paths."""
    body = _json_body()
    rows = body.get("staff") if isinstance(body, dict) else body
    if not isinstance(rows, list):
        raise ValidationFailed({"staff": "staff 应为人员数组"})
    actor: Any = f"{g.api_system}（接口）" if g.api_system else current_user
    batch = hr.import_rows(rows=rows, actor=actor, source="api", system=g.api_system)
    db.session.commit()
    return {
        "batch_id": batch.id, "total": batch.total, "created": batch.created_count,
        "unchanged": batch.unchanged_count, "diffs": batch.diff_count, "rejected": batch.rejected_count,
        "rows": batch.report,
    }


def _staff(user_id: int) -> User:
    staff = db.session.get(User, user_id)
    if staff is None:
        raise NotFound("人员不存在")
    services.ensure_can_view(current_user, staff)
    return staff


def _record_out(row: ArchiveRecord, staff: User) -> dict[str, Any]:
    data = dict(row.data)
    for name in services.SENSITIVE_FIELDS.get(row.section, ()):
        if name in data:
            data[name] = services.shown_id_number(current_user, staff, data[name])
    return {"id": row.id, "entry_id": row.entry_id, "section": row.section, "version": row.version,
            "action": row.action, "status": str(row.status), "data": data, "instance_id": row.instance_id}


@bp.get("/archives/<int:user_id>")
@api_auth(allow_token=False)
def archive(user_id: int):
    staff = _staff(user_id)
    profile = services.get_profile(staff)
    sections: dict[str, list[dict[str, Any]]] = {}
    for key in services.RECORD_SECTIONS:
        sections[key] = [_record_out(v.shown, staff) for v in services.section_entries(staff=staff, section_key=key)]
    return {"user_id": staff.id, "name": staff.name, "staff_no": staff.staff_no,
            "completeness": profile.completeness if profile else None,
            "missing": list(profile.missing or []) if profile else [],
            "profile": {k: (services.shown_id_number(current_user, staff, v) if k == "id_number" else v)
                        for k, v in services.profile_data(staff).items()},
            "sections": sections}


@bp.post("/archives/<int:user_id>/sections/<section_key>")
@api_auth(allow_token=False)
def add_record(user_id: int, section_key: str):
    """Add a record: {"data": {...}, "reason": "..."}; 201 with the version (effective or pending)."""
    staff = _staff(user_id)
    if section_key not in services.RECORD_SECTIONS and section_key != services.PROFILE:
        raise NotFound("档案栏目不存在")
    body = _json_body()
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise ValidationFailed({"data": "data 应为对象"})
    row = services.submit_change(staff=staff, section_key=section_key, actor=current_user, data=data,
                                 reason=body.get("reason"))
    db.session.commit()
    return _record_out(row, staff), 201


@bp.put("/archives/<int:user_id>/entries/<int:entry_id>")
@api_auth(allow_token=False)
def update_record(user_id: int, entry_id: int):
    staff = _staff(user_id)
    entry = services.get_entry(entry_id=entry_id, staff=staff)
    body = _json_body()
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise ValidationFailed({"data": "data 应为对象"})
    row = services.submit_change(staff=staff, section_key=entry.section, actor=current_user, data=data,
                                 entry_id=entry.id, reason=body.get("reason"))
    db.session.commit()
    return _record_out(row, staff)
