"""In-process scheduler for the embedded default: fires due BPMN timers without Celery beat."""

from __future__ import annotations

import logging
import threading

from flask import Flask

log = logging.getLogger(__name__)
_started = False


def run_due_work(app: Flask) -> int:
    """One tick: fire due workflow timers. Returns how many instances were advanced."""
    from app.db import db
    from app.workflow import services as wf

    with app.app_context():
        try:
            fired = wf.fire_due_timers()
            db.session.commit()
            return fired
        finally:
            db.session.remove()


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
