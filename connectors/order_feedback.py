"""Loop status feedback to the ordering system (seed 003 集成要求 3(3): 已接收、执行中、已完成、异常).

Outbox channel "order_feedback": JSON POSTed to ORDER_FEEDBACK_URL (Bearer ORDER_FEEDBACK_TOKEN when set).
Unset URL = channel not configured: messages stay pending, visible on /admin/outbox, never lost.
"""

from __future__ import annotations

from app.outbox.models import OutboxMessage
from connectors.his_rest import post

CHANNEL = "order_feedback"
NOT_CONFIGURED = "未配置医嘱状态回写接口地址（ORDER_FEEDBACK_URL）"
STATUS_LABELS = {"received": "已接收", "in_progress": "执行中", "done": "已完成", "abnormal": "异常",
                 "cancelled": "已取消"}


def send(message: OutboxMessage) -> None:
    post(message, url_setting="ORDER_FEEDBACK_URL", token_setting="ORDER_FEEDBACK_TOKEN", not_configured=NOT_CONFIGURED)
