"""Eligibility rules in catalogue maintenance (seed 000 §三.2 授权对象): the item form and the category form carry
the minimum title, the required certificate types and 定期考核, with Chinese per-field errors; Excel columns too."""

from __future__ import annotations

from io import BytesIO

import pytest
from openpyxl import Workbook, load_workbook
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.errors import ValidationFailed
from app.privileges import eligibility, services
from app.privileges.models import PrivilegeCategory, PrivilegeItem

BASE = "/privileges/manage/catalogue"
JSON = {"Accept": "application/json"}
HEADER = ["类别编码", "项目编码", "项目名称", "级别", "手术操作编码", "准入要求", "最低职称", "必备证件", "定期考核"]


@pytest.fixture(autouse=True)
def upload_dir(app, tmp_path, monkeypatch):
    monkeypatch.setitem(app.config, "UPLOAD_DIR", str(tmp_path / "uploads"))


def _count(db_session, model) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


def _audits(db_session, action: str, entity_id: int) -> list[AuditLog]:
    return list(db_session.scalars(select(AuditLog).where(AuditLog.action == action,
                                                          AuditLog.entity_id == str(entity_id))
                                   .order_by(AuditLog.id)))


def _errors(resp) -> dict[str, str]:
    return {e["path"]: e["message"] for e in resp.get_json()["error"]["errors"]}


def _item_form(token: str, item: PrivilegeItem, **rules) -> dict:
    data = {"csrf_token": token, "category": item.category.code, "code": item.code, "name": item.name,
            "grade": item.grade or "", "procedure_code": item.procedure_code or "",
            "requirements": item.requirements or "", "note": item.note or "", "source": item.source or "",
            "rules_form": "1", "min_title": "", "cert_mode": "inherit", "requires_assessment": "", "rules_note": ""}
    data.update(rules)
    return data


def test_the_item_form_sets_the_rules_and_they_decide_applications(client, login, db_session, user, item):
    poct = item("SP-POCT")
    token = login("mao")
    page = client.get(f"{BASE}/items/{poct.id}").get_data(as_text=True)
    assert "授权资格规则" in page and 'name="min_title"' in page and 'value="nurse_practice"' in page
    assert "现行要求：有效的执业证" in page
    resp = client.post(f"{BASE}/items/{poct.id}", data=_item_form(
        token, poct, min_title="主治医师", cert_mode="custom", cert_types=["practice", "title"],
        requires_assessment="1", rules_note="检验科 POCT 管理委员会 2026 年决议"))
    assert resp.status_code == 302, resp.get_data(as_text=True)[:2000]
    db_session.refresh(poct)
    assert (poct.min_title, poct.cert_types, poct.requires_assessment, poct.rules_note) == (
        "主治医师", ["practice", "title"], True, "检验科 POCT 管理委员会 2026 年决议")
    [row] = _audits(db_session, "privilege.item_rules_saved", poct.id)
    assert row.before["min_title"] is None and row.after["cert_types"] == ["practice", "title"]
    assert _audits(db_session, "privilege.catalogue_item_updated", poct.id) == []  # the fields did not change
    assert "资格规则" in client.get(f"{BASE}/items/{poct.id}").get_data(as_text=True)
    with pytest.raises(ValidationFailed) as err:  # gs_doc2 is a 住院医师: now too junior
        services.create_application(applicant=user("gs_doc2"), item_ids=[poct.id], reason="x")
    assert "职称不符：该项目需主治医师及以上，当前为住院医师" in err.value.errors[0]["message"]

    # back to the category default; an unchanged post writes nothing more
    assert client.post(f"{BASE}/items/{poct.id}", data=_item_form(token, poct, rules_note=poct.rules_note)
                       ).status_code == 302
    db_session.refresh(poct)
    assert (poct.min_title, poct.cert_types, poct.requires_assessment) == (None, None, None)
    assert eligibility.requirements(poct) == ["有效的执业证"]
    client.post(f"{BASE}/items/{poct.id}", data=_item_form(token, poct, rules_note=poct.rules_note))
    assert len(_audits(db_session, "privilege.item_rules_saved", poct.id)) == 2


def test_bad_rules_are_400_with_chinese_messages_per_field_and_nothing_is_written(client, login, db_session, item):
    poct = item("SP-POCT")
    token = login("mao")
    audits = _count(db_session, AuditLog)
    resp = client.post(f"{BASE}/items/{poct.id}", headers=JSON, data=_item_form(
        token, poct, name="", min_title="教授", cert_mode="custom", cert_types=["practice", "driving"],
        requires_assessment="也许", rules_note="x" * 301))
    assert resp.status_code == 400
    errors = _errors(resp)
    assert set(errors) == {"name", "min_title", "cert_types/1", "requires_assessment", "rules_note"}
    assert errors["min_title"].startswith("最低职称应为职称评聘中的职称（医疗：医士、住院医师") and "护理：护士、护师" in errors[
        "min_title"]
    assert errors["cert_types/1"] == "证件类型“driving”不存在"
    assert errors["requires_assessment"] == "定期考核应为“是”“否”或留空（沿用类别默认），不能为“也许”"
    assert errors["rules_note"] == "规则说明不能超过 300 字"
    html = client.post(f"{BASE}/items/{poct.id}", data=_item_form(token, poct, min_title="教授", cert_mode="custom",
                                                                   cert_types=["driving"])).get_data(as_text=True)
    assert 'id="err-min_title"' in html and 'id="err-cert_types-0"' in html and "证件类型“driving”不存在" in html
    bad_mode = client.post(f"{BASE}/items/{poct.id}", headers=JSON, data=_item_form(token, poct, cert_mode="all"))
    assert _errors(bad_mode) == {"cert_mode": "必备证件请选择“沿用类别默认”或“按本项目设置”"}
    db_session.refresh(poct)
    assert poct.min_title is None and _count(db_session, AuditLog) == audits


def test_a_new_item_takes_its_rules_and_a_changed_demo_rule_is_marked_as_the_offices(client, login, db_session,
                                                                                     item):
    token = login("mao")
    resp = client.post(f"{BASE}/items/new", data=_item_form(
        token, item("NUR-BASIC"), code="NUR-PORT", name="植入式静脉输液港插针与维护", requirements="",
        min_title="护师", cert_mode="inherit"))
    assert resp.status_code == 302, resp.get_data(as_text=True)[:2000]
    port = db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == "NUR-PORT"))
    assert port.category.code == "nursing" and port.rules_note == eligibility.OFFICE_NOTE
    assert eligibility.requirements(port) == ["护师及以上", "有效的护士执业证书"]

    abx2 = item("SP-ABX-2")
    assert abx2.rules_note.startswith(eligibility.DEMO_NOTE)
    client.post(f"{BASE}/items/{abx2.id}", data=_item_form(token, abx2, min_title="副主任医师",
                                                           rules_note=abx2.rules_note))
    db_session.refresh(abx2)
    assert (abx2.min_title, abx2.rules_note) == ("副主任医师", eligibility.OFFICE_NOTE)


def test_a_new_tech_item_keeps_its_fields_but_its_rules_can_change(client, login, db_session, user):
    project_item = services.sync_new_tech_item(number="XJS000777", name="经皮内镜椎间孔入路椎间盘摘除", active=True,
                                               note="演示", actor=user("mao"))
    db_session.commit()
    token = login("mao")
    page = client.get(f"{BASE}/items/{project_item.id}").get_data(as_text=True)
    assert "保存资格规则" in page and "自动维护" in page
    data = _item_form(token, project_item, min_title="主治医师", requires_assessment="1")
    data["name"] = "被改的名称"  # disabled on the page; a crafted post does not change it
    assert client.post(f"{BASE}/items/{project_item.id}", data=data).status_code == 302
    db_session.refresh(project_item)
    assert project_item.name == "经皮内镜椎间孔入路椎间盘摘除（新技术新项目）"
    assert (project_item.min_title, project_item.requires_assessment) == ("主治医师", True)
    assert eligibility.requirements(project_item)[-1] == "新技术新项目团队成员"


def test_the_category_form_sets_the_defaults_of_its_items(client, login, db_session, user, item):
    nursing = db_session.scalar(select(PrivilegeCategory).where(PrivilegeCategory.code == "nursing"))
    token = login("mao")
    page = client.get(f"{BASE}/categories/{nursing.id}").get_data(as_text=True)
    assert "类别默认资格规则" in page and 'id="category-rules">护士及以上；有效的护士执业证书<' in page
    assert "护士及以上；有效的护士执业证书" in client.get(f"{BASE}/categories").get_data(as_text=True)
    form = {"csrf_token": token, "validity_years": "2", "is_active": "1", "rules_form": "1"}
    resp = client.post(f"{BASE}/categories/{nursing.id}", headers=JSON, data={
        **form, "default_min_title": "高级护师", "default_cert_types": ["nurse_practice", "nope"]})
    assert resp.status_code == 400
    errors = _errors(resp)
    assert set(errors) == {"default_min_title", "default_cert_types/1"}
    assert "最低职称应为职称评聘中的职称" in errors["default_min_title"]
    html = client.post(f"{BASE}/categories/{nursing.id}", data={**form, "default_min_title": "高级护师"}
                       ).get_data(as_text=True)
    assert 'id="err-default_min_title"' in html

    resp = client.post(f"{BASE}/categories/{nursing.id}", data={
        **form, "default_min_title": "护师", "default_cert_types": ["nurse_practice", "nurse_qualification"],
        "default_requires_assessment": "1"})
    assert resp.status_code == 302
    db_session.refresh(nursing)
    assert (nursing.default_min_title, nursing.default_cert_types, nursing.default_requires_assessment) == (
        "护师", ["nurse_practice", "nurse_qualification"], True)
    [row] = _audits(db_session, "privilege.catalogue_category_updated", nursing.id)
    assert row.before["default_min_title"] == "护士" and row.after["default_min_title"] == "护师"
    # an item keeps its own title and 定期考核 rule (不要求); the category's certificates now apply to it
    assert eligibility.requirements(item("NUR-BASIC")) == ["护士及以上", "有效的护士执业证书", "有效的护士资格证"]
    assert eligibility.requirements(item("NUR-FIRSTAID")) == eligibility.requirements(item("NUR-BASIC"))
    # no certificate ticked = none required (stored as [], so the demo loader leaves it alone)
    client.post(f"{BASE}/categories/{nursing.id}", data={**form, "default_min_title": "护师"})
    db_session.refresh(nursing)
    assert (nursing.default_cert_types, nursing.default_requires_assessment) == ([], False)
    eligibility.seed_rules()
    assert nursing.default_cert_types == []
    # a post without the rule fields (an older form) leaves the defaults alone
    client.post(f"{BASE}/categories/{nursing.id}", data={"csrf_token": token, "validity_years": "3", "is_active": "1"})
    db_session.refresh(nursing)
    assert (nursing.validity_years, nursing.default_min_title) == (3, "护师")


def _xlsx(rows: list[list], header: list[str] = HEADER) -> BytesIO:
    wb = Workbook()
    ws = wb.active
    ws.append(header)
    for row in rows:
        ws.append(row)
    buf = BytesIO()
    wb.save(buf)
    buf.seek(0)
    return buf


def test_import_and_export_carry_the_rule_columns(client, login, db_session, item):
    poct, rx, cvad = item("SP-POCT"), item("BASIC-RX"), item("NUR-CVAD")
    token = login("mao")
    ws = load_workbook(BytesIO(client.get(f"{BASE}/export.xlsx", query_string={"q": "NUR-CVAD"}).data)).active
    rows = list(ws.iter_rows(values_only=True))
    assert list(rows[0][:9]) == HEADER and rows[0][-1] == "规则说明"
    assert tuple(v or "" for v in rows[1][6:9]) == ("护师", "", "否")  # certificates from the category
    sheet = [
        ["special", "SP-POCT", poct.name, "", "", poct.requirements, "主治医师", "执业证、title", "是"],
        ["basic", "BASIC-RX", rx.name, "", "", rx.requirements, "教授", "驾驶证", "也许"],
        ["nursing", "NUR-CVAD", cvad.name, "", "", cvad.requirements, "护师", "无", ""],
    ]
    preview = client.post(f"{BASE}/import", data={"csrf_token": token, "file": (_xlsx(sheet), "规则.xlsx")},
                          content_type="multipart/form-data")
    html = preview.get_data(as_text=True)
    assert preview.status_code == 400
    assert "最低职称：（类别默认） → 主治医师" in html and "必备证件：（类别默认） → 执业证、职称证" in html
    assert "第 3 行“最低职称”列：最低职称应为职称评聘中的职称" in html
    assert "第 3 行“必备证件”列：必备证件“驾驶证”不是已有的证件类型" in html
    assert "第 3 行“定期考核”列：定期考核应为“是”“否”或留空" in html
    assert "必备证件：（类别默认） → 无" in html
    token_value = html.split('name="token" value="')[1][:32]
    resp = client.post(f"{BASE}/import/apply", data={"csrf_token": token, "token": token_value, "reason": "资格规则调整",
                                                     "filename": "规则.xlsx"})
    assert resp.status_code == 200 and "更新 2 项" in resp.get_data(as_text=True)
    for model in (poct, rx, cvad):
        db_session.refresh(model)
    assert (poct.min_title, poct.cert_types, poct.requires_assessment) == ("主治医师", ["practice", "title"], True)
    assert cvad.cert_types == [] and eligibility.requirements(cvad) == ["护师及以上"]
    assert rx.min_title == "住院医师"  # the row with errors was not imported
    assert _audits(db_session, "privilege.catalogue_item_updated", poct.id) == []
    assert len(_audits(db_session, "privilege.item_rules_saved", poct.id)) == 1
    # the export of what was imported reads back unchanged
    full = client.get(f"{BASE}/export.xlsx", query_string={"category": "special"}).data
    body = client.post(f"{BASE}/import", data={"csrf_token": token, "file": (BytesIO(full), "目录.xlsx")},
                       content_type="multipart/form-data", headers=JSON).get_json()
    assert body["errors"] == [] and body["counts"]["update"] == 0
