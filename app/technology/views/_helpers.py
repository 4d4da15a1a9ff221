"""Small helpers for the technology pages: query-string numbers and dates, Excel responses, error maps."""

from __future__ import annotations

from datetime import date
from io import BytesIO

from flask import request, send_file

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
