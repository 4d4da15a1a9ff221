"""In-process scheduler for the embedded default: fires due BPMN timers without Celery beat."""

from __future__ import annotations

import logging
import threading

from flask import Flask

log = logging.getLogger(__name__)
_started = False


def run_due_work(app: Flask) -> int:
    """One tick: fire due workflow timers, send due outbox messages, run the privilege expiry/reminder job.
    Returns how many instances were advanced."""
    from app.db import db
    from app.workflow import services as wf

    with app.app_context():
        try:
            fired = wf.fire_due_timers()
            db.session.commit()
        finally:
            db.session.remove()
        _other_work(app)
        return fired


def _other_work(app: Flask) -> None:
    from app.archives.tasks import run_daily
    from app.jobs import run_jobs
    from app.outbox.tasks import dispatch_batches
    from app.privileges.tasks import periodic

    # each commits its own work; one failing must not stop the others
    for work in (periodic, dispatch_batches, run_daily):
        try:
            work()
        except Exception:  # noqa: BLE001
            log.exception("scheduler work %s failed", work.__name__)
    run_jobs()  # the domains' registered periodic jobs (loop apply sweep, alerts, rollups, pulls)


def start_in_process_scheduler(app: Flask, interval: float = 15.0) -> None:
    global _started
    if _started or not app.config.get("IN_PROCESS_SCHEDULER", True):
        return
    _started = True
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                run_due_work(app)
            except Exception:  # noqa: BLE001 - a failing tick must not kill the scheduler
                log.exception("scheduler tick failed")

    threading.Thread(target=loop, name="medloop-scheduler", daemon=True).start()
