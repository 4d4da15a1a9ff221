"""新技术新项目中止 (seed 000 §二.1 追踪管理：进展、中止、终止): a progress review halts the project with a reason, the
team's project grants are suspended (HIS told, its check answers with the reason) until the office resumes the
project (the same grants resumed) or terminates it (the catalogue item retired)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.audit.models import AuditLog
from app.errors import ValidationFailed
from app.notify.models import Notification
from app.outbox.models import OutboxMessage
from app.privileges import services as privileges
from app.privileges.models import Grant, GrantStatus, PrivilegeItem
from app.technology.services import new_tech
from app.workflow import services as wf
from app.workflow.models import ProcessInstance
from tests.conftest import check_privilege

REASON = "术后发生严重不良事件（肠瘘），暂停开展待调查"


pytestmark = pytest.mark.usefixtures("fresh_check_cache")  # the HIS check API answers below


def _check(client, headers, staff_no, code):
    return check_privilege(client, headers, staff_no, "new_tech", code)


def _grants(db_session, code):
    return {g.user_id: g for g in db_session.scalars(select(Grant).join(PrivilegeItem)
                                                     .where(PrivilegeItem.code == code).order_by(Grant.id))}


@pytest.fixture
def reviewing(make_project, do, ready, user, db_session):
    """An approved project (lead 刘医生) whose team holds the project item (张主任's grant suspended earlier for a
    reason of his own), its first progress report in: 医务处审核进展 is open."""
    project = make_project(ethics_required=False, report_interval_override="PT0S", lead_id=user("gs_doc2").id)
    do(project.instance_id, "dept_review", "gs_head", decision="approve")
    new_tech.assign_experts(project=project, actor=user("mao"), expert_ids=[user("expert1").id, user("expert2").id])
    for t in ready(project.instance_id, "expert_review [child]"):
        wf.complete(task_id=t.id, actor=db_session.get(type(user("mao")), t.assignee_id),
                    data={"score": 85, "recommendation": "support", "comment": "好"})
    do(project.instance_id, "mao_approval", "mao", decision="approve", comment="批准开展")
    code = f"NT-{project.number}"
    privileges.batch_grant(viewer=user("mao"), dept_id=user("gs_doc").dept_id,
                           user_ids=[user("gs_doc").id, user("gs_doc2").id, user("gs_head").id],
                           item_codes=[code], reason="新技术新项目团队")
    privileges.suspend_grant(grant=_grants(db_session, code)[user("gs_head").id], reason="暂停参与", actor=user("mao"))
    if not ready(project.instance_id, "progress_report"):
        wf.fire_due_timers()
    do(project.instance_id, "progress_report", "gs_doc", period_label="2026年第1季度", cases_done=12,
       effective_cases=10, complications=1, adverse_events=1, summary="1 例严重不良事件")
    assert [t.spec_name for t in ready(project.instance_id)] == ["progress_review"]
    return project


@pytest.fixture
def suspended(reviewing, do, ready):
    do(reviewing.instance_id, "progress_review", "mao", decision="suspend", reason=REASON)
    assert [t.spec_name for t in ready(reviewing.instance_id)] == ["suspension_review"]
    return reviewing


def test_suspension_suspends_the_team_grants_and_the_check_answers_with_the_reason(
        suspended, ready, user, db_session, client, his, login):
    project = suspended
    code = f"NT-{project.number}"
    assert project.status == "suspended" and project.status_label == "中止（暂停开展）"
    assert project.suspend_reason == REASON and project.suspended_at is not None
    grants = _grants(db_session, code)
    team = (user("gs_doc").id, user("gs_doc2").id)
    assert sorted(project.suspended_grant_ids) == sorted(grants[uid].id for uid in team)
    for uid in team:
        assert grants[uid].status == GrantStatus.SUSPENDED and REASON in grants[uid].revoked_reason
    assert grants[user("gs_head").id].revoked_reason == "暂停参与"  # suspended before, for his own reason: untouched
    assert db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == code)).is_active

    # through the privilege services: audited, on its way to HIS, the office's decision on the progress report
    audited = db_session.scalars(select(AuditLog).where(AuditLog.action == "privilege.grant_suspended",
                                                        AuditLog.entity_id.in_([str(grants[u].id) for u in team])))
    assert len(list(audited)) == 2
    pushed = [m.payload for m in db_session.scalars(select(OutboxMessage).where(OutboxMessage.channel == "his"))]
    assert sum(1 for p in pushed if p["code"] == code and p["status"] == "suspended" and REASON in p["reason"]) == 2
    status_rows = db_session.scalars(select(AuditLog).where(AuditLog.action == "technology.project_status",
                                                            AuditLog.entity_id == str(project.id)))
    assert any(r.after.get("status") == "suspended" and r.after.get("reason") == REASON for r in status_rows)
    assert project.reports[-1].review_decision == "suspend" and project.reports[-1].review_label == "中止"
    for who in ("gs_doc", "gs_doc2"):  # applicant and lead
        told = db_session.scalars(select(Notification).where(Notification.user_id == user(who).id,
                                                             Notification.title.like(f"%{project.number} 已中止")))
        assert len(list(told)) == 1

    db_session.commit()
    answer = _check(client, his, "D1002", code)
    assert answer["allowed"] is False and answer["reason"].startswith("授权已暂停：") and REASON in answer["reason"]

    login("mao")
    page = client.get(f"/technology/new-tech/{project.id}").get_data(as_text=True)
    assert "中止（暂停开展）" in page and 'id="suspend-reason"' in page and REASON in page
    assert 'id="suspended-note"' in page and "中止项目处理" in page
    listed = client.get("/technology/new-tech/", query_string={"status": "suspended"}).get_data(as_text=True)
    assert project.number in listed and '<option value="suspended" selected>' in listed.replace("  ", " ")
    others = client.get("/technology/new-tech/", query_string={"status": "tracking"}).get_data(as_text=True)
    assert project.number not in others
    [task] = ready(project.instance_id, "suspension_review")
    form = client.get(f"/tasks/{task.id}").get_data(as_text=True)
    assert "中止项目处理" in form and "恢复开展" in form and "终止开展" in form and 'id="suspension-context"' in form


def test_resume_makes_the_suspended_grants_active_again_and_tracking_goes_on(
        suspended, do, ready, user, db_session, client, his):
    project = suspended
    code = f"NT-{project.number}"
    do(project.instance_id, "suspension_review", "mao", decision="resume", comment="调查结论：与本技术无关，恢复开展")

    assert project.status == "tracking"
    assert project.suspend_reason is None and project.suspended_at is None and project.suspended_grant_ids == []
    grants = _grants(db_session, code)
    for who in ("gs_doc", "gs_doc2"):
        g = grants[user(who).id]
        assert g.status == GrantStatus.ACTIVE and g.revoked_reason is None
    assert grants[user("gs_head").id].status == GrantStatus.SUSPENDED  # not ours to resume
    assert grants[user("gs_head").id].revoked_reason == "暂停参与"
    resumed = db_session.scalars(select(AuditLog).where(AuditLog.action == "privilege.grant_resumed",
                                                        AuditLog.entity_type == "privilege_grants"))
    assert {r.entity_id for r in resumed} >= {str(grants[user(w).id].id) for w in ("gs_doc", "gs_doc2")}
    pushed = [m.payload for m in db_session.scalars(select(OutboxMessage).where(OutboxMessage.channel == "his"))]
    assert sum(1 for p in pushed if p["code"] == code and p["status"] == "active" and "恢复开展" in p["reason"]) == 2

    # back on the follow-up timer: the next progress report comes due
    if not ready(project.instance_id, "progress_report"):
        wf.fire_due_timers()
    assert [t.spec_name for t in ready(project.instance_id)] == ["progress_report"]

    db_session.commit()
    assert _check(client, his, "D1002", code)["allowed"] is True
    assert _check(client, his, "D1003", code)["allowed"] is True
    assert _check(client, his, "D1001", code)["reason"] == "授权已暂停：暂停参与"


def test_terminate_after_suspension_ends_the_project_and_retires_the_item(
        suspended, do, ready, user, db_session, client, his):
    project = suspended
    code = f"NT-{project.number}"
    do(project.instance_id, "suspension_review", "mao", decision="terminate", comment="调查确认与技术相关，终止开展")

    assert project.status == "terminated" and project.final_comment == "调查确认与技术相关，终止开展"
    assert project.decided_at is not None and ready(project.instance_id) == []
    assert db_session.get(ProcessInstance, project.instance_id).status == "completed"
    item = db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == code))
    assert not item.is_active and item.note == "项目已终止"
    assert project.suspend_reason == REASON  # kept on the closed project: why it was halted
    told = db_session.scalars(select(Notification).where(Notification.user_id == user("gs_doc2").id,
                                                         Notification.title.like(f"%{project.number}：已终止")))
    assert len(list(told)) == 1

    db_session.commit()
    answer = _check(client, his, "D1002", code)
    assert answer["allowed"] is False and answer["reason"] == "该授权项目已停用"


def test_suspension_without_a_reason_is_refused_with_the_field_path_and_changes_nothing(
        reviewing, ready, user, db_session, client, login):
    project = reviewing
    code = f"NT-{project.number}"
    [task] = ready(project.instance_id, "progress_review")
    db_session.commit()
    token = login("mao")
    resp = client.post(f"/api/v1/tasks/{task.id}/complete", json={"data": {"decision": "suspend", "comment": "中止"}},
                       headers={"X-CSRFToken": token})
    assert resp.status_code == 400
    errors = resp.get_json()["error"]["errors"]
    assert [e["path"] for e in errors] == ["reason"] and "中止原因" in errors[0]["message"]

    # blank text passes the form's minLength but not the service
    with pytest.raises(ValidationFailed) as err, db_session.begin_nested():
        wf.complete(task_id=task.id, actor=user("mao"), data={"decision": "suspend", "reason": "   "})
    assert [e["path"] for e in err.value.errors] == ["reason"]

    db_session.expire_all()
    assert project.status == "tracking" and project.suspend_reason is None
    assert [t.spec_name for t in ready(project.instance_id)] == ["progress_review"]
    grants = _grants(db_session, code)
    assert grants[user("gs_doc").id].status == GrantStatus.ACTIVE
    assert grants[user("gs_doc2").id].status == GrantStatus.ACTIVE


def test_the_office_decision_on_a_suspended_project_needs_an_opinion(suspended, ready, client, login, db_session):
    [task] = ready(suspended.instance_id, "suspension_review")
    db_session.commit()
    token = login("mao")
    resp = client.post(f"/api/v1/tasks/{task.id}/complete", json={"data": {"decision": "resume"}},
                       headers={"X-CSRFToken": token})
    assert resp.status_code == 400
    assert [e["path"] for e in resp.get_json()["error"]["errors"]] == ["comment"]
    db_session.expire_all()
    assert suspended.status == "suspended"
