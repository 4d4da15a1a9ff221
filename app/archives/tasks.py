"""Background work of the archives: the daily certificate reminders (also callable from tests and the CLI)."""

from __future__ import annotations

from datetime import date

from app.celery_app import celery

DAILY_TASK = "medloop.archives.daily_reminders"


def run_daily(*, on: date | None = None, force: bool = False) -> dict[str, int]:
    """Refresh completeness and send certificate reminders, once per day; commits.

    Cheap to call often (a scheduler tick): after the day's run it only checks one row. `force` runs again
    (reminders themselves stay idempotent). Returns the counts sent ({} when today's run was already done)."""
    from app.archives import certificates, services
    from app.db import db

    on = on or services.today()
    try:
        if not force and certificates.daily_run_done(on):
            return {}
        counts = certificates.send_reminders(on=on)
        certificates.mark_daily_run(on)
        db.session.commit()
        return counts
    except Exception:
        db.session.rollback()
        raise


@celery.task(name=DAILY_TASK)
def daily_reminders() -> dict[str, int]:
    from app.db import db

    try:
        return run_daily()
    finally:
        db.session.remove()
