"""Celery task of the outbox: send due messages, one commit per batch (beat runs it every few seconds)."""

from __future__ import annotations

import time

from app.celery_app import celery


def dispatch_batches(*, batch_size: int = 100, max_batches: int = 20, time_budget: float = 50.0) -> dict[str, int]:
    """Run dispatch_due in batches until nothing is due (or the budget is spent), committing after each batch."""
    from app.db import db
    from app.outbox import services

    totals = {"claimed": 0, "sent": 0, "retried": 0, "dead": 0, "not_configured": 0, "batches": 0}
    started = time.monotonic()
    try:
        for _ in range(max_batches):
            result = services.dispatch_due(limit=batch_size)
            db.session.commit()
            totals["batches"] += 1
            for key, value in result.items():
                totals[key] += value
            # a batch only takes the head of each key's queue: go on while something was sent
            if result["claimed"] == 0 or result["sent"] == 0 or time.monotonic() - started > time_budget:
                break
    except Exception:
        db.session.rollback()
        raise
    finally:
        db.session.remove()
    return totals


@celery.task(name="medloop.outbox_dispatch")
def outbox_dispatch() -> dict[str, int]:
    return dispatch_batches()
