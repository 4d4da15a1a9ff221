"""Applying stored loop events in the background: Celery in production, a thread in the embedded default.

The stored events are the queue; a wake-up only shortens the wait, so a lost one delays, never drops."""

from __future__ import annotations

import logging
import threading

from flask import current_app

from app.celery_app import celery

log = logging.getLogger(__name__)
_event = threading.Event()
_thread: list[threading.Thread] = []


def drain(max_rounds: int = 1000) -> int:
    """Apply pending orders batch by batch, committing each batch. Returns events applied."""
    from app.db import db
    from app.loops import services

    total = 0
    for _ in range(max_rounds):
        try:
            stats = services.apply_pending(limit=100)
            db.session.commit()
        except Exception:
            db.session.rollback()
            raise
        total += stats.applied
        if stats.orders == 0 or stats.applied == 0:
            break
    return total


@celery.task(name="medloop.loops_apply", bind=True, max_retries=None)
def apply_task(self) -> int:
    from app.db import db

    try:
        return drain()
    finally:
        db.session.remove()


def wake() -> None:
    """Tell a worker there is work (after the intake transaction committed)."""
    if current_app.config.get("CELERY_ALWAYS_EAGER", True):
        _event.set()
        return
    try:
        apply_task.delay()
    except Exception:  # noqa: BLE001 - the periodic sweep applies the events anyway
        log.warning("could not enqueue loops_apply; the sweep will pick the events up")


def start_in_process_applier(app, interval: float = 2.0) -> None:
    """Embedded default: one background thread applies events soon after they are accepted."""
    if _thread:
        return

    def loop() -> None:
        from app.db import db

        while True:
            _event.wait(interval)
            _event.clear()
            with app.app_context():
                try:
                    drain()
                except Exception:  # noqa: BLE001 - keep the applier alive; events stay stored
                    log.exception("applying loop events failed")
                finally:
                    db.session.remove()

    t = threading.Thread(target=loop, name="medloop-loops", daemon=True)
    t.start()
    _thread.append(t)


def sweep() -> int:
    """Periodic job: re-flag orders whose grace period ended and apply whatever is pending."""
    from app.db import db
    from app.loops import services

    services.run_grace_sweep()
    db.session.commit()
    return drain()
