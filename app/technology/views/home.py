"""医疗技术管理 overview: one card per area with counts."""

from __future__ import annotations

from flask import render_template
from flask_login import current_user

from app.auth.access import require
from app.technology.services import overview
from app.technology.views import bp

AREA_PERMISSIONS = ("technology.view", "technology.apply", "technology.manage", "technology.review", "ethics.review",
                    "technology.day_surgery")


@bp.get("/")
@require(*AREA_PERMISSIONS)
def home() -> str:
    counts = overview.counts(viewer=current_user)
    return render_template("technology/home.html", counts=counts, ethics_open=counts["ethics_open"])
