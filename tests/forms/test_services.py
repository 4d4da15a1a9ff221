"""Stored versions: syncing shipped files, loading a version, saving an admin version."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.errors import NotFound, ValidationFailed
from app.forms import services
from app.forms.models import FormTemplate
from tests.forms.conftest import LEAVE_SCHEMA, LEAVE_UI, write_form

SMALL = {"title": "小表单", "type": "object", "properties": {"a": {"type": "string", "title": "甲"}}}


def _count(db_session, key: str) -> int:
    return db_session.scalar(select(func.count()).select_from(FormTemplate).where(FormTemplate.key == key))


def test_sync_stores_each_new_file_once(db_session, forms_dir):
    write_form(forms_dir, "example_leave", LEAVE_SCHEMA, LEAVE_UI)
    write_form(forms_dir, "small", SMALL)
    assert services.sync_files(forms_dir) == 2
    assert services.sync_files(forms_dir) == 0
    form = services.get_form("example_leave")
    assert (form.version, form.ui) == (1, LEAVE_UI)
    row = db_session.scalar(select(FormTemplate).where(FormTemplate.key == "small"))
    assert row.source == "file" and row.created_by_id is None and len(row.checksum) == 64


def test_a_changed_file_or_ui_file_becomes_the_next_version(db_session, forms_dir):
    write_form(forms_dir, "small", SMALL)
    services.sync_files(forms_dir)
    write_form(forms_dir, "small", SMALL, {"ui:order": ["a"]})
    assert services.sync_files(forms_dir) == 1
    # reformatting the same content is not a change
    (forms_dir / "small.json").write_text(json.dumps(SMALL, indent=4, ensure_ascii=False), encoding="utf-8")
    assert services.sync_files(forms_dir) == 0
    assert services.get_form("small").version == 2
    assert services.get_form("small", 1).ui == {}


def test_sync_names_a_broken_file(db_session, forms_dir):
    (forms_dir / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValidationFailed) as exc:
        services.sync_files(forms_dir)
    assert "broken.json" in exc.value.message
    (forms_dir / "broken.json").write_text(json.dumps({"type": "object", "properties": {"x": {"type": "string"}}}),
                                           encoding="utf-8")
    with pytest.raises(ValidationFailed) as exc:
        services.sync_files(forms_dir)
    assert {"path": "x", "message": "字段“x”缺少中文名称（title）"} in exc.value.errors


def test_get_form_falls_back_to_the_shipped_file(db_session, forms_dir):
    write_form(forms_dir, "small", SMALL)
    form = services.get_form("small.json")
    assert (form.key, form.version, form.title) == ("small", 1, "小表单")
    assert _count(db_session, "small") == 1


def test_get_form_of_an_unknown_key_or_version_is_not_found(db_session, forms_dir):
    with pytest.raises(NotFound, match="表单 nothing 不存在"):
        services.get_form("nothing")
    write_form(forms_dir, "small", SMALL)
    with pytest.raises(NotFound, match="没有第 9 版"):
        services.get_form("small", 9)
    with pytest.raises(NotFound):
        services.get_form("../etc/passwd")


def test_saving_an_admin_version_stores_and_audits_it(db_session, forms_dir, user):
    write_form(forms_dir, "small", SMALL)
    services.sync_files(forms_dir)
    actor = user("flow")
    schema = dict(SMALL, properties={**SMALL["properties"], "b": {"type": "integer", "title": "乙"}})
    row = services.save_admin_version(key="small", schema=schema, ui={"ui:order": ["b", "a"]}, actor=actor,
                                      note="加字段乙")
    assert (row.version, row.source, row.created_by_id, row.note) == (2, "admin", actor.id, "加字段乙")
    assert services.get_form("small").schema == schema
    log = db_session.scalar(select(AuditLog).where(AuditLog.action == "form.version_saved"))
    assert log.actor_id == actor.id and log.entity_type == "form_templates" and log.entity_id == str(row.id)
    assert log.after["version"] == 2 and log.after["schema"] == schema and log.before["version"] == 1
    # the same content again is not a new version
    again = services.save_admin_version(key="small", schema=schema, ui={"ui:order": ["b", "a"]}, actor=actor)
    assert again.id == row.id and _count(db_session, "small") == 2
    # the shipped file stays overridden until it changes itself
    assert services.sync_files(forms_dir) == 0 and services.get_form("small").version == 2


@pytest.mark.parametrize(("schema", "path", "fragment"), [
    ({"title": "x", "type": "object", "properties": {"a": {"type": "text", "title": "甲"}}}, "properties/a/type",
     "不符合 JSON Schema 2020-12 规范"),
    ({"title": "x", "type": "object", "properties": {"a": {"type": "string"}}}, "a", "缺少中文名称"),
    ({"title": "x", "type": "object", "properties": {"g": {"type": "object", "title": "组", "properties": {
        "b": {"type": "string"}}}}}, "g/b", "缺少中文名称"),
    ({"title": "x", "type": "string"}, "", "根应为 object"),
    ({"type": "object", "properties": {"a": {"type": "string", "title": "甲"}}}, "title", "表单需要中文名称"),
    ({"title": "x", "type": "object", "properties": {"a": {"type": "string", "title": "甲", "pattern": "("}}},
     "properties/a/pattern", "不符合 JSON Schema 2020-12 规范"),
])
def test_invalid_admin_schemas_are_refused_in_chinese(db_session, user, schema, path, fragment):
    with pytest.raises(ValidationFailed) as exc:
        services.save_admin_version(key="bad_form", schema=schema, ui={}, actor=user("flow"), note=None)
    assert any(e["path"] == path and fragment in e["message"] for e in exc.value.errors), exc.value.errors
    assert _count(db_session, "bad_form") == 0


def test_a_bad_key_is_refused(db_session, user):
    with pytest.raises(ValidationFailed) as exc:
        services.save_admin_version(key="Bad-Key", schema=SMALL, ui={}, actor=user("flow"))
    assert exc.value.errors[0]["path"] == "key"
