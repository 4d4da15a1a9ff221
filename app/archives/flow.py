"""Glue to the workflow engine: end and task hooks, and the context shown above the task forms of
`archive_change_review` and `archive_reinstatement`."""

from __future__ import annotations

from typing import Any

from flask import render_template
from markupsafe import Markup

from app.db import db

from . import departure, services


def on_change_end(*, instance: Any, data: dict[str, Any], actor: Any) -> None:
    services.finalize_change(instance=instance, data=data, actor=actor)


def on_change_task(*, instance: Any, task: Any, data: dict[str, Any], actor: Any) -> None:
    services.on_review_task_completed(instance=instance, task=task, data=data, actor=actor)


def on_reinstatement_end(*, instance: Any, data: dict[str, Any], actor: Any) -> None:
    departure.finalize_reinstatement(instance=instance, data=data, actor=actor)


def render_change(instance: Any) -> Markup:
    """Who, which section, what kind of change, and the fields before → after."""
    record = services.record_for_instance(instance.id)
    if record is None:
        return Markup('<p class="muted">未找到对应的档案变更</p>')
    from app.auth.models import User

    staff = db.session.get(User, record.user_id)
    entry = services.get_entry(entry_id=record.entry_id)
    from flask_login import current_user

    history = services.entry_history(entry=entry, viewer=current_user)
    version = next((v for v in history if v.record.id == record.id), None)
    return Markup(render_template("archives/_change_context.html", record=record, staff=staff, version=version,
                                  section=services.section(record.section)))


def render_reinstatement(instance: Any) -> Markup:
    row = departure.departure_for_instance(instance.id)
    if row is None:
        return Markup('<p class="muted">未找到对应的离职登记</p>')
    from sqlalchemy import select

    from app.privileges.models import Grant

    grants = list(db.session.scalars(select(Grant).where(Grant.user_id == row.user_id,
                                                         Grant.status == "revoked").order_by(Grant.id)))
    return Markup(render_template("archives/_reinstatement_context.html", departure=row, grants=grants))


def install() -> list[str]:
    """Register the hooks with the engine; returns their names (for logs and tests)."""
    from app.workflow import services as wf

    wf.on_end(services.PROCESS_KEY)(on_change_end)
    wf.on_task_complete(services.PROCESS_KEY)(on_change_task)
    wf.context_renderer(services.PROCESS_KEY)(render_change)
    wf.on_end(departure.REINSTATEMENT_KEY)(on_reinstatement_end)
    wf.context_renderer(departure.REINSTATEMENT_KEY)(render_reinstatement)
    return ["on_end", "on_task_complete", "context_renderer", "reinstatement.on_end", "reinstatement.context"]
