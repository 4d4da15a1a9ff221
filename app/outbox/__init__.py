"""Outbox (发件箱): every outbound call to a hospital system, sent with retries, dead letters and replay."""

import os


def register(app):
    from app.audit.services import ACTION_LABELS
    from app.outbox import services, views
    from app.web import add_nav
    from connectors import his_rest

    for name, default in (("OUTBOX_MAX_ATTEMPTS", services.DEFAULT_MAX_ATTEMPTS),
                          ("OUTBOX_RETRY_BASE_SECONDS", services.DEFAULT_RETRY_BASE_SECONDS),
                          ("OUTBOX_RETRY_MAX_SECONDS", services.DEFAULT_RETRY_MAX_SECONDS)):
        app.config.setdefault(name, int(os.environ.get(name) or default))
    for name in ("HIS_PRIVILEGE_URL", "HIS_PRIVILEGE_TOKEN"):
        app.config.setdefault(name, os.environ.get(name) or None)
    services.register_channel(his_rest.CHANNEL, his_rest.send, label="HIS（医疗权限）")
    from connectors import order_feedback

    services.register_channel(order_feedback.CHANNEL, order_feedback.send, label="医嘱状态回写")
    app.register_blueprint(views.bp)
    ACTION_LABELS.update(services.AUDIT_LABELS)
    add_nav("outbox.index", "接口发件箱", "integration.admin", order=88)
