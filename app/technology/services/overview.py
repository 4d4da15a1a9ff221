"""Figures for the 医疗技术管理 overview page."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from app.auth.models import User
from app.auth.services import has_permission
from app.db import db
from app.technology.models.ethics import EthicsReview
from app.technology.models.high_risk import HighRiskEvaluation, HighRiskItem
from app.technology.services import ethics, new_tech, restricted
from app.technology.services.common import today


def counts(*, viewer: User) -> dict[str, Any]:
    """Project counts by status, restricted technologies in tracking, high-risk items not yet evaluated this year
    (within technology.view scope) and open ethics reviews the viewer may list."""
    out: dict[str, Any] = {}
    if has_permission(viewer, "technology.view"):
        out.update(new_tech.status_counts(viewer=viewer))
        sub = restricted.applications_query(viewer=viewer).order_by(None).subquery()
        out["restricted_tracking"] = int(db.session.scalar(select(func.count()).select_from(sub)
                                                           .where(sub.c.status == "tracking")) or 0)
        items = select(HighRiskItem.id).where(HighRiskItem.status != "retired")
        done = select(HighRiskEvaluation.item_id).where(HighRiskEvaluation.year == today().year)
        out["high_risk_due"] = int(db.session.scalar(select(func.count()).select_from(
            items.where(HighRiskItem.id.not_in(done)).subquery())) or 0)
    open_reviews = ethics.reviews_query(viewer=viewer).where(
        EthicsReview.status.in_(("pending_setup", "in_review", "resubmit"))).order_by(None).subquery()
    out["ethics_open"] = int(db.session.scalar(select(func.count()).select_from(open_reviews)) or 0)
    return out
