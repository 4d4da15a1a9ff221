"""Fixtures for the forms domain: a leave-request form covering every field kind, and a forms/ directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.forms.services import FormDef

LEAVE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "请假申请",
    "type": "object",
    "required": ["reason", "days", "start", "kind"],
    "properties": {
        "reason": {"type": "string", "title": "请假事由", "minLength": 2, "maxLength": 500},
        "days": {"type": "integer", "title": "天数", "minimum": 1, "maximum": 30},
        "hours": {"type": "number", "title": "折合小时", "exclusiveMinimum": 0},
        "start": {"type": "string", "format": "date", "title": "开始日期"},
        "kind": {"type": "string", "title": "类别",
                 "oneOf": [{"const": "sick", "title": "病假"}, {"const": "annual", "title": "年假"}]},
        "shift": {"type": "string", "title": "班次", "enum": ["day", "night"], "enumNames": ["白班", "夜班"]},
        "notify": {"type": "array", "title": "通知对象", "uniqueItems": True, "minItems": 1,
                   "items": {"type": "string", "enum": ["科主任", "护士长", "医务处"]}},
        "urgent": {"type": "boolean", "title": "是否紧急"},
        "email": {"type": "string", "format": "email", "title": "电子邮箱"},
        "mobile": {"type": "string", "title": "手机号", "pattern": "^1[3-9]\\d{9}$"},
        "contact": {"type": "object", "title": "代班人", "required": ["name"],
                    "properties": {"name": {"type": "string", "title": "姓名"},
                                   "ward": {"type": "integer", "title": "病区"}}},
        "items": {"type": "array", "title": "交接事项",
                  "items": {"type": "object", "required": ["code"],
                            "properties": {"code": {"type": "string", "title": "编码"}}}},
    },
}

LEAVE_UI = {
    "ui:order": ["kind", "reason", "*"],
    "reason": {"ui:widget": "textarea", "ui:help": "写明事由", "ui:placeholder": "如：发热"},
}


@pytest.fixture
def leave_form() -> FormDef:
    return FormDef(key="example_leave", version=1, schema=json.loads(json.dumps(LEAVE_SCHEMA)),
                   ui=json.loads(json.dumps(LEAVE_UI)))


@pytest.fixture
def forms_dir(tmp_path: Path, app, monkeypatch) -> Path:
    """An empty forms/ directory that the app (get_form's fallback) reads instead of the shipped one."""
    d = tmp_path / "forms"
    d.mkdir()
    monkeypatch.setitem(app.config, "FORMS_DIR", str(d))
    return d


def write_form(directory: Path, key: str, schema: dict, ui: dict | None = None) -> None:
    (directory / f"{key}.json").write_text(json.dumps(schema, ensure_ascii=False), encoding="utf-8")
    if ui is not None:
        (directory / f"{key}.ui.json").write_text(json.dumps(ui, ensure_ascii=False), encoding="utf-8")
