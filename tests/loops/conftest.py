"""Shared loop fixtures."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.auth.models import Campus
from app.loops import config, services

COLLECT_FIELDS = [{"name": "sample_no", "label": "检验样本编号", "type": "string", "required": True},
                  {"name": "volume", "label": "标本量（ml）", "type": "number", "required": False}]


@pytest.fixture
def lab_fields(db_session, user):
    """采集标本 (collect) of the group-standard lab loop gets two data fields; the EAST campus version of the lab
    loop has none there and asks for one on 执行检验 (perform) instead. Saved through the node editor's service."""
    services.invalidate_types()
    spec = config.node_spec(config.group_type("lab"))
    next(n for n in spec["nodes"] if n["key"] == "collect")["required_fields"] = COLLECT_FIELDS
    config.save_loop_nodes(key="lab", campus=None, spec=spec, actor=user("admin"))
    east = db_session.scalar(select(Campus).where(Campus.code == "EAST"))
    spec = config.node_spec(config.group_type("lab"))
    next(n for n in spec["nodes"] if n["key"] == "collect")["required_fields"] = []
    next(n for n in spec["nodes"] if n["key"] == "perform")["required_fields"] = [
        {"name": "instrument", "label": "检验仪器", "type": "string", "required": True}]
    config.save_loop_nodes(key="lab", campus=east, spec=spec, actor=user("admin"))
    db_session.commit()
    yield
    services.invalidate_types()
