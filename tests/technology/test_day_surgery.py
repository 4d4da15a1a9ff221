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
