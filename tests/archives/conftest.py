"""Archive test helpers: deployed flows, an upload directory per test, ready tasks, sample files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[2]

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
JPG = b"\xff\xd8\xff\xe0" + b"\x00" * 64


@pytest.fixture
def deployed(db_session, user):
    """The shipped forms and both archive flows at their current file content."""
    from app.forms import services as forms
    from app.workflow import services as wf

    forms.sync_files(ROOT / "forms")
    for key in ("archive_change_review", "archive_reinstatement"):
        current = wf.active_version(key, required=False)
        xml = (ROOT / "processes" / f"{key}.bpmn").read_text(encoding="utf-8")
        if current is None or current.bpmn_xml != xml:
            wf.upload_version(bpmn_xml=xml, actor=user("flow"), note="档案测试")
    return True


@pytest.fixture
def upload_dir(app, tmp_path, monkeypatch) -> Path:
    monkeypatch.setitem(app.config, "UPLOAD_DIR", str(tmp_path / "uploads"))
    return tmp_path / "uploads"


@pytest.fixture
def ready() -> Callable:
    """READY human tasks of a workflow instance."""
    from app.db import db
    from app.workflow.models import HumanTask

    def _ready(instance_id: int):
        return list(db.session.scalars(select(HumanTask).where(HumanTask.instance_id == instance_id,
                                                              HumanTask.status == "ready").order_by(HumanTask.id)))

    return _ready


@pytest.fixture
def make_staff(db_session) -> Callable:
    """A fresh physician (with an archive) in a demo department."""
    from app.archives import services
    from app.auth.models import Department
    from app.auth.services import create_user
    from app.demo import DEMO_PASSWORD

    counter = {"n": 0}

    def _make(dept: str = "GS", title: str = "主治医师", roles=("physician",), username: str | None = None):
        counter["n"] += 1
        d = db_session.scalar(select(Department).where(Department.code == dept))
        u = create_user(username=username or f"t_doc{counter['n']}", name=f"测试医生{counter['n']}",
                        password=DEMO_PASSWORD, dept=d, roles=list(roles), staff_no=f"T9{counter['n']:03d}",
                        title=title, check_strength=False)
        services.ensure_profile(user=u, actor="测试")
        return u

    return _make
