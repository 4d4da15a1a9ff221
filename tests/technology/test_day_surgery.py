"""日间手术: catalogue from the 2016 recommended list, qualification flow, recorded cases (service and JSON API with
a Bearer token) and the seed's quality indicators on a known set of cases."""

from __future__ import annotations

from datetime import date
from io import BytesIO

import pytest
from openpyxl import load_workbook
from sqlalchemy import func, select

from app.errors import Forbidden, ValidationFailed
from app.technology.models import DaySurgeryCase, DaySurgeryProcedure, DaySurgeryQualification
from app.technology.services import day_surgery
from app.workflow import services as wf

START, END = date(2020, 3, 1), date(2020, 3, 31)


def _case(n: int, **over):
    data = {"external_id": f"T-{n}", "patient_name": "张三丰", "patient_no": f"2020{n:06d}", "dept_code": "1001",
            "procedure_code": "53.00", "procedure_name": "无张力腹股沟疝修补术", "grade": 2,
            "scheduled_date": f"2020-03-{n + 1:02d}", "admitted_on": f"2020-03-{n + 1:02d}",
            "surgery_date": f"2020-03-{n + 1:02d}", "discharged_on": f"2020-03-{n + 2:02d}"}
    data.update(over)
    return data


KNOWN = [
    _case(1),
    _case(2, complication=True),
    _case(3, procedure_code="80.86", procedure_name="关节镜下膝关节清理术", grade=3, unplanned_reoperation=True,
          complication=True),
    _case(4, procedure_code="49.73", procedure_name="高位复杂肛瘘挂线治疗", grade=1, transferred=True),
    _case(5, procedure_code="80.86", procedure_name="关节镜下膝关节清理术", grade=2, delayed_discharge=True,
          unplanned_readmission=True),
    _case(6, surgery_date=None, discharged_on=None, cancelled_same_day=True, cancel_reason="血压高"),
    _case(7, procedure_code="49.73", procedure_name="高位复杂肛瘘挂线治疗", grade=1, surgery_date=None,
          discharged_on=None, cancelled_same_day=True),
]


def test_catalogue_holds_the_43_recommended_procedures(db_session):
    assert db_session.scalar(select(func.count()).select_from(DaySurgeryProcedure)) == 43
    first = db_session.scalar(select(DaySurgeryProcedure).where(DaySurgeryProcedure.code == "DS-001"))
    assert (first.procedure_name, first.icd9_code, first.specialty) == ("高位复杂肛瘘挂线治疗", "49.73", "普通外科")
    assert "演示" in first.note and first.grade in (1, 2, 3, 4)


def test_indicators_on_a_known_set_of_cases(user):
    for data in KNOWN:
        row, created = day_surgery.record_case(data=data, actor=None, source_system="TEST-HIS")
        assert created and row.patient_name == "张**"
    voided, _ = day_surgery.record_case(data=_case(8), actor=None, source_system="TEST-HIS")
    day_surgery.void_case(case_row=voided, actor=user("mao"), reason="重复登记")
    day_surgery.record_case(data=_case(9, dept_code="2001"), actor=None, source_system="TEST-HIS")  # 骨科
    f = day_surgery.indicators(viewer=user("mao"), start=START, end=END, dept_id=user("gs_doc").dept_id)
    assert (f["scheduled"], f["cases"], f["procedures"], f["cancelled_same_day"]) == (7, 5, 3, 2)
    assert f["per_grade"] == {1: 1, 2: 3, 3: 1, 4: 0}
    assert f["cancellation_rate"] == 28.57
    assert (f["unplanned_reoperations"], f["unplanned_reoperation_rate"]) == (1, 20.0)
    assert (f["complications"], f["complication_rate"]) == (2, 40.0)
    assert (f["transfers"], f["delayed_discharges"]) == (1, 1)
    assert (f["unplanned_readmissions"], f["unplanned_readmission_rate"]) == (1, 20.0)
    everyone = day_surgery.indicators(viewer=user("mao"), start=START, end=END)
    assert everyone["scheduled"] == 8
    # a department head sees only the own department
    assert day_surgery.indicators(viewer=user("card_head"), start=START, end=END)["scheduled"] == 0
    empty = day_surgery.indicators(viewer=user("mao"), start=date(2019, 1, 1), end=date(2019, 1, 2))
    assert empty["cases"] == 0 and empty["cancellation_rate"] is None


def test_case_rules_report_field_paths(user):
    bad = _case(1, grade=7, surgery_date="2020-02-01", cancelled_same_day=True, complication=True,
                dept_code="nope", patient_name="")
    with pytest.raises(ValidationFailed) as err:
        day_surgery.record_case(data=bad, actor=None, source_system="TEST-HIS", prefix="cases/0/")
    paths = {e["path"] for e in err.value.errors}
    assert {"cases/0/grade", "cases/0/surgery_date", "cases/0/complication", "cases/0/dept_code",
            "cases/0/patient_name"} <= paths
    with pytest.raises(ValidationFailed) as err:
        day_surgery.record_case(data=_case(2, discharged_on="2020-03-01"), actor=None, source_system="TEST-HIS")
    assert [e["path"] for e in err.value.errors] == ["discharged_on"]


def test_recording_is_limited_to_the_own_department(user):
    with pytest.raises(Forbidden):  # 吴护士 records for 普外科 only
        day_surgery.record_case(data=_case(1, dept_code="2001"), actor=user("nurse"))
    row, created = day_surgery.record_case(data=_case(1, external_id=""), actor=user("nurse"))
    assert created and row.source_system == "manual" and row.recorded_by_id == user("nurse").id


def test_qualification_flow_grants_and_rejects(user, do, ready, db_session):
    procs = list(db_session.scalars(select(DaySurgeryProcedure).where(DaySurgeryProcedure.specialty == "普通外科")
                                    .order_by(DaySurgeryProcedure.code).limit(2)))
    application = day_surgery.apply(applicant=user("gs_doc2"), procedure_ids=[p.id for p in procs],
                                    reason="完成疝修补 60 例")
    with pytest.raises(ValidationFailed) as err:  # already under review
        day_surgery.apply(applicant=user("gs_doc2"), procedure_ids=[procs[0].id, "x"], reason="再次")
    assert {e["path"] for e in err.value.errors} == {"procedure_ids/0", "procedure_ids/1"}
    wf.send_back(task_id=ready(application.instance_id, "dept_review")[0].id, actor=user("gs_head"), reason="补充例数")
    assert application.status == "returned"
    do(application.instance_id, "revise", "gs_doc2", revised_text="完成疝修补 80 例，无并发症", revision_note="已补充")
    do(application.instance_id, "dept_review", "gs_head", decision="approve")
    do(application.instance_id, "mao_review", "mao", decision="approve", comment="同意")
    assert application.status == "approved" and application.reason.startswith("完成疝修补 80 例")
    granted = db_session.scalars(select(DaySurgeryQualification).where(
        DaySurgeryQualification.application_id == application.id)).all()
    assert {q.procedure_id for q in granted} == {p.id for p in procs}
    assert day_surgery.is_qualified(user_id=user("gs_doc2").id, procedure_id=procs[0].id)
    other = day_surgery.apply(applicant=user("gs_doc"), procedure_ids=[procs[0].id], reason="x")
    do(other.instance_id, "dept_review", "gs_head", decision="reject", comment="经验不足")
    assert other.status == "rejected" and other.final_comment == "经验不足"


def test_api_takes_cases_with_a_bearer_token(client, db_session):
    from app.auth.services import create_api_token

    token = create_api_token(system="HIS-手麻")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/v1/technology/day-surgery/cases", json={"cases": []}).status_code == 401
    bad = client.post("/api/v1/technology/day-surgery/cases", headers=headers,
                      json={"cases": [_case(1), _case(2, grade="四", scheduled_date="2020-13-01")]})
    assert bad.status_code == 400
    paths = {e["path"] for e in bad.get_json()["error"]["errors"]}
    assert paths == {"cases/1/grade", "cases/1/scheduled_date"}
    assert db_session.scalar(select(func.count()).select_from(DaySurgeryCase)
                             .where(DaySurgeryCase.source_system == "HIS-手麻")) == 0  # all or nothing
    ok = client.post("/api/v1/technology/day-surgery/cases", headers=headers, json={"cases": KNOWN[:3]})
    assert ok.status_code == 201 and [r["status"] for r in ok.get_json()["results"]] == ["created"] * 3
    again = client.post("/api/v1/technology/day-surgery/cases", headers=headers, json=KNOWN[0])
    assert again.status_code == 200 and again.get_json()["results"][0]["status"] == "duplicate"
    figures = client.get("/api/v1/technology/day-surgery/indicators?start=2020-03-01&end=2020-03-31",
                         headers=headers).get_json()
    assert figures["cases"] == 3 and figures["per_grade"] == {"1": 0, "2": 2, "3": 1, "4": 0}
    assert client.get("/api/v1/technology/day-surgery/indicators?start=bad", headers=headers).status_code == 400


def test_indicator_page_and_excel(user, client, login):
    for data in KNOWN:
        day_surgery.record_case(data=data, actor=None, source_system="TEST-HIS")
    login("mao")
    dept = user("gs_doc").dept_id
    page = client.get(f"/technology/day-surgery/indicators?start=2020-03-01&end=2020-03-31&dept={dept}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "28.57%" in html and "日间手术当日取消" in html
    xlsx = client.get(f"/technology/day-surgery/indicators/export.xlsx?start=2020-03-01&end=2020-03-31&dept={dept}")
    ws = load_workbook(BytesIO(xlsx.data))["日间手术质量指标"]
    rows = {r[0]: r[1:] for r in ws.iter_rows(min_row=3, values_only=True)}
    assert rows["日间手术开展例数"][0] == 5 and rows["日间手术当日取消（例/率）"] == (2, 28.57)
    cases = client.get("/technology/day-surgery/cases/export.xlsx?start=2020-03-01&end=2020-03-31")
    sheet = load_workbook(BytesIO(cases.data)).active
    assert sheet.max_row == 8 and "2020" not in str(sheet["D2"].value)[:4]  # 病案号 masked
    assert client.get("/technology/day-surgery/indicators?start=2020-99-01").status_code == 400


# ---------------------------------------------------------------- catalogue edit, qualification changes, unqualified cases


def _proc(db_session, code: str = "DS-001") -> DaySurgeryProcedure:
    return db_session.scalar(select(DaySurgeryProcedure).where(DaySurgeryProcedure.code == code))


def _qualify(db_session, holder, proc, *, since: date | None = None) -> DaySurgeryQualification:
    from datetime import timedelta

    q = DaySurgeryQualification(user_id=holder.id, dept_id=holder.dept_id, procedure_id=proc.id, status="active",
                                valid_from=since or day_surgery.today() - timedelta(days=30),
                                valid_until=day_surgery.today() + timedelta(days=300))
    db_session.add(q)
    db_session.flush()
    return q


def _audit(db_session, action: str, entity) -> list:
    from app.audit.models import AuditLog

    return list(db_session.scalars(select(AuditLog).where(AuditLog.action == action,
                                                          AuditLog.entity_id == str(entity.id))))


def test_managers_confirm_a_catalogue_grade_and_take_an_item_out_of_use(user, db_session):
    from app.auth.models import Role, RolePermission, UserRole
    from app.errors import Forbidden

    proc = _proc(db_session, "DS-002")
    assert proc.grade_confirmed_at is None
    with pytest.raises(ValidationFailed) as err:
        day_surgery.update_procedure(procedure=proc, data={"grade": "5", "is_active": "也许"}, actor=user("mao"))
    assert {e["path"]: e["message"] for e in err.value.errors} == {
        "grade": "手术级别应在 1–4 之间", "is_active": "是否在用应为是或否"}
    with pytest.raises(ValidationFailed) as err:
        day_surgery.update_procedure(procedure=proc, data={"grade": ""}, actor=user("mao"))
    assert [e["path"] for e in err.value.errors] == ["grade"] and proc.grade_confirmed_at is None
    old = proc.grade
    day_surgery.update_procedure(procedure=proc, data={"grade": 4, "is_active": False}, actor=user("mao"))
    assert (proc.grade, proc.is_active, proc.grade_confirmed_by_id) == (4, False, user("mao").id)
    [row] = _audit(db_session, "technology.day_surgery_procedure_updated", proc)
    assert (row.before["grade"], row.after["grade"], row.after["is_active"]) == (old, 4, False)
    # out of use: no longer offered for applications or recorded cases
    assert proc.id not in {p.id for p in db_session.scalars(day_surgery.catalogue_query())}
    with pytest.raises(ValidationFailed) as err:
        day_surgery.apply(applicant=user("gs_doc"), procedure_ids=[proc.id], reason="x")
    assert [e["path"] for e in err.value.errors] == ["procedure_ids/0"]
    with pytest.raises(Forbidden):
        day_surgery.update_procedure(procedure=proc, data={"grade": 1, "is_active": True}, actor=user("gs_doc"))
    # privileges.manage alone is enough
    role = Role(code="priv_only", name="权限管理员（测试）", permissions=[RolePermission(permission="privileges.manage")])
    db_session.add(role)
    db_session.flush()
    holder = user("gs_doc2")
    holder.roles.append(UserRole(role=role, scope="group"))
    db_session.flush()
    holder.__dict__.pop("_perm_cache", None)
    day_surgery.update_procedure(procedure=proc, data={"grade": "1", "is_active": "1"}, actor=holder)
    assert (proc.grade, proc.is_active, proc.grade_confirmed_by_id) == (1, True, holder.id)


def test_catalogue_edit_page_shows_chinese_field_errors(client, login, user, db_session):
    proc = _proc(db_session, "DS-003")
    login("gs_doc")
    listing = client.get("/technology/day-surgery/catalogue?q=DS-003").get_data(as_text=True)
    assert 'data-code="DS-003"' in listing and f"/catalogue/{proc.id}/edit" not in listing
    assert client.get(f"/technology/day-surgery/catalogue/{proc.id}/edit").status_code == 403
    token = login("mao")
    listing = client.get("/technology/day-surgery/catalogue?q=DS-003").get_data(as_text=True)
    assert "演示值，待核定" in listing and f"/catalogue/{proc.id}/edit" in listing
    bad = client.post(f"/technology/day-surgery/catalogue/{proc.id}/edit",
                      data={"csrf_token": token, "grade": "九", "is_active": "1"})
    assert bad.status_code == 400 and "手术级别应为整数" in bad.get_data(as_text=True)
    db_session.refresh(proc)
    assert proc.grade_confirmed_at is None
    ok = client.post(f"/technology/day-surgery/catalogue/{proc.id}/edit", data={"csrf_token": token, "grade": "3"})
    assert ok.status_code == 302
    db_session.refresh(proc)
    assert (proc.grade, proc.is_active) == (3, False)  # an unticked box takes it out of use
    listing = client.get("/technology/day-surgery/catalogue?q=DS-003").get_data(as_text=True)
    assert "已核定" in listing and "停用" in listing  # editors still see it, to put it back
    login("gs_doc")
    assert 'data-code="DS-003"' not in client.get("/technology/day-surgery/catalogue?q=DS-003").get_data(as_text=True)


def test_suspend_resume_and_revoke_a_qualification(user, db_session):
    from app.errors import InvalidTransition

    doc, mao, proc = user("gs_doc"), user("mao"), _proc(db_session)
    q = _qualify(db_session, doc, proc)
    assert day_surgery.is_qualified(user_id=doc.id, procedure_id=proc.id)
    with pytest.raises(ValidationFailed) as err:
        day_surgery.suspend_qualification(qualification=q, reason=" ", actor=mao)
    assert [e["path"] for e in err.value.errors] == ["reason"]
    day_surgery.suspend_qualification(qualification=q, reason="并发症调查期间", actor=mao)
    assert q.status == "suspended" and not day_surgery.is_qualified(user_id=doc.id, procedure_id=proc.id)
    with pytest.raises(InvalidTransition):
        day_surgery.suspend_qualification(qualification=q, reason="再次", actor=mao)
    day_surgery.resume_qualification(qualification=q, reason="调查结束", actor=mao)
    assert q.status == "active" and q.suspend_reason is None
    assert day_surgery.is_qualified(user_id=doc.id, procedure_id=proc.id)
    day_surgery.revoke_qualification(qualification=q, reason="年度考核不合格", actor=mao)
    assert (q.status, q.revoke_reason, q.revoked_by_id) == ("revoked", "年度考核不合格", mao.id)
    assert q.revoked_at is not None and db_session.get(DaySurgeryQualification, q.id) is not None
    with pytest.raises(InvalidTransition):
        day_surgery.resume_qualification(qualification=q, reason="x", actor=mao)
    with pytest.raises(InvalidTransition):
        day_surgery.revoke_qualification(qualification=q, reason="x", actor=mao)
    for action in ("suspended", "resumed", "revoked"):
        [row] = _audit(db_session, f"technology.day_surgery_qualification_{action}", q)
        assert row.after["reason"]


def test_a_departed_or_disabled_holder_is_not_qualified(user, db_session):
    from app.db import utcnow

    doc, other, proc = user("gs_doc"), user("gs_doc2"), _proc(db_session)
    _qualify(db_session, doc, proc)
    _qualify(db_session, other, proc)
    doc.departed_at = utcnow()
    other.is_active = False
    db_session.flush()
    assert not day_surgery.is_qualified(user_id=doc.id, procedure_id=proc.id)
    assert not day_surgery.is_qualified(user_id=other.id, procedure_id=proc.id)


def test_qualification_actions_on_the_page_are_for_managers(client, login, user, db_session):
    q = _qualify(db_session, user("gs_doc"), _proc(db_session))
    db_session.commit()  # a request ends its session: only committed rows outlive it
    token = login("gs_head")  # views qualifications, does not manage them
    assert "暂停原因" not in client.get("/technology/day-surgery/qualifications").get_data(as_text=True)
    assert client.post(f"/technology/day-surgery/qualifications/{q.id}/suspend",
                       data={"csrf_token": token, "reason": "x"}).status_code == 403
    token = login("mao")
    assert "暂停原因" in client.get("/technology/day-surgery/qualifications").get_data(as_text=True)
    assert client.post(f"/technology/day-surgery/qualifications/{q.id}/delete",
                       data={"csrf_token": token, "reason": "x"}).status_code == 404
    resp = client.post(f"/technology/day-surgery/qualifications/{q.id}/revoke",
                       data={"csrf_token": token, "reason": "调离普外科"})
    assert resp.status_code == 302
    db_session.refresh(q)
    assert q.status == "revoked" and q.revoke_reason == "调离普外科"
    html = client.get("/technology/day-surgery/qualifications").get_data(as_text=True)
    assert "已取消" in html and "调离普外科" in html


def test_cases_of_an_unqualified_surgeon_are_flagged_and_counted(user, client, login, db_session):
    doc, proc = user("gs_doc"), _proc(db_session)  # DS-001 高位复杂肛瘘挂线治疗 49.73, 普外科
    base = {"procedure_code": proc.icd9_code, "procedure_name": proc.procedure_name, "grade": 1}
    unqualified, _ = day_surgery.record_case(data=_case(1, surgeon_staff_no=doc.staff_no, **base), actor=None,
                                             source_system="TEST-HIS")
    cancelled, _ = day_surgery.record_case(data=_case(2, surgeon_staff_no=doc.staff_no, surgery_date=None,
                                                      discharged_on=None, cancelled_same_day=True, **base),
                                           actor=None, source_system="TEST-HIS")
    unknown, _ = day_surgery.record_case(data=_case(3, **base), actor=None, source_system="TEST-HIS")
    off_list, _ = day_surgery.record_case(data=_case(4, surgeon_staff_no=doc.staff_no, procedure_code="99.99",
                                                     procedure_name="目录外术式"), actor=None, source_system="TEST-HIS")
    assert (unqualified.procedure_id, unqualified.is_surgeon_qualified) == (proc.id, False)
    assert cancelled.is_surgeon_qualified is False
    assert unknown.is_surgeon_qualified is None and off_list.is_surgeon_qualified is None  # nothing to check against
    q = _qualify(db_session, doc, proc, since=date(2020, 1, 1))
    qualified, _ = day_surgery.record_case(data=_case(5, surgeon_staff_no=doc.staff_no, **base), actor=None,
                                           source_system="TEST-HIS")
    assert qualified.is_surgeon_qualified is True
    # judged when recorded: a later revocation does not rewrite what was recorded
    day_surgery.revoke_qualification(qualification=q, reason="考核不合格", actor=user("mao"))
    db_session.refresh(qualified)
    assert qualified.is_surgeon_qualified is True
    f = day_surgery.indicators(viewer=user("mao"), start=START, end=END)
    assert (f["scheduled"], f["cases"], f["unqualified"]) == (5, 4, 1)  # the cancelled one was not performed
    db_session.commit()
    login("mao")
    page = client.get("/technology/day-surgery/indicators?start=2020-03-01&end=2020-03-31").get_data(as_text=True)
    assert "无资质开展例数" in page and "unqualified=1" in page
    listing = client.get("/technology/day-surgery/cases?start=2020-03-01&end=2020-03-31&unqualified=1")
    html = listing.get_data(as_text=True)
    assert html.count("无资质</span>") == 2 and "目录外术式" not in html
    xlsx = client.get("/technology/day-surgery/indicators/export.xlsx?start=2020-03-01&end=2020-03-31")
    rows = {r[0]: r[1:] for r in load_workbook(BytesIO(xlsx.data))["日间手术质量指标"].iter_rows(min_row=3,
                                                                                             values_only=True)}
    assert rows["无资质开展例数"][0] == 1
