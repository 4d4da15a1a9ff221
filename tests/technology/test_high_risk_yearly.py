"""高风险诊疗技术 每年评估一次 without a button: the periodic job starts the evaluation of every item in use whose last
evaluation (or, never evaluated, its listing) is a year old, once, in the name of 医务处, and the department heads
get their self-evaluation task."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.audit.models import AuditLog
from app.db import utcnow
from app.notify.models import Notification
from app.technology import tasks
from app.technology.models import HighRiskEvaluation, HighRiskItem
from app.technology.services import high_risk
from app.workflow.models import HumanTask, ProcessInstance, TaskStatus


@pytest.fixture
def listed(user, db_session):
    """A catalogue item of 普外科 listed `listed_days` ago, last evaluated `evaluated_days` ago (None: never)."""
    counter = iter(range(1, 100))

    def _listed(*, listed_days: int, evaluated_days: int | None = None, status: str = "active") -> HighRiskItem:
        item = high_risk.create_item(data={"code": f"HR-Y-{next(counter):02d}", "name": "腹腔镜下胰十二指肠切除术",
                                           "category": "surgery", "dept_id": user("gs_head").dept_id},
                                     actor=user("mao"))
        item.created_at = utcnow() - timedelta(days=listed_days)
        item.status = status
        if evaluated_days is not None:
            item.last_evaluated_on = high_risk.today() - timedelta(days=evaluated_days)
            item.last_result = "continue"
        db_session.flush()
        return item

    return _listed


def _evaluations(db_session, item: HighRiskItem) -> list[HighRiskEvaluation]:
    return list(db_session.scalars(select(HighRiskEvaluation).where(HighRiskEvaluation.item_id == item.id)))


def test_the_job_run_twice_starts_one_evaluation_per_due_item(listed, user, db_session, monkeypatch):
    today = high_risk.today()
    never = listed(listed_days=400)
    a_year_ago = listed(listed_days=1200, evaluated_days=0)
    a_year_ago.last_evaluated_on = today.replace(year=today.year - 1) if (today.month, today.day) != (2, 29) \
        else today.replace(year=today.year - 1, day=28)
    long_ago = listed(listed_days=1200, evaluated_days=500)
    recent = listed(listed_days=1200, evaluated_days=60)
    new = listed(listed_days=100)
    retired = listed(listed_days=1200, status="retired")
    suspended = listed(listed_days=1200, evaluated_days=400, status="suspended")
    still_open = listed(listed_days=1200, evaluated_days=400)
    db_session.add(HighRiskEvaluation(item_id=still_open.id, year=today.year - 1, status="rectify"))
    db_session.flush()

    monkeypatch.setattr(tasks, "_last_high_risk_run", None)
    from app.jobs import JOBS

    first = JOBS["technology.high_risk_yearly"]()
    assert first == {"started": 3, "no_initiator": 0, "failed": 0}
    assert JOBS["technology.high_risk_yearly"]() == {}  # later ticks of the day do nothing
    assert tasks.high_risk_yearly(force=True) == {"started": 0, "no_initiator": 0, "failed": 0}

    for item in (never, a_year_ago, long_ago):
        [evaluation] = _evaluations(db_session, item)
        assert (evaluation.year, evaluation.status) == (today.year, "in_progress")
        assert evaluation.started_by_id == user("mao").id
        instance = db_session.get(ProcessInstance, evaluation.instance_id)
        assert instance.started_by_id == user("mao").id and instance.dept_id == item.dept_id
        [task] = db_session.scalars(select(HumanTask).where(HumanTask.instance_id == instance.id,
                                                            HumanTask.status == TaskStatus.READY))
        assert (task.spec_name, task.role_code) == ("self_evaluation", "dept_head")
        audit_row = db_session.scalar(select(AuditLog).where(AuditLog.action == "technology.high_risk_evaluation_started",
                                                             AuditLog.entity_id == str(evaluation.id)))
        assert audit_row.actor_name == high_risk.SYSTEM_ACTOR and audit_row.after["initiator"] == user("mao").name
    for item in (recent, new, retired, suspended):
        assert _evaluations(db_session, item) == []
    assert [e.year for e in _evaluations(db_session, still_open)] == [today.year - 1]

    # the department head is told as with the button (a new task each), the office gets one summary
    tasks_for_head = db_session.scalars(select(Notification).where(Notification.user_id == user("gs_head").id,
                                                                   Notification.title == "新待办：科室自评")).all()
    assert len(tasks_for_head) == 3
    summary = db_session.scalars(select(Notification).where(Notification.user_id == user("mao").id,
                                                            Notification.title.like("已自动发起%"))).all()
    assert len(summary) == 1 and summary[0].title.startswith("已自动发起 3 项")


def test_an_item_evaluated_this_year_by_the_button_is_not_started_again(listed, user, db_session):
    item = listed(listed_days=800, evaluated_days=400)
    high_risk.start_evaluation(item=item, actor=user("mao"))
    evaluation = _evaluations(db_session, item)[0]
    evaluation.status = "withdrawn"  # even a withdrawn one: the office decided about this year
    db_session.flush()
    assert high_risk.start_yearly_evaluations()["started"] == 0
    assert len(_evaluations(db_session, item)) == 1


def test_a_system_start_is_filed_under_the_office_member_covering_the_department(listed, user):
    item = listed(listed_days=800)
    assert high_risk.evaluation_initiator(item).id == user("mao").id
    evaluation = high_risk.start_evaluation(item=item, actor=high_risk.SYSTEM_ACTOR, year=2040)
    assert evaluation.started_by_id == user("mao").id and evaluation.year == 2040
