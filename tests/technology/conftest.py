"""Technology test helpers: open tasks of an instance, completing them as a user, a default application."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from app.workflow import services as wf
from app.workflow.models import HumanTask, TaskStatus


@pytest.fixture
def ready(db_session) -> Callable[..., list[HumanTask]]:
    def _ready(instance_id: int | None, spec: str | None = None) -> list[HumanTask]:
        stmt = select(HumanTask).where(HumanTask.instance_id == instance_id, HumanTask.status == TaskStatus.READY)
        if spec:
            stmt = stmt.where(HumanTask.spec_name == spec)
        return list(db_session.scalars(stmt.order_by(HumanTask.id)))

    return _ready


@pytest.fixture
def do(ready, user) -> Callable[..., HumanTask]:
    """Complete the one open task `spec` of an instance as `username` with `data`."""

    def _do(instance_id: int | None, spec: str, username: str, **data: Any) -> HumanTask:
        tasks = ready(instance_id, spec)
        assert len(tasks) == 1, f"{spec}: {[t.spec_name for t in ready(instance_id)]}"
        return wf.complete(task_id=tasks[0].id, actor=user(username), data=data)

    return _do


PROJECT = {"name": "经皮内镜下胃造瘘术", "category": "surgery", "risk_level": "medium",
           "description": "适用于长期不能经口进食的患者，替代开腹胃造瘘", "expected_cases": 20,
           "ethics_required": True, "team": "陈医生 主治医师 术者\n刘医生 住院医师 助手"}


@pytest.fixture
def make_project(user) -> Callable[..., Any]:
    from app.technology.services import new_tech

    def _make(applicant: str = "gs_doc", **overrides: Any):
        data = dict(PROJECT)
        report = overrides.pop("report_interval_override", None)
        data.update(overrides)
        return new_tech.apply(applicant=user(applicant), data=data, report_interval_override=report)

    return _make
