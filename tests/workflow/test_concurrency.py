"""Two people completing the same task at once, with real commits on their own database."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from app.auth.models import User
from app.db import db
from app.errors import Conflict
from app.workflow import services
from app.workflow.models import HumanTask, ProcessInstance, TaskLog
from tests.conftest import own_database

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def committed_app():
    with own_database("commits") as (application, _url):
        with application.app_context():
            from app.forms import services as forms

            forms.sync_files(FIXTURES)
            flow = db.session.scalar(select(User).where(User.username == "flow"))
            services.upload_version(bpmn_xml=(FIXTURES / "review.bpmn").read_text(encoding="utf-8"),
                                    dmn={"test_levels.dmn": (FIXTURES / "test_levels.dmn").read_text(encoding="utf-8")},
                                    actor=flow)
            db.session.commit()
        yield application


def _user(name: str) -> User:
    return db.session.scalar(select(User).where(User.username == name))


def test_same_task_completed_twice_at_once_one_wins(committed_app):
    from app.auth.services import create_user

    with committed_app.app_context():
        second = create_user(username="mao_b", name="钱医务", password=None, dept=_user("mao").dept, roles=["mao"])
        inst = services.start(key="test_review", business_key="C-1", title="并发测试", actor=_user("gs_doc"),
                              data={"grade": 1, "reminder_duration": "P1D"})
        db.session.commit()
        task_id = db.session.scalar(select(HumanTask.id).where(HumanTask.instance_id == inst.id))
        instance_id, second_id = inst.id, second.id

    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def worker(username: str, decision: str) -> None:
        with committed_app.app_context():
            actor = db.session.scalar(select(User).where(User.username == username))
            barrier.wait()
            try:
                services.complete(task_id=task_id, actor=actor, data={"decision": decision, "score": 80})
                db.session.commit()
                outcomes[username] = "ok"
            except Conflict as exc:
                db.session.rollback()
                outcomes[username] = exc.message
            finally:
                db.session.remove()

    threads = [threading.Thread(target=worker, args=("mao", "approve")),
               threading.Thread(target=worker, args=("mao_b", "reject"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert sorted(outcomes.values()).count("ok") == 1, outcomes
    loser = next(m for m in outcomes.values() if m != "ok")
    assert "已由" in loser or "刚被其他人处理" in loser
    with committed_app.app_context():
        inst = db.session.get(ProcessInstance, instance_id)
        completes = db.session.scalars(select(TaskLog).where(TaskLog.instance_id == instance_id,
                                                             TaskLog.action == "complete")).all()
        assert len(completes) == 1
        winner = completes[0].data["decision"]
        assert inst.status == ("rejected" if winner == "reject" else "running")
        task = db.session.get(HumanTask, task_id)
        assert task.status == "completed" and task.completed_by_id in {second_id, _user("mao").id}
