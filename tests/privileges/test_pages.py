"""Pages: 申请权限, 我的申请, 授权查询 (+ Excel), 权限目录 — permissions, CSRF, scoping, export."""

from __future__ import annotations

from io import BytesIO

from openpyxl import load_workbook
from sqlalchemy import func, select

from app.privileges.models import PrivilegeApplication


def test_pharmacist_is_refused_every_privilege_page(client, login):
    login("pharm")
    for url in ("/privileges/grants", "/privileges/grants/export.xlsx", "/privileges/apply",
                "/privileges/applications", "/privileges/catalogue"):
        assert client.get(url).status_code == 403, url


def test_nurse_applies_but_does_not_browse_the_departments_grants(client, login):
    login("nurse")  # 护理操作 (seed 000 §三.5): privileges.apply only
    for url in ("/privileges/grants", "/privileges/grants/export.xlsx"):
        assert client.get(url).status_code == 403, url
    for url in ("/privileges/apply", "/privileges/applications", "/privileges/catalogue"):
        assert client.get(url).status_code == 200, url


def test_apply_page_browses_the_catalogue(client, login):
    login("gs_doc")
    html = client.get("/privileges/apply").get_data(as_text=True)
    assert "申请医疗权限" in html and "手术（介入）分级及治疗性操作授权" in html and 'name="csrf_token"' in html
    page = client.get("/privileges/apply", query_string={"category": "special", "q": "抗菌"}).get_data(as_text=True)
    assert "特殊使用级" in page and "诊疗权限" not in page
    graded = client.get("/privileges/apply", query_string={"category": "surgery", "grade": "4"}).get_data(as_text=True)
    assert "四级" in graded and "共 " in graded


def test_post_without_csrf_is_refused(client, login, item):
    login("gs_doc")
    resp = client.post("/privileges/apply", data={"item_ids": [item("BASIC-DIAG").id], "reason": "x"})
    assert resp.status_code == 400


def test_bad_submission_shows_the_errors_and_creates_nothing(client, login, db_session):
    token = login("gs_doc")
    before = db_session.scalar(select(func.count()).select_from(PrivilegeApplication))
    resp = client.post("/privileges/apply", data={"csrf_token": token, "item_ids": ["99999999"], "reason": ""})
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert "“申请理由”为必填项" in html and "授权项目不存在" in html
    assert db_session.scalar(select(func.count()).select_from(PrivilegeApplication)) == before


def test_cart_then_submit_starts_the_flow_and_lists_it(client, login, item, fake_start):
    token = login("gs_doc")
    diag, rx = item("BASIC-DIAG"), item("BASIC-RX")
    resp = client.post("/privileges/apply/cart", data={"csrf_token": token, "item_ids": [diag.id, rx.id],
                                                       "next": "/privileges/apply?category=basic"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/privileges/apply?category=basic")
    client.post("/privileges/apply/cart", data={"csrf_token": token, "remove": str(rx.id)})
    html = client.get("/privileges/apply").get_data(as_text=True)
    assert "已选项目（1）" in html
    resp = client.post("/privileges/apply", data={"csrf_token": token, "item_ids": [str(diag.id)],
                                                  "reason": "门诊诊疗需要"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/privileges/applications")
    assert len(fake_start) == 1
    mine = client.get("/privileges/applications").get_data(as_text=True)
    assert "诊疗权限" in mine and "审核中" in mine and f"/workflow/instances/{900001}" in mine
    assert "已选项目（0）" in client.get("/privileges/apply").get_data(as_text=True)


def test_grant_pages_are_scoped_and_export_opens(client, login, user, item, make_grant):
    make_grant(user("gs_doc"), item("BASIC-DIAG"))
    make_grant(user("card_doc"), item("SP-NARC"))
    login("gs_doc")
    html = client.get("/privileges/grants").get_data(as_text=True)
    assert "陈医生" in html and "孙医生" not in html
    resp = client.get("/privileges/grants/export.xlsx")
    assert resp.status_code == 200 and resp.mimetype.endswith("spreadsheetml.sheet")
    ws = load_workbook(BytesIO(resp.data)).active
    rows = list(ws.iter_rows(values_only=True))
    assert rows[0][:3] == ("姓名", "工号", "科室")
    assert {r[0] for r in rows[1:]} == {"陈医生"}
    login("mao")
    rows = list(load_workbook(BytesIO(client.get("/privileges/grants/export.xlsx",
                                                 query_string={"category": "special"}).data)).active
                .iter_rows(values_only=True))
    assert ("孙医生", "麻醉药品和第一类精神药品处方权") in {(r[0], r[5]) for r in rows[1:]}
    assert "陈医生" not in {r[0] for r in rows[1:]}


def test_application_detail_is_visible_to_the_dept_but_not_other_physicians(client, login, user, item, fake_start):
    from app.privileges import services

    application = services.apply(applicant=user("gs_doc"), item_ids=[item("BASIC-DIAG").id], reason="x")
    url = f"/privileges/applications/{application.id}"
    login("gs_head")
    assert client.get(url).status_code == 200
    login("gs_doc2")
    assert client.get(url).status_code == 404
    login("gs_doc")
    assert application.number in client.get(url).get_data(as_text=True)


def test_catalogue_page_searches_codes(client, login):
    login("gs_doc")
    html = client.get("/privileges/catalogue", query_string={"q": "RT-11"}).get_data(as_text=True)
    assert "体外膜肺氧合" in html and "国家限制类技术目录" in html


def test_context_renderer_shows_the_application(app, db_session, user, item, fake_start):
    from types import SimpleNamespace

    from app.privileges import flow, services

    application = services.apply(applicant=user("gs_head"), reason="手术需要",
                                 item_ids=[item("SP-ABX-3").id, item("ENDO-1").id])
    with app.test_request_context():
        html = str(flow.render_context(SimpleNamespace(id=application.instance_id, business_key=application.number)))
    assert "张主任" in html and "普外科" in html and "特殊使用级" in html and "内镜诊疗技术" in html
    assert "手术需要" in html
