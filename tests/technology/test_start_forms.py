"""The four technology application (start) forms come from office-editable JSON Schema templates: they render
from the template, bad input is refused per field in Chinese with nothing written, a field the office adds is
asked, checked, stored in form_data with the template version and shown read-only, and fields stored in the
application's own columns are locked against removal."""

from __future__ import annotations

import html as htmllib
import re
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

from app.errors import ValidationFailed
from app.forms import editor
from app.forms import services as forms
from app.forms import start as start_forms
from app.technology.models import (
    DaySurgeryApplication,
    DaySurgeryProcedure,
    DaySurgeryQualification,
    EthicsReview,
    NewTechProject,
    RestrictedApplication,
    RestrictedTechnology,
)
from tests.forms.helpers import add_field, page_text


@dataclass(frozen=True)
class Case:
    key: str
    url: str
    username: str
    model: type
    detail: str  # detail page URL with {id}


CASES = {
    "new_tech": Case("tech_new_apply", "/technology/new-tech/apply", "gs_doc", NewTechProject,
                     "/technology/new-tech/{id}"),
    "ethics": Case("tech_ethics_apply", "/technology/ethics/apply", "gs_doc", EthicsReview, "/technology/ethics/{id}"),
    "restricted": Case("tech_restricted_apply", "/technology/restricted/apply", "card_doc", RestrictedApplication,
                       "/technology/restricted/{id}"),
    "day_surgery": Case("tech_day_surgery_apply", "/technology/day-surgery/apply", "gs_doc", DaySurgeryApplication,
                        "/technology/day-surgery/applications/{id}"),
}


def _free_technology(db_session) -> RestrictedTechnology:
    """A catalogue technology without an open application from any department."""
    busy = select(RestrictedApplication.technology_id)
    return db_session.scalars(select(RestrictedTechnology).where(RestrictedTechnology.is_active.is_(True),
                                                                 RestrictedTechnology.id.not_in(busy))
                              .order_by(RestrictedTechnology.seq.desc())).first()


def _free_procedure(db_session, user_id: int) -> DaySurgeryProcedure:
    """An in-use catalogue procedure the user neither holds nor has applied for."""
    held = select(DaySurgeryQualification.procedure_id).where(DaySurgeryQualification.user_id == user_id)
    procs = db_session.scalars(select(DaySurgeryProcedure).where(DaySurgeryProcedure.is_active.is_(True),
                                                                 DaySurgeryProcedure.id.not_in(held))
                               .order_by(DaySurgeryProcedure.code)).all()
    pending = {int(i) for a in db_session.scalars(select(DaySurgeryApplication).where(
        DaySurgeryApplication.applicant_id == user_id)) for i in a.procedure_ids or []}
    return next(p for p in procs if p.id not in pending)


def _good(name: str, db_session, user) -> dict[str, Any]:
    """A valid form-encoded application of each kind."""
    if name == "new_tech":
        doc = user("gs_doc")
        return {"name": "经脐单孔腹腔镜胆囊切除术", "category": "surgery", "risk_level": "low",
                "description": "经脐单孔入路，术后瘢痕隐蔽", "expected_cases": "25", "dept_id": str(doc.dept_id),
                "lead_id": str(doc.id), "team": "陈医生 主治医师 术者", "ethics_required": "false"}
    if name == "ethics":
        return {"title": "围手术期镇痛方案的临床研究", "description": "随机对照，知情同意后入组"}
    if name == "restricted":
        return {"technology_id": str(_free_technology(db_session).id), "team": "孙医生\n赵主任",
                "conditions": "导管室 2 间，设备与团队符合管理规范"}
    return {"procedure_ids": str(_free_procedure(db_session, user("gs_doc").id).id),
            "reason": "近三年完成腹股沟疝修补 60 例，无严重并发症"}


def _count(db_session, model) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


@pytest.mark.parametrize("name", list(CASES))
def test_each_application_form_renders_from_its_template(name, client, login, db_session, user):
    case = CASES[name]
    login(case.username)
    resp = client.get(case.url)
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200
    form = start_forms.start_form(case.key)
    assert f'data-form="{case.key}"' in page and 'novalidate' in page
    for prop in form.schema["properties"].values():
        assert prop["title"] in page
    assert page.count('class="required"') >= len(form.schema["required"])
    if name == "new_tech":  # choices the template cannot hold come from the database
        assert user("gs_doc").dept.name in page and 'name="lead_id"' in page
        assert '<option value="surgery">手术（介入）技术</option>' in page
    elif name == "restricted":
        assert "异基因造血干细胞移植技术" in page
    elif name == "day_surgery":
        assert 'type="checkbox"' in page and 'name="procedure_ids"' in page


BAD = {
    "new_tech": ({"name": "", "category": "x", "risk_level": "high", "expected_cases": "abc"},
                 {"name": "“项目名称”为必填项", "expected_cases": "“预计年开展例数”应为整数",
                  "description": "“项目简介”为必填项", "ethics_required": "高风险项目须经伦理审查"}),
    "ethics": ({"title": "", "description": "x" * 4001},
               {"title": "“审查项目名称”为必填项", "description": "“审查内容简介”最多 4000 个字符"}),
    "restricted": ({"technology_id": "abc", "conditions": ""},
                   {"technology_id": "“限制类技术”应为整数", "conditions": "“人员、设备、设施条件说明”为必填项"}),
    "day_surgery": ({"reason": ""},
                    {"procedure_ids": "“日间手术术式”为必填项", "reason": "“申请理由”为必填项"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_400_with_chinese_field_errors_and_writes_nothing(name, client, login, db_session):
    case = CASES[name]
    token = login(case.username)
    before = _count(db_session, case.model)
    data, expected = BAD[name]
    resp = client.post(case.url, data={"csrf_token": token, **data})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 400
    for path, message in expected.items():
        assert f"<code>{path}</code>" in page, path  # the summary names the field path
        # and the message sits on the field itself
        field = re.search(rf'<div class="form-field has-error[^"]*"[^>]*data-field="{path}".*?'
                          rf'<div class="field-error" id="f-{path}-error" role="alert">([^<]*)</div>', page, re.S)
        assert field and message in htmllib.unescape(field.group(1)), (path, field and field.group(1))
    assert _count(db_session, case.model) == before
    # what was typed is shown back
    if name == "restricted":
        assert 'value="abc"' not in page  # a select keeps only catalogue choices
    if name == "ethics":
        assert "x" * 4001 in page


def test_services_refuse_the_same_way_without_a_page(user, db_session):
    from app.technology.services import day_surgery, ethics

    with pytest.raises(ValidationFailed) as err:
        ethics.apply(applicant=user("gs_doc"), data={"title": 12, "description": None})
    assert {e["path"]: e["message"] for e in err.value.errors} == {
        "title": "“审查项目名称”应为文本", "description": "“审查内容简介”为必填项"}
    with pytest.raises(ValidationFailed) as err:
        day_surgery.apply(applicant=user("gs_doc"), data={"procedure_ids": ["x"], "reason": "r"})
    assert [e["path"] for e in err.value.errors] == ["procedure_ids/0"]


@pytest.mark.parametrize("name", list(CASES))
def test_a_field_the_office_adds_is_asked_checked_stored_and_shown(name, client, login, db_session, user):
    case = CASES[name]
    first = start_forms.start_form(case.key)
    # an application on the shipped template has no extra fields
    token = login(case.username)
    resp = client.post(case.url, data={"csrf_token": token, **_good(name, db_session, user)})
    assert resp.status_code == 302, page_text(resp.get_data(as_text=True))[:2000]
    old = db_session.scalars(select(case.model).order_by(case.model.id.desc())).first()
    assert (old.form_version, old.form_data) == (first.version, {})
    assert "其他申请信息" not in client.get(case.detail.format(id=old.id)).get_data(as_text=True)

    saved = add_field(case.key, user("mao"), name="funding_source", title="经费来源", type="radio",
                      required=True, options="hospital|院内课题经费\nprovincial|省级课题经费", help="按立项文件填写")
    add_field(case.key, user("mao"), name="budget", title="预算（万元）", type="integer", min="0", max="1000")
    latest = start_forms.start_form(case.key)
    assert latest.version == saved.version + 1

    token = login(case.username)
    page = client.get(case.url).get_data(as_text=True)
    assert "经费来源" in page and "院内课题经费" in page and "按立项文件填写" in page and "预算（万元）" in page

    good = _good(name, db_session, user)
    before = _count(db_session, case.model)
    resp = client.post(case.url, data={"csrf_token": token, **good, "budget": "很多"})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 400 and _count(db_session, case.model) == before
    assert "“经费来源”为必填项" in page and "“预算（万元）”应为整数" in page
    assert "<code>funding_source</code>" in page and "<code>budget</code>" in page

    resp = client.post(case.url, data={"csrf_token": token, **good, "funding_source": "provincial", "budget": "12"})
    assert resp.status_code == 302, page_text(resp.get_data(as_text=True))[:2000]
    row = db_session.scalars(select(case.model).order_by(case.model.id.desc())).first()
    assert row.id != old.id
    assert row.form_version == latest.version
    assert row.form_data == {"funding_source": "provincial", "budget": 12}

    login("mao")
    detail = client.get(case.detail.format(id=row.id)).get_data(as_text=True)
    assert 'id="form-extras"' in detail
    extras = page_text(detail[detail.index('id="form-extras"'):])
    assert "经费来源" in extras and "省级课题经费" in extras and "预算（万元）" in extras and "12" in extras
    # the older application still shows its own (shipped) version: no extra fields
    assert 'id="form-extras"' not in client.get(case.detail.format(id=old.id)).get_data(as_text=True)


def test_extras_render_from_the_version_used_after_the_field_is_removed(client, login, db_session, user):
    from app.technology.services import ethics

    add_field("tech_ethics_apply", user("mao"), name="sponsor", title="资助方", type="text", required=True)
    review = ethics.apply(applicant=user("gs_doc"), data={"title": "研究 C", "description": "描述",
                                                           "sponsor": "省自然科学基金"})
    assert review.form_data == {"sponsor": "省自然科学基金"}
    form = forms.get_form("tech_ethics_apply")
    state = editor.state_from_form(form.schema, form.ui, version=form.version)
    state.rows = [r for r in state.rows if r.name != "sponsor"]  # an unlocked field may go
    editor.save(key="tech_ethics_apply", state=state, actor=user("mao"))
    assert "sponsor" not in start_forms.start_form("tech_ethics_apply").schema["properties"]
    login("mao")
    page = client.get(f"/technology/ethics/{review.id}").get_data(as_text=True)
    assert "资助方" in page and "省自然科学基金" in page
    # the reviewers' task page shows it too
    from app.workflow.models import HumanTask

    task = db_session.scalar(select(HumanTask).where(HumanTask.instance_id == review.instance_id))
    assert "省自然科学基金" in client.get(f"/tasks/{task.id}").get_data(as_text=True)


@pytest.mark.parametrize("name", list(CASES))
def test_a_locked_field_cannot_be_removed_or_made_optional(name, user):
    case = CASES[name]
    form = start_forms.start_form(case.key)
    locked = [n for n in form.schema["properties"] if form.ui.get(n, {}).get("ui:locked")]
    # every required field of the shipped form is stored in a column of its own, so every one is locked
    assert locked and set(form.schema["required"]) <= set(locked)
    assert set(locked) <= set(case.model.FORM_COLUMNS)
    state = editor.state_from_form(form.schema, form.ui, version=form.version)
    idx = next(i for i, r in enumerate(state.rows) if r.name == locked[0])
    assert state.rows[idx].locked
    with pytest.raises(ValidationFailed) as err:
        editor.apply_action(state, f"remove:{idx}")
    [problem] = err.value.errors
    assert problem["path"] == f"fields/{idx}/name" and "系统必需的字段" in problem["message"]
    assert "不能删除" in problem["message"]
    assert len(state.rows) == len(form.schema["properties"])
    # a hand-made table without it (a forged post) is refused when saving, and so is un-requiring it
    without = editor.state_from_form(form.schema, form.ui, version=form.version)
    without.rows = [r for r in without.rows if r.name != locked[0]]
    with pytest.raises(ValidationFailed) as err:
        editor.save(key=case.key, state=without, actor=user("mao"))
    assert err.value.errors[0]["path"] == locked[0] and "不能删除" in err.value.errors[0]["message"]
    optional = editor.state_from_form(form.schema, form.ui, version=form.version)
    optional.rows[idx].required = False
    with pytest.raises(ValidationFailed) as err:
        editor.save(key=case.key, state=optional, actor=user("mao"))
    assert "不能取消必填" in err.value.errors[0]["message"]
    with pytest.raises(ValidationFailed) as err:  # nor through the service directly, e.g. by dropping the lock
        ui = {k: v for k, v in form.ui.items()}
        ui[locked[0]] = {k: v for k, v in ui[locked[0]].items() if k != "ui:locked"}
        forms.save_admin_version(key=case.key, schema=form.schema, ui=ui, actor=user("mao"))
    assert "不能取消锁定" in err.value.errors[0]["message"]
    assert start_forms.start_form(case.key).version == form.version


def test_editor_page_marks_locked_fields_and_refuses_their_removal(client, login):
    token = login("mao")
    page = client.get("/admin/forms/tech_new_apply/edit").get_data(as_text=True)
    assert page.count("系统字段</small>") == 7
    rows = re.findall(r'name="fields-(\d+)-name" value="([^"]*)"', page)
    idx = next(i for i, n in rows if n == "name")
    assert re.search(rf'name="fields-{idx}-name" value="name"[^>]*readonly', page)
    assert re.search(rf'value="remove:{idx}" disabled', page)
    data = {"csrf_token": token, "action": f"remove:{idx}", "row_count": str(len(rows)),
            "base_version": re.search(r'name="base_version" value="(\d+)"', page).group(1),
            "title": "新技术新项目申请"}
    for i, name in rows:
        data[f"fields-{i}-name"] = name
        keep = re.search(rf'name="fields-{i}-keep" value="([^"]*)"', page).group(1)
        data[f"fields-{i}-keep"] = htmllib.unescape(keep)
        data[f"fields-{i}-title"] = name
    resp = client.post("/admin/forms/tech_new_apply/edit", data=data)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "系统必需的字段" in html and "不能删除" in html
    assert f'name="fields-{idx}-name" value="name"' in html  # the row is still there
