"""In-app notifications.

Invariants: a notification belongs to one user; marking read never deletes.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select, update

from app.db import db, utcnow
from app.notify.models import Notification


def notify(*, user_ids: Iterable[int], title: str, body: str | None = None, link: str | None = None,
           kind: str = "info") -> list[Notification]:
    """Queue an in-app message for each user (flushes)."""
    rows = [Notification(user_id=uid, title=title[:200], body=body, link=link, kind=kind)
            for uid in sorted(set(user_ids))]
    db.session.add_all(rows)
    db.session.flush()
    return rows


def unread_count(user_id: int) -> int:
    return db.session.scalar(
        select(func.count()).select_from(Notification)
        .where(Notification.user_id == user_id, Notification.read_at.is_(None))
    ) or 0


def mark_read(*, user_id: int, notification_id: int | None = None) -> int:
    """Mark one (or all) of a user's notifications read. Returns how many changed."""
    stmt = update(Notification).where(Notification.user_id == user_id, Notification.read_at.is_(None))
    if notification_id is not None:
        stmt = stmt.where(Notification.id == notification_id)
    result = db.session.execute(stmt.values(read_at=utcnow()))
    return getattr(result, "rowcount", 0) or 0
