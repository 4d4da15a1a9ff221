"""Audit recording.

Invariants: rows are only ever inserted; every service that changes business data calls `record`
in the same transaction as the change.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from sqlalchemy import inspect as sa_inspect

from app.audit.models import AuditLog
from app.db import db

ACTION_LABELS: dict[str, str] = {
    "auth.login": "登录",
    "auth.login_failed": "登录失败",
    "auth.logout": "退出",
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def snapshot(obj: Any) -> dict[str, Any]:
    """Column values of a model instance, JSON-ready (for before/after)."""
    mapper = sa_inspect(obj).mapper
    out = {}
    for col in mapper.column_attrs:
        key = col.key
        if key in ("password_hash",):
            continue
        out[key] = _jsonable(getattr(obj, key))
    return out


def _request_origin() -> tuple[str | None, str | None, str | None]:
    try:
        from flask import g, has_request_context

        if not has_request_context():
            return None, None, None
        from app.auth.access import client_address, client_terminal

        return client_address(), client_terminal(), getattr(g, "api_system", None)
    except Exception:  # noqa: BLE001 - auditing must never break the operation it records
        return None, None, None


def record(
    actor: Any, action: str, entity: Any = None, *, before: dict | None = None, after: dict | None = None,
    address: str | None = None, terminal: str | None = None, extra: dict | None = None,
    entity_type: str | None = None, entity_id: Any = None, **kwargs: Any,
) -> AuditLog:
    """Append one audit row (flushes with the caller's transaction)."""
    req_addr, req_term, system = _request_origin()
    if entity is not None and entity_type is None:
        entity_type = getattr(entity, "__tablename__", type(entity).__name__)
        entity_id = getattr(entity, "id", None)
    actor_id = getattr(actor, "id", None) if actor is not None and not isinstance(actor, str) else None
    actor_name = actor if isinstance(actor, str) else getattr(actor, "name", None) or system
    if kwargs:
        extra = {**(extra or {}), **kwargs}
    row = AuditLog(
        actor_id=actor_id, actor_name=actor_name, action=action, entity_type=entity_type,
        entity_id=str(entity_id) if entity_id is not None else None,
        address=address or req_addr, terminal=terminal or req_term,
        before=_jsonable(before), after=_jsonable(after), extra=_jsonable(extra),
    )
    db.session.add(row)
    return row


def dumps(value: Any) -> str:
    return json.dumps(_jsonable(value), ensure_ascii=False, indent=1)
