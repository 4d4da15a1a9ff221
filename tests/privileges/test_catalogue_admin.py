"""Catalogue maintenance (seed 000 §三.9(2)): add / edit with per-field errors, retire and reactivate (seen by the
HIS check at once), category settings, Excel export and import of an updated national list — for 医务处 only."""

from __future__ import annotations

import re
from io import BytesIO

import pytest
from openpyxl import Workbook, load_workbook
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.privileges import catalogue_admin
from app.privileges.models import PrivilegeCategory, PrivilegeItem

BASE = "/privileges/manage/catalogue"
CHECK = "/api/v1/privileges/check"
JSON = {"Accept": "application/json"}
HEADER = ["类别编码", "项目编码", "项目名称", "级别", "手术操作编码", "准入要求"]


@pytest.fixture(autouse=True)
def fresh_check_cache(app):
    """Each test starts with an empty index (rolled-back transactions reuse version numbers)."""
    from app.privileges import check

    app.extensions[check.EXTENSION] = check.CheckCache(app)


@pytest.fixture(autouse=True)
def upload_dir(app, tmp_path, monkeypatch):
    monkeypatch.setitem(app.config, "UPLOAD_DIR", str(tmp_path / "uploads"))
    return tmp_path / "uploads"


@pytest.fixture
def his(db_session):
    from app.auth.services import create_api_token

    token = create_api_token(system="HIS")
    db_session.commit()
    return {"Authorization": f"Bearer {token}"}


def _check(client, his, staff_no, category, code) -> dict:
    resp = client.get(CHECK, query_string={"staff_no": staff_no, "category": category, "code": code}, headers=his)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def _count(db_session, model) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


def _audits(db_session, action: str, item: PrivilegeItem | None = None) -> list[AuditLog]:
    stmt = select(AuditLog).where(AuditLog.action == action)
    if item is not None:
        stmt = stmt.where(AuditLog.entity_type == "privilege_items", AuditLog.entity_id == str(item.id))
    return list(db_session.scalars(stmt.order_by(AuditLog.id)))


def _category(db_session, code: str) -> PrivilegeCategory:
    return db_session.scalar(select(PrivilegeCategory).where(PrivilegeCategory.code == code))


def _free_procedure(db_session, category: str = "surgery", *, numeric: bool = False) -> str:
    """A code of the national table that no item of the category uses yet."""
    cat = _category(db_session, category)
    used = set(db_session.scalars(select(PrivilegeItem.procedure_code).where(PrivilegeItem.category_id == cat.id)))
    for code in sorted(catalogue_admin.procedure_table()):
        if code not in used and (not numeric or re.fullmatch(r"\d{2}\.\d{4}", code)):
            return code
    raise AssertionError("no free procedure code")


def _form(token: str, **values) -> dict:
    data = {"csrf_token": token, "category": "", "code": "", "name": "", "grade": "", "procedure_code": "",
            "requirements": "", "note": "", "source": ""}
    data.update(values)
    return data


def _xlsx(rows: list[list], header: list[str] | None = None) -> BytesIO:
    wb = Workbook()
    ws = wb.active
    ws.append(header or HEADER)
    for row in rows:
        ws.append(row)
    buf = BytesIO()
    wb.save(buf)
    buf.seek(0)
    return buf


def _upload(client, token, rows, *, headers=None, header=None):
    return client.post(f"{BASE}/import", data={"csrf_token": token, "file": (_xlsx(rows, header), "国家目录.xlsx")},
                       content_type="multipart/form-data", headers=headers or {})


# ---------------------------------------------------------------- permissions


def test_catalogue_admin_is_403_for_a_physician(client, login, item, db_session):
    target = item("BASIC-RX")
    special = _category(db_session, "special")
    token = login("gs_doc")
    items_before, audits_before = _count(db_session, PrivilegeItem), _count(db_session, AuditLog)
    for url in (f"{BASE}/", f"{BASE}/export.xlsx", f"{BASE}/items/new", f"{BASE}/items/{target.id}",
                f"{BASE}/categories", f"{BASE}/categories/{special.id}", f"{BASE}/import"):
        assert client.get(url).status_code == 403, url
    posts = {f"{BASE}/items/new": _form(token, category="basic", code="BASIC-NEW", name="新项目"),
             f"{BASE}/items/{target.id}": _form(token, category="basic", code="BASIC-RX", name="改名"),
             f"{BASE}/items/{target.id}/retire": {"csrf_token": token, "reason": "x"},
             f"{BASE}/categories/{special.id}": {"csrf_token": token, "validity_years": "5", "reason": "x"},
             f"{BASE}/import/apply": {"csrf_token": token, "token": "0" * 32, "reason": "x"}}
    for url, data in posts.items():
        assert client.post(url, data=data).status_code == 403, url
    assert _upload(client, token, [["basic", "BASIC-X", "x", "", "", ""]]).status_code == 403
    db_session.refresh(target)
    assert target.is_active and target.name == "一般药物处方权"
    assert (_count(db_session, PrivilegeItem), _count(db_session, AuditLog)) == (items_before, audits_before)
    assert "/privileges/manage/catalogue/" not in client.get("/privileges/catalogue").get_data(as_text=True)


def test_mao_finds_the_admin_pages_in_the_privileges_menu(client, login):
    login("mao")
    html = client.get("/privileges/catalogue").get_data(as_text=True)
    assert "维护目录" in html and "目录维护" in html
    menu = re.search(r'<span class="navgroup-label"[^>]*>医疗权限</span>(.*?)</div>', html, re.S)
    assert menu and "/privileges/manage/catalogue/" in menu.group(1)


def test_a_campus_scoped_manager_may_look_but_not_change_the_shared_catalogue(client, login, user, item,
                                                                              db_session):
    for link in user("mao").roles:
        link.scope = "campus"
    db_session.commit()
    rx = item("BASIC-RX")
    token = login("mao")
    assert client.get(f"{BASE}/").status_code == 200
    resp = client.post(f"{BASE}/items/{rx.id}/retire", data={"csrf_token": token, "reason": "x"})
    assert resp.status_code == 403 and "全院范围" in resp.get_data(as_text=True)
    assert client.post(f"{BASE}/items/new", data=_form(token, category="basic", code="B-9", name="x")).status_code == 403
    db_session.refresh(rx)
    assert rx.is_active


def test_mao_pages_render_and_filter(client, login, db_session, surgery_item):
    top = surgery_item(4)
    special = _category(db_session, "special")
    login("mao")
    pages = {f"{BASE}/items/new?category=surgery": "新增目录项目", f"{BASE}/categories": "授权类别设置",
             f"{BASE}/categories/{special.id}": "默认授权有效期", f"{BASE}/import": "上传并预览",
             f"{BASE}/items/{top.id}": "停用项目"}
    for url, text in pages.items():
        resp = client.get(url)
        assert resp.status_code == 200 and text in resp.get_data(as_text=True), url
    html = client.get(f"{BASE}/", query_string={"category": "surgery", "grade": "4", "active": "1",
                                                 "q": top.procedure_code}).get_data(as_text=True)
    assert top.name in html and "共 1 条" in html
    assert "没有符合条件的目录项目" in client.get(f"{BASE}/", query_string={"active": "0"}).get_data(as_text=True)
    ws = load_workbook(BytesIO(client.get(f"{BASE}/export.xlsx", query_string={"grade": "4", "category": "surgery"})
                               .data)).active
    grades = {r[3] for r in ws.iter_rows(min_row=2, values_only=True)}
    assert grades == {"四级"} and ws.max_row > 2


# ---------------------------------------------------------------- add / edit


def test_mao_adds_a_surgery_item_with_a_code_derived_from_the_procedure_code(client, login, db_session, user):
    proc = _free_procedure(db_session)
    token = login("mao")
    resp = client.post(f"{BASE}/items/new", data=_form(token, category="surgery", name="新开展的手术", grade="三级",
                                                        procedure_code=proc, requirements="主治医师及以上"))
    assert resp.status_code == 302, resp.get_data(as_text=True)
    new = db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == f"SUR-{proc}"))
    table = catalogue_admin.procedure_table()[proc]
    assert (new.name, new.grade, new.grade_level, new.procedure_code, new.is_active) == (
        "新开展的手术", "三级", 3, proc, True)
    assert new.procedure_category == table.category and new.chapter
    [row] = _audits(db_session, "privilege.catalogue_item_created", new)
    assert row.actor_id == user("mao").id and row.before is None and row.after["code"] == f"SUR-{proc}"
    html = client.get(f"{BASE}/", query_string={"q": proc}).get_data(as_text=True)
    assert "新开展的手术" in html and f"SUR-{proc}" in html
    assert "新开展的手术" in client.get("/privileges/catalogue", query_string={"q": proc}).get_data(as_text=True)


def test_bad_input_is_400_with_field_paths_and_changes_nothing(client, login, db_session):
    token = login("mao")
    items_before, audits_before = _count(db_session, PrivilegeItem), _count(db_session, AuditLog)
    resp = client.post(f"{BASE}/items/new", headers=JSON, data=_form(
        token, category="surgery", code="坏 编码", name="", grade="五级", procedure_code="99.9999x999"))
    assert resp.status_code == 400
    errors = {e["path"]: e["message"] for e in resp.get_json()["error"]["errors"]}
    assert set(errors) == {"code", "name", "grade", "procedure_code"}
    assert "项目编码为" in errors["code"] and errors["name"] == "项目名称为必填项"
    assert "一级、二级、三级、四级" in errors["grade"] and "不在《手术操作分类代码国家临床版2.0》中" in errors["procedure_code"]

    resp = client.post(f"{BASE}/items/new", headers=JSON, data=_form(
        token, category="basic", code="BASIC-NEW", name="新项目", grade="三级", procedure_code="51.2201"))
    errors = {e["path"]: e["message"] for e in resp.get_json()["error"]["errors"]}
    assert resp.status_code == 400 and set(errors) == {"grade", "procedure_code"}
    assert "不分级" in errors["grade"] and "不按手术操作编码授权" in errors["procedure_code"]

    resp = client.post(f"{BASE}/items/new", headers=JSON, data=_form(token, category="nope", code="X-1", name="x"))
    assert resp.status_code == 400 and resp.get_json()["error"]["errors"] == [
        {"path": "category", "message": "授权类别不存在：nope"}]
    resp = client.post(f"{BASE}/items/new", headers=JSON, data=_form(token, category="anesthesia", code="ANES-9",
                                                                     name="麻醉"))
    assert resp.get_json()["error"]["errors"] == [{"path": "grade", "message": "“麻醉分级授权”须填写级别（一级至四级）"}]

    html_resp = client.post(f"{BASE}/items/new", data=_form(token, category="basic", code="BASIC-NEW", name=""))
    html = html_resp.get_data(as_text=True)
    assert html_resp.status_code == 400 and 'id="err-name"' in html and "项目名称为必填项" in html
    assert 'value="BASIC-NEW"' in html  # the form keeps what was typed
    assert (_count(db_session, PrivilegeItem), _count(db_session, AuditLog)) == (items_before, audits_before)


def test_duplicate_codes_are_refused(client, login, db_session, surgery_item):
    taken = surgery_item(3)
    token = login("mao")

    def errors(**values) -> dict[str, str]:
        resp = client.post(f"{BASE}/items/new", headers=JSON, data=_form(token, **values))
        assert resp.status_code == 400
        return {e["path"]: e["message"] for e in resp.get_json()["error"]["errors"]}

    assert errors(category="basic", code="BASIC-DIAG", name="重复")["code"] == "“基础诊疗项目授权”中已有项目编码 BASIC-DIAG（诊疗权限）"
    assert "全院唯一" in errors(category="special", code="BASIC-DIAG", name="重复")["code"]
    message = errors(category="surgery", code="SUR-OTHER", name="同码手术", grade="三级",
                     procedure_code=taken.procedure_code)["procedure_code"]
    assert taken.code in message and taken.name in message
    assert db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == "SUR-OTHER")) is None


def test_edit_item_audits_before_and_after_and_keeps_a_held_item_code(client, login, item, user, make_grant,
                                                                     db_session):
    poct = item("SP-POCT")
    token = login("mao")
    data = _form(token, category="special", code="SP-POCT", name="POCT 操作与报告权", grade="",
                 requirements="经检验科 POCT 培训考核合格（2025 版）", source="院发〔2025〕1号")
    assert client.post(f"{BASE}/items/{poct.id}", data=data).status_code == 302
    db_session.refresh(poct)
    assert (poct.name, poct.requirements, poct.source) == ("POCT 操作与报告权", "经检验科 POCT 培训考核合格（2025 版）",
                                                           "院发〔2025〕1号")
    [row] = _audits(db_session, "privilege.catalogue_item_updated", poct)
    assert row.before["name"] == "POCT（即时检验）操作与报告权" and row.after["name"] == "POCT 操作与报告权"
    assert client.post(f"{BASE}/items/{poct.id}", data=data).status_code == 302  # nothing changed: no audit
    assert len(_audits(db_session, "privilege.catalogue_item_updated", poct)) == 1

    abx = item("SP-ABX-2")
    make_grant(user("gs_doc"), abx)
    db_session.commit()
    resp = client.post(f"{BASE}/items/{abx.id}", headers=JSON, data=_form(
        token, category="special", code="SP-ABX-2B", name=abx.name, grade="限制使用级"))
    assert resp.status_code == 400
    assert resp.get_json()["error"]["errors"] == [
        {"path": "code", "message": "该项目已有 1 条授权记录，不能修改类别或项目编码（可停用后新增项目）"}]
    resp = client.post(f"{BASE}/items/{abx.id}", headers=JSON, data=_form(
        token, category="special", code="SP-ABX-2", name=abx.name, grade="三级"))
    assert resp.get_json()["error"]["errors"][0]["path"] == "grade"  # special grades are the drug-use levels
    db_session.refresh(abx)
    assert (abx.code, abx.grade) == ("SP-ABX-2", "限制使用级")


# ---------------------------------------------------------------- retire / reactivate


def test_retiring_an_item_with_grants_is_seen_by_the_check_api_and_reactivating_restores_it(
        client, login, his, item, user, make_grant, db_session):
    rx = item("BASIC-RX")
    make_grant(user("gs_doc"), rx)
    db_session.commit()
    assert _check(client, his, "D1002", "basic", "BASIC-RX")["allowed"] is True
    token = login("mao")
    page = client.get(f"{BASE}/items/{rx.id}").get_data(as_text=True)
    assert "该项目有 1 项生效中的授权" in page

    resp = client.post(f"{BASE}/items/{rx.id}/retire", data={"csrf_token": token, "reason": "  "})
    assert resp.status_code == 400 and "请填写停用原因" in resp.get_data(as_text=True)
    db_session.refresh(rx)
    assert rx.is_active and _check(client, his, "D1002", "basic", "BASIC-RX")["allowed"] is True

    resp = client.post(f"{BASE}/items/{rx.id}/retire", data={"csrf_token": token, "reason": "国家目录调整"})
    assert resp.status_code == 302
    db_session.refresh(rx)
    assert rx.is_active is False
    body = _check(client, his, "D1002", "basic", "BASIC-RX")
    assert body["allowed"] is False and body["reason"] == "该授权项目已停用"
    [row] = _audits(db_session, "privilege.catalogue_item_retired", rx)
    assert row.before["is_active"] is True and row.after["is_active"] is False
    assert row.extra == {"reason": "国家目录调整", "active_grants": 1}
    flashed = client.get(f"{BASE}/items/{rx.id}").get_data(as_text=True)
    assert "其 1 项生效中的授权保留" in flashed and "重新启用" in flashed
    assert client.post(f"{BASE}/items/{rx.id}/retire",
                       data={"csrf_token": token, "reason": "再次"}).status_code == 409
    assert "一般药物处方权" not in client.get("/privileges/catalogue", query_string={"q": "一般药物"}).get_data(
        as_text=True)  # gone from the read-only catalogue and the apply pages

    assert client.post(f"{BASE}/items/{rx.id}/reactivate",
                       data={"csrf_token": token, "reason": "误停用"}).status_code == 302
    db_session.refresh(rx)
    assert rx.is_active and _check(client, his, "D1002", "basic", "BASIC-RX")["allowed"] is True
    [row] = _audits(db_session, "privilege.catalogue_item_reactivated", rx)
    assert row.extra == {"reason": "误停用"}
    # HIS is told of the item once per change (its holders' grants are kept, so no message per grant)
    from app.outbox.models import OutboxMessage

    pushed = [(m.payload["active"], m.payload["reason"], m.payload["active_grants"]) for m in db_session.scalars(
        select(OutboxMessage).where(OutboxMessage.channel == "his", OutboxMessage.event == "privilege.item_changed",
                                    OutboxMessage.key == "item:BASIC-RX").order_by(OutboxMessage.id))]
    assert pushed == [(False, "国家目录调整", 1), (True, "误停用", 1)]


# ---------------------------------------------------------------- categories


def test_category_validity_and_active_flag(client, login, his, item, user, make_grant, db_session):
    special = _category(db_session, "special")
    make_grant(user("gs_doc"), item("SP-EXAM"))
    db_session.commit()
    token = login("mao")
    url = f"{BASE}/categories/{special.id}"
    for years, message in (("0", "1–10 的整数"), ("abc", "1–10 的整数"), ("", "请填写默认有效期")):
        resp = client.post(url, data={"csrf_token": token, "validity_years": years, "is_active": "1"})
        assert resp.status_code == 400 and message in resp.get_data(as_text=True)
    resp = client.post(url, headers=JSON, data={"csrf_token": token, "validity_years": "2"})  # unticked, no reason
    assert resp.status_code == 400 and resp.get_json()["error"]["errors"] == [
        {"path": "reason", "message": "启用或停用类别须填写原因"}]
    db_session.refresh(special)
    assert (special.validity_years, special.is_active) == (2, True)

    assert client.post(url, data={"csrf_token": token, "validity_years": "3", "is_active": "1"}).status_code == 302
    db_session.refresh(special)
    assert special.validity_years == 3
    assert client.post(url, data={"csrf_token": token, "validity_years": "3",
                                  "reason": "特殊检查目录重新制定"}).status_code == 302
    db_session.refresh(special)
    assert special.is_active is False
    assert _check(client, his, "D1002", "special", "SP-EXAM")["reason"] == "该授权项目已停用"
    rows = list(db_session.scalars(select(AuditLog).where(AuditLog.action == "privilege.catalogue_category_updated",
                                                          AuditLog.entity_id == str(special.id))
                                   .order_by(AuditLog.id)))
    assert [(r.before["validity_years"], r.after["validity_years"], r.after["is_active"]) for r in rows] == [
        (2, 3, True), (3, 3, False)]
    assert rows[1].extra == {"reason": "特殊检查目录重新制定"}
    emergency = _category(db_session, "emergency")
    resp = client.post(f"{BASE}/categories/{emergency.id}", data={"csrf_token": token, "validity_years": "2",
                                                                  "is_active": "1"})
    assert resp.status_code == 400 and "按天计有效期（7 天）" in resp.get_data(as_text=True)


# ---------------------------------------------------------------- export / import


def test_export_is_exact_text_and_imports_back_unchanged(client, login, db_session):
    token = login("mao")
    resp = client.get(f"{BASE}/export.xlsx", query_string={"category": "surgery"})
    assert resp.status_code == 200
    ws = load_workbook(BytesIO(resp.data)).active
    rows = list(ws.iter_rows(values_only=True))
    assert list(rows[0][:6]) == HEADER
    codes = {r[1]: r[4] for r in rows[1:]}
    assert codes["SUR-35.2300x002"] == "35.2300x002" and all(isinstance(v, str) for v in codes.values())
    resp = client.post(f"{BASE}/import", data={"csrf_token": token, "file": (BytesIO(resp.data), "目录.xlsx")},
                       content_type="multipart/form-data", headers=JSON)
    body = resp.get_json()
    assert resp.status_code == 200 and body["errors"] == [] and body["missing"] == []
    assert body["counts"] == {"add": 0, "update": 0, "reactivate": 0, "unchanged": len(rows) - 1, "error": 0}
    full = client.get(f"{BASE}/export.xlsx").data  # every category, 新技术新项目 items included, still clean
    body = client.post(f"{BASE}/import", data={"csrf_token": token, "file": (BytesIO(full), "全部.xlsx")},
                       content_type="multipart/form-data", headers=JSON).get_json()
    assert body["errors"] == [] and body["counts"]["unchanged"] == _count(db_session, PrivilegeItem)


def test_import_preview_names_row_and_column_of_each_error(client, login, db_session):
    token = login("mao")
    items_before, audits_before = _count(db_session, PrivilegeItem), _count(db_session, AuditLog)
    rows = [
        ["surgery", "SUR-35.2300x002", "二尖瓣生物瓣膜置换术（保留瓣下结构）", "四级", "35.2300x002", "副主任医师及以上"],
        ["nonsense", "X-1", "未知类别", "", "", ""],
        ["basic", "BASIC-NEW", "新的基础项目", "三级", "", ""],
        ["surgery", "SUR-BAD", "编码错误", "三级", "99.9999x999", ""],
        ["surgery", "SUR-35.2300x002", "重复行", "四级", "35.2300x002", ""],
        ["new_tech", "NT-NEW", "新技术", "", "", ""],
    ]
    resp = _upload(client, token, rows)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400
    for message in ("第 3 行“类别编码”列：授权类别不存在：nonsense", "第 4 行“级别”列：“基础诊疗项目授权”不分级",
                    "第 5 行“手术操作编码”列：手术操作编码 99.9999x999 不在", "第 6 行“项目编码”列：与第 2 行的项目编码重复",
                    "第 7 行“类别编码”列：新技术新项目授权项目随新技术新项目立项审批自动生成"):
        assert message in html, message
    assert 'id="apply-form"' in html and "有 5 行错误" in html
    body = _upload(client, token, rows, headers=JSON).get_json()
    assert {e["path"] for e in body["errors"]} == {"rows/3/category", "rows/4/grade", "rows/5/procedure_code",
                                                   "rows/6/code", "rows/7/category"}
    assert body["counts"] == {"add": 0, "update": 1, "reactivate": 0, "unchanged": 0, "error": 5}

    resp = _upload(client, token, [["surgery", "SUR-1", "x"]], header=["类别", "名称", "级别"])
    assert resp.status_code == 400 and "缺少列：项目编码、项目名称" in resp.get_data(as_text=True)
    resp = client.post(f"{BASE}/import", data={"csrf_token": token, "file": (BytesIO(b"not excel"), "a.xlsx")},
                       content_type="multipart/form-data")
    assert resp.status_code == 400 and "无法读取该文件" in resp.get_data(as_text=True)
    assert (_count(db_session, PrivilegeItem), _count(db_session, AuditLog)) == (items_before, audits_before)


def test_import_apply_adds_updates_retires_and_reports(client, login, his, item, user, make_grant, db_session,
                                                       upload_dir):
    anes = {n: item(f"ANES-{n}") for n in (1, 2, 3, 4)}
    make_grant(user("card_doc"), anes[4])
    old_endo = item("ENDO-4")
    old_endo.is_active = False  # retired earlier, listed again by the new national list
    db_session.commit()
    assert _check(client, his, "D2002", "anesthesia", "ANES-4")["allowed"] is True
    numeric = _free_procedure(db_session, "invasive", numeric=True)
    token = login("mao")
    rows = [
        ["anesthesia", "ANES-1", anes[1].name, "一级", "", ""],  # blank 准入要求 keeps the hospital's text
        ["anesthesia", "ANES-2", "麻醉分级授权（二级，2025 版）", "2", "", "住院医师（规范化培训合格）及以上"],
        ["anesthesia", "ANES-3", anes[3].name, "三级", "", anes[3].requirements],
        ["endoscopy", "ENDO-4", old_endo.name, "四级", "", ""],
        ["invasive", "", "新增有创操作", "", float(numeric), "经培训考核合格"],  # a numeric cell loses its zeros
        ["anesthesia", "ANES-5", "麻醉分级授权（五级）", "五级", "", ""],  # error: skipped, reported
    ]
    invasive = db_session.scalar(select(func.count()).select_from(PrivilegeItem).join(PrivilegeCategory)
                                 .where(PrivilegeCategory.code == "invasive", PrivilegeItem.is_active.is_(True)))
    retiring = 1 + 3 + invasive  # ANES-4, ENDO-1..3 and every invasive item: the file's categories only
    preview = _upload(client, token, rows)
    html = preview.get_data(as_text=True)
    assert preview.status_code == 400 and "第 7 行“级别”列" in html
    assert "ANES-4" in html and "ENDO-1" in html  # listed as absent from the file (its categories only)
    assert "BASIC-DIAG" not in html
    apply_token = re.search(r'name="token" value="([0-9a-f]{32})"', html).group(1)

    resp = client.post(f"{BASE}/import/apply", data={"csrf_token": token, "token": apply_token, "retire_missing": "1",
                                                     "reason": ""})
    assert resp.status_code == 400 and "请填写导入原因" in resp.get_data(as_text=True)
    db_session.refresh(anes[2])
    assert anes[2].name == "麻醉分级授权（二级）" and anes[4].is_active

    resp = client.post(f"{BASE}/import/apply", data={"csrf_token": token, "token": apply_token, "retire_missing": "1",
                                                     "filename": "国家目录.xlsx", "reason": "国卫医政发〔2025〕1号"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert f"新增 1 项，更新 2 项，停用 {retiring} 项，无变化 2 项，错误 1 行" in html, html[:3000]
    added = db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == f"INV-{numeric}"))
    assert added is not None and added.procedure_code == numeric and added.is_active
    for model in (anes[1], anes[2], anes[4], old_endo):
        db_session.refresh(model)
    assert anes[1].requirements and anes[1].is_active
    assert (anes[2].name, anes[2].grade, anes[2].grade_level) == ("麻醉分级授权（二级，2025 版）", "二级", 2)
    assert old_endo.is_active and anes[4].is_active is False
    assert [i.is_active for i in (item("ENDO-1"), item("ENDO-2"), item("ENDO-3"))] == [False, False, False]
    assert db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == "ANES-5")) is None
    assert item("BASIC-DIAG").is_active and item("SUR-35.2300x002").is_active
    assert _check(client, his, "D2002", "anesthesia", "ANES-4")["reason"] == "该授权项目已停用"

    created = _audits(db_session, "privilege.catalogue_item_created", added)
    assert len(created) == 1 and created[0].extra["via"] == "import" and created[0].extra["line"] == 6
    [updated] = _audits(db_session, "privilege.catalogue_item_updated", anes[2])
    assert updated.before["name"] == "麻醉分级授权（二级）" and updated.extra["reason"] == "国卫医政发〔2025〕1号"
    assert len(_audits(db_session, "privilege.catalogue_item_reactivated", old_endo)) == 1
    [retired] = _audits(db_session, "privilege.catalogue_item_retired", anes[4])
    assert retired.extra["active_grants"] == 1 and retired.extra["file"] == "国家目录.xlsx"
    assert _audits(db_session, "privilege.catalogue_item_updated", anes[1]) == []  # unchanged rows leave no trace
    [summary] = _audits(db_session, "privilege.catalogue_imported")
    assert summary.after == {"added": 1, "updated": 2, "retired": retiring, "errors": 1, "rows": 6}
    assert not list(upload_dir.rglob("*.xlsx"))  # the kept upload is removed once applied
    resp = client.post(f"{BASE}/import/apply", data={"csrf_token": token, "token": apply_token, "reason": "再次"})
    assert resp.status_code == 400 and "已过期或不存在" in resp.get_data(as_text=True)
