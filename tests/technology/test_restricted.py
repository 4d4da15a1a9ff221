"""限制类技术 through the real engine: catalogue from the national list; application → expert review → scientific
and ethics meeting review → approval → filing → quarterly case reports and the yearly annual-summary timer."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from app.errors import ValidationFailed
from app.technology.models import EthicsReview, RestrictedTechnology
from app.technology.services import restricted
from app.technology.services.common import designated_user_id
from app.workflow import services as wf


def _tech(db_session, seq: int = 9) -> RestrictedTechnology:
    return db_session.scalar(select(RestrictedTechnology).where(RestrictedTechnology.seq == seq))


def test_catalogue_is_the_national_list(db_session):
    items = restricted.catalogue()
    assert len(items) == 12 and items[0].name == "异基因造血干细胞移植技术"
    assert any(t.is_new_2022 for t in items)


def _through_ethics(application, do, ready, user, db_session, decision="approve"):
    do(application.instance_id, "expert_review", "expert1", decision="approve", score=86, comment="条件具备")
    assert application.status == "ethics_review"
    members = [user("ethics1").id, user("ethics2").id, user("ethics3").id]
    with pytest.raises(ValidationFailed) as err:  # restricted technologies are always reviewed in a meeting
        restricted.submit_ethics(application=application, actor=user("mao"),
                                 data={"mode": "expedited", "member_ids": members[:1], "review_items": ["science"]})
    assert "mode" in {e["path"] for e in err.value.errors}
    restricted.submit_ethics(application=application, actor=user("mao"),
                             data={"mode": "meeting", "member_ids": members, "review_items": ["science", "safety"],
                                   "meeting_date": "2026-12-10"})
    review = db_session.scalar(select(EthicsReview).where(EthicsReview.source_kind == "restricted",
                                                          EthicsReview.source_id == application.id))
    for t in ready(review.instance_id, "member_opinion [child]"):
        member = db_session.get(type(user("mao")), t.assignee_id or designated_user_id(t))
        wf.complete(task_id=t.id, actor=member, data={"opinion": "agree"})
    do(review.instance_id, "ethics_decision", "mao", decision=decision, comment="会议审查意见")
    return review


def test_filing_then_quarterly_reports_and_the_annual_summary_timer(user, do, ready, db_session):
    application = restricted.apply(applicant=user("card_doc"),
                                   data={"technology_id": _tech(db_session).id, "team": "孙医生\n赵主任",
                                         "conditions": "导管室 2 间，具备规范要求的设备与团队"},
                                   report_interval="P3M", annual_interval="PT1S")
    assert application.status == "expert_review"
    [task] = ready(application.instance_id)
    assert (task.spec_name, task.role_code) == ("expert_review", "expert")
    _through_ethics(application, do, ready, user, db_session)
    assert application.status == "approval"
    do(application.instance_id, "approval", "mao", decision="approve", comment="同意开展")
    assert application.status == "filing"
    do(application.instance_id, "filing", "mao", filing_no="浙卫备2026-018", filed_on="2026-12-20",
       authority="省卫生健康委")
    assert application.status == "tracking" and application.filing_no == "浙卫备2026-018"
    assert ready(application.instance_id) == []
    instance = db_session.get(wf.ProcessInstance, application.instance_id)
    assert instance.next_timer_at is not None
    time.sleep(1.1)
    assert wf.fire_due_timers() >= 1
    [summary_task] = ready(application.instance_id)
    assert summary_task.spec_name == "annual_summary" and summary_task.assignee_id == user("card_doc").id
    do(application.instance_id, "annual_summary", "card_doc", year=2026, total_cases=42,
       qc_summary="各项质控指标均达标", plan="扩大适应证")
    wf.send_back(task_id=ready(application.instance_id, "annual_review")[0].id, actor=user("mao"), reason="补充死亡病例分析")
    do(application.instance_id, "annual_summary", "card_doc", year=2026, total_cases=42,
       qc_summary="各项质控指标均达标；0 例死亡", plan="扩大适应证")
    do(application.instance_id, "annual_review", "mao", decision="continue", comment="继续开展")
    assert [s.review_decision for s in application.annual_summaries] == ["return", "continue"]
    assert application.status == "tracking" and ready(application.instance_id) == []
    # the next year's timer is running again; the quarterly one (P3M) still waits
    time.sleep(1.1)
    assert wf.fire_due_timers() >= 1
    do(application.instance_id, "annual_summary", "card_doc", year=2027, total_cases=10, qc_summary="例数下降")
    do(application.instance_id, "annual_review", "mao", decision="stop", comment="例数不足，停止开展")
    assert application.status == "stopped" and application.final_comment == "例数不足，停止开展"
    assert ready(application.instance_id) == []
    assert db_session.get(wf.ProcessInstance, application.instance_id).status == "completed"


def test_quarterly_case_report_timer(user, do, ready, db_session):
    application = restricted.apply(applicant=user("card_doc"),
                                   data={"technology_id": _tech(db_session, 10).id, "conditions": "条件说明"},
                                   report_interval="PT1S", annual_interval="P1Y")
    _through_ethics(application, do, ready, user, db_session)
    do(application.instance_id, "approval", "mao", decision="approve")
    do(application.instance_id, "filing", "mao", filing_no="B-1", filed_on="2026-12-20", authority="市卫生健康委")
    time.sleep(1.1)
    assert wf.fire_due_timers() >= 1
    do(application.instance_id, "case_report", "card_doc", period_label="2027年第1季度", cases=6, success_cases=6,
       complications=0, deaths=0)
    assert [(r.cases, r.success_cases) for r in application.case_reports] == [(6, 6)]


def test_ethics_disapproval_and_expert_return(user, do, ready, db_session):
    application = restricted.apply(applicant=user("card_doc"),
                                   data={"technology_id": _tech(db_session, 11).id, "conditions": "初稿"})
    wf.send_back(task_id=ready(application.instance_id, "expert_review")[0].id, actor=user("expert2"),
                 reason="请对照规范补充设备清单")
    assert application.status == "returned"
    do(application.instance_id, "revise", "card_doc", revised_text="补充设备清单后的条件说明", revision_note="已补充")
    assert application.status == "expert_review" and application.conditions == "补充设备清单后的条件说明"
    _through_ethics(application, do, ready, user, db_session, decision="disapprove")
    assert application.status == "rejected" and "不同意" in application.final_comment


def test_one_open_application_per_technology_and_department(user, db_session):
    tech = _tech(db_session, 12)
    restricted.apply(applicant=user("card_doc"), data={"technology_id": tech.id, "conditions": "x"})
    with pytest.raises(ValidationFailed) as err:
        restricted.apply(applicant=user("card_head"), data={"technology_id": tech.id, "conditions": "y"})
    assert err.value.errors[0]["path"] == "technology_id"
    with pytest.raises(ValidationFailed) as err:
        restricted.apply(applicant=user("card_doc"), data={"technology_id": "abc", "conditions": ""})
    assert {e["path"] for e in err.value.errors} == {"technology_id", "conditions"}
