"""Celery tasks shared across domains (beat schedules point here)."""

from app.celery_app import celery


@celery.task(name="medloop.fire_due_timers")
def fire_due_timers() -> int:
    from app.workflow import services as wf

    return wf.fire_due_timers()
