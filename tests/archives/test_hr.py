"""HR/HRP staff import: differences for 医务处, new staff pending confirmation, rejected rows with reasons."""

from __future__ import annotations

from io import BytesIO

from openpyxl import Workbook
from sqlalchemy import func, select

from app.archives import hr, services
from app.archives.models import HrDiff
from app.audit.models import AuditLog
from app.auth.models import User

NEW_ID = "330106199003071228"


def _xlsx(rows: list[list]) -> bytes:
    wb = Workbook()
    ws = wb.active
    ws.append(["工号", "姓名", "科室编码", "职称", "手机号", "身份证号", "入职日期"])
    for r in rows:
        ws.append(r)
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


ROWS = [
    ["D1002", "陈医生", "1001", "副主任医师", "13800001111", None, None],        # title and phone differ
    ["H5001", "钱新人", "1002", "住院医师", "13900002222", NEW_ID, "2024-08-01"],  # unknown: created, pending
    ["H5002", "孙错号", "1002", "住院医师", "1234", None, None],                  # bad phone
    ["H5003", "", "9999", None, None, "330106199003071229", "2099-01-01"],        # several problems
    ["H5001", "钱新人", "1002", None, None, None, None],                         # duplicate staff no in the file
    ["D2002", "孙医生", "1002", "副主任医师", None, None, None],                  # identical: unchanged
]


def test_excel_import_records_diffs_creates_pending_staff_and_rejects_bad_rows(deployed, user, db_session):
    mao = user("mao")
    rows = hr.read_rows("人事.xlsx", _xlsx(ROWS))
    assert rows[0]["staff_no"] == "D1002" and rows[0]["dept_code"] == "1001"
    batch = hr.import_rows(rows=rows, actor=mao, source="file", filename="人事.xlsx")
    assert (batch.total, batch.created_count, batch.unchanged_count, batch.rejected_count) == (6, 1, 1, 3)
    report = {r["row"]: r for r in batch.report}
    assert report[1]["status"] == "diff" and set(report[1]["fields"]) == {"职称", "手机号"}
    assert report[2]["status"] == "created"
    assert report[3]["errors"] == [{"path": "staff/2/phone", "message": "手机号应为 1 开头的 11 位数字"}]
    bad = {e["path"].split("/")[-1]: e["message"] for e in report[4]["errors"]}
    assert set(bad) == {"name", "dept_code", "id_number", "hire_date"}
    assert "9999" in bad["dept_code"] and "校验位" in bad["id_number"]
    assert "重复" in report[5]["errors"][0]["message"]
    assert report[6]["status"] == "unchanged"
    diffs = {d.field: d for d in db_session.scalars(select(HrDiff).where(HrDiff.batch_id == batch.id))}
    assert set(diffs) == {"title", "phone"}
    assert (diffs["title"].ours, diffs["title"].theirs) == ("主治医师", "副主任医师")
    new = db_session.scalar(select(User).where(User.staff_no == "H5001"))
    assert new.is_active is False and new.password_hash is None and new.dept.code == "CARD"
    profile = services.get_profile(new)
    assert profile.hr_pending and profile.id_number == NEW_ID and profile.birth_date.isoformat() == "1990-03-07"
    assert profile.gender == "女"  # 17th digit even
    # the same data again adds no second open diff
    again = hr.import_rows(rows=rows, actor=mao, source="file")
    assert again.created_count == 0
    assert db_session.scalar(select(func.count()).select_from(HrDiff).where(
        HrDiff.user_id == user("gs_doc").id, HrDiff.status == "open")) == 2


def test_accepting_a_diff_updates_the_archive_and_ignoring_keeps_ours(deployed, user, db_session):
    mao, doc = user("mao"), user("gs_doc")
    old_id = services.profile_data(doc)["id_number"]
    batch = hr.import_rows(rows=[{"staff_no": "D1002", "name": "陈医生", "dept_code": "1001", "title": "副主任医师",
                                  "phone": "13800001111", "id_number": NEW_ID}], actor=mao, source="file")
    diffs = {d.field: d for d in db_session.scalars(select(HrDiff).where(HrDiff.batch_id == batch.id))}
    hr.accept_diff(diff=diffs["title"], actor=mao)
    hr.accept_diff(diff=diffs["id_number"], actor=mao)
    hr.ignore_diff(diff=diffs["phone"], actor=mao)
    db_session.refresh(doc)
    assert doc.title == "副主任医师" and doc.phone != "13800001111"
    assert services.get_profile(doc).id_number == NEW_ID
    [version] = [v for v in services.entry_history(entry=services.profile_entry(doc), viewer=mao)
                 if v.record.source == "hr"]
    changes = {c.name: (c.old, c.new) for c in version.changes}
    assert changes["id_number"] == (old_id, NEW_ID)
    assert changes["birth_date"] == ("1986-09-02", "1990-03-07")  # follows the ID number
    assert {d.status for d in diffs.values()} == {"accepted", "ignored"}
    assert db_session.scalar(select(func.count()).select_from(AuditLog).where(
        AuditLog.action == "archive.hr_diff_accepted")) >= 2


def test_hr_api_takes_a_bearer_token_and_reports_each_row(deployed, client, user, db_session):
    from app.auth.services import create_api_token

    token = create_api_token(system="HRP")
    body = {"staff": [{"staff_no": "H6001", "name": "李推送", "dept_code": "2001", "title": "主治医师",
                       "hire_date": "2023-03-01"},
                      {"staff_no": "H6002", "name": "王坏", "phone": "12"}, "not a row"]}
    assert client.post("/api/v1/hr/staff", json=body).status_code == 401
    resp = client.post("/api/v1/hr/staff", json=body, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    out = resp.get_json()
    assert (out["total"], out["created"], out["rejected"]) == (3, 1, 2)
    assert out["rows"][1]["errors"][0]["path"] == "staff/1/phone"
    assert out["rows"][2]["errors"][0]["path"] == "staff/2"
    created = db_session.scalar(select(User).where(User.staff_no == "H6001"))
    assert created.dept.code == "ORTH" and not created.is_active
    bad = client.post("/api/v1/hr/staff", json={"staff": "x"}, headers={"Authorization": f"Bearer {token}"})
    assert bad.status_code == 400 and bad.get_json()["error"]["errors"][0]["path"] == "staff"


def test_office_confirms_new_staff_with_a_role(deployed, user, db_session, client, login):
    mao = user("mao")
    hr.import_rows(rows=[{"staff_no": "H7001", "name": "赵确认", "dept_code": "1001"}], actor=mao, source="file")
    new = db_session.scalar(select(User).where(User.staff_no == "H7001"))
    token = login("mao")
    page = client.get("/archives/hr").get_data(as_text=True)
    assert "赵确认" in page and "待确认的新增人员（" in page
    resp = client.post(f"/archives/hr/staff/{new.id}/confirm", data={"csrf_token": token, "role_code": "physician"})
    assert resp.status_code == 302
    db_session.refresh(new)
    assert new.is_active and "physician" in new.role_codes and not services.get_profile(new).hr_pending


def test_file_import_page_shows_the_batch_report(deployed, client, login, db_session):
    token = login("mao")
    resp = client.post("/archives/hr/import", data={"csrf_token": token,
                                                    "file": (BytesIO(_xlsx(ROWS)), "hr.xlsx")},
                       content_type="multipart/form-data")
    assert resp.status_code == 302
    html = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "拒绝 3 行" in html and "手机号应为 1 开头的 11 位数字" in html and "HIS 科室编码" in html
    csv = "工号,姓名,科室编码\nD1003,刘医生,1001\n".encode("gb18030")
    resp = client.post("/archives/hr/import", data={"csrf_token": token, "file": (BytesIO(csv), "hr.csv")},
                       content_type="multipart/form-data")
    assert resp.status_code == 302
    nurse_token = login("gs_doc")
    assert client.post("/archives/hr/import", data={"csrf_token": nurse_token}).status_code == 403
