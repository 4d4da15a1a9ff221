"""Celery tasks shared across domains (beat schedules point here). Each task is the edge that commits."""

from app.celery_app import celery


@celery.task(name="medloop.fire_due_timers")
def fire_due_timers() -> int:
    from app.db import db
    from app.workflow import services as wf

    try:
        fired = wf.fire_due_timers()
        db.session.commit()
        return fired
    finally:
        db.session.remove()
