"""Rejections and returns of the technology flows through the real engine (issue 5): what the applicant is told,
what the audit log keeps, what is *not* created, and where the flow stands afterwards."""

from __future__ import annotations

from io import BytesIO

from docx import Document
from sqlalchemy import select

from app.audit.models import AuditLog
from app.notify.models import Notification
from app.privileges.models import Grant, PrivilegeItem
from app.technology.models import (
    DaySurgeryProcedure,
    DaySurgeryQualification,
    EthicsReview,
    HighRiskItem,
    RestrictedTechnology,
)
from app.technology.services import day_surgery, ethics, high_risk, new_tech, restricted
from app.technology.services.common import designated_user_id
from app.workflow import services as wf
from app.workflow.models import HumanTask, ProcessInstance


def _notes(db_session, who, title: str) -> list[Notification]:
    return list(db_session.scalars(select(Notification).where(Notification.user_id == who.id,
                                                              Notification.title == title)
                                   .order_by(Notification.id)))


def _audits(db_session, action: str, entity) -> list[AuditLog]:
    return list(db_session.scalars(select(AuditLog).where(AuditLog.action == action,
                                                          AuditLog.entity_type == entity.__tablename__,
                                                          AuditLog.entity_id == str(entity.id))
                                   .order_by(AuditLog.id)))


def _instance(db_session, instance_id) -> ProcessInstance:
    instance = db_session.get(ProcessInstance, instance_id)
    db_session.refresh(instance)
    return instance


def _log(instance_id, spec: str):
    return [log for log in wf.history(instance_id) if log.spec_name == spec]


# ---------------------------------------------------------------- 新技术新项目: 医务处审批 reject / return


def _at_mao_approval(make_project, do, ready, user, db_session, **kw):
    project = make_project(ethics_required=False, **kw)
    do(project.instance_id, "dept_review", "gs_head", decision="approve", comment="科室同意")
    new_tech.assign_experts(project=project, actor=user("mao"), expert_ids=[user("expert1").id, user("expert2").id])
    for t in ready(project.instance_id, "expert_review [child]"):
        wf.complete(task_id=t.id, actor=db_session.get(type(user("mao")), t.assignee_id),
                    data={"score": 85, "recommendation": "support", "comment": "可行"})
    assert project.status == "mao_approval"
    return project


def test_office_rejection_ends_the_project_without_a_catalogue_item(make_project, do, ready, user, db_session):
    project = _at_mao_approval(make_project, do, ready, user, db_session)
    do(project.instance_id, "mao_approval", "mao", decision="reject", comment="本院暂不具备开展条件")
    assert project.status == "rejected" and project.final_comment == "本院暂不具备开展条件"
    assert project.decided_at is not None and project.approved_at is None
    instance = _instance(db_session, project.instance_id)
    assert instance.status == "rejected" and instance.ended_at is not None and ready(project.instance_id) == []
    # the team is never authorised: no catalogue item NT-… for the project
    assert db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == f"NT-{project.number}")) is None
    [note] = _notes(db_session, user("gs_doc"), f"新技术新项目 {project.number}：未通过")
    assert note.body == "本院暂不具备开展条件" and note.kind == "result"
    assert _notes(db_session, user("gs_doc"), f"新技术新项目 {project.number} 已批准开展") == []
    last = _audits(db_session, "technology.project_status", project)[-1]
    assert last.actor_id == user("mao").id
    assert last.after["status"] == "rejected" and last.after["comment"] == "本院暂不具备开展条件"


def test_office_rejection_reaches_the_project_lead_as_an_approval_does(make_project, do, ready, user, db_session):
    project = _at_mao_approval(make_project, do, ready, user, db_session, lead_id=user("gs_doc2").id)
    assert project.lead_id == user("gs_doc2").id
    do(project.instance_id, "mao_approval", "mao", decision="reject", comment="本院暂不具备开展条件")
    assert project.status == "rejected"
    assert _notes(db_session, user("gs_doc2"), f"新技术新项目 {project.number}：未通过")


def test_office_return_sends_the_project_back_to_the_applicant_and_through_review_again(
        make_project, do, ready, user, db_session):
    project = _at_mao_approval(make_project, do, ready, user, db_session)
    do(project.instance_id, "mao_approval", "mao", decision="return", comment="请补充术后随访方案")
    assert project.status == "returned" and project.final_comment is None and project.decided_at is None
    assert _instance(db_session, project.instance_id).status == "running"
    [revise] = ready(project.instance_id)
    assert revise.spec_name == "revise" and revise.assignee_id == user("gs_doc").id
    assert wf.task_data(revise)["comment"] == "请补充术后随访方案"  # the office's reason is on the revise form
    assert _notes(db_session, user("gs_doc"), "新待办：修改申请")
    [log] = _log(project.instance_id, "mao_approval")
    assert log.actor_id == user("mao").id and log.comment == "请补充术后随访方案"
    last = _audits(db_session, "technology.project_status", project)[-1]
    assert last.after == {"status": "returned", "step": "医务处审批", "comment": "请补充术后随访方案"}
    assert db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == f"NT-{project.number}")) is None
    # the revision goes through the department and a fresh expert round before the office sees it again
    do(project.instance_id, "revise", "gs_doc", revised_text="补充：术后 1、3、6 个月随访", revision_note="已补充随访方案")
    assert project.status == "dept_review" and project.description == "补充：术后 1、3、6 个月随访"
    assert [t.spec_name for t in ready(project.instance_id)] == ["dept_review"]
    do(project.instance_id, "dept_review", "gs_head", decision="approve", comment="同意")
    new_tech.assign_experts(project=project, actor=user("mao"), expert_ids=[user("expert1").id, user("expert2").id])
    tasks = ready(project.instance_id, "expert_review [child]")
    assert {wf.task_data(t)["review_round"] for t in tasks} == {2}
    for t in tasks:
        wf.complete(task_id=t.id, actor=db_session.get(type(user("mao")), t.assignee_id),
                    data={"score": 95, "recommendation": "support", "comment": "补充后可行"})
    assert (project.expert_count, project.expert_avg) == (2, 95.0)  # the second round only
    assert sorted(new_tech.reviews_by_round(project)) == [1, 2]
    do(project.instance_id, "mao_approval", "mao", decision="approve", comment="批准开展")
    assert project.status == "tracking" and project.approved_at is not None


# ---------------------------------------------------------------- 限制类技术: expert reject, 医务处 return / reject


def _tech(db_session, seq: int) -> RestrictedTechnology:
    return db_session.scalar(select(RestrictedTechnology).where(RestrictedTechnology.seq == seq))


def _restricted(user, db_session, seq: int = 9):
    return restricted.apply(applicant=user("card_doc"),
                            data={"technology_id": _tech(db_session, seq).id, "conditions": "导管室 2 间，团队 5 人"})


def _restricted_through_ethics(application, do, ready, user, db_session):
    do(application.instance_id, "expert_review", "expert1", decision="approve", score=86, comment="条件具备")
    members = [user("ethics1").id, user("ethics2").id, user("ethics3").id]
    restricted.submit_ethics(application=application, actor=user("mao"),
                             data={"mode": "meeting", "member_ids": members, "review_items": ["science"],
                                   "meeting_date": "2026-12-10"})
    review = db_session.scalar(select(EthicsReview).where(EthicsReview.source_kind == "restricted",
                                                          EthicsReview.source_id == application.id))
    for t in ready(review.instance_id, "member_opinion [child]"):
        member = db_session.get(type(user("mao")), t.assignee_id or designated_user_id(t))
        wf.complete(task_id=t.id, actor=member, data={"opinion": "agree"})
    do(review.instance_id, "ethics_decision", "mao", decision="approve", comment="同意")
    assert application.status == "approval"
    return review


def test_restricted_expert_rejection_ends_the_application_before_any_ethics_review(user, do, ready, db_session):
    application = _restricted(user, db_session, 9)
    do(application.instance_id, "expert_review", "expert1", decision="reject", score=40, comment="设备不符合规范要求")
    assert application.status == "rejected" and application.final_comment == "设备不符合规范要求"
    assert application.decided_at is not None and application.filing_no is None
    instance = _instance(db_session, application.instance_id)
    assert instance.status == "rejected" and ready(application.instance_id) == []
    assert ethics.reviews_for_source(source_kind="restricted", source_id=application.id) == []
    [note] = _notes(db_session, user("card_doc"), f"限制类技术 {application.number}：未通过")
    assert note.body == "设备不符合规范要求"
    last = _audits(db_session, "technology.restricted_status", application)[-1]
    assert last.actor_id == user("expert1").id and last.after["status"] == "rejected"
    # the department may apply again: the rejected application is not an open one
    again = _restricted(user, db_session, 9)
    assert again.status == "expert_review"


def test_restricted_office_return_goes_back_to_the_applicant_then_to_the_experts(user, do, ready, db_session):
    application = _restricted(user, db_session, 10)
    review = _restricted_through_ethics(application, do, ready, user, db_session)
    wf.send_back(task_id=ready(application.instance_id, "approval")[0].id, actor=user("mao"),
                 reason="请补充质控人员名单")
    assert application.status == "returned" and application.final_comment is None
    [revise] = ready(application.instance_id)
    assert revise.spec_name == "revise" and revise.assignee_id == user("card_doc").id
    assert wf.task_data(revise)["comment"] == "请补充质控人员名单"
    assert _notes(db_session, user("card_doc"), "新待办：修改申请")
    last = _audits(db_session, "technology.restricted_status", application)[-1]
    assert last.after == {"status": "returned", "step": "审批", "comment": "请补充质控人员名单"}
    [log] = _log(application.instance_id, "approval")
    assert log.action == "send_back" and log.comment == "请补充质控人员名单"
    do(application.instance_id, "revise", "card_doc", revised_text="导管室 2 间，团队 5 人，质控员 2 人",
       revision_note="已补充")
    assert application.status == "expert_review" and application.conditions.endswith("质控员 2 人")
    assert [t.spec_name for t in ready(application.instance_id)] == ["expert_review"]
    assert review.status == "decided" and review.decision == "approve"  # the earlier decision stays on record


def test_restricted_office_rejection_after_ethics_approval(user, do, ready, db_session):
    application = _restricted(user, db_session, 11)
    review = _restricted_through_ethics(application, do, ready, user, db_session)
    do(application.instance_id, "approval", "mao", decision="reject", comment="区域内已有中心开展，暂不批准")
    assert application.status == "rejected" and application.final_comment == "区域内已有中心开展，暂不批准"
    assert application.filing_no is None and application.filed_on is None
    instance = _instance(db_session, application.instance_id)
    assert instance.status == "rejected" and ready(application.instance_id) == []
    [note] = _notes(db_session, user("card_doc"), f"限制类技术 {application.number}：未通过")
    assert note.body == "区域内已有中心开展，暂不批准"
    assert _notes(db_session, user("card_doc"), f"限制类技术 {application.number} 已备案") == []
    last = _audits(db_session, "technology.restricted_status", application)[-1]
    assert last.actor_id == user("mao").id and last.after["status"] == "rejected"
    assert review.decision == "approve"


# ---------------------------------------------------------------- 日间手术资质: 医务处 reject / return


def _procs(db_session, n: int = 2) -> list[DaySurgeryProcedure]:
    return list(db_session.scalars(select(DaySurgeryProcedure).where(DaySurgeryProcedure.specialty == "普通外科")
                                   .order_by(DaySurgeryProcedure.code).limit(n)))


def test_day_surgery_office_rejection_grants_nothing(user, do, ready, db_session):
    procs = _procs(db_session)
    application = day_surgery.apply(applicant=user("gs_doc2"), procedure_ids=[p.id for p in procs],
                                    reason="完成疝修补 30 例")
    do(application.instance_id, "dept_review", "gs_head", decision="approve", comment="同意")
    assert application.status == "in_review"
    do(application.instance_id, "mao_review", "mao", decision="reject", comment="例数未达 50 例要求")
    assert application.status == "rejected" and application.final_comment == "例数未达 50 例要求"
    assert application.decided_at is not None
    assert db_session.scalars(select(DaySurgeryQualification).where(
        DaySurgeryQualification.application_id == application.id)).all() == []
    assert not any(day_surgery.is_qualified(user_id=user("gs_doc2").id, procedure_id=p.id) for p in procs)
    assert _instance(db_session, application.instance_id).status == "rejected"
    assert ready(application.instance_id) == []
    [note] = _notes(db_session, user("gs_doc2"), f"日间手术资质申请 {application.number}：未通过")
    assert note.body == "例数未达 50 例要求"
    [row] = _audits(db_session, "technology.day_surgery_rejected", application)
    assert row.actor_id == user("mao").id and row.after == {"comment": "例数未达 50 例要求"}
    # no longer pending: the same procedures may be applied for again
    assert day_surgery.apply(applicant=user("gs_doc2"), procedure_ids=[procs[0].id], reason="再次申请").status == "in_review"


def test_day_surgery_office_return_goes_back_through_the_department(user, do, ready, db_session):
    [proc] = _procs(db_session, 1)
    application = day_surgery.apply(applicant=user("gs_doc"), procedure_ids=[proc.id], reason="完成 20 例")
    do(application.instance_id, "dept_review", "gs_head", decision="approve")
    wf.send_back(task_id=ready(application.instance_id, "mao_review")[0].id, actor=user("mao"),
                 reason="请附近一年手术清单")
    assert application.status == "returned" and application.decided_at is None
    [revise] = ready(application.instance_id)
    assert revise.spec_name == "revise" and revise.assignee_id == user("gs_doc").id
    assert wf.task_data(revise)["comment"] == "请附近一年手术清单"
    [row] = _audits(db_session, "technology.day_surgery_returned", application)
    assert row.actor_id == user("mao").id and row.after == {"comment": "请附近一年手术清单"}
    do(application.instance_id, "revise", "gs_doc", revised_text="完成 20 例，清单见附件", revision_note="已附清单")
    assert application.status == "in_review" and application.reason == "完成 20 例，清单见附件"
    assert [t.spec_name for t in ready(application.instance_id)] == ["dept_review"]
    assert not day_surgery.is_qualified(user_id=user("gs_doc").id, procedure_id=proc.id)


def test_day_surgery_return_reason_does_not_become_the_approval_comment(user, do, ready, db_session):
    [proc] = _procs(db_session, 1)
    application = day_surgery.apply(applicant=user("gs_doc"), procedure_ids=[proc.id], reason="完成 20 例")
    do(application.instance_id, "dept_review", "gs_head", decision="approve")
    wf.send_back(task_id=ready(application.instance_id, "mao_review")[0].id, actor=user("mao"),
                 reason="请附近一年手术清单")
    do(application.instance_id, "revise", "gs_doc", revised_text="完成 20 例，清单见附件", revision_note="已附清单")
    do(application.instance_id, "dept_review", "gs_head", decision="approve")
    do(application.instance_id, "mao_review", "mao", decision="approve")
    assert application.status == "approved"
    assert application.final_comment is None  # nobody commented on the approval


# ---------------------------------------------------------------- 伦理审查 (standalone): 不同意


def test_standalone_ethics_disapproval_is_decided_and_told_to_the_applicant(user, ready, do, db_session):
    review = ethics.apply(applicant=user("card_doc"), data={"title": "某新药 I 期临床试验", "description": "首次人体试验"})
    ethics.setup_review(review=review, actor=user("mao"),
                        data={"mode": "meeting", "member_ids": [user("ethics1").id, user("ethics2").id,
                                                                user("ethics3").id],
                              "review_items": ["science", "risk_benefit"], "meeting_date": "2026-12-05"})
    votes = {"ethics1": "disagree", "ethics2": "disagree", "ethics3": "modify"}
    for t in ready(review.instance_id, "member_opinion [child]"):
        member_id = t.assignee_id or designated_user_id(t)
        name = next(n for n in votes if user(n).id == member_id)
        wf.complete(task_id=t.id, actor=user(name), data={"opinion": votes[name], "comment": "风险过高"})
    [decision] = ready(review.instance_id, "ethics_decision")
    assert wf.task_data(decision)["majority"] == "disagree"
    do(review.instance_id, "ethics_decision", "mao", decision="disapprove", comment="风险受益比不合理，不同意开展")
    assert review.status == "decided" and review.decision == "disapprove" and review.decided_at is not None
    assert (review.agree_count, review.modify_count, review.disagree_count) == (0, 1, 2)
    assert review.decision_comment == "风险受益比不合理，不同意开展"
    assert _instance(db_session, review.instance_id).status == "rejected"
    assert ready(review.instance_id) == []
    [note] = _notes(db_session, user("card_doc"), f"伦理审查 {review.number}：不同意")
    assert note.body == "某新药 I 期临床试验"
    [closed] = _audits(db_session, "technology.ethics_closed", review)
    assert closed.after == {"decision": "disapprove"}
    [decided] = _audits(db_session, "technology.ethics_decided", review)
    assert decided.actor_id == user("mao").id and decided.after["disagree"] == 2
    doc = Document(BytesIO(ethics.letter_docx(review=review)))
    letter = "\n".join([p.text for p in doc.paragraphs] + [c.text for t in doc.tables for r in t.rows for c in r.cells])
    assert "不同意" in letter and "风险受益比不合理，不同意开展" in letter


# ---------------------------------------------------------------- 高风险诊疗技术: outcomes other than 继续开展


def _linked_item(user, db_session) -> tuple[HighRiskItem, Grant]:
    """A 普外科 high-risk item linked to a privilege item, and an effective grant of it to 陈医生."""
    from app.privileges.services import today

    linked = db_session.scalar(select(HighRiskItem).where(HighRiskItem.code == "HR-ORTH-01"))
    item = high_risk.create_item(data={"code": "HR-T-09", "name": "腹腔镜下胰十二指肠切除术", "category": "surgery",
                                       "dept_id": user("gs_head").dept_id,
                                       "privilege_item_id": str(linked.privilege_item_id)}, actor=user("mao"))
    grant = Grant(user_id=user("gs_doc").id, item_id=linked.privilege_item_id, valid_from=today())
    db_session.add(grant)
    db_session.flush()
    return item, grant


def test_rectification_that_fails_ends_in_suspension_of_item_and_grants(user, do, ready, db_session):
    item, grant = _linked_item(user, db_session)
    evaluation = high_risk.start_evaluation(item=item, actor=user("mao"), year=2033)
    do(evaluation.instance_id, "self_evaluation", "gs_head", cases_year=4, complications=2, self_assessment="poor",
       summary="并发症偏多")
    do(evaluation.instance_id, "mao_evaluation", "mao", decision="rectify", comment="三个月内完成团队培训")
    assert evaluation.status == "rectify" and item.status == "rectifying" and grant.status == "active"
    do(evaluation.instance_id, "rectification", "gs_head", measures="已组织培训一次", completed_on="2033-04-01")
    assert [t.spec_name for t in ready(evaluation.instance_id)] == ["mao_evaluation"]
    do(evaluation.instance_id, "mao_evaluation", "mao", decision="suspend", comment="整改不到位，暂停开展")
    assert evaluation.status == "suspend" and evaluation.decided_at is not None
    assert evaluation.mao_comment == "整改不到位，暂停开展" and evaluation.rectification["measures"] == "已组织培训一次"
    assert (item.status, item.last_result) == ("suspended", "suspend")
    assert grant.status == "suspended" and "2033年度评估决定暂停开展" in grant.revoked_reason
    assert _instance(db_session, evaluation.instance_id).status == "completed"
    [closed] = _audits(db_session, "technology.high_risk_evaluation_closed", item)
    assert closed.before["status"] == "rectifying" and closed.after["status"] == "suspended"
    assert [a.after["decision"] for a in _audits(db_session, "technology.high_risk_evaluated", evaluation)] == [
        "rectify", "suspend"]


def test_terminated_evaluation_during_rectification_restores_the_item(user, do, ready, db_session):
    item, grant = _linked_item(user, db_session)
    evaluation = high_risk.start_evaluation(item=item, actor=user("mao"), year=2034)
    do(evaluation.instance_id, "self_evaluation", "gs_head", cases_year=10, self_assessment="acceptable", summary="平稳")
    do(evaluation.instance_id, "mao_evaluation", "mao", decision="rectify", comment="完善知情同意")
    assert item.status == "rectifying"
    wf.terminate(instance_id=evaluation.instance_id, actor=user("flow"), reason="评估方案调整，重新发起")
    assert evaluation.status == "withdrawn" and item.status == "active" and grant.status == "active"
    assert ready(evaluation.instance_id) == []
    assert db_session.scalars(select(HumanTask).where(HumanTask.instance_id == evaluation.instance_id,
                                                      HumanTask.spec_name == "rectification")).one().status == "cancelled"
    [row] = _audits(db_session, "technology.high_risk_evaluation_withdrawn", evaluation)
    assert row.actor_id == user("flow").id and row.after == {"reason": "评估方案调整，重新发起"}
