"""The privilege flow end to end through the workflow engine: apply → 科室考核 → 医务处审核 → 小组批准 → grants."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from app.privileges import services
from app.privileges.models import Grant

ROOT = Path(__file__).resolve().parents[2]
from app.workflow import models as wf_models  # noqa: E402
from app.workflow import services as wf  # noqa: E402


@pytest.fixture
def deployed(db_session, user):
    from app.forms import services as forms

    forms.sync_files(ROOT / "forms")
    return wf.upload_version(bpmn_xml=(ROOT / "processes" / "privilege_grant.bpmn").read_text(encoding="utf-8"),
                             dmn={"privilege_levels.dmn": (ROOT / "processes" / "privilege_levels.dmn")
                                  .read_text(encoding="utf-8")},
                             actor=user("flow"), note="权限流程测试")


def _ready(application):
    HumanTask = wf_models.HumanTask
    return list(wf.db.session.scalars(select(HumanTask).where(HumanTask.instance_id == application.instance_id,
                                                             HumanTask.status == "ready")))


def test_grade_4_operation_goes_through_all_three_reviews(deployed, user, surgery_item, db_session):
    doc = user("card_doc")  # 副主任医师 with a passed 定期考核: fits a grade-4 operation of 心内科's catalogue
    op = surgery_item(4, "CARD")
    application = services.apply(applicant=doc, item_ids=[op.id], reason="开展四级手术")
    [dept] = _ready(application)
    assert (dept.spec_name, dept.role_code) == ("dept_review", "dept_group")
    wf.complete(task_id=dept.id, actor=user("card_head"), data={"decision": "approve", "score": 90})
    [mao] = _ready(application)
    assert mao.spec_name == "mao_review"
    wf.complete(task_id=mao.id, actor=user("mao"), data={"decision": "approve"})
    [committee] = _ready(application)
    assert committee.spec_name == "committee_review"
    wf.complete(task_id=committee.id, actor=user("committee"), data={"decision": "approve", "comment": "同意授权"})
    db_session.refresh(application)
    assert application.status == "approved" and application.final_comment == "同意授权"
    [grant] = db_session.scalars(select(Grant).where(Grant.application_id == application.id)).all()
    assert grant.item_id == op.id and grant.granted_by_id == user("committee").id


def test_basic_item_is_granted_by_the_office_and_return_goes_to_the_applicant(deployed, user, item, db_session):
    doc = user("gs_doc")
    application = services.apply(applicant=doc, item_ids=[item("BASIC-CONSULT").id], reason="会诊需要")
    [dept] = _ready(application)
    wf.send_back(task_id=dept.id, actor=user("gs_head"), reason="请补充会诊例数")
    [revise] = _ready(application)
    assert revise.spec_name == "revise" and revise.assignee_id == doc.id
    wf.complete(task_id=revise.id, actor=doc, data={"reason": "会诊需要，近一年科内会诊 40 例",
                                                    "revision_note": "已补充"})
    [dept] = _ready(application)
    wf.complete(task_id=dept.id, actor=user("gs_head"), data={"decision": "approve", "score": 88})
    [mao] = _ready(application)
    wf.complete(task_id=mao.id, actor=user("mao"), data={"decision": "approve", "qualification_checked": True})
    db_session.refresh(application)
    assert application.status == "approved" and _ready(application) == []
    assert application.reason == "会诊需要，近一年科内会诊 40 例"


def test_withdrawn_instance_withdraws_the_application(deployed, user, item, db_session):
    doc = user("gs_doc")
    application = services.apply(applicant=doc, item_ids=[item("SP-POCT").id], reason="POCT")
    wf.withdraw(instance_id=application.instance_id, actor=doc, reason="科室调整")
    db_session.refresh(application)
    assert application.status == "withdrawn" and application.reason == "POCT"


def test_my_applications_shows_the_current_step(deployed, user, item, client, login):
    application = services.apply(applicant=user("gs_doc"), item_ids=[item("BASIC-AUXDIAG").id], reason="x")
    login("gs_doc")
    html = client.get("/privileges/applications").get_data(as_text=True)
    assert application.number in html and "科室考核" in html and "进行中" in html
    assert f"/workflow/instances/{application.instance_id}" in html


def test_overdue_department_review_reminds_the_group_under_restricted_scripts(deployed, user, item, db_session):
    import time

    from app.notify.models import Notification

    doc = user("gs_doc")
    application = services.create_application(applicant=doc, item_ids=[item("BASIC-DIAG").id], reason="x")
    data = services.flow_data(application, reminder_days=1) | {"reminder_duration": "PT1S"}
    instance = wf.start(key=services.PROCESS_KEY, business_key=application.number, title="测试", actor=doc,
                        dept_id=doc.dept_id, campus_id=doc.campus_id, data=data)
    application.instance_id = instance.id
    time.sleep(1.2)
    assert wf.fire_due_timers() >= 1
    notes = db_session.scalars(select(Notification).where(Notification.user_id == user("gs_head").id,
                                                          Notification.title == "医疗权限申请待科室考核")).all()
    assert notes and application.number in notes[0].body
    assert [t.spec_name for t in _ready(application)] == ["dept_review"]
