"""Outbox: outbound calls to hospital systems (ARCHITECTURE.md §Connectors).

Invariants:
- a message is written by `enqueue` in the caller's transaction, so it exists exactly when the business change
  that caused it was committed; nothing is sent from inside a business transaction;
- per key, messages are sent strictly in the order they were written: a message is only claimed while no earlier
  message of its key is unsent (pending, sending or dead); messages without a key are independent;
- the dispatcher claims due rows with FOR UPDATE SKIP LOCKED (PostgreSQL), so several workers never send the same
  message at once; a send that fails is retried with exponential backoff, and after OUTBOX_MAX_ATTEMPTS failures
  the message is dead, with the last error kept for the operator; a dead message is only re-sent by `replay`
  (audited), and it holds back the later messages of its key until then;
- a channel whose endpoint is not configured keeps its messages pending (no attempt counted) with the reason in
  last_error: nothing is lost while an interface is being set up;
- delivery is at least once: receivers de-duplicate by message id (sent with every message);
- rows are never deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from sqlalchemy import Select, exists, func, or_, select
from sqlalchemy.orm import aliased

from app.audit import services as audit
from app.db import db, utcnow
from app.errors import InvalidTransition, NotFound, ValidationFailed
from app.outbox.models import OutboxMessage, OutboxStatus

log = logging.getLogger(__name__)

SendFn = Callable[[OutboxMessage], None]
CHANNELS: dict[str, SendFn] = {}
CHANNEL_LABELS: dict[str, str] = {}

DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_RETRY_BASE_SECONDS = 30
DEFAULT_RETRY_MAX_SECONDS = 6 * 3600
DEFAULT_UNCONFIGURED_RETRY_SECONDS = 60
ERROR_MAX = 2000

AUDIT_LABELS = {"outbox.replayed": "重发接口消息"}


class ChannelNotConfigured(Exception):
    """Raised by a send function whose endpoint is not configured: the message stays pending, no attempt counted."""


def register_channel(name: str, send_fn: SendFn, *, label: str | None = None) -> None:
    """Register the adapter for a channel: send_fn(message) returns on success and raises on failure."""
    CHANNELS[name] = send_fn
    if label:
        CHANNEL_LABELS[name] = label


def _json_safe(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def enqueue(*, channel: str, event: str, payload: dict[str, Any], key: str | None = None) -> OutboxMessage:
    """Write one outbound message in the caller's transaction (flushes). Raises ValidationFailed on a bad call."""
    errors = {}
    if not channel or len(channel) > 32:
        errors["channel"] = "发送通道不能为空且不超过 32 个字符"
    if not event or len(event) > 64:
        errors["event"] = "事件类型不能为空且不超过 64 个字符"
    if not isinstance(payload, dict):
        errors["payload"] = "消息内容必须是 JSON 对象"
    if key is not None and len(key) > 128:
        errors["key"] = "顺序键不超过 128 个字符"
    if errors:
        raise ValidationFailed(errors)
    message = OutboxMessage(channel=channel, event=event, payload=_json_safe(payload), key=key,
                            status=OutboxStatus.PENDING, attempts=0, next_attempt_at=utcnow(), created_at=utcnow())
    db.session.add(message)
    db.session.flush()
    return message


def _config(name: str, default: int) -> int:
    try:
        from flask import current_app, has_app_context

        if has_app_context():
            return int(current_app.config.get(name) or default)
    except (TypeError, ValueError):
        pass
    return default


def backoff_seconds(attempts: int, *, base: int | None = None, cap: int | None = None) -> int:
    """Delay before the next try after `attempts` failures: base·2^(attempts-1), capped."""
    base = base if base is not None else _config("OUTBOX_RETRY_BASE_SECONDS", DEFAULT_RETRY_BASE_SECONDS)
    cap = cap if cap is not None else _config("OUTBOX_RETRY_MAX_SECONDS", DEFAULT_RETRY_MAX_SECONDS)
    return int(min(cap, base * 2 ** max(0, attempts - 1)))


def _due_query(now: datetime, limit: int) -> Select:
    earlier = aliased(OutboxMessage)
    # the head of each key's queue only: an earlier unsent message (pending, sending or dead) blocks the rest
    blocked = (exists().where(earlier.key == OutboxMessage.key, earlier.id < OutboxMessage.id,
                              earlier.status != OutboxStatus.SENT.value))
    return (select(OutboxMessage)
            .where(OutboxMessage.status.in_([OutboxStatus.PENDING.value, OutboxStatus.SENDING.value]),
                   OutboxMessage.next_attempt_at <= now,
                   or_(OutboxMessage.key.is_(None), ~blocked))
            .order_by(OutboxMessage.id).limit(limit)
            .with_for_update(skip_locked=True, of=OutboxMessage))


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:ERROR_MAX]


def dispatch_due(*, limit: int = 100, now: datetime | None = None, max_attempts: int | None = None) -> dict[str, int]:
    """Claim up to `limit` due messages (heads of their keys), send each through its channel and record the
    outcome: sent, retry later with backoff, or dead after the last attempt. Flushes; the caller commits once per
    batch. Returns counts {claimed, sent, retried, dead, not_configured}."""
    now = now or utcnow()
    max_attempts = max_attempts or _config("OUTBOX_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)
    unconfigured_delay = _config("OUTBOX_UNCONFIGURED_RETRY_SECONDS", DEFAULT_UNCONFIGURED_RETRY_SECONDS)
    result = {"claimed": 0, "sent": 0, "retried": 0, "dead": 0, "not_configured": 0}
    messages = list(db.session.scalars(_due_query(now, limit)))
    result["claimed"] = len(messages)
    for message in messages:
        message.status = OutboxStatus.SENDING
        send = CHANNELS.get(message.channel)
        try:
            if send is None:
                raise ChannelNotConfigured(f"未注册的发送通道：{message.channel}")
            send(message)
        except ChannelNotConfigured as exc:
            message.status = OutboxStatus.PENDING
            message.last_error = _error_text(exc)
            message.next_attempt_at = now + timedelta(seconds=unconfigured_delay)
            result["not_configured"] += 1
        except Exception as exc:  # noqa: BLE001 - any failure of the far side is a failed attempt
            message.attempts = (message.attempts or 0) + 1
            error = _error_text(exc)
            if message.attempts >= max_attempts:
                message.status = OutboxStatus.DEAD
                message.last_error = f"第 {message.attempts} 次发送失败，已停止重试：{error}"[:ERROR_MAX]
                result["dead"] += 1
                log.warning("outbox message %s (%s/%s) is dead: %s", message.id, message.channel, message.event,
                            error)
            else:
                delay = backoff_seconds(message.attempts)
                message.status = OutboxStatus.PENDING
                message.last_error = f"第 {message.attempts} 次发送失败，{delay} 秒后重试：{error}"[:ERROR_MAX]
                message.next_attempt_at = now + timedelta(seconds=delay)
                result["retried"] += 1
        else:
            message.status = OutboxStatus.SENT
            message.sent_at = utcnow()
            result["sent"] += 1
    db.session.flush()
    return result


def get_message(message_id: int) -> OutboxMessage:
    message = db.session.get(OutboxMessage, message_id)
    if message is None:
        raise NotFound("接口消息不存在", message_id=message_id)
    return message


def replay(*, message_id: int, actor: Any) -> OutboxMessage:
    """Put a dead message back to pending with its attempts reset (audited). Raises NotFound, InvalidTransition."""
    message = db.session.scalar(select(OutboxMessage).where(OutboxMessage.id == message_id).with_for_update())
    if message is None:
        raise NotFound("接口消息不存在", message_id=message_id)
    if message.status != OutboxStatus.DEAD:
        raise InvalidTransition("只有发送失败（死信）的消息可以重发", message_id=message_id)
    before = {"status": str(message.status), "attempts": message.attempts, "last_error": message.last_error}
    message.status = OutboxStatus.PENDING
    message.attempts = 0
    message.next_attempt_at = utcnow()
    audit.record(actor, "outbox.replayed", message, before=before,
                 after={"status": str(message.status), "channel": message.channel, "event": message.event})
    db.session.flush()
    return message


def message_query(*, status: str | None = None, channel: str | None = None, q: str | None = None) -> Select:
    """Messages for the operator page, newest first, filtered by status, channel and event/key/error text."""
    stmt = select(OutboxMessage).order_by(OutboxMessage.id.desc())
    if status:
        stmt = stmt.where(OutboxMessage.status == status)
    if channel:
        stmt = stmt.where(OutboxMessage.channel == channel)
    if q:
        like = f"%{q.strip()}%"
        stmt = stmt.where(or_(OutboxMessage.event.ilike(like), OutboxMessage.key.ilike(like),
                              OutboxMessage.last_error.ilike(like)))
    return stmt


def status_counts() -> dict[str, int]:
    rows = db.session.execute(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status))
    return {str(status): int(n) for status, n in rows}


def known_channels() -> list[str]:
    stored = set(db.session.scalars(select(OutboxMessage.channel).distinct()))
    return sorted(stored | set(CHANNELS))


def blocked_ids(messages: list[OutboxMessage]) -> set[int]:
    """Ids among `messages` (pending ones) that wait for an earlier unsent message of their key."""
    keyed = [m for m in messages if m.key and m.status == OutboxStatus.PENDING]
    if not keyed:
        return set()
    earliest = {str(row[0]): int(row[1]) for row in db.session.execute(
        select(OutboxMessage.key, func.min(OutboxMessage.id))
        .where(OutboxMessage.key.in_(sorted({str(m.key) for m in keyed})),
               OutboxMessage.status != OutboxStatus.SENT.value)
        .group_by(OutboxMessage.key))}
    return {m.id for m in keyed if earliest.get(str(m.key), m.id) < m.id}


def messages_for_key(key: str, *, limit: int = 10) -> list[OutboxMessage]:
    """The latest messages of one ordering key (e.g. a grant's HIS sync state), newest first."""
    return list(db.session.scalars(select(OutboxMessage).where(OutboxMessage.key == key)
                                   .order_by(OutboxMessage.id.desc()).limit(limit)))
