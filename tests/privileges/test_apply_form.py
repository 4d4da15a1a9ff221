"""The privilege application and the emergency grant forms come from office-editable JSON Schema templates
(`privilege_apply`, `privilege_emergency`): the free fields render from the template (the item selection stays the
catalogue table with its eligibility marks), bad input is one 400 naming every field path in Chinese with nothing
written, a field the office adds is asked, checked, stored in form_data with the template version and shown on the
detail pages, and the fields kept in the rows' own columns are locked in the editor."""

from __future__ import annotations

import html as htmllib
import re
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from app.errors import ValidationFailed
from app.forms import editor
from app.forms import start as start_forms
from app.privileges import services
from app.privileges.models import EmergencyGrant, PrivilegeApplication
from tests.forms.helpers import add_field, field_error, page_text


def _count(db_session, model) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


def _latest(db_session, model):
    return db_session.scalars(select(model).order_by(model.id.desc())).first()


# ---------------------------------------------------------------- 申请医疗权限


def test_apply_page_renders_the_free_fields_from_the_template_around_the_catalogue(client, login, item, user,
                                                                                    db_session):
    login("gs_doc")
    page = client.get("/privileges/apply", query_string={"category": "basic"}).get_data(as_text=True)
    form = start_forms.start_form("privilege_apply")
    assert 'data-form="privilege_apply"' in page and 'id="apply-form" novalidate' in page
    assert form.schema["description"] in page
    assert re.search(r'<textarea[^>]*name="reason"', page) and "申请理由" in page
    assert "说明工作需要、已完成的培训与例数等" in page  # the template's placeholder
    # the item selection is still the catalogue with eligibility marks, never a template box
    assert f'type="checkbox" name="item_ids" value="{item("BASIC-DIAG").id}"' in page and "✓" in page
    assert not re.search(r'<(textarea|select)[^>]*name="item_ids"', page)
    # the office-only override is a template field, kept from physicians
    assert "医务处特批理由" not in page and 'name="override_reason"' not in page
    # 医务处 staff who also apply (a physician role besides the office's) see it
    from app.auth.models import Role, UserRole

    mao = user("mao")
    physician = db_session.scalar(select(Role).where(Role.code == "physician"))
    db_session.add(UserRole(user_id=mao.id, role_id=physician.id, scope="self"))
    db_session.flush()
    mao.__dict__.pop("_perm_cache", None)
    login("mao")
    page = client.get("/privileges/apply").get_data(as_text=True)
    assert re.search(r'<textarea[^>]*name="override_reason"', page) and "医务处特批理由" in page


def test_bad_application_is_one_400_naming_each_field_and_writes_nothing(client, login, db_session, item):
    token = login("gs_doc")
    before = _count(db_session, PrivilegeApplication)
    diag = item("BASIC-DIAG")
    resp = client.post("/privileges/apply", data={"csrf_token": token, "item_ids": ["abc", "99999999", str(diag.id)],
                                                  "reason": "x" * 2001})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 400
    assert _count(db_session, PrivilegeApplication) == before
    expected = {"item_ids/0": "“授权项目”应为整数", "item_ids/1": "授权项目不存在", "reason": "“申请理由”最多 2000 个字符"}
    for path, message in expected.items():
        assert f"<code>{path}</code>：{message}" in htmllib.unescape(page), path
    assert field_error(page, "reason") == "“申请理由”最多 2000 个字符"
    assert "x" * 2001 in page  # what was typed is shown back
    assert re.search(rf'value="{diag.id}"[^>]*checked', page)  # and the ticked item stays ticked
    # nothing ticked and no reason: the template's required fields
    resp = client.post("/privileges/apply", data={"csrf_token": token, "reason": " "})
    page = htmllib.unescape(resp.get_data(as_text=True))
    assert resp.status_code == 400
    assert "<code>item_ids</code>：“授权项目”为必填项" in page and "<code>reason</code>：“申请理由”为必填项" in page


def test_the_service_checks_a_dict_the_same_way(user, db_session):
    with pytest.raises(ValidationFailed) as err:
        services.create_application(applicant=user("gs_doc"), data={"item_ids": [], "reason": 5})
    assert {e["path"]: e["message"] for e in err.value.errors} == {
        "item_ids": "“授权项目”为必填项", "reason": "“申请理由”应为文本"}
    with pytest.raises(ValidationFailed) as err:  # the override stays the office's, whatever the template says
        services.create_application(applicant=user("gs_doc"), item_ids=[1], reason="x", override_reason="y" * 501)
    assert {e["path"]: e["message"] for e in err.value.errors}["override_reason"] == "“医务处特批理由”最多 500 个字符"


def test_a_field_the_office_adds_to_the_application_is_asked_checked_stored_and_shown(
        app, client, login, db_session, user, item, fake_start):
    first = start_forms.start_form("privilege_apply")
    token = login("gs_doc")
    resp = client.post("/privileges/apply", data={"csrf_token": token, "item_ids": [str(item("BASIC-DIAG").id)],
                                                  "reason": "门诊诊疗需要"})
    assert resp.status_code == 302, page_text(resp.get_data(as_text=True))[:2000]
    old = _latest(db_session, PrivilegeApplication)
    assert (old.form_version, old.form_data) == (first.version, {})
    assert "其他申请信息" not in client.get(f"/privileges/applications/{old.id}").get_data(as_text=True)

    mao = user("mao")
    add_field("privilege_apply", mao, name="training", title="相关培训", type="radio", required=True,
              options="none|未参加\nprovincial|省级进修", help="按培训证明填写")
    add_field("privilege_apply", mao, name="cases_done", title="已完成例数", type="integer", min="0", max="10000")
    latest = start_forms.start_form("privilege_apply")
    assert latest.version > first.version

    page = client.get("/privileges/apply").get_data(as_text=True)
    assert "相关培训" in page and "省级进修" in page and "按培训证明填写" in page and "已完成例数" in page
    good = {"csrf_token": token, "item_ids": [str(item("BASIC-RX").id)], "reason": "门诊处方需要"}
    before = _count(db_session, PrivilegeApplication)
    resp = client.post("/privileges/apply", data={**good, "cases_done": "很多"})
    page = htmllib.unescape(resp.get_data(as_text=True))
    assert resp.status_code == 400 and _count(db_session, PrivilegeApplication) == before
    assert "<code>training</code>：“相关培训”为必填项" in page and "<code>cases_done</code>：“已完成例数”应为整数" in page
    assert field_error(resp.get_data(as_text=True), "cases_done") == "“已完成例数”应为整数"

    resp = client.post("/privileges/apply", data={**good, "training": "provincial", "cases_done": "30"})
    assert resp.status_code == 302, page_text(resp.get_data(as_text=True))[:2000]
    row = _latest(db_session, PrivilegeApplication)
    assert row.id != old.id and row.reason == "门诊处方需要" and [ai.item.code for ai in row.items] == ["BASIC-RX"]
    assert (row.form_version, row.form_data) == (latest.version, {"training": "provincial", "cases_done": 30})

    detail = client.get(f"/privileges/applications/{row.id}").get_data(as_text=True)
    assert 'id="form-extras"' in detail
    extras = page_text(detail[detail.index('id="form-extras"'):])
    assert "相关培训" in extras and "省级进修" in extras and "已完成例数" in extras and "30" in extras
    # the reviewers' task context shows them too
    from app.privileges import flow

    with app.test_request_context():
        context = str(flow.render_context(SimpleNamespace(id=row.instance_id, business_key=row.number)))
    assert "省级进修" in context
    # the earlier application still shows its own (shipped) version: no extra fields
    assert 'id="form-extras"' not in client.get(f"/privileges/applications/{old.id}").get_data(as_text=True)


# ---------------------------------------------------------------- 紧急授权


def test_emergency_form_renders_from_its_template(client, login):
    login("mao")
    page = client.get("/privileges/manage/emergency/new").get_data(as_text=True)
    form = start_forms.start_form("privilege_emergency")
    assert 'data-form="privilege_emergency"' in page and "novalidate" in page
    for prop in form.schema["properties"].values():
        assert prop["title"] in page
    assert re.search(r'name="hours"[^>]*value="24"|value="24"[^>]*name="hours"', page)  # the template's default
    assert "1–72 小时" in page


def test_emergency_service_refuses_every_problem_at_once(db_session, user, fake_start):
    before = _count(db_session, EmergencyGrant)
    with pytest.raises(ValidationFailed) as err:
        services.grant_emergency(data={"staff_no": "D1003", "item_code": "", "hours": "abc", "reason": "x" * 2001},
                                 actor=user("mao"))
    assert {e["path"]: e["message"] for e in err.value.errors} == {
        "item_code": "“授权项目编码”为必填项", "hours": "“授权时长（小时）”应为整数",
        "reason": "“紧急授权理由”最多 2000 个字符"}
    with pytest.raises(ValidationFailed) as err:
        services.grant_emergency(data={"staff_no": "D1003", "item_code": "SP-ABX-3", "hours": 0, "reason": "抢救"},
                                 actor=user("mao"))
    assert {e["path"]: e["message"] for e in err.value.errors} == {"hours": "“授权时长（小时）”不能小于 1"}
    # the physician must be in the actor's privileges.manage scope (a business check, in the service): an office
    # role limited to 心内科 does not reach 普外科's 刘医生
    from app.auth.models import Role, UserRole

    head = user("card_head")
    office = db_session.scalar(select(Role).where(Role.code == "mao"))
    db_session.add(UserRole(user_id=head.id, role_id=office.id, scope="dept"))
    db_session.flush()
    db_session.expire(head, ["roles"])
    head.__dict__.pop("_perm_cache", None)
    with pytest.raises(ValidationFailed) as err:
        services.grant_emergency(data={"staff_no": "D1003", "item_code": "SP-ABX-3", "hours": 8, "reason": "抢救"},
                                 actor=head)
    assert {e["path"]: e["message"] for e in err.value.errors} == {"staff_no": "该医师不在您的管理范围内"}
    assert _count(db_session, EmergencyGrant) == before and fake_start == []


def test_a_field_the_office_adds_to_the_emergency_form_is_stored_and_shown(
        app, client, login, db_session, user, fake_start):
    first = start_forms.start_form("privilege_emergency")
    token = login("mao")
    good = {"csrf_token": token, "staff_no": "D1003", "item_code": "SP-ABX-3", "hours": "24",
            "reason": "抢救：重症肺炎，无高级职称医师在场", "patient_ref": "ZY0001"}
    add_field("privilege_emergency", user("mao"), name="approver", title="批准的院领导", type="text", required=True)
    latest = start_forms.start_form("privilege_emergency")
    assert latest.version > first.version
    assert "批准的院领导" in client.get("/privileges/manage/emergency/new").get_data(as_text=True)

    before = _count(db_session, EmergencyGrant)
    resp = client.post("/privileges/manage/emergency/new", data=good)
    page = htmllib.unescape(resp.get_data(as_text=True))
    assert resp.status_code == 400 and _count(db_session, EmergencyGrant) == before and fake_start == []
    assert "<code>approver</code>：“批准的院领导”为必填项" in page
    assert "重症肺炎" in page and 'value="ZY0001"' in page  # what was typed is shown back

    resp = client.post("/privileges/manage/emergency/new", data={**good, "approver": "李副院长"})
    assert resp.status_code == 302, page_text(resp.get_data(as_text=True))[:2000]
    row = _latest(db_session, EmergencyGrant)
    assert (row.hours, row.reason, row.patient_ref) == (24, "抢救：重症肺炎，无高级职称医师在场", "ZY0001")
    assert (row.form_version, row.form_data) == (latest.version, {"approver": "李副院长"})
    detail = client.get(f"/privileges/manage/grants/{row.grant_id}").get_data(as_text=True)
    assert 'id="form-extras"' in detail and "批准的院领导" in detail and "李副院长" in detail
    from app.privileges import admin

    with app.test_request_context():
        context = str(admin.render_emergency_context(SimpleNamespace(id=row.review_instance_id)))
    assert "李副院长" in context


def test_a_direct_emergency_grant_names_a_missing_physician_or_item(db_session, user, item, fake_start):
    with pytest.raises(ValidationFailed) as err:
        services.create_emergency_grant(holder=None, item=None, hours=8, reason="抢救", actor=user("mao"))
    assert {e["path"]: e["message"] for e in err.value.errors} == {"staff_no": "医师不存在",
                                                                  "item_code": "授权项目不存在"}
    emergency = services.create_emergency_grant(holder=user("gs_doc2"), item=item("SP-ABX-3"), hours=8,
                                                reason="抢救", actor=user("mao"))
    assert emergency.form_version == start_forms.start_form("privilege_emergency").version
    assert emergency.form_data == {}


# ---------------------------------------------------------------- locked system fields


@pytest.mark.parametrize("key,model", [("privilege_apply", PrivilegeApplication),
                                       ("privilege_emergency", EmergencyGrant)])
def test_the_system_fields_are_locked(key, model, user):
    form = start_forms.start_form(key)
    locked = [n for n in form.schema["properties"] if form.ui.get(n, {}).get("ui:locked")]
    assert set(form.schema["required"]) <= set(locked) and set(locked) == set(model.FORM_COLUMNS)
    state = editor.state_from_form(form.schema, form.ui, version=form.version)
    idx = next(i for i, r in enumerate(state.rows) if r.name == "reason")
    with pytest.raises(ValidationFailed) as err:
        editor.apply_action(state, f"remove:{idx}")
    assert "不能删除" in err.value.errors[0]["message"]
    optional = editor.state_from_form(form.schema, form.ui, version=form.version)
    optional.rows[idx].required = False
    with pytest.raises(ValidationFailed) as err:
        editor.save(key=key, state=optional, actor=user("mao"))
    assert "不能取消必填" in err.value.errors[0]["message"]
    assert start_forms.start_form(key).version == form.version
