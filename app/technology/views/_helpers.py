"""Small helpers for the technology pages: query-string numbers and dates, Excel responses, error maps."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from io import BytesIO
from typing import Any

from flask import flash, redirect, request, send_file

from app.errors import ValidationFailed

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def int_arg(name: str) -> int | None:
    value = request.args.get(name, "")
    return int(value) if value.isdigit() else None


def date_arg(name: str, default: date | None) -> date | None:
    raw = (request.args.get(name) or "").strip()
    if not raw:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise ValidationFailed({name: "日期格式应为 YYYY-MM-DD"}) from exc


def text_arg(name: str) -> str | None:
    return (request.args.get(name) or "").strip() or None


def xlsx(data: bytes, name: str):
    return send_file(BytesIO(data), as_attachment=True, download_name=name, mimetype=XLSX)


def error_map(exc: ValidationFailed) -> dict[str, str]:
    return {e["path"]: e["message"] for e in exc.errors}


def submit_application(*, apply: Callable[..., Any], form_key: str, page: Callable[..., Any],
                       done: Callable[[Any], tuple[str, str]]):
    """POST of an application form built from its JSON Schema template: the service checks and stores it (commit,
    flash, redirect to what `done(row)` returns as (message, url)); on ValidationFailed nothing is kept and the
    page comes back with the typed values and per-field errors (400)."""
    from flask_login import current_user

    from app.db import db
    from app.forms import start as start_forms

    try:
        row = apply(applicant=current_user, data=request.form)
    except ValidationFailed as exc:
        db.session.rollback()
        data = start_forms.coerce(start_forms.start_form(form_key), request.form)
        return page(data=data, errors=error_map(exc), status=400)
    db.session.commit()
    message, url = done(row)
    flash(message, "success")
    return redirect(url)
