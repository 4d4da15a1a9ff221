"""Background work of the privilege domain: the daily expiry/reminder job and the emergency-grant expiry.

Celery beat runs them in production (app/celery_app.py); the embedded default runs `periodic` from the in-process
scheduler tick. Each task is the edge that commits.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from app.celery_app import celery

_last_daily_run: date | None = None


def _run(fn: Any, **kwargs: Any) -> Any:
    from app.db import db

    try:
        result = fn(**kwargs)
        db.session.commit()
        return result
    except Exception:
        db.session.rollback()
        raise
    finally:
        db.session.remove()


@celery.task(name="medloop.privileges_expire_and_remind")
def expire_and_remind() -> dict[str, Any]:
    """Daily: expire lapsed grants and emergency grants (pushed to HIS), remind 60 and 30 days ahead."""
    from app.privileges import check, services

    result = _run(services.expire_and_remind)
    result["index_changes_pruned"] = _run(check.prune_changes)
    return result


@celery.task(name="medloop.privileges_expire_emergency")
def expire_emergency() -> int:
    """Every few minutes: end emergency grants whose hours are up (HIS checks already deny them to the minute)."""
    from app.privileges import services

    return _run(services.expire_emergency_grants)


def periodic() -> dict[str, Any]:
    """One in-process scheduler tick: emergency expiry every tick, the daily job once per local day per process
    (it is idempotent, so a second process running it too changes nothing)."""
    global _last_daily_run
    from app.privileges import services

    out: dict[str, Any] = {"emergency_expired": _run(services.expire_emergency_grants)}
    day = services.today()
    if _last_daily_run != day:
        out["daily"] = expire_and_remind()
        _last_daily_run = day
    return out
