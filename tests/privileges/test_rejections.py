"""Rejections and returns of `privilege_grant` through the real engine (issue 5): no grant, nothing queued for HIS,
the applicant told with the reviewer's comment, the audit row, and the instance ended or back with the applicant."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.notify.models import Notification
from app.outbox.models import OutboxMessage
from app.privileges import services
from app.privileges.models import Grant, PrivilegeApplication
from app.workflow import services as wf
from app.workflow.models import HumanTask, ProcessInstance

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def deployed(db_session, user):
    """The shipped forms and `privilege_grant` at its current file content."""
    from app.forms import services as forms

    forms.sync_files(ROOT / "forms")
    return wf.upload_version(bpmn_xml=(ROOT / "processes" / "privilege_grant.bpmn").read_text(encoding="utf-8"),
                             dmn={"privilege_levels.dmn": (ROOT / "processes" / "privilege_levels.dmn")
                                  .read_text(encoding="utf-8")},
                             actor=user("flow"), note="权限流程驳回测试")


def _ready(db_session, application: PrivilegeApplication) -> list[HumanTask]:
    return list(db_session.scalars(select(HumanTask).where(HumanTask.instance_id == application.instance_id,
                                                           HumanTask.status == "ready").order_by(HumanTask.id)))


def _step(db_session, application, spec: str, actor, **data) -> None:
    [task] = _ready(db_session, application)
    assert task.spec_name == spec, [t.spec_name for t in _ready(db_session, application)]
    wf.complete(task_id=task.id, actor=actor, data=data)


def _his_messages(db_session, holder, item) -> int:
    return db_session.scalar(select(func.count()).select_from(OutboxMessage)
                             .where(OutboxMessage.key == f"privilege:{holder.id}:{item.code}")) or 0


def _audits(db_session, action: str, application) -> list[AuditLog]:
    return list(db_session.scalars(select(AuditLog).where(AuditLog.action == action,
                                                          AuditLog.entity_type == "privilege_applications",
                                                          AuditLog.entity_id == str(application.id))
                                   .order_by(AuditLog.id)))


def _assert_rejected(db_session, application, holder, item, *, by, comment: str, his_before: int) -> None:
    db_session.refresh(application)
    assert application.status == "rejected" and application.final_comment == comment
    assert application.decided_at is not None
    assert db_session.scalars(select(Grant).where(Grant.application_id == application.id)).all() == []
    assert db_session.scalar(select(Grant).where(Grant.user_id == holder.id, Grant.item_id == item.id,
                                                 Grant.status == "active")) is None
    assert _his_messages(db_session, holder, item) == his_before  # nothing queued for HIS
    instance = db_session.get(ProcessInstance, application.instance_id)
    db_session.refresh(instance)
    assert instance.status == "rejected" and instance.ended_at is not None
    assert _ready(db_session, application) == []
    [row] = _audits(db_session, "privilege.application_rejected", application)
    assert row.actor_id == by.id and row.after == {"comment": comment}
    assert _audits(db_session, "privilege.application_approved", application) == []
    [note] = db_session.scalars(select(Notification).where(
        Notification.user_id == holder.id, Notification.title == f"医疗权限申请 {application.number} 未通过")).all()
    assert note.body == comment and note.kind == "result"


def test_office_rejection_grants_nothing_and_tells_the_applicant(deployed, user, item, db_session):
    doc, consult = user("gs_doc"), item("BASIC-CONSULT")
    his_before = _his_messages(db_session, doc, consult)
    application = services.apply(applicant=doc, item_ids=[consult.id], reason="会诊需要")
    _step(db_session, application, "dept_review", user("gs_head"), decision="approve", score=80, comment="考核通过")
    _step(db_session, application, "mao_review", user("mao"), decision="reject", comment="执业注册范围不含该项目")
    _assert_rejected(db_session, application, doc, consult, by=user("mao"), comment="执业注册范围不含该项目",
                     his_before=his_before)
    # closed: the same item may be applied for again
    again = services.apply(applicant=doc, item_ids=[consult.id], reason="补充注册后再次申请")
    assert again.status == "in_review" and again.id != application.id


def test_committee_rejection_after_the_office_approved(deployed, user, surgery_item, db_session):
    doc = user("card_doc")
    op = surgery_item(4, "CARD")
    his_before = _his_messages(db_session, doc, op)
    application = services.apply(applicant=doc, item_ids=[op.id], reason="开展四级手术")
    _step(db_session, application, "dept_review", user("card_head"), decision="approve", score=92)
    _step(db_session, application, "mao_review", user("mao"), decision="approve", comment="资料齐全，报小组")
    _step(db_session, application, "committee_review", user("committee"), decision="reject",
          comment="近三年同级手术例数不足")
    # the committee's comment is the outcome, not the office's earlier one
    _assert_rejected(db_session, application, doc, op, by=user("committee"), comment="近三年同级手术例数不足",
                     his_before=his_before)


def test_office_return_goes_to_the_applicant_and_the_revision_starts_over_at_the_department(
        deployed, user, item, db_session):
    doc, consult = user("gs_doc"), item("BASIC-CONSULT")
    application = services.apply(applicant=doc, item_ids=[consult.id], reason="会诊需要")
    _step(db_session, application, "dept_review", user("gs_head"), decision="approve", score=85)
    [mao] = _ready(db_session, application)
    wf.send_back(task_id=mao.id, actor=user("mao"), reason="请补充近一年会诊记录")
    db_session.refresh(application)
    assert application.status == "in_review" and application.final_comment is None
    [revise] = _ready(db_session, application)
    assert revise.spec_name == "revise" and revise.assignee_id == doc.id
    assert wf.task_data(revise)["comment"] == "请补充近一年会诊记录"
    assert db_session.scalars(select(Notification).where(Notification.user_id == doc.id,
                                                         Notification.title == "新待办：修改申请")).all()
    [log] = [x for x in wf.history(application.instance_id) if x.spec_name == "mao_review"]
    assert (log.action, log.actor_id, log.comment) == ("send_back", user("mao").id, "请补充近一年会诊记录")
    _step(db_session, application, "revise", doc, reason="会诊需要：近一年科内会诊 40 例", revision_note="已补充记录")
    assert [t.spec_name for t in _ready(db_session, application)] == ["dept_review"]
    _step(db_session, application, "dept_review", user("gs_head"), decision="approve", score=88)
    _step(db_session, application, "mao_review", user("mao"), decision="approve", qualification_checked=True)
    db_session.refresh(application)
    assert application.status == "approved" and application.reason == "会诊需要：近一年科内会诊 40 例"
    [revised] = _audits(db_session, "privilege.application_revised", application)
    assert revised.before == {"reason": "会诊需要"}
    assert len(db_session.scalars(select(Grant).where(Grant.application_id == application.id)).all()) == 1


def test_committee_return_then_withdrawal_closes_without_a_grant(deployed, user, surgery_item, db_session):
    doc = user("card_doc")
    op = surgery_item(4, "CARD")
    his_before = _his_messages(db_session, doc, op)
    application = services.apply(applicant=doc, item_ids=[op.id], reason="开展四级手术")
    _step(db_session, application, "dept_review", user("card_head"), decision="approve", score=90)
    _step(db_session, application, "mao_review", user("mao"), decision="approve")
    _step(db_session, application, "committee_review", user("committee"), decision="return", comment="请附手术视频")
    [revise] = _ready(db_session, application)
    assert revise.spec_name == "revise" and revise.assignee_id == doc.id
    wf.withdraw(instance_id=application.instance_id, actor=doc, reason="暂无手术视频，先撤回")
    db_session.refresh(application)
    assert application.status == "withdrawn" and application.final_comment == "暂无手术视频，先撤回"
    assert application.reason == "开展四级手术"  # the withdrawal reason is not a revised application reason
    assert db_session.scalars(select(Grant).where(Grant.application_id == application.id)).all() == []
    assert _his_messages(db_session, doc, op) == his_before
    assert _ready(db_session, application) == []
    db_session.refresh(revise)
    assert revise.status == "cancelled"
    [row] = _audits(db_session, "privilege.application_withdrawn", application)
    assert row.actor_id == doc.id and row.after == {"instance_status": "withdrawn", "reason": "暂无手术视频，先撤回"}


def test_a_return_reason_does_not_become_the_approval_comment(deployed, user, item, db_session):
    doc, consult = user("gs_doc"), item("BASIC-CONSULT")
    application = services.apply(applicant=doc, item_ids=[consult.id], reason="会诊需要")
    _step(db_session, application, "dept_review", user("gs_head"), decision="approve", score=85)
    wf.send_back(task_id=_ready(db_session, application)[0].id, actor=user("mao"), reason="请补充近一年会诊记录")
    _step(db_session, application, "revise", doc, reason="会诊需要：近一年科内会诊 40 例", revision_note="已补充记录")
    _step(db_session, application, "dept_review", user("gs_head"), decision="approve", score=88)
    _step(db_session, application, "mao_review", user("mao"), decision="approve", qualification_checked=True)
    db_session.refresh(application)
    assert application.status == "approved"
    assert application.final_comment is None  # nobody commented on the approval
    [row] = _audits(db_session, "privilege.application_approved", application)
    assert row.after["comment"] is None
