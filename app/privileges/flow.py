"""Glue to the workflow engine: the end hook and the context shown above `privilege_grant` task forms.

Imported lazily from register(): the engine is optional at start-up, so each hook is only installed when
app.workflow.services offers the decorator.
"""

from __future__ import annotations

from typing import Any

from flask import render_template
from markupsafe import Markup
from sqlalchemy import select

from app.db import db
from app.privileges import services
from app.privileges.models import PrivilegeApplication


def on_end(*, instance: Any, data: dict[str, Any], actor: Any) -> None:
    services.finalize_application(instance=instance, data=data, actor=actor)


def render_context(instance: Any) -> Markup:
    """Applicant, department, title and the requested items with category/grade, plus the reason."""
    application = db.session.scalar(select(PrivilegeApplication).where(PrivilegeApplication.instance_id == instance.id))
    if application is None:
        key = str(getattr(instance, "business_key", "") or "")
        digits = key[2:] if key.startswith("QX") else key
        application = db.session.get(PrivilegeApplication, int(digits)) if digits.isdigit() else None
    if application is None:
        return Markup('<p class="muted">未找到对应的医疗权限申请</p>')
    return Markup(render_template("privileges/_context.html", application=application))


def install() -> list[str]:
    """Register the hooks the engine supports; returns the names installed (for logs and tests)."""
    try:
        from app.workflow import services as wf
    except ImportError:
        return []
    installed = []
    if hasattr(wf, "on_end"):
        wf.on_end(services.PROCESS_KEY)(on_end)
        installed.append("on_end")
    if hasattr(wf, "context_renderer"):
        wf.context_renderer(services.PROCESS_KEY)(render_context)
        installed.append("context_renderer")
    return installed
