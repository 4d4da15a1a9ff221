"""Periodic work of the technology domain, registered with app.jobs (run by the embedded scheduler tick and by the
Celery beat task `medloop.periodic_jobs`). Each job is the edge that commits."""

from __future__ import annotations

from datetime import date

_last_high_risk_run: date | None = None


def high_risk_yearly(*, on: date | None = None, force: bool = False) -> dict[str, int]:
    """Start the due yearly high-risk technology evaluations (每年评估一次), once per local day per process; commits.

    The ticks come every few seconds, but due dates move by days: later ticks of the day return {} at once. The
    service is idempotent, so another process running it the same day starts nothing more. `force` runs anyway."""
    global _last_high_risk_run
    from app.db import db
    from app.technology.services import high_risk

    day = on or high_risk.today()
    if not force and _last_high_risk_run == day:
        return {}
    try:
        counts = high_risk.start_yearly_evaluations(on=day)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    _last_high_risk_run = day
    return counts
