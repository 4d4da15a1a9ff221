"""Celery wiring (Redis in production); with no broker configured, tasks run in-process."""

from __future__ import annotations

from celery import Celery, Task
from flask import Flask

celery = Celery("medloop")


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    redis_url = app.config.get("REDIS_URL")
    celery.conf.update(
        broker_url=redis_url or "memory://",
        result_backend=None,
        task_always_eager=bool(app.config.get("CELERY_ALWAYS_EAGER", True)),
        task_ignore_result=True,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        timezone="Asia/Shanghai",
        include=["app.tasks"],
        beat_schedule={
            "fire-due-timers": {"task": "medloop.fire_due_timers", "schedule": 15.0},
        },
    )
    celery.Task = FlaskTask  # type: ignore[misc]
    celery.set_default()
    app.extensions["celery"] = celery
    return celery
