"""Admin pages: list, editor (add/remove/reorder/required), versions, preview; permission and CSRF."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.forms import services
from app.forms.models import FormTemplate
from tests.forms.conftest import LEAVE_SCHEMA, LEAVE_UI, write_form

ROW_KEYS = ("name", "title", "type", "required", "format", "options", "min", "max", "help", "raw", "keep")


def _table(rows: list[dict], *, token: str, action: str = "save", base_version: int = 0, **top) -> dict:
    data = {"csrf_token": token, "action": action, "row_count": str(len(rows)), "base_version": str(base_version),
            "title": top.pop("title", "出差申请"), **top}
    for i, row in enumerate(rows):
        for k in ROW_KEYS:
            value = row.get(k, "")
            if k == "required":
                if value:
                    data[f"fields-{i}-required"] = "1"
                continue
            data[f"fields-{i}-{k}"] = value
    return data


def _rows_from_page(html: str) -> list[dict]:
    """The editor table as the browser would post it back."""
    count = int(re.search(r'name="row_count" value="(\d+)"', html).group(1))
    rows = []
    for i in range(count):
        row: dict = {}
        for k in ("name", "title", "min", "max", "help", "keep"):
            m = re.search(rf'name="fields-{i}-{k}" value="([^"]*)"', html)
            row[k] = m.group(1).replace("&#34;", '"').replace("&amp;", "&") if m else ""
        for k in ("type", "format"):
            m = re.search(rf'name="fields-{i}-{k}".*?<option value="([^"]*)" selected', html, re.S)
            row[k] = m.group(1) if m else ""
        for k in ("options", "raw"):
            m = re.search(rf'name="fields-{i}-{k}"[^>]*>(.*?)</textarea>', html, re.S)
            row[k] = m.group(1).replace("&#34;", '"') if m else ""
        row["required"] = bool(re.search(rf'name="fields-{i}-required" value="1" checked', html))
        rows.append(row)
    return rows


TRIP = [
    {"name": "city", "title": "目的地", "type": "text", "required": True, "min": "2", "max": "20"},
    {"name": "days", "title": "天数", "type": "integer", "required": True, "min": "1", "max": "30"},
    {"name": "kind", "title": "类别", "type": "radio", "options": "meeting|学术会议\ntraining|进修"},
    {"name": "notify", "title": "通知对象", "type": "multi", "options": "科主任\n医务处"},
    {"name": "start", "title": "出发日期", "type": "date"},
    {"name": "idno", "title": "身份证号", "type": "text", "format": "idcard"},
    {"name": "remark", "title": "备注", "type": "textarea", "help": "可不填"},
    {"name": "paid", "title": "是否报销", "type": "boolean"},
]


def _versions(db_session, key: str) -> list[FormTemplate]:
    return list(db_session.scalars(select(FormTemplate).where(FormTemplate.key == key)
                                   .order_by(FormTemplate.version)))


def test_a_physician_is_refused_every_page(client, login, db_session, forms_dir):
    token = login("gs_doc")
    assert client.get("/admin/forms/").status_code == 403
    assert client.get("/admin/forms/trip/edit").status_code == 403
    resp = client.post("/admin/forms/trip/edit", data=_table(TRIP, token=token))
    assert resp.status_code == 403
    assert _versions(db_session, "trip") == []


def test_anonymous_users_are_sent_to_login(client):
    resp = client.get("/admin/forms/")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_the_list_shows_latest_versions_searches_and_pages(client, login, db_session, forms_dir):
    login("flow")
    html = client.get("/admin/forms/?q=zzz_nothing").get_data(as_text=True)
    assert "没有符合条件的表单模板" in html
    write_form(forms_dir, "example_leave", LEAVE_SCHEMA, LEAVE_UI)
    services.sync_files(forms_dir)
    services.save_admin_version(key="example_leave", schema=dict(LEAVE_SCHEMA, title="请假申请（新）"),
                                ui=LEAVE_UI, actor=None, note="改名")
    for i in range(3):
        services.save_admin_version(key=f"zz_form_{i}", schema={"title": f"第{i}张", "type": "object",
                                                                "properties": {}}, ui={}, actor=None)
    db_session.flush()
    html = client.get("/admin/forms/?q=请假").get_data(as_text=True)
    assert "example_leave" in html and "请假申请（新）" in html and "第 2 版" in html
    assert "zz_form_0" not in html
    page = client.get("/admin/forms/?q=zz_form&per_page=2").get_data(as_text=True)
    assert "共 3 条" in page and "zz_form_1" in page and "zz_form_2" not in page and 'rel="next"' in page
    assert "表单模板" in client.get("/notifications/").get_data(as_text=True)  # the nav entry


def test_the_editor_saves_a_new_form_as_version_one(client, login, db_session, forms_dir, user):
    token = login("flow")
    page = client.get("/admin/forms/new?key=trip")
    assert page.status_code == 302 and page.headers["Location"].endswith("/admin/forms/trip/edit")
    assert "新表单" in client.get("/admin/forms/trip/edit").get_data(as_text=True)
    resp = client.post("/admin/forms/trip/edit", data=_table(TRIP, token=token, note="首版"))
    assert resp.status_code == 302, resp.get_data(as_text=True)
    [row] = _versions(db_session, "trip")
    assert (row.version, row.source, row.created_by_id, row.note) == (1, "admin", user("flow").id, "首版")
    schema, ui = row.schema, row.ui_schema
    assert schema["title"] == "出差申请" and schema["required"] == ["city", "days"]
    assert ui["ui:order"] == [r["name"] for r in TRIP]
    p = schema["properties"]
    assert p["city"] == {"title": "目的地", "type": "string", "minLength": 2, "maxLength": 20}
    assert p["days"] == {"title": "天数", "type": "integer", "minimum": 1, "maximum": 30}
    assert p["kind"]["oneOf"] == [{"const": "meeting", "title": "学术会议"}, {"const": "training", "title": "进修"}]
    assert p["notify"]["items"] == {"type": "string", "enum": ["科主任", "医务处"]}
    assert p["start"]["format"] == "date" and p["paid"]["type"] == "boolean"
    assert p["idno"]["pattern"].startswith("^[1-9]")
    assert ui["remark"] == {"ui:widget": "textarea", "ui:help": "可不填"}
    detail = client.get("/admin/forms/trip/").get_data(as_text=True)
    assert "已保存为第 1 版" in detail and "流程管理员" in detail and "首版" in detail
    assert db_session.scalar(select(func.count()).select_from(AuditLog)
                             .where(AuditLog.action == "form.version_saved", AuditLog.entity_id == str(row.id))) == 1
    # the saved form works end to end
    form = services.get_form("trip")
    bad = services.validation_errors(form, services.parse_submission(form, {"city": "京", "days": "x",
                                                                            "idno": "123"}))
    assert {e["path"]: e["message"] for e in bad} == {
        "city": "“目的地”至少 2 个字符", "days": "“天数”应为整数", "idno": "身份证号格式不正确（18 位，末位可为 X）"}


def test_the_editor_round_trips_and_saves_add_remove_reorder_required(client, login, db_session, forms_dir):
    token = login("flow")
    client.post("/admin/forms/trip/edit", data=_table(TRIP, token=token))
    page = client.get("/admin/forms/trip/edit").get_data(as_text=True)
    rows = _rows_from_page(page)
    assert [r["name"] for r in rows] == [r["name"] for r in TRIP]
    assert rows[2]["options"] == "meeting|学术会议\ntraining|进修" and rows[5]["format"] == "idcard"
    # saving the untouched table changes nothing
    client.post("/admin/forms/trip/edit", data=_table(rows, token=token, base_version=1))
    assert len(_versions(db_session, "trip")) == 1
    # buttons: add a row, move "days" up, remove "remark" -- all without saving
    html = client.post("/admin/forms/trip/edit",
                       data=_table(rows, token=token, action="add", base_version=1)).get_data(as_text=True)
    rows = _rows_from_page(html)
    assert len(rows) == len(TRIP) + 1 and rows[-1]["name"] == ""
    rows = _rows_from_page(client.post("/admin/forms/trip/edit", data=_table(
        rows, token=token, action="up:1", base_version=1)).get_data(as_text=True))
    assert [r["name"] for r in rows[:2]] == ["days", "city"]
    rows = _rows_from_page(client.post("/admin/forms/trip/edit", data=_table(
        rows, token=token, action="remove:6", base_version=1)).get_data(as_text=True))
    assert "remark" not in [r["name"] for r in rows]
    assert len(_versions(db_session, "trip")) == 1
    rows[-1].update(name="budget", title="预算（元）", type="number", min="0")
    rows[1]["required"] = False  # city
    rows[3]["required"] = True  # notify
    resp = client.post("/admin/forms/trip/edit", data=_table(rows, token=token, base_version=1, note="调整"))
    assert resp.status_code == 302
    v2 = _versions(db_session, "trip")[-1]
    assert v2.version == 2
    assert v2.ui_schema["ui:order"] == ["days", "city", "kind", "notify", "start", "idno", "paid", "budget"]
    assert v2.schema["required"] == ["days", "notify"]
    assert v2.schema["properties"]["budget"] == {"title": "预算（元）", "type": "number", "minimum": 0}
    assert "remark" not in v2.schema["properties"] and "remark" not in v2.ui_schema


def test_a_bad_editor_submission_changes_nothing(client, login, db_session, forms_dir):
    token = login("flow")
    client.post("/admin/forms/trip/edit", data=_table(TRIP, token=token))
    bad = [
        {"name": "city", "title": "目的地", "type": "text"},
        {"name": "city", "title": "城市", "type": "text"},
        {"name": "2nd", "title": "第二", "type": "text"},
        {"name": "kind", "title": "", "type": "radio", "options": ""},
        {"name": "days", "title": "天数", "type": "integer", "min": "5", "max": "1"},
        {"name": "n", "title": "人数", "type": "integer", "min": "1.5", "max": "多"},
    ]
    resp = client.post("/admin/forms/trip/edit", data=_table(bad, token=token, base_version=1))
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400
    assert "字段名“city”与第 1 行重复" in html
    assert "字段名只能用英文字母、数字和下划线" in html
    assert "请填写中文名称" in html and "请填写选项，每行一个" in html
    assert "最大值不能小于最小值" in html and "请填写整数" in html and "请填写数字" in html
    assert html.count('class="field-error"') == 7
    assert 'value="城市"' in html  # the table comes back as typed
    assert [v.version for v in _versions(db_session, "trip")] == [1]
    empty = client.post("/admin/forms/trip/edit", data=_table([], token=token, base_version=1, title=""))
    assert empty.status_code == 400 and "表单至少需要一个字段" in empty.get_data(as_text=True)
    assert "请填写表单名称" in empty.get_data(as_text=True)
    assert [v.version for v in _versions(db_session, "trip")] == [1]


def test_a_stale_editor_cannot_overwrite_a_newer_version(client, login, db_session, forms_dir):
    token = login("flow")
    client.post("/admin/forms/trip/edit", data=_table(TRIP, token=token))
    client.post("/admin/forms/trip/edit", data=_table(TRIP[:3], token=token, base_version=1))
    resp = client.post("/admin/forms/trip/edit", data=_table(TRIP[:2], token=token, base_version=1))
    assert resp.status_code == 409 and "已有人保存为第 2 版" in resp.get_data(as_text=True)
    assert len(_versions(db_session, "trip")) == 2


def test_the_editor_keeps_what_its_table_cannot_show(client, login, db_session, forms_dir):
    write_form(forms_dir, "example_leave", LEAVE_SCHEMA, LEAVE_UI)
    token = login("flow")
    page = client.get("/admin/forms/example_leave/edit").get_data(as_text=True)
    rows = _rows_from_page(page)
    types = {r["name"]: r["type"] for r in rows}
    assert types["contact"] == "raw" and types["items"] == "raw" and types["hours"] == "raw"
    assert types["kind"] == "radio" and types["notify"] == "multi" and types["shift"] == "radio"
    # the mobile-number rule is one the table knows: it shows as 文本 + 手机号
    assert types["mobile"] == "text" and next(r for r in rows if r["name"] == "mobile")["format"] == "mobile"
    rows[1]["help"] = "写明事由和就诊医院"
    resp = client.post("/admin/forms/example_leave/edit", data=_table(rows, token=token, base_version=1,
                                                                      title="请假申请"))
    assert resp.status_code == 302, resp.get_data(as_text=True)[:2000]
    new = services.get_form("example_leave")
    assert new.version == 2
    for name in ("contact", "items", "hours", "kind", "notify", "days", "start", "urgent", "email"):
        assert new.schema["properties"][name] == LEAVE_SCHEMA["properties"][name], name
    # non-standard enumNames come back as the standard oneOf const/title, with the same labels
    assert new.schema["properties"]["shift"]["oneOf"] == [{"const": "day", "title": "白班"},
                                                          {"const": "night", "title": "夜班"}]
    assert new.schema["properties"]["mobile"]["pattern"] == LEAVE_SCHEMA["properties"]["mobile"]["pattern"]
    assert sorted(new.schema["required"]) == sorted(LEAVE_SCHEMA["required"])
    assert new.ui["reason"] == {"ui:widget": "textarea", "ui:placeholder": "如：发热", "ui:help": "写明事由和就诊医院"}


def test_a_broken_raw_definition_is_shown_back(client, login, db_session, forms_dir):
    token = login("flow")
    rows = [{"name": "g", "title": "组", "type": "raw", "raw": '{"type": "object",'}]
    resp = client.post("/admin/forms/trip/edit", data=_table(rows, token=token))
    assert resp.status_code == 400 and "原定义不是合法的 JSON" in resp.get_data(as_text=True)
    rows[0]["raw"] = '{"type": "strin"}'
    resp = client.post("/admin/forms/trip/edit", data=_table(rows, token=token))
    assert resp.status_code == 400 and "不符合 JSON Schema 2020-12 规范" in resp.get_data(as_text=True)
    assert _versions(db_session, "trip") == []


def test_posting_without_a_csrf_token_is_refused(client, login, db_session, forms_dir):
    login("flow")
    data = _table(TRIP, token="")
    del data["csrf_token"]
    resp = client.post("/admin/forms/trip/edit", data=data)
    assert resp.status_code == 400 and "CSRF" in resp.get_data(as_text=True)
    assert _versions(db_session, "trip") == []


def test_preview_renders_any_version_and_checks_a_trial_fill(client, login, db_session, forms_dir):
    token = login("flow")
    client.post("/admin/forms/trip/edit", data=_table(TRIP, token=token))
    client.post("/admin/forms/trip/edit", data=_table(TRIP[:2], token=token, base_version=1))
    v1 = client.get("/admin/forms/trip/v1").get_data(as_text=True)
    assert 'name="remark"' in v1 and "第 1 版" in v1
    v2 = client.get("/admin/forms/trip/v2").get_data(as_text=True)
    assert 'name="remark"' not in v2 and 'id="f-city"' in v2
    assert client.get("/admin/forms/trip/v9").status_code == 404
    resp = client.post("/admin/forms/trip/v2", data={"csrf_token": token, "city": "<b>京", "days": "abc"})
    html = resp.get_data(as_text=True)
    assert '<div class="form-field has-error" data-field="days">' in html
    assert "“天数”应为整数" in html and "&lt;b&gt;京" in html and "<b>京" not in html
    ok = client.post("/admin/forms/trip/v2", data={"csrf_token": token, "city": "北京", "days": "3"})
    assert "校验通过" in ok.get_data(as_text=True) and "&#34;days&#34;: 3" in ok.get_data(as_text=True)
    assert len(_versions(db_session, "trip")) == 2


def test_syncing_from_the_list_page(client, login, db_session, forms_dir):
    token = login("flow")
    write_form(forms_dir, "example_leave", LEAVE_SCHEMA, LEAVE_UI)
    resp = client.post("/admin/forms/sync", data={"csrf_token": token}, follow_redirects=True)
    assert "已从 forms/ 目录同步 1 个新版本" in resp.get_data(as_text=True)
    assert len(_versions(db_session, "example_leave")) == 1
