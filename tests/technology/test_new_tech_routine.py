"""新技术新项目转常规 (seed 000 §二.1, §三.9): the office names the ordinary privilege category, the technology gets an
item of it, the project's grant holders are re-granted it and their 新技术新项目 grants end; HIS sees both."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.audit.models import AuditLog
from app.errors import ValidationFailed
from app.outbox.models import OutboxMessage
from app.privileges import services as privileges
from app.privileges.models import Grant, GrantStatus, PrivilegeItem
from app.technology.services import new_tech
from app.workflow import services as wf
from tests.conftest import check_privilege

pytestmark = pytest.mark.usefixtures("fresh_check_cache")  # the HIS check API answers below


def _at_progress_review(make_project, do, ready, user, db_session):
    """A project approved, its team granted the project item (one grant then suspended), its first progress report
    in: the 医务处审核进展 step is open."""
    project = make_project(ethics_required=False, report_interval_override="PT0S")
    do(project.instance_id, "dept_review", "gs_head", decision="approve")
    new_tech.assign_experts(project=project, actor=user("mao"), expert_ids=[user("expert1").id, user("expert2").id])
    for t in ready(project.instance_id, "expert_review [child]"):
        wf.complete(task_id=t.id, actor=db_session.get(type(user("mao")), t.assignee_id),
                    data={"score": 85, "recommendation": "support", "comment": "好"})
    do(project.instance_id, "mao_approval", "mao", decision="approve", comment="批准开展")
    nt_code = f"NT-{project.number}"
    privileges.batch_grant(viewer=user("mao"), dept_id=user("gs_doc").dept_id,
                           user_ids=[user("gs_doc").id, user("gs_doc2").id, user("gs_head").id],
                           item_codes=[nt_code], reason="新技术新项目团队")
    suspended = db_session.scalar(select(Grant).join(PrivilegeItem).where(PrivilegeItem.code == nt_code,
                                                                          Grant.user_id == user("gs_head").id))
    privileges.suspend_grant(grant=suspended, reason="暂停参与", actor=user("mao"))
    if not ready(project.instance_id, "progress_report"):
        wf.fire_due_timers()
    do(project.instance_id, "progress_report", "gs_doc", period_label="2026年第1季度", cases_done=12,
       effective_cases=11, complications=0, adverse_events=0, summary="疗效确切")
    assert [t.spec_name for t in ready(project.instance_id)] == ["progress_review"]
    return project


def _grants(db_session, code):
    return list(db_session.scalars(select(Grant).join(PrivilegeItem).where(PrivilegeItem.code == code)
                                   .order_by(Grant.id)))


def test_routine_conversion_creates_the_ordinary_item_and_moves_the_holders(
        make_project, do, ready, user, db_session, client, his, login):
    project = _at_progress_review(make_project, do, ready, user, db_session)
    nt_code, routine_code = f"NT-{project.number}", f"SUR-{project.number}"
    do(project.instance_id, "progress_review", "mao", decision="routine", comment="疗效确切，转常规",
       privilege_category="surgery", privilege_grade=3)

    assert project.status == "routine"
    item = new_tech.routine_item(project)
    assert item is not None and item.code == routine_code and item.is_active
    assert (item.category.code, item.grade, item.grade_level, item.name) == ("surgery", "三级", 3, project.name)
    nt_item = db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == nt_code))
    assert not nt_item.is_active

    new_grants = _grants(db_session, routine_code)
    assert {g.user_id for g in new_grants} == {user("gs_doc").id, user("gs_doc2").id}  # not the suspended holder
    today = privileges.today()
    for g in new_grants:
        assert g.status == GrantStatus.ACTIVE and g.valid_from == today
        assert g.valid_until == privileges.validity_until(item.category, today)
        assert g.granted_by_id == user("mao").id
    old_grants = _grants(db_session, nt_code)
    assert len(old_grants) == 3
    assert all(g.status == GrantStatus.REVOKED and g.revoked_reason == "已转为常规技术" for g in old_grants)

    # audited, and on its way to HIS through the outbox
    created = db_session.scalars(select(AuditLog).where(AuditLog.action == "privilege.grant_created",
                                                        AuditLog.entity_type == "privilege_grants",
                                                        AuditLog.entity_id.in_([str(g.id) for g in new_grants])))
    assert len(list(created)) == 2
    pushed = [m.payload for m in db_session.scalars(select(OutboxMessage).where(OutboxMessage.channel == "his"))]
    assert sum(1 for p in pushed if p["code"] == routine_code and p["status"] == "active") == 2
    assert sum(1 for p in pushed if p["code"] == nt_code and p["status"] == "revoked"
               and p["reason"] == "已转为常规技术") == 3

    db_session.commit()
    assert check_privilege(client, his, "D1002", "surgery", routine_code)["allowed"] is True
    assert check_privilege(client, his, "D1003", "surgery", routine_code)["allowed"] is True
    assert check_privilege(client, his, "D1001", "surgery", routine_code)["allowed"] is False  # was suspended
    retired = check_privilege(client, his, "D1002", "new_tech", nt_code)
    assert retired["allowed"] is False and retired["reason"] == "该授权项目已停用"

    login("mao")
    page = client.get(f"/technology/new-tech/{project.id}").get_data(as_text=True)
    assert routine_code in page and "手术（介入）分级及治疗性操作授权" in page


def test_a_catalogue_item_with_the_same_procedure_code_is_reused_at_its_own_grade(
        make_project, do, ready, user, db_session):
    existing = db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code.like("SUR-%"),
                                                             PrivilegeItem.procedure_code.is_not(None),
                                                             PrivilegeItem.grade_level == 2,
                                                             PrivilegeItem.is_active.is_(True))
                                 .order_by(PrivilegeItem.id).limit(1))
    assert existing is not None
    project = _at_progress_review(make_project, do, ready, user, db_session)
    [task] = ready(project.instance_id, "progress_review")
    with pytest.raises(ValidationFailed) as err, db_session.begin_nested():
        wf.complete(task_id=task.id, actor=user("mao"),
                    data={"decision": "routine", "privilege_category": "surgery", "privilege_grade": 4,
                          "procedure_code": existing.procedure_code})
    assert [e["path"] for e in err.value.errors] == ["privilege_grade"]
    assert "二级" in err.value.errors[0]["message"]
    db_session.expire_all()
    assert project.status == "tracking" and [t.spec_name for t in ready(project.instance_id)] == ["progress_review"]

    do(project.instance_id, "progress_review", "mao", decision="routine", privilege_category="surgery",
       privilege_grade=2, procedure_code=existing.procedure_code)
    assert project.status == "routine" and project.routine_item_id == existing.id
    assert db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == f"SUR-{project.number}")) is None
    assert {g.user_id for g in _grants(db_session, existing.code) if g.status == GrantStatus.ACTIVE} >= {
        user("gs_doc").id, user("gs_doc2").id}


def test_routine_without_a_category_is_refused_with_the_field_path_and_changes_nothing(
        make_project, do, ready, user, db_session, client, login):
    project = _at_progress_review(make_project, do, ready, user, db_session)
    nt_code = f"NT-{project.number}"
    [task] = ready(project.instance_id, "progress_review")
    db_session.commit()
    token = login("mao")
    resp = client.post(f"/api/v1/tasks/{task.id}/complete", json={"data": {"decision": "routine", "comment": "转常规"}},
                       headers={"X-CSRFToken": token})
    assert resp.status_code == 400
    errors = resp.get_json()["error"]["errors"]
    assert [e["path"] for e in errors] == ["privilege_category"] and "授权类别" in errors[0]["message"]
    resp = client.post(f"/api/v1/tasks/{task.id}/complete",
                       json={"data": {"decision": "routine", "privilege_category": "endoscopy"}},
                       headers={"X-CSRFToken": token})
    assert resp.status_code == 400
    assert [e["path"] for e in resp.get_json()["error"]["errors"]] == ["privilege_grade"]

    db_session.expire_all()
    assert project.status == "tracking" and project.routine_item_id is None
    assert [t.spec_name for t in ready(project.instance_id)] == ["progress_review"]
    assert db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == nt_code)).is_active
    assert [g.status for g in _grants(db_session, nt_code)] == ["active", "active", "suspended"]
    assert db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code.like(f"%-{project.number}"),
                                                         PrivilegeItem.code != nt_code)) is None


@pytest.mark.parametrize(("data", "path"), [
    ({}, "privilege_category"),
    ({"privilege_category": "new_tech"}, "privilege_category"),
    ({"privilege_category": "surgery"}, "privilege_grade"),
    ({"privilege_category": "anesthesia", "privilege_grade": 5}, "privilege_grade"),
    ({"privilege_category": "basic", "procedure_code": "43.1101"}, "procedure_code"),
])
def test_the_service_names_the_wrong_routine_field(db_session, data, path):
    with pytest.raises(ValidationFailed) as err:
        new_tech.routine_choice(data)
    assert [e["path"] for e in err.value.errors] == [path]
    assert all(e["message"] for e in err.value.errors)


def test_an_ungraded_category_needs_no_grade(db_session):
    assert new_tech.routine_choice({"privilege_category": "invasive", "privilege_grade": ""}) == {
        "category_code": "invasive", "grade_level": None, "procedure_code": None}
