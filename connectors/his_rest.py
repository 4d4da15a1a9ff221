"""HIS REST adapter: sends outbox messages of the "his" channel as JSON to HIS_PRIVILEGE_URL.

Config (app config, else the environment): HIS_PRIVILEGE_URL (unset = channel not configured: messages stay
pending), HIS_PRIVILEGE_TOKEN (sent as a Bearer token when set), HIS_TIMEOUT_SECONDS (default 10).
Any status outside 2xx, a timeout or a refused connection is a failed attempt; the outbox retries it.
The body carries the outbox message id: HIS de-duplicates on it (delivery is at least once).
"""

from __future__ import annotations

import os
from typing import Any

import requests

from app.outbox.models import OutboxMessage
from app.outbox.services import ChannelNotConfigured
from connectors._http import call

CHANNEL = "his"
NOT_CONFIGURED = "未配置 HIS 接口地址"

_session = requests.Session()


def _setting(name: str) -> Any:
    from flask import current_app, has_app_context

    value = current_app.config.get(name) if has_app_context() else None
    return value if value not in (None, "") else os.environ.get(name) or None


def body(message: OutboxMessage) -> dict[str, Any]:
    """The JSON HIS receives: message id (for de-duplication), event, ordering key, time written, payload."""
    return {"message_id": message.id, "event": message.event, "key": message.key,
            "created_at": message.created_at.isoformat() if message.created_at else None,
            "payload": message.payload}


def send(message: OutboxMessage) -> None:
    """POST the message to HIS. Raises ChannelNotConfigured without a URL, RuntimeError on any failure."""
    post(message, url_setting="HIS_PRIVILEGE_URL", token_setting="HIS_PRIVILEGE_TOKEN", not_configured=NOT_CONFIGURED)


def post(message: OutboxMessage, *, url_setting: str, token_setting: str, not_configured: str) -> None:
    """POST one outbox message as JSON to the URL in `url_setting` (shared by the REST channels)."""
    url = _setting(url_setting)
    if not url:
        raise ChannelNotConfigured(not_configured)
    headers = {"Content-Type": "application/json; charset=utf-8", "X-MedLoop-Message-Id": str(message.id)}
    token = _setting(token_setting)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    timeout = float(_setting("HIS_TIMEOUT_SECONDS") or 10)
    call(_session, "POST", url, what="HIS 接口", target=url, timeout=timeout, json=body(message), headers=headers)
