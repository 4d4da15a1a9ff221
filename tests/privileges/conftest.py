"""Privilege test helpers: a stand-in for the workflow engine's start, items by code, grants."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select


@pytest.fixture
def fake_start(monkeypatch) -> list[dict]:
    """Replace app.workflow.services.start: records the call and returns a running instance stand-in."""
    from app.workflow import services as wf

    calls: list[dict] = []

    def start(**kwargs):
        calls.append(kwargs)
        return SimpleNamespace(id=900000 + len(calls), status="running", business_key=kwargs["business_key"])

    monkeypatch.setattr(wf, "start", start, raising=False)
    return calls


@pytest.fixture
def item(db_session) -> Callable:
    from app.privileges.models import PrivilegeItem

    def _get(code: str) -> PrivilegeItem:
        found = db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == code))
        assert found is not None, code
        return found

    return _get


@pytest.fixture
def surgery_item(db_session) -> Callable:
    """The first catalogue surgery item of a (demo) grade in a demo department's 科室技术目录 (普外科 by default:
    a department with a catalogue applies only for its items)."""
    from app.auth.models import Department
    from app.privileges.models import DeptCatalogueItem, PrivilegeCategory, PrivilegeItem

    def _get(grade: int, dept: str = "GS") -> PrivilegeItem:
        listed = (select(DeptCatalogueItem.item_id).join(Department, DeptCatalogueItem.dept_id == Department.id)
                  .where(Department.code == dept, DeptCatalogueItem.is_active.is_(True)))
        return db_session.scalar(
            select(PrivilegeItem).join(PrivilegeCategory)
            .where(PrivilegeCategory.code == "surgery", PrivilegeItem.grade_level == grade,
                   PrivilegeItem.id.in_(listed))
            .order_by(PrivilegeItem.code).limit(1))

    return _get


@pytest.fixture
def make_grant(db_session) -> Callable:
    from app.privileges.models import Grant, GrantStatus
    from app.privileges.services import today

    def _make(holder, item, *, days_left: int = 365, status: str = GrantStatus.ACTIVE) -> Grant:
        start = today() - timedelta(days=30)
        grant = Grant(user_id=holder.id, item_id=item.id, status=status, valid_from=start,
                      valid_until=today() + timedelta(days=days_left))
        db_session.add(grant)
        db_session.flush()
        return grant

    return _make
