"""科室技术目录 (seed 000 §三.9(1)): heads keep their own department's list, 医务处 every list; a department with a
list applies and is batch-granted only for its items; an empty list restricts nothing."""

from __future__ import annotations

from io import BytesIO

import pytest
from openpyxl import load_workbook
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.auth.models import Department
from app.errors import Forbidden, ValidationFailed
from app.privileges import dept_catalogue, services
from app.privileges.models import DeptCatalogueItem, PrivilegeItem

URL = "/privileges/dept-catalogue"


def _dept(db_session, code: str) -> Department:
    return db_session.scalar(select(Department).where(Department.code == code))


def _rows(db_session, code: str, *, active: bool = True) -> list[DeptCatalogueItem]:
    return list(db_session.scalars(select(DeptCatalogueItem).join(Department)
                                   .where(Department.code == code, DeptCatalogueItem.is_active.is_(active))))


def test_demo_departments_have_a_catalogue_by_specialty(db_session):
    gs = _rows(db_session, "GS")
    chapters = {r.item.chapter for r in gs if r.item.category.code == "surgery"}
    assert chapters == {"消化系统手术", "体被系统手术", "内分泌系统手术", "血液和淋巴系统手术"}
    codes = {r.item.code for r in gs}
    assert {"BASIC-DIAG", "SP-ABX-3", "ENDO-4"} <= codes and "ANES-1" not in codes
    card = {r.item.chapter for r in _rows(db_session, "CARD") if r.item.category.code == "surgery"}
    assert "心血管系统手术" in card and "消化系统手术" not in card
    assert _rows(db_session, "PHARM") == [] and dept_catalogue.dept_item_ids(_dept(db_session, "PHARM").id) is None
    assert all(r.added_by_id is None for r in gs)  # demo rows


def test_applications_are_limited_to_the_department_catalogue(db_session, user, item, fake_start):
    doc = user("gs_doc")
    with pytest.raises(ValidationFailed) as err:
        services.create_application(applicant=doc, item_ids=[item("BASIC-DIAG").id, item("ANES-1").id], reason="x")
    assert {e["path"]: e["message"] for e in err.value.errors} == {
        "item_ids/1": "不在科室技术目录内：普外科的科室技术目录未包含该项目"}
    # emergency items are outside the restriction
    assert services.create_application(applicant=doc, item_ids=[item("EM-ABX").id], reason="x").id
    # a department without a catalogue is not restricted
    pharm_doc = user("card_doc")
    pharm_doc.dept_id = _dept(db_session, "PHARM").id
    db_session.flush()
    assert services.create_application(applicant=pharm_doc, item_ids=[item("ANES-1").id], reason="x").id


def test_adding_and_removing_items_changes_what_the_department_may_apply_for(db_session, user, item, fake_start):
    head, doc, anes = user("gs_head"), user("gs_doc"), item("ANES-1")
    gs = _dept(db_session, "GS")
    [row] = dept_catalogue.add_items(viewer=head, dept=gs, item_ids=[str(anes.id)])
    assert row.is_active and row.added_by_id == head.id and row.added_at is not None
    first = services.create_application(applicant=doc, item_ids=[anes.id], reason="局麻需要")
    first.status = "withdrawn"
    db_session.flush()
    dept_catalogue.remove_item(viewer=head, entry=row)
    assert row.is_active is False and row.removed_by_id == head.id
    with pytest.raises(ValidationFailed):
        services.create_application(applicant=doc, item_ids=[anes.id], reason="局麻需要")
    with pytest.raises(ValidationFailed):
        dept_catalogue.remove_item(viewer=head, entry=row)
    [again] = dept_catalogue.add_items(viewer=user("mao"), dept=gs, item_ids=[anes.id])
    assert again.id == row.id and again.is_active and again.added_by_id == user("mao").id
    actions = list(db_session.scalars(select(AuditLog.action).where(AuditLog.entity_type == DeptCatalogueItem.__tablename__,
                                                                    AuditLog.entity_id == str(row.id))
                                      .order_by(AuditLog.id)))
    assert actions == ["privilege.dept_catalogue_added", "privilege.dept_catalogue_removed",
                       "privilege.dept_catalogue_added"]


def test_bad_additions_are_reported_per_field_and_change_nothing(db_session, user, item):
    gs = _dept(db_session, "GS")
    retired = item("BASIC-CONSULT")
    retired.is_active = False
    before = db_session.scalar(select(func.count()).select_from(DeptCatalogueItem))
    with pytest.raises(ValidationFailed) as err:
        dept_catalogue.add_items(viewer=user("gs_head"), dept=gs,
                                 item_ids=[item("ANES-1").id, "x", 99999999, item("BASIC-DIAG").id, retired.id,
                                           item("ANES-1").id])
    errors = {e["path"]: e["message"] for e in err.value.errors}
    assert set(errors) == {"item_ids/1", "item_ids/2", "item_ids/3", "item_ids/4", "item_ids/5"}
    assert errors["item_ids/2"] == "院内目录中没有该项目"
    assert errors["item_ids/3"] == "“诊疗权限”已在普外科的科室技术目录中"
    assert "停用" in errors["item_ids/4"] and "重复" in errors["item_ids/5"]
    assert db_session.scalar(select(func.count()).select_from(DeptCatalogueItem)) == before


def test_a_head_keeps_only_the_own_department(db_session, user, client, login):
    head = user("gs_head")
    card = _dept(db_session, "CARD")
    assert [d.code for d in dept_catalogue.departments(head)] == ["GS"]
    with pytest.raises(Forbidden):
        dept_catalogue.get_department(viewer=head, dept_id=card.id)
    card_row = _rows(db_session, "CARD")[0]
    token = login("gs_head")
    assert client.get(URL, query_string={"dept": card.id}).status_code == 403
    assert client.get(f"{URL}/add", query_string={"dept": card.id}).status_code == 403
    assert client.get(f"{URL}/export.xlsx", query_string={"dept": card.id}).status_code == 403
    item_id = db_session.scalar(select(PrivilegeItem.id).where(PrivilegeItem.code == "ANES-1"))
    assert client.post(f"{URL}/add", data={"csrf_token": token, "dept_id": str(card.id),
                                           "item_ids": [str(item_id)]}).status_code == 403
    assert client.post(f"{URL}/{card_row.id}/remove", data={"csrf_token": token}).status_code == 403
    db_session.refresh(card_row)
    assert card_row.is_active


def test_pages_are_for_heads_and_the_office_only(client, login, db_session):
    for username in ("gs_doc", "nurse", "committee"):
        login(username)
        for url in (URL, f"{URL}/add", f"{URL}/export.xlsx"):
            assert client.get(url).status_code == 403, (username, url)
    login("gs_head")
    html = client.get(URL).get_data(as_text=True)
    assert "科室技术目录 · 普外科" in html and "诊疗权限" in html and "移除" in html
    login("mao")
    card = _dept(db_session, "CARD")
    html = client.get(URL, query_string={"dept": card.id}).get_data(as_text=True)
    assert "科室技术目录 · 心内科" in html and "心内科（CARD）" in html and "普外科（GS）" in html


def test_search_pagination_and_export(client, login, db_session):
    login("mao")
    gs = _dept(db_session, "GS")
    digestive = [r for r in _rows(db_session, "GS") if r.item.chapter == "消化系统手术"]
    html = client.get(URL, query_string={"dept": gs.id, "q": "消化系统", "per_page": 5}).get_data(as_text=True)
    assert f"共 {len(digestive)} 条" in html and 'rel="next"' in html and "甲状" not in html
    page2 = client.get(URL, query_string={"dept": gs.id, "q": "消化系统", "per_page": 5, "page": 2})
    assert page2.status_code == 200 and 'rel="prev"' in page2.get_data(as_text=True)
    resp = client.get(f"{URL}/export.xlsx", query_string={"dept": gs.id, "q": "消化系统"})
    assert resp.status_code == 200
    ws = load_workbook(BytesIO(resp.data)).active
    rows = list(ws.iter_rows(values_only=True))
    assert rows[0][:3] == ("科室", "授权类别", "项目编码") and len(rows) == len(digestive) + 1
    assert {r[0] for r in rows[1:]} == {"普外科"} and {r[9] for r in rows[1:]} == {"演示数据"}


def test_the_add_page_puts_items_in_and_reports_errors(client, login, user, item, db_session):
    token = login("gs_head")
    gs = _dept(db_session, "GS")
    html = client.get(f"{URL}/add", query_string={"category": "anesthesia"}).get_data(as_text=True)
    assert "麻醉分级授权（一级）" in html and "从医院目录加入 · 普外科" in html
    html = client.get(f"{URL}/add", query_string={"q": "BASIC-DIAG"}).get_data(as_text=True)
    assert "已在目录" in html
    anes1, anes2 = item("ANES-1"), item("ANES-2")
    resp = client.post(f"{URL}/add", data={"csrf_token": token, "dept_id": str(gs.id),
                                           "item_ids": [str(anes1.id), str(item("BASIC-DIAG").id)]})
    assert resp.status_code == 400 and "已在普外科的科室技术目录中" in resp.get_data(as_text=True)
    assert anes1.id not in (dept_catalogue.dept_item_ids(gs.id) or set())
    resp = client.post(f"{URL}/add", data={"csrf_token": token, "dept_id": str(gs.id),
                                           "item_ids": [str(anes1.id), str(anes2.id)]})
    assert resp.status_code == 302
    assert {anes1.id, anes2.id} <= (dept_catalogue.dept_item_ids(gs.id) or set())
    row = db_session.scalar(select(DeptCatalogueItem).where(DeptCatalogueItem.dept_id == gs.id,
                                                            DeptCatalogueItem.item_id == anes1.id))
    assert client.post(f"{URL}/{row.id}/remove", data={"csrf_token": token}).status_code == 302
    db_session.refresh(row)
    assert row.is_active is False and row.removed_by_id == user("gs_head").id
    html = client.get(URL, query_string={"removed": "1", "q": "ANES"}).get_data(as_text=True)
    assert "已移除" in html


def test_apply_page_can_show_only_the_department_catalogue(client, login):
    login("gs_doc")
    everything = client.get("/privileges/apply", query_string={"category": "anesthesia"}).get_data(as_text=True)
    assert "麻醉分级授权（一级）" in everything and "✗ 不在科室技术目录内" in everything
    assert "只看本科室技术目录" in everything
    own = client.get("/privileges/apply", query_string={"category": "anesthesia", "mine": "1"}).get_data(as_text=True)
    assert "麻醉分级授权（一级）" not in own and "显示全院目录" in own
