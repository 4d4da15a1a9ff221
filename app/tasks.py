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


@celery.task(name="medloop.periodic_jobs")
def periodic_jobs() -> dict:
    from app.jobs import run_jobs

    return run_jobs()
