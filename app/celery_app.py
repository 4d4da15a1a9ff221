"""Celery wiring (Redis in production); with no broker configured, tasks run in-process."""

from __future__ import annotations

from celery import Celery, Task
from celery.schedules import crontab
from flask import Flask

celery = Celery("medloop")


def _domain_task_modules() -> list[str]:
    from app.config import ROOT

    return sorted(f"app.{p.parent.name}.tasks" for p in (ROOT / "app").glob("*/tasks.py"))


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
        include=["app.tasks", *_domain_task_modules()],
        beat_schedule={
            "fire-due-timers": {"task": "medloop.fire_due_timers", "schedule": 15.0},
            "periodic-jobs": {"task": "medloop.periodic_jobs", "schedule": 30.0},
            "outbox-dispatch": {"task": "medloop.outbox_dispatch", "schedule": 10.0},
            "privileges-expire-emergency": {"task": "medloop.privileges_expire_emergency", "schedule": 300.0},
            "privileges-expire-and-remind": {"task": "medloop.privileges_expire_and_remind",
                                             "schedule": crontab(hour=1, minute=5)},
        },
    )
    celery.Task = FlaskTask  # type: ignore[misc]
    celery.set_default()
    app.extensions["celery"] = celery
    return celery
