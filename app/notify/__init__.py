"""Notifications: in-app messages, pushed to DingTalk / 浙政钉 work notifications and department group robots
through the outbox when configured (docs/notifications.md)."""

import os

# settings read from the environment when the app config does not set them (README, integration settings)
SETTINGS = {
    "NOTIFY_CHANNEL": "none", "PUBLIC_BASE_URL": None, "NOTIFY_CHANNEL_KINDS": None, "NOTIFY_ROBOT_KINDS": "alert",
    "NOTIFY_TIMEOUT_SECONDS": "10",
    "DINGTALK_API_BASE": "https://oapi.dingtalk.com", "DINGTALK_APP_KEY": None, "DINGTALK_APP_SECRET": None,
    "DINGTALK_AGENT_ID": None,
    "ZZD_API_BASE": "https://openplatform-pro.ding.zj.gov.cn", "ZZD_APP_KEY": None, "ZZD_APP_SECRET": None,
    "ZZD_TENANT_ID": None, "ZZD_CLIENT_IP": None, "ZZD_CLIENT_MAC": None,
}


def register(app):
    from app.audit.services import ACTION_LABELS
    from app.notify import services, views
    from app.outbox.services import register_channel
    from app.web import add_nav
    from connectors import notify_push

    for name, default in SETTINGS.items():
        app.config.setdefault(name, os.environ.get(name) or default)
    channel = str(app.config.get("NOTIFY_CHANNEL") or "none").strip().lower()
    if channel not in services.CHANNEL_SETTING_VALUES:
        raise ValueError(f"NOTIFY_CHANNEL 只能是 {' | '.join(services.CHANNEL_SETTING_VALUES)}，当前为 {channel!r}")
    register_channel(notify_push.CHANNEL, notify_push.send, label="工作通知（钉钉 / 浙政钉）")
    register_channel(notify_push.ROBOT_CHANNEL, notify_push.send_robot, label="科室群机器人")
    app.register_blueprint(views.bp)
    ACTION_LABELS.update(services.AUDIT_LABELS)
    add_nav("notify.accounts", "通知账号", "users.manage", order=94)
    add_nav("notify.robots", "科室群机器人", "integration.admin", order=89)
