"""新技术新项目 through the real engine: dept → experts (one task each, in parallel) → summary → ethics → 医务处 →
follow-up timer loop → 转常规 / 延期 / 终止; returns and rejections."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from app.errors import Forbidden, ValidationFailed
from app.technology.models import EthicsReview, ExpertReview
from app.technology.services import new_tech
from app.technology.services.common import designated_user_id
from app.workflow import services as wf


def _to_experts(project, do, user):
    do(project.instance_id, "dept_review", "gs_head", decision="approve", comment="科室同意")
    assert project.status == "expert_assign"
    new_tech.assign_experts(project=project, actor=user("mao"), expert_ids=[user("expert1").id, user("expert2").id])


def test_each_expert_gets_an_own_task_and_the_summary_averages_their_scores(make_project, do, ready, user, db_session):
    project = make_project(ethics_required=False)
    _to_experts(project, do, user)
    tasks = ready(project.instance_id, "expert_review [child]")
    assert len(tasks) == 2 and {t.role_code for t in tasks} == {"expert"}
    assert {t.assignee_id for t in tasks} == {user("expert1").id, user("expert2").id}
    assert project.status == "expert_review" and project.expert_ids == [user("expert1").id, user("expert2").id]
    by_expert = {t.assignee_id: t for t in tasks}
    wf.complete(task_id=by_expert[user("expert2").id].id, actor=user("expert2"),
                data={"score": 90, "recommendation": "support", "comment": "技术成熟"})
    assert [t.spec_name for t in ready(project.instance_id)] == ["expert_review [child]"]
    wf.complete(task_id=by_expert[user("expert1").id].id, actor=user("expert1"),
                data={"score": 75, "recommendation": "conditional", "comment": "需加强培训"})
    assert (project.expert_count, project.expert_avg) == (2, 82.5)
    data = wf.instance_data(db_session.get(wf.ProcessInstance, project.instance_id))
    assert (data["expert_count"], data["expert_avg"]) == (2, 82.5)
    assert [t.spec_name for t in ready(project.instance_id)] == ["mao_approval"]
    assert project.status == "mao_approval"
    reviews = db_session.scalars(select(ExpertReview).where(ExpertReview.project_id == project.id)).all()
    assert sorted(r.score for r in reviews) == [75, 90]


def test_an_expert_cannot_submit_another_experts_review(make_project, do, ready, user):
    project = make_project(ethics_required=False)
    _to_experts(project, do, user)
    theirs = next(t for t in ready(project.instance_id, "expert_review [child]") if t.assignee_id == user("expert2").id)
    with pytest.raises(Forbidden):
        wf.complete(task_id=theirs.id, actor=user("expert1"),
                    data={"score": 10, "recommendation": "oppose", "comment": "x"})


def test_an_unassigned_review_task_may_only_be_done_by_its_expert_or_a_delegate(make_project, do, ready, user,
                                                                               db_session):
    project = make_project(ethics_required=False)
    do(project.instance_id, "dept_review", "gs_head", decision="approve")
    # completed through the generic inbox: nothing on the technology side assigns the tasks
    [task] = ready(project.instance_id, "assign_experts")
    wf.complete(task_id=task.id, actor=user("mao"), data={"expert_ids": [user("expert1").id, user("expert2").id]})
    tasks = ready(project.instance_id, "expert_review [child]")
    theirs = next(t for t in tasks if designated_user_id(t) == user("expert2").id)
    with pytest.raises(Forbidden), db_session.begin_nested():  # a request rolls back the same way
        wf.complete(task_id=theirs.id, actor=user("expert1"),
                    data={"score": 10, "recommendation": "oppose", "comment": "x"})
    if theirs.assignee_id is None:
        wf.claim(task_id=theirs.id, actor=user("expert2"))
    wf.delegate(task_id=theirs.id, actor=user("expert2"), to_user=user("expert1"), comment="出差，请代评")
    wf.complete(task_id=theirs.id, actor=user("expert1"), data={"score": 70, "recommendation": "support", "comment": "代评"})
    assert [r.expert_id for r in project.reviews] == [user("expert1").id]


def test_the_engine_projection_assigns_each_multi_instance_task(make_project, do, ready, user):
    project = make_project(ethics_required=False)
    do(project.instance_id, "dept_review", "gs_head", decision="approve")
    [task] = ready(project.instance_id, "assign_experts")
    wf.complete(task_id=task.id, actor=user("mao"), data={"expert_ids": [user("expert1").id, user("expert2").id]})
    assert {t.assignee_id for t in ready(project.instance_id, "expert_review [child]")} == {
        user("expert1").id, user("expert2").id}


def test_experts_must_be_expert_role_holders_and_not_the_applicant(make_project, do, user):
    project = make_project(ethics_required=False)
    do(project.instance_id, "dept_review", "gs_head", decision="approve")
    with pytest.raises(ValidationFailed) as err:
        new_tech.assign_experts(project=project, actor=user("mao"), expert_ids=[user("gs_doc").id, user("nurse").id, "x"])
    paths = {e["path"] for e in err.value.errors}
    assert paths == {"expert_ids/0", "expert_ids/1", "expert_ids/2"}
    with pytest.raises(ValidationFailed) as err:
        new_tech.assign_experts(project=project, actor=user("mao"), expert_ids=[user("expert1").id])
    assert err.value.errors[0]["path"] == "expert_ids"


def test_low_average_score_rejects_the_project(make_project, do, ready, user):
    project = make_project(risk_level="high")
    do(project.instance_id, "dept_review", "gs_head", decision="approve")
    new_tech.assign_experts(project=project, actor=user("mao"), expert_ids=[user("expert1").id, user("expert2").id])
    for t in ready(project.instance_id, "expert_review [child]"):
        wf.complete(task_id=t.id, actor=user("expert1" if t.assignee_id == user("expert1").id else "expert2"),
                    data={"score": 65, "recommendation": "conditional", "comment": "一般"})
    # high risk: DMN tech_risk_rules sets the pass mark at 70
    assert project.status == "rejected" and "低于通过分数 70" in project.final_comment
    assert ready(project.instance_id) == []


def test_ethics_review_members_vote_and_the_decision_returns_to_the_project(make_project, do, ready, user, db_session):
    project = make_project()
    _to_experts(project, do, user)
    for t in ready(project.instance_id, "expert_review [child]"):
        wf.complete(task_id=t.id, actor=db_session.get(type(user("mao")), t.assignee_id),
                    data={"score": 88, "recommendation": "support", "comment": "同意"})
    assert project.status == "ethics_review"
    members = [user("ethics1").id, user("ethics2").id, user("ethics3").id]
    do(project.instance_id, "ethics_submit", "mao", mode="meeting", member_ids=members,
       review_items=["science", "consent", "privacy"], meeting_date="2026-12-01")
    review = db_session.scalar(select(EthicsReview).where(EthicsReview.source_kind == "new_tech",
                                                          EthicsReview.source_id == project.id))
    assert review is not None and review.mode == "meeting" and review.member_ids == members
    assert [t.spec_name for t in ready(project.instance_id)] == []  # waiting for the ethics decision
    opinions = {"ethics1": ("agree", None), "ethics2": ("agree", None), "ethics3": ("modify", "补充知情同意书")}
    for t in ready(review.instance_id, "member_opinion [child]"):
        name = next(n for n in opinions if user(n).id == t.assignee_id)
        opinion, comment = opinions[name]
        wf.complete(task_id=t.id, actor=user(name), data={"opinion": opinion, "items_ok": ["science"],
                                                           **({"comment": comment} if comment else {})})
    [decision] = ready(review.instance_id, "ethics_decision")
    data = wf.task_data(decision)
    assert (data["agree_count"], data["modify_count"], data["disagree_count"], data["majority"]) == (2, 1, 0, "agree")
    wf.complete(task_id=decision.id, actor=user("mao"), data={"decision": "approve", "comment": "同意开展"})
    assert review.status == "decided" and review.decision == "approve" and review.agree_count == 2
    assert review.majority == "agree"
    assert [t.spec_name for t in ready(project.instance_id)] == ["mao_approval"]
    assert project.status == "mao_approval"


def test_ethics_disapproval_rejects_the_project(make_project, do, ready, user, db_session):
    project = make_project()
    _to_experts(project, do, user)
    for t in ready(project.instance_id, "expert_review [child]"):
        wf.complete(task_id=t.id, actor=db_session.get(type(user("mao")), t.assignee_id),
                    data={"score": 80, "recommendation": "support", "comment": "可"})
    do(project.instance_id, "ethics_submit", "mao", mode="expedited", member_ids=[user("ethics1").id],
       review_items=["consent"])
    review = db_session.scalar(select(EthicsReview).where(EthicsReview.source_id == project.id))
    [t] = ready(review.instance_id, "member_opinion [child]")
    wf.complete(task_id=t.id, actor=user("ethics1"), data={"opinion": "disagree", "comment": "风险过高"})
    do(review.instance_id, "ethics_decision", "mao", decision="disapprove", comment="风险受益比不合理")
    assert review.status == "decided" and project.status == "rejected"
    assert "风险受益比不合理" in project.final_comment


def _approved(make_project, do, ready, user, db_session, **kw):
    project = make_project(ethics_required=False, report_interval_override="PT1S", **kw)
    _to_experts(project, do, user)
    for t in ready(project.instance_id, "expert_review [child]"):
        wf.complete(task_id=t.id, actor=db_session.get(type(user("mao")), t.assignee_id),
                    data={"score": 85, "recommendation": "support", "comment": "好"})
    do(project.instance_id, "mao_approval", "mao", decision="approve", comment="批准开展")
    assert project.status == "tracking" and project.approved_at is not None
    return project


def _report(project, do, ready, user, label="2026年第1季度"):
    time.sleep(1.1)
    assert wf.fire_due_timers() >= 1
    [task] = ready(project.instance_id)
    assert task.spec_name == "progress_report" and task.assignee_id == user("gs_doc").id
    do(project.instance_id, "progress_report", "gs_doc", period_label=label, cases_done=8, effective_cases=7,
       complications=1, adverse_events=0, summary="进展顺利")


def test_follow_up_loop_extend_then_routine(make_project, do, ready, user, db_session):
    from sqlalchemy import select as sa_select

    from app.privileges.models import PrivilegeItem

    project = _approved(make_project, do, ready, user, db_session)
    item = db_session.scalar(sa_select(PrivilegeItem).where(PrivilegeItem.code == f"NT-{project.number}"))
    assert item is not None and item.is_active and item.category.code == "new_tech"  # the team can be authorised
    assert ready(project.instance_id) == []  # waiting for the report period
    _report(project, do, ready, user)
    do(project.instance_id, "progress_review", "mao", decision="extend", comment="例数不足，延期一个周期")
    assert project.status == "extended" and project.extension_count == 1
    _report(project, do, ready, user, "2026年第2季度")
    do(project.instance_id, "progress_review", "mao", decision="routine", comment="疗效确切，转常规",
       privilege_category="surgery", privilege_grade=3)
    assert project.status == "routine" and project.decided_at is not None
    assert [r.review_decision for r in project.reports] == ["extend", "routine"]
    db_session.refresh(item)
    assert not item.is_active and "转为常规" in item.note  # routine practice is authorised under its own category


def test_follow_up_report_returned_then_terminated(make_project, do, ready, user, db_session):
    project = _approved(make_project, do, ready, user, db_session)
    _report(project, do, ready, user)
    wf.send_back(task_id=ready(project.instance_id, "progress_review")[0].id, actor=user("mao"), reason="请补充并发症说明")
    do(project.instance_id, "progress_report", "gs_doc", period_label="2026年第1季度（补充）", cases_done=8,
       effective_cases=7, complications=1, summary="补充：1 例术后出血，保守治疗好转")
    do(project.instance_id, "progress_review", "mao", decision="terminate", comment="安全性不满意，终止")
    assert project.status == "terminated" and len(project.reports) == 2
    assert project.final_comment == "安全性不满意，终止"


def test_dept_return_revise_and_reject(make_project, do, ready, user):
    project = make_project(ethics_required=False)
    wf.send_back(task_id=ready(project.instance_id, "dept_review")[0].id, actor=user("gs_head"), reason="补充国内开展情况")
    assert project.status == "returned"
    [revise] = ready(project.instance_id, "revise")
    assert revise.assignee_id == user("gs_doc").id
    do(project.instance_id, "revise", "gs_doc", revised_text="补充后的简介：国内已有多家三甲医院开展", revision_note="已补充")
    assert project.status == "dept_review" and project.description.startswith("补充后的简介")
    do(project.instance_id, "dept_review", "gs_head", decision="reject", comment="科室暂不具备条件")
    assert project.status == "rejected" and project.final_comment == "科室暂不具备条件"


def test_withdrawn_instance_withdraws_the_project(make_project, user):
    project = make_project()
    wf.withdraw(instance_id=project.instance_id, actor=user("gs_doc"), reason="方案调整")
    assert project.status == "withdrawn" and project.final_comment == "方案调整"


def test_bad_application_reports_every_field(user):
    with pytest.raises(ValidationFailed) as err:
        new_tech.apply(applicant=user("gs_doc"), data={"name": "", "category": "magic", "risk_level": "high",
                                                       "expected_cases": "-3", "lead_id": user("card_doc").id,
                                                       "dept_id": user("card_doc").dept_id, "team": ["x" * 101]})
    paths = {e["path"] for e in err.value.errors}
    assert {"name", "category", "description", "expected_cases", "dept_id", "ethics_required", "team/0"} <= paths
