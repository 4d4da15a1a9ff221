"""Withdrawals, terminations and returns of the archive flows through the real engine (issue 5): reinstatement
(`archive_reinstatement`) withdrawn or terminated leaves the person departed; a returned or stopped archive change
(`archive_change_review`) never replaces the version in force."""

from __future__ import annotations

from sqlalchemy import select

from app.archives import departure, services
from app.audit.models import AuditLog
from app.notify.models import Notification
from app.privileges import services as privileges
from app.privileges.models import Grant, PrivilegeItem
from app.workflow import services as wf
from app.workflow.models import HumanTask, ProcessInstance


def _audits(db_session, action: str, entity) -> list[AuditLog]:
    return list(db_session.scalars(select(AuditLog).where(AuditLog.action == action,
                                                          AuditLog.entity_type == entity.__tablename__,
                                                          AuditLog.entity_id == str(entity.id))
                                   .order_by(AuditLog.id)))


def _notes(db_session, who, title: str) -> list[Notification]:
    return list(db_session.scalars(select(Notification).where(Notification.user_id == who.id,
                                                              Notification.title == title)))


def _instance(db_session, instance_id: int) -> ProcessInstance:
    instance = db_session.get(ProcessInstance, instance_id)
    db_session.refresh(instance)
    return instance


def _cancelled(db_session, instance_id: int) -> list[str]:
    return [t.spec_name for t in db_session.scalars(select(HumanTask).where(HumanTask.instance_id == instance_id,
                                                                            HumanTask.status == "cancelled"))]


def _departed_with_grant(db_session, user, username: str):
    from datetime import timedelta

    doc = user(username)
    item = db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == "BASIC-DIAG"))
    grant = Grant(user_id=doc.id, item_id=item.id, status="active",
                  valid_from=privileges.today() - timedelta(days=10), valid_until=privileges.today() + timedelta(days=300))
    db_session.add(grant)
    db_session.flush()
    row = departure.register_departure(staff=doc, kind="resignation", departure_date=services.today(),
                                       reason="外出进修", actor=user("mao"))
    return doc, grant, row


def _still_departed(db_session, doc, grant, row) -> None:
    db_session.refresh(row)
    db_session.refresh(doc)
    db_session.refresh(grant)
    assert row.status == "departed" and row.reinstated_at is None and row.reinstated_by_id is None
    assert doc.departed_at is not None and not doc.is_active
    assert grant.status == "revoked"


# ---------------------------------------------------------------- reinstatement: withdraw / terminate


def test_withdrawn_reinstatement_leaves_the_person_departed_and_may_be_requested_again(
        deployed, user, ready, db_session):
    mao = user("mao")
    doc, grant, row = _departed_with_grant(db_session, user, "orth_doc")
    departure.request_reinstatement(departure=row, reason="进修结束返院", actor=mao)
    first = row.reinstatement_instance_id
    [task] = ready(first)
    assert task.spec_name == "committee_review"
    wf.withdraw(instance_id=first, actor=mao, reason="材料不全，先撤回")
    _still_departed(db_session, doc, grant, row)
    assert row.reinstatement_reason == "进修结束返院"
    assert _instance(db_session, first).status == "withdrawn" and ready(first) == []
    assert _cancelled(db_session, first) == ["committee_review"]
    [audit_row] = _audits(db_session, "archive.reinstatement_withdrawn", row)
    assert audit_row.actor_id == mao.id
    assert audit_row.after == {"decision": "withdrawn", "comment": "材料不全，先撤回"}
    assert _audits(db_session, "archive.reinstated", row) == []
    # the office withdrew it itself: nobody is told; the departed person never is
    assert _notes(db_session, mao, f"{doc.name}复职申请已撤回") == []
    assert db_session.scalars(select(Notification).where(Notification.user_id == doc.id,
                                                         Notification.title.like("复职%"))).all() == []
    # closed: the office may submit again, as a new instance
    departure.request_reinstatement(departure=row, reason="材料已补齐", actor=mao)
    assert row.status == "reinstating" and row.reinstatement_instance_id != first
    assert [t.spec_name for t in ready(row.reinstatement_instance_id)] == ["committee_review"]


def test_withdrawal_while_returned_for_more_material_leaves_the_person_departed(deployed, user, ready, db_session):
    mao, committee = user("mao"), user("committee")
    doc, grant, row = _departed_with_grant(db_session, user, "gs_doc2")
    departure.request_reinstatement(departure=row, reason="返聘", actor=mao)
    [task] = ready(row.reinstatement_instance_id)
    wf.send_back(task_id=task.id, actor=committee, reason="请附返聘审批单")
    [revise] = ready(row.reinstatement_instance_id)
    assert revise.spec_name == "revise" and revise.assignee_id == mao.id
    assert wf.task_data(revise)["comment"] == "请附返聘审批单"
    db_session.refresh(row)
    assert row.status == "reinstating"
    wf.withdraw(instance_id=row.reinstatement_instance_id, actor=mao, reason="返聘取消")
    _still_departed(db_session, doc, grant, row)
    assert _cancelled(db_session, row.reinstatement_instance_id) == ["revise"]


def test_terminated_reinstatement_leaves_the_person_departed_and_tells_the_office(deployed, user, ready, db_session):
    mao, admin = user("mao"), user("flow")
    doc, grant, row = _departed_with_grant(db_session, user, "card_doc")
    departure.request_reinstatement(departure=row, reason="申诉复职", actor=mao)
    instance_id = row.reinstatement_instance_id
    wf.terminate(instance_id=instance_id, actor=admin, reason="流程发起有误，终止")
    _still_departed(db_session, doc, grant, row)
    assert _instance(db_session, instance_id).status == "terminated" and ready(instance_id) == []
    [audit_row] = _audits(db_session, "archive.reinstatement_terminated", row)
    assert audit_row.actor_id == admin.id
    assert audit_row.after == {"decision": "terminated", "comment": "流程发起有误，终止"}
    # the office started it and someone else stopped it: the office is told
    assert len(db_session.scalars(select(Notification).where(Notification.user_id == mao.id,
                                                             Notification.title.like(f"{doc.name}复职%"))).all()) == 1


def test_terminated_reinstatement_notice_carries_the_reason(deployed, user, db_session):
    mao = user("mao")
    doc, _grant, row = _departed_with_grant(db_session, user, "card_doc")
    departure.request_reinstatement(departure=row, reason="申诉复职", actor=mao)
    wf.terminate(instance_id=row.reinstatement_instance_id, actor=user("flow"), reason="流程发起有误，终止")
    [note] = db_session.scalars(select(Notification).where(Notification.user_id == mao.id,
                                                           Notification.title.like(f"{doc.name}复职%"))).all()
    assert note.body and "流程发起有误，终止" in note.body


# ---------------------------------------------------------------- archive change review: return, withdraw, terminate


def test_returned_change_keeps_the_version_in_force_and_its_withdrawal_closes_it(deployed, user, ready, db_session):
    doc, mao = user("gs_doc"), user("mao")
    [edu] = services.section_entries(staff=doc, section_key="education")
    old = edu.effective
    counts = services.section_counts(doc)
    row = services.submit_change(staff=doc, section_key="education", actor=doc, entry_id=edu.entry.id,
                                 data=dict(old.data) | {"school": "浙江大学"})
    [task] = ready(row.instance_id)
    wf.complete(task_id=task.id, actor=mao, data={"decision": "return", "comment": "请按学位证填写学校全称"})
    db_session.refresh(row)
    db_session.refresh(old)
    assert row.status == "returned" and row.decision_comment == "请按学位证填写学校全称"
    assert row.decided_at is None and old.status == "effective"
    assert services.effective_version(edu.entry.id).id == old.id and services.section_counts(doc) == counts
    assert [r.id for r in services.open_changes(doc)] == [row.id]
    [returned] = _audits(db_session, "archive.change_returned", row)
    assert returned.actor_id == mao.id and returned.after == {"comment": "请按学位证填写学校全称"}
    [revise] = ready(row.instance_id)
    assert revise.spec_name == "revise" and revise.assignee_id == doc.id
    assert _notes(db_session, doc, "新待办：修改档案变更")
    assert _instance(db_session, row.instance_id).status == "running"
    wf.withdraw(instance_id=row.instance_id, actor=doc, reason="信息无误，不再修改")
    db_session.refresh(row)
    db_session.refresh(old)
    assert row.status == "withdrawn" and row.decision_comment == "信息无误，不再修改" and row.decided_at is not None
    assert old.status == "effective" and services.open_changes(doc) == []
    assert _cancelled(db_session, row.instance_id) == ["revise"]
    [withdrawn] = _audits(db_session, "archive.change_withdrawn", row)
    assert withdrawn.after == {"instance_status": "withdrawn", "reason": "信息无误，不再修改"}
    assert db_session.scalars(select(Notification).where(Notification.user_id == doc.id,
                                                         Notification.title.like("%已撤回"))).all() == []


def test_a_colleagues_returned_change_goes_back_to_the_submitting_head(deployed, user, ready, db_session):
    head, doc, mao = user("gs_head"), user("gs_doc2"), user("mao")
    counts = services.section_counts(doc)
    row = services.submit_change(staff=doc, section_key="title_appointment", actor=head,
                                 data={"title": "主治医师", "qualified_date": "2024-05-20", "method": "考试"})
    [task] = ready(row.instance_id)
    wf.send_back(task_id=task.id, actor=mao, reason="请附聘任文件文号")
    [revise] = ready(row.instance_id)
    assert revise.assignee_id == head.id  # the submitter revises, not the person the record is about
    db_session.refresh(row)
    assert row.status == "returned" and services.section_counts(doc) == counts


def test_terminated_change_review_is_withdrawn_and_the_submitter_told_why(deployed, user, ready, db_session):
    doc, admin = user("card_doc"), user("flow")
    row = services.submit_change(staff=doc, section_key="rewards_penalties", actor=doc,
                                 data={"kind": "奖励", "date": "2023-12-01", "name": "院优秀医师"})
    assert row.status == "pending"
    wf.terminate(instance_id=row.instance_id, actor=admin, reason="重复提交，终止")
    db_session.refresh(row)
    assert row.status == "withdrawn" and row.decision_comment == "重复提交，终止"
    assert services.section_counts(doc).get("rewards_penalties", 0) == 0
    assert _instance(db_session, row.instance_id).status == "terminated" and ready(row.instance_id) == []
    [withdrawn] = _audits(db_session, "archive.change_withdrawn", row)
    assert withdrawn.actor_id == admin.id
    assert withdrawn.after == {"instance_status": "terminated", "reason": "重复提交，终止"}
    [note] = db_session.scalars(select(Notification).where(Notification.user_id == doc.id,
                                                           Notification.title.like("档案变更%已撤回"))).all()
    assert note.body == "重复提交，终止" and note.kind == "result"


def test_a_return_reason_does_not_become_the_approval_comment_of_a_change(deployed, user, ready, db_session):
    doc, mao = user("gs_doc"), user("mao")
    [edu] = services.section_entries(staff=doc, section_key="education")
    old = edu.effective
    row = services.submit_change(staff=doc, section_key="education", actor=doc, entry_id=edu.entry.id,
                                 data=dict(old.data) | {"school": "浙江大学"})
    wf.send_back(task_id=ready(row.instance_id)[0].id, actor=mao, reason="请附学校全称")
    again = services.submit_change(staff=doc, section_key="education", actor=doc, entry_id=edu.entry.id,
                                   data=dict(old.data) | {"school": "浙江大学医学院"})
    wf.complete(task_id=ready(row.instance_id)[0].id, actor=mao, data={"decision": "approve"})
    db_session.refresh(again)
    assert again.status == "effective"
    assert again.decision_comment is None  # the approval had no comment; "请附学校全称" was the return's
    [note] = db_session.scalars(select(Notification).where(Notification.user_id == doc.id,
                                                           Notification.title.like("%已审核通过并生效"))).all()
    assert note.body is None


def test_a_return_reason_does_not_become_the_reinstatement_approval_comment(deployed, user, ready, db_session):
    mao, committee = user("mao"), user("committee")
    doc, _grant, row = _departed_with_grant(db_session, user, "gs_doc2")
    departure.request_reinstatement(departure=row, reason="返聘", actor=mao)
    wf.send_back(task_id=ready(row.reinstatement_instance_id)[0].id, actor=committee, reason="请附返聘审批单")
    wf.complete(task_id=ready(row.reinstatement_instance_id)[0].id, actor=mao,
                data={"reason": "返聘，已附审批单", "revision_note": "已补充"})
    wf.complete(task_id=ready(row.reinstatement_instance_id)[0].id, actor=committee, data={"decision": "approve"})
    db_session.refresh(row)
    assert row.status == "reinstated"
    [reinstated] = _audits(db_session, "archive.reinstated", row)
    assert reinstated.after["comment"] is None
    [note] = _notes(db_session, mao, f"{doc.name}复职已批准")
    assert note.body is None
