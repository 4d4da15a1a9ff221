"""Outbox channels that push notifications out of MedLoop (docs/notifications.md).

Channel "notify": one message per recipient (ordering key notify:user:<id>), payload
  {"channel": "dingtalk" | "zzd", "account_id", "user_id", "notification_id", "kind", "title", "body", "url"}
  sent as a DingTalk work notification (DINGTALK_APP_KEY / DINGTALK_APP_SECRET / DINGTALK_AGENT_ID,
  DINGTALK_API_BASE) or a 浙政钉 work notification (ZZD_APP_KEY / ZZD_APP_SECRET / ZZD_TENANT_ID, ZZD_API_BASE).
Channel "notify_robot": one message per department group (key notify:robot:<dept id>), payload
  {"robot_id", "dept_id", "kind", "title", "body", "url"}; the webhook and its secret are read from the robot row
  when sending, so no secret is ever stored in the outbox.

Missing app credentials raise ChannelNotConfigured (messages wait, no attempt counted); every other failure is
a failed attempt the outbox retries and finally dead-letters.
"""

from __future__ import annotations

import os
from typing import Any

from app.outbox.models import OutboxMessage
from app.outbox.services import ChannelNotConfigured
from connectors import dingtalk, zzd

CHANNEL = "notify"
ROBOT_CHANNEL = "notify_robot"
CONTENT_MAX = 2000


def setting(name: str, default: Any = None) -> Any:
    from flask import current_app, has_app_context

    value = current_app.config.get(name) if has_app_context() else None
    if value in (None, ""):
        value = os.environ.get(name) or None
    return default if value in (None, "") else value


def _timeout() -> float:
    return float(setting("NOTIFY_TIMEOUT_SECONDS") or 10)


def content(payload: dict[str, Any]) -> str:
    """The text a person reads: title, body, then the absolute link."""
    parts = [str(payload.get("title") or "").strip(), str(payload.get("body") or "").strip(),
             str(payload.get("url") or "").strip()]
    text = "\n".join(p for p in parts if p)
    return text[:CONTENT_MAX]


def _send_dingtalk(message: OutboxMessage, payload: dict[str, Any]) -> None:
    appkey, appsecret, agent_id = (setting("DINGTALK_APP_KEY"), setting("DINGTALK_APP_SECRET"),
                                   setting("DINGTALK_AGENT_ID"))
    if not (appkey and appsecret and agent_id):
        raise ChannelNotConfigured("未配置钉钉工作通知（DINGTALK_APP_KEY、DINGTALK_APP_SECRET、DINGTALK_AGENT_ID）")
    try:
        agent = int(agent_id)
    except (TypeError, ValueError) as exc:
        raise ChannelNotConfigured(f"DINGTALK_AGENT_ID 应为数字：{agent_id}") from exc
    base = str(setting("DINGTALK_API_BASE") or dingtalk.DEFAULT_API_BASE).rstrip("/")
    dingtalk.send_work_notice(base=base, appkey=str(appkey), appsecret=str(appsecret), agent_id=agent,
                              userid=str(payload["account_id"]), content=content(payload), timeout=_timeout())


def _send_zzd(message: OutboxMessage, payload: dict[str, Any]) -> None:
    app_key, app_secret, tenant = setting("ZZD_APP_KEY"), setting("ZZD_APP_SECRET"), setting("ZZD_TENANT_ID")
    if not (app_key and app_secret and tenant):
        raise ChannelNotConfigured("未配置浙政钉工作通知（ZZD_APP_KEY、ZZD_APP_SECRET、ZZD_TENANT_ID）")
    base = str(setting("ZZD_API_BASE") or zzd.DEFAULT_API_BASE).rstrip("/")
    zzd.send_work_notice(base=base, app_key=str(app_key), app_secret=str(app_secret), tenant_id=str(tenant),
                         account_id=str(payload["account_id"]), content=content(payload),
                         biz_msg_id=f"medloop-{message.id}", timeout=_timeout(),
                         client_ip=setting("ZZD_CLIENT_IP"), client_mac=setting("ZZD_CLIENT_MAC"))


SENDERS = {"dingtalk": _send_dingtalk, "zzd": _send_zzd}


def send(message: OutboxMessage) -> None:
    """Outbox channel "notify": deliver one work notification through the provider named in the payload."""
    payload = message.payload or {}
    sender = SENDERS.get(str(payload.get("channel")))
    if sender is None:
        raise RuntimeError(f"未知的通知渠道：{payload.get('channel')}")
    if not payload.get("account_id"):
        raise RuntimeError("消息缺少接收人账号")
    sender(message, payload)


def send_robot(message: OutboxMessage) -> None:
    """Outbox channel "notify_robot": post one message into a department group through its custom robot."""
    from app.db import db
    from app.notify.models import DeptRobot

    payload = message.payload or {}
    robot = db.session.get(DeptRobot, payload.get("robot_id"))
    if robot is None or not robot.is_active:
        raise RuntimeError("科室群机器人已删除或停用")
    dingtalk.send_robot(webhook_url=robot.webhook_url, secret=robot.secret, content=content(payload),
                        timeout=_timeout())
