"""Periodic jobs registry: domains register functions that the scheduler tick (embedded default) and the
Celery beat task `medloop.periodic_jobs` (production) both run. Each job commits its own work."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)
JOBS: dict[str, Callable[[], object]] = {}


def register_job(name: str, fn: Callable[[], object]) -> None:
    JOBS[name] = fn


def run_jobs() -> dict[str, str]:
    """Run every registered job; one failing does not stop the others. Returns name -> outcome."""
    from app.db import db

    outcome = {}
    for name, fn in list(JOBS.items()):
        try:
            fn()
            outcome[name] = "ok"
        except Exception as exc:  # noqa: BLE001
            db.session.rollback()
            log.exception("periodic job %s failed", name)
            outcome[name] = f"error: {exc}"
        finally:
            db.session.remove()
    return outcome
