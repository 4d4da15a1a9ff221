"""HR/HRP staff import: differences for 医务处, new staff pending confirmation, rejected rows with reasons."""

from __future__ import annotations

from io import BytesIO

import pytest
from openpyxl import Workbook
from sqlalchemy import func, select

from app.archives import hr, services
from app.archives.models import ArchiveProfile, HrDiff
from app.audit.models import AuditLog
from app.auth.models import User
from app.errors import InvalidTransition

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
    # a file's rows are reported by their row in the sheet (the header is row 1)
    report = {r["row"]: r for r in batch.report}
    assert report[2]["status"] == "diff" and set(report[2]["fields"]) == {"职称", "手机号"}
    assert report[3]["status"] == "created"
    assert report[4]["errors"] == [{"path": "staff/2/phone", "message": "手机号应为 1 开头的 11 位数字"}]
    bad = {e["path"].split("/")[-1]: e["message"] for e in report[5]["errors"]}
    assert set(bad) == {"name", "dept_code", "id_number", "hire_date"}
    assert "9999" in bad["dept_code"] and "校验位" in bad["id_number"]
    assert "重复" in report[6]["errors"][0]["message"] and "第 3 行" in report[6]["errors"][0]["message"]
    assert report[7]["status"] == "unchanged"
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


# ---------------------------------------------------------------- identifiers read from Excel as exact text

X_ID = "33010219880514103X"  # valid, check digit X
LOST_ID = 3.30102199001011e17  # what Excel keeps of 330102199001011007 typed into a numeric cell


def _sheet(rows: list[list], formats: dict[str, str] | None = None) -> bytes:
    """An .xlsx with the HR header and cells as given: numbers stay numeric cells, strings stay text cells."""
    wb = Workbook()
    ws = wb.active
    ws.append(["工号", "姓名", "科室编码", "手机号", "身份证号"])
    for r in rows:
        ws.append(r)
    for coord, fmt in (formats or {}).items():
        ws[coord].number_format = fmt
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


def test_numeric_excel_cells_are_read_as_exact_identifier_text(db_session):
    content = _sheet([
        [5101, "数字工号", 1001.0, 13900003333, X_ID],          # numeric work no., float dept code, numeric phone
        [1001, "补零工号", "1002", "13900004444", X_ID.lower()],  # numeric work no. shown as 001001
        ["H5103", "文本单元格", "1001", "139 0000 5555", None],
    ], formats={"A3": "000000"})
    rows = hr.read_rows("人事.xlsx", content)
    assert [r.line for r in rows] == [2, 3, 4]
    assert (rows[0]["staff_no"], rows[0]["dept_code"], rows[0]["phone"], rows[0]["id_number"]) == (
        "5101", "1001", "13900003333", X_ID)
    assert rows[1]["staff_no"] == "001001" and rows[1]["dept_code"] == "1002"
    assert rows[2]["phone"] == "139 0000 5555" and rows[2]["id_number"] == ""
    assert not any(r.problems for r in rows)
    for r in rows:
        assert not any(v.endswith(".0") or "e+" in v.lower() for v in r.values())


def test_id_number_excel_stored_as_a_float_rejects_only_its_row(deployed, user, db_session):
    mao = user("mao")
    content = _sheet([
        ["H5201", "钱科学", "1001", "13900006666", LOST_ID],
        ["H5202", "孙文本", "1001", 13900007777, X_ID.lower()],
        ["H5203", "李正确", 1002, None, "330102199001011007"],
    ])
    rows = hr.read_rows("人事.xlsx", content)
    assert set(rows[0].problems) == {"id_number"}
    batch = hr.import_rows(rows=rows, actor=mao, source="file", filename="人事.xlsx")
    assert (batch.total, batch.created_count, batch.rejected_count) == (3, 2, 1)
    report = {r["row"]: r for r in batch.report}
    [error] = report[2]["errors"]
    assert error["path"] == "staff/0/id_number"
    message = error["message"]
    assert message.startswith("第 2 行“身份证号”列") and "3.30102199001011E+17" in message
    assert "15 位有效数字" in message and "文本" in message
    # never imported with a wrong ID number
    assert db_session.scalar(select(User).where(User.staff_no == "H5201")) is None
    assert db_session.scalar(select(func.count()).select_from(ArchiveProfile).where(
        ArchiveProfile.id_number.like("330102199001011%"))) == 1
    x_staff = db_session.scalar(select(User).where(User.staff_no == "H5202"))
    profile = services.get_profile(x_staff)
    assert profile.id_number == X_ID and profile.birth_date.isoformat() == "1988-05-14"
    assert x_staff.phone == "13900007777"
    assert services.get_profile(db_session.scalar(select(User).where(User.staff_no == "H5203"))).id_number == (
        "330102199001011007")
    html_rows = {r["row"] for r in batch.report if r["status"] == "created"}
    assert html_rows == {3, 4}


def test_import_page_names_the_row_and_column_of_a_lost_id_number(deployed, client, login, db_session):
    token = login("mao")
    content = _sheet([["H5301", "页面科学", "1001", None, LOST_ID], ["H5302", "页面正常", "1001", None, X_ID]])
    resp = client.post("/archives/hr/import", data={"csrf_token": token, "file": (BytesIO(content), "hr.xlsx")},
                       content_type="multipart/form-data")
    assert resp.status_code == 302
    html = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "拒绝 1 行" in html and "第 2 行“身份证号”列以数字形式保存为 3.30102199001011E+17" in html


def test_id_number_checksum_and_lost_digits_from_csv_and_json(deployed, user, db_session):
    mao = user("mao")
    csv = ("工号,姓名,身份证号,手机号\n"
           "H5401,周校验,330102199001011008,\n"      # wrong check digit
           "H5402,吴科学,3.30102E+17,\n"             # Excel's CSV export of a numeric cell
           "H5403,郑小数,,13900008888.0\n"            # a float turned into text: still the exact number
           "H5404,王大写,33010219880514103x,\n").encode()
    rows = hr.read_rows("人事.csv", csv)
    batch = hr.import_rows(rows=rows, actor=mao, source="file", filename="人事.csv")
    report = {r["row"]: r for r in batch.report}
    assert report[2]["errors"] == [{"path": "staff/0/id_number", "message": "身份证号校验位不正确，请核对"}]
    assert report[3]["errors"][0]["message"].startswith("第 3 行“身份证号”列以数字形式保存为 3.30102E+17")
    assert report[4]["status"] == "created" and report[5]["status"] == "created"
    assert db_session.scalar(select(User.phone).where(User.staff_no == "H5403")) == "13900008888"
    # the API too: a JSON number cannot carry 18 digits, an integer-valued float is taken as its digits
    api = hr.import_rows(rows=[{"staff_no": "H5501", "name": "接口浮点", "id_number": LOST_ID},
                               {"staff_no": 5502.0, "name": "接口整数", "phone": 13900009999}],
                         actor=mao, source="api", system="HRP")
    first, second = api.report
    assert first["status"] == "rejected" and first["errors"][0]["path"] == "staff/0/id_number"
    assert first["errors"][0]["message"].startswith("身份证号以数字形式保存为 3.30102199001011E+17")
    assert second["status"] == "created" and second["staff_no"] == "5502"
    assert db_session.scalar(select(User.phone).where(User.staff_no == "5502")) == "13900009999"


# ---------------------------------------------------------------- in-service status, summary notifications


def _status_sheet(rows: list[list]) -> bytes:
    wb = Workbook()
    ws = wb.active
    ws.append(["工号", "姓名", "科室编码", "人员状态"])
    for r in rows:
        ws.append(r)
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


def test_a_departure_reported_by_hr_is_flagged_never_applied(deployed, user, db_session):
    mao, doc = user("mao"), user("gs_doc")
    rows = hr.read_rows("人事.xlsx", _status_sheet([
        ["D1002", "陈医生", "1001", "离职"],
        ["D1003", "刘医生", "1001", "在职"],
        ["H8001", "钱已走", "1001", "退休"],
        ["H8002", "孙怪状态", "1001", "停薪留职"],
    ]))
    batch = hr.import_rows(rows=rows, actor=mao, source="file", filename="人事.xlsx")
    report = {r["staff_no"]: r for r in batch.report}
    assert report["D1002"]["status"] == "diff" and report["D1002"]["fields"] == ["人事系统报告离职"]
    assert report["D1002"]["departure_reported"] == "离职"
    assert report["D1003"]["status"] == "unchanged"
    assert report["H8001"]["status"] == "skipped" and "未新建" in report["H8001"]["note"]
    assert db_session.scalar(select(User).where(User.staff_no == "H8001")) is None
    assert report["H8002"]["errors"][0]["path"] == "staff/3/status"
    assert "在职、离职、退休、辞退" in report["H8002"]["errors"][0]["message"]
    # nothing applied: the account and its grants stay as they were
    db_session.refresh(doc)
    assert doc.departed_at is None and doc.is_active
    [flag] = hr.reported_departures()
    assert (flag.user_id, flag.field, flag.ours, flag.theirs) == (doc.id, "status", "在职", "离职")
    with pytest.raises(InvalidTransition):
        hr.accept_diff(diff=flag, actor=mao)
    assert hr.departure_prefill(flag)["kind"] == "resignation"
    assert f"导入批次 {batch.id}" in hr.departure_prefill(flag)["reason"]
    # the same report again adds nothing; HR reporting the person in service again withdraws the flag
    again = hr.import_rows(rows=rows, actor=mao, source="file")
    assert again.diff_count == 0 and len(hr.reported_departures()) == 1
    hr.import_rows(rows=[{"staff_no": "D1002", "name": "陈医生", "status": "在职"}], actor=mao, source="api")
    assert hr.reported_departures() == [] and flag.status == "superseded"


def test_hr_api_takes_the_status_in_english_codes(deployed, client, user, db_session):
    from app.auth.services import create_api_token

    token = create_api_token(system="HRP")
    body = {"staff": [{"staff_no": "D2002", "name": "孙医生", "status": "retired"},
                      {"staff_no": "D1003", "name": "刘医生", "status": "Dismissed"},
                      {"staff_no": "D3001", "name": "周医生", "status": "active"},
                      {"staff_no": "H8101", "name": "王状态", "status": "on_leave"}]}
    resp = client.post("/api/v1/hr/staff", json=body, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    out = resp.get_json()
    assert [r["status"] for r in out["rows"]] == ["diff", "diff", "unchanged", "rejected"]
    assert out["rows"][3]["errors"][0]["path"] == "staff/3/status"
    theirs = {d.user.staff_no: d.theirs for d in hr.reported_departures()}
    assert theirs == {"D2002": "退休", "D1003": "辞退"}
    assert user("card_doc").departed_at is None


def test_each_batch_with_new_staff_or_differences_notifies_the_office_once(deployed, client, login, user,
                                                                           db_session):
    from app.notify.models import Notification

    mao, admin = user("mao"), user("admin")

    def summaries(u) -> list[Notification]:
        return list(db_session.scalars(select(Notification).where(Notification.user_id == u.id,
                                                                  Notification.title.like("人事数据导入批次%"))))

    batch = hr.import_rows(rows=[{"staff_no": "D1002", "name": "陈医生", "title": "副主任医师", "status": "离职"},
                                 {"staff_no": "H8201", "name": "新同事", "dept_code": "1001"}],
                           actor="HRP（接口）", source="api", system="HRP")
    [note] = summaries(mao)
    assert note.link == f"/archives/hr?batch={batch.id}" and note.kind == "info"
    assert note.title == f"人事数据导入批次 {batch.id}：新增待确认 1 人，差异 2 项（1 人），人事系统报告离职 1 人"
    assert "接口 HRP" in note.body
    assert len(summaries(admin)) == 1  # every holder of archives.manage
    assert not summaries(user("gs_head"))
    # nothing new: no notification
    hr.import_rows(rows=[{"staff_no": "D1002", "name": "陈医生", "title": "副主任医师", "status": "离职"}],
                   actor=mao, source="file", filename="again.xlsx")
    assert len(summaries(mao)) == 1
    # the link opens the HR page on that batch's differences
    login("mao")
    html = client.get(note.link).get_data(as_text=True)
    assert f"导入批次 {batch.id}" in html and "副主任医师" in html


def test_hr_page_flags_the_reported_departure_and_opens_the_registration_prefilled(
        deployed, client, login, user, db_session):
    from app.archives.models import Departure

    doc = user("gs_doc2")
    batch = hr.import_rows(rows=[{"staff_no": "D1003", "name": "刘医生", "status": "退休"}], actor=user("mao"),
                           source="file", filename="人事.xlsx")
    token = login("mao")
    html = client.get("/archives/hr").get_data(as_text=True)
    assert 'id="departures-reported"' in html and "人事系统报告离职" in html and "刘医生" in html
    assert f"/archives/{doc.id}/departure?kind=retirement" in html
    [flag] = hr.reported_departures()
    prefill = hr.departure_prefill(flag)
    form = client.get(f"/archives/{doc.id}/departure", query_string=prefill)
    assert form.status_code == 200
    page = form.get_data(as_text=True)
    assert 'value="retirement" checked' in page and f"人事系统报告退休（导入批次 {batch.id}" in page
    assert "人事系统报告该人员离职" in page
    assert doc.departed_at is None  # opening the form changes nothing
    resp = client.post(f"/archives/{doc.id}/departure", data={
        "csrf_token": token, "kind": prefill["kind"], "departure_date": services.today().isoformat(),
        "reason": prefill["reason"]})
    assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
    db_session.refresh(doc)
    assert doc.departed_at is not None
    row = db_session.scalar(select(Departure).where(Departure.user_id == doc.id))
    assert row.kind == "retirement"
    db_session.refresh(flag)
    assert flag.status == "accepted" and flag.decided_by_id == user("mao").id
    assert "没有人事系统报告的离职" in client.get("/archives/hr").get_data(as_text=True)
    # once registered, HR's report of the departure is consistent: nothing new is flagged
    again = hr.import_rows(rows=[{"staff_no": "D1003", "name": "刘医生", "status": "退休"}], actor=user("mao"),
                           source="file")
    assert again.diff_count == 0 and hr.reported_departures() == []
    # accepting through the generic diff action is refused
    other = hr.import_rows(rows=[{"staff_no": "D1002", "name": "陈医生", "status": "离职"}], actor=user("mao"),
                           source="file")
    [flag2] = hr.reported_departures()
    assert flag2.batch_id == other.id
    refused = client.post(f"/archives/hr/diffs/{flag2.id}/accept", data={"csrf_token": token})
    assert refused.status_code == 409 and "不会自动生效" in refused.get_data(as_text=True)
    assert user("gs_doc").departed_at is None


# ---------------------------------------------------------------- the departure date HR reports


def _departure_sheet(rows: list[list], header: str = "离职日期") -> bytes:
    wb = Workbook()
    ws = wb.active
    ws.append(["工号", "姓名", "人员状态", header])
    for r in rows:
        ws.append(r)
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


def test_departure_date_is_read_from_excel_date_cells_and_text_and_bad_dates_name_row_and_column(
        deployed, user, db_session):
    from datetime import datetime, timedelta

    mao = user("mao")
    today = services.today()
    left = today - timedelta(days=10)
    content = _departure_sheet([
        ["D1002", "陈医生", "离职", left],                                          # a date cell
        ["D1003", "刘医生", "退休", f"{left.year}/{left.month}/{left.day}"],        # text, unpadded
        ["D2002", "孙医生", "辞退", datetime(left.year, left.month, left.day, 17, 30)],  # a date-time cell
        ["D3001", "周医生", "在职", left],                                          # in service: the date means nothing
        ["H9001", "钱数字", "离职", 45413],                                         # Excel's serial in a General cell
        ["H9002", "孙太远", "离职", today + timedelta(days=91)],                    # too far ahead
        ["H9003", "李乱写", "离职", "2024-02-30"],                                 # no such day
    ])
    rows = hr.read_rows("人事.xlsx", content)
    assert [r["departure_date"] for r in rows[:3]] == [left.isoformat()] * 3
    batch = hr.import_rows(rows=rows, actor=mao, source="file", filename="人事.xlsx")
    report = {r["row"]: r for r in batch.report}
    assert report[2]["departure_reported"] == "离职" and report[2]["departure_date"] == left.isoformat()
    assert report[5]["status"] == "unchanged"
    assert batch.rejected_count == 3
    [serial] = report[6]["errors"]
    assert serial["path"] == "staff/4/departure_date"
    assert serial["message"].startswith("第 6 行“离职日期”列是数字 45413，不是日期") and "日期格式" in serial["message"]
    [ahead] = report[7]["errors"]
    assert ahead["message"] == (f"第 7 行“离职日期”列为 {(today + timedelta(days=91)).isoformat()}，"
                                "晚于今天超过 90 天，请核对")
    assert report[8]["errors"][0]["message"] == "第 8 行“离职日期”列“2024-02-30”不是有效的日期（如 2024-05-01）"
    flags = {d.user.staff_no: d for d in hr.reported_departures()}
    assert set(flags) == {"D1002", "D1003", "D2002"}
    assert {d.departure_date for d in flags.values()} == {left}
    # nothing applied
    assert user("gs_doc").departed_at is None and user("card_doc").departed_at is None


def test_departure_time_column_and_the_api_field(deployed, client, user, db_session):
    from datetime import timedelta

    from app.auth.services import create_api_token

    today = services.today()
    soon = today + timedelta(days=30)
    csv = f"工号,姓名,人员状态,离职时间\nD1002,陈医生,离职,{today.year}年{today.month}月{today.day}日 09:00\n".encode()
    rows = hr.read_rows("人事.csv", csv)
    assert rows[0]["departure_date"] == today.isoformat()
    token = create_api_token(system="HRP")
    body = {"staff": [{"staff_no": "D1003", "name": "刘医生", "status": "retired", "departure_date": soon.isoformat()},
                      {"staff_no": "D2002", "name": "孙医生", "status": "离职", "departure_date": "下个月"},
                      {"staff_no": "D3001", "name": "周医生", "status": "离职", "departure_date": 20240501}]}
    out = client.post("/api/v1/hr/staff", json=body, headers={"Authorization": f"Bearer {token}"}).get_json()
    assert [r["status"] for r in out["rows"]] == ["diff", "rejected", "rejected"]
    assert out["rows"][0]["departure_date"] == soon.isoformat()
    assert out["rows"][1]["errors"] == [{"path": "staff/1/departure_date",
                                         "message": "离职日期“下个月”不是有效的日期（如 2024-05-01）"}]
    assert out["rows"][2]["errors"][0]["path"] == "staff/2/departure_date"
    assert out["rows"][2]["errors"][0]["message"].startswith("离职日期是数字 20240501")
    [flag] = hr.reported_departures()
    assert flag.departure_date == soon


def test_a_new_departure_date_supersedes_the_flag_and_an_empty_one_keeps_it(deployed, user, db_session):
    from datetime import timedelta

    mao = user("mao")
    first, second = services.today() - timedelta(days=3), services.today() - timedelta(days=1)
    hr.import_rows(rows=[{"staff_no": "D1002", "name": "陈医生", "status": "离职"}], actor=mao, source="api")
    [flag] = hr.reported_departures()
    assert flag.departure_date is None and "departure_date" not in hr.departure_prefill(flag)
    # HR now sends the date: the flag is replaced by one carrying it
    batch = hr.import_rows(rows=[{"staff_no": "D1002", "name": "陈医生", "status": "离职",
                                  "departure_date": first.isoformat()}], actor=mao, source="api")
    assert batch.diff_count == 1 and flag.status == "superseded"
    [dated] = hr.reported_departures()
    assert dated.departure_date == first
    # the same date, or none at all, changes nothing
    for extra in ({"departure_date": first.isoformat()}, {}):
        again = hr.import_rows(rows=[{"staff_no": "D1002", "name": "陈医生", "status": "离职", **extra}],
                               actor=mao, source="api")
        assert again.diff_count == 0 and hr.reported_departures() == [dated]
    # a corrected date replaces it again
    hr.import_rows(rows=[{"staff_no": "D1002", "name": "陈医生", "status": "离职",
                          "departure_date": second.isoformat()}], actor=mao, source="api")
    [corrected] = hr.reported_departures()
    assert corrected.departure_date == second and dated.status == "superseded"
    # someone unknown who has left: the note gives the date
    skipped = hr.import_rows(rows=[{"staff_no": "H9101", "name": "钱已走", "status": "退休",
                                    "departure_date": first.isoformat()}], actor=mao, source="api")
    assert f"人事系统报告已退休（离职日期 {first.isoformat()}）" in skipped.report[0]["note"]


def test_the_registration_form_is_prefilled_with_the_date_hr_reported(deployed, client, login, user, db_session):
    from datetime import timedelta

    from app.archives.models import Departure

    mao, doc, doc2 = user("mao"), user("gs_doc2"), user("gs_doc")
    left, ahead = services.today() - timedelta(days=5), services.today() + timedelta(days=20)
    batch = hr.import_rows(rows=[{"staff_no": "D1003", "name": "刘医生", "status": "退休",
                                  "departure_date": left.isoformat()},
                                 {"staff_no": "D1002", "name": "陈医生", "status": "离职",
                                  "departure_date": ahead.isoformat()}], actor=mao, source="file",
                           filename="人事.xlsx")
    token = login("mao")
    html = client.get("/archives/hr").get_data(as_text=True)
    assert f"离职日期 {left.isoformat()}" in html and f"离职日期 {ahead.isoformat()}" in html
    assert "尚未到，请在离职当日登记" in html
    assert f"departure_date={left.isoformat()}" in html
    assert f"departure_date={ahead.isoformat()}" not in html  # a registration cannot be dated ahead
    batch_html = client.get(f"/archives/hr/batches/{batch.id}").get_data(as_text=True)
    assert f"人事系统报告退休，离职日期 {left.isoformat()}" in batch_html
    flags = {d.user_id: d for d in hr.reported_departures()}
    prefill = hr.departure_prefill(flags[doc.id])
    assert prefill["departure_date"] == left.isoformat()
    assert "departure_date" not in hr.departure_prefill(flags[doc2.id])
    page = client.get(f"/archives/{doc.id}/departure", query_string=prefill).get_data(as_text=True)
    assert f'value="{left.isoformat()}"' in page and "已预填离职类型、人事系统的离职日期和原因" in page
    resp = client.post(f"/archives/{doc.id}/departure", data={"csrf_token": token, **prefill})
    assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
    row = db_session.scalar(select(Departure).where(Departure.user_id == doc.id))
    assert row.departure_date == left and row.kind == "retirement"
    db_session.refresh(flags[doc.id])
    assert flags[doc.id].status == "accepted"
