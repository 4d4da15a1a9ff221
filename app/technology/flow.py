"""Glue to the workflow engine: task-completion and end hooks, and the business context shown above task forms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import render_template
from markupsafe import Markup

from app.technology.services import day_surgery, ethics, high_risk, new_tech, restricted

MODULES: dict[str, Any] = {
    new_tech.PROCESS_KEY: new_tech,
    ethics.PROCESS_KEY: ethics,
    restricted.PROCESS_KEY: restricted,
    high_risk.PROCESS_KEY: high_risk,
    day_surgery.PROCESS_KEY: day_surgery,
}


def _context(template: str, finder: Callable[[Any], Any], name: str) -> Callable[[Any], Markup]:
    def render(instance: Any) -> Markup:
        obj = finder(instance)
        if obj is None:
            return Markup('<p class="muted">未找到对应的业务记录</p>')
        return Markup(render_template(template, obj=obj, instance=instance, **_extra(name, obj)))

    return render


def _extra(name: str, obj: Any) -> dict[str, Any]:
    from app.technology.services.common import ready_tasks

    if name == "new_tech":
        return {"reviews_by_round": new_tech.reviews_by_round(obj), "open_steps": ready_tasks(obj.instance_id)}
    if name == "ethics":
        from app.technology.models.ethics import DECISION_LABELS, OPINION_LABELS, REVIEW_ITEMS
        from app.workflow import services as wf

        steps = ready_tasks(obj.instance_id)
        flow_summary = None
        decision_step = next((t for t in steps if t.spec_name == "ethics_decision"), None)
        if decision_step is not None:  # the BPMN summary script's own figures, as the committee decides on them
            data = wf.task_data(decision_step)
            flow_summary = {"majority": OPINION_LABELS.get(str(data.get("majority")), "无过半数意见"),
                            "suggested": DECISION_LABELS.get(str(data.get("suggested_decision")), "")}
        return {"summary": ethics.summary(obj), "members": ethics.members(obj), "items": REVIEW_ITEMS,
                "open_steps": steps, "flow_summary": flow_summary}
    if name == "day_surgery":
        return {"procedures": day_surgery.procedures_of(obj)}
    if name == "restricted":
        return {"open_steps": ready_tasks(obj.instance_id)}
    return {}


def _finder(module: Any) -> Callable[[Any], Any]:
    for attr in ("project_for_instance", "review_for_instance", "application_for_instance", "evaluation_for_instance"):
        if hasattr(module, attr):
            return getattr(module, attr)
    raise AttributeError(module.__name__)


def _plain_finder(module: Any) -> Callable[[Any], Any]:
    """The context renderer only reads: find without taking a row lock."""
    from sqlalchemy import select

    from app.db import db

    finder = _finder(module)
    model = {new_tech: "NewTechProject", ethics: "EthicsReview", restricted: "RestrictedApplication"}.get(module)
    if model is None:
        return finder
    from app.technology import models

    cls = getattr(models, model)

    def find(instance: Any) -> Any:
        return db.session.scalar(select(cls).where(cls.instance_id == instance.id)) or finder(instance)

    return find


CONTEXTS = {
    new_tech.PROCESS_KEY: ("technology/_context_new_tech.html", "new_tech"),
    ethics.PROCESS_KEY: ("technology/_context_ethics.html", "ethics"),
    restricted.PROCESS_KEY: ("technology/_context_restricted.html", "restricted"),
    high_risk.PROCESS_KEY: ("technology/_context_high_risk.html", "high_risk"),
    day_surgery.PROCESS_KEY: ("technology/_context_day_surgery.html", "day_surgery"),
}


def install() -> list[str]:
    """Register hooks and context renderers for the five technology processes; returns what was installed."""
    from app.workflow import services as wf

    installed = []
    for key, module in MODULES.items():
        wf.on_task_complete(key)(module.on_task_complete)
        wf.on_end(key)(module.finalize)
        template, name = CONTEXTS[key]
        wf.context_renderer(key)(_context(template, _plain_finder(module), name))
        installed.append(key)
    return installed
