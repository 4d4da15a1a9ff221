"""Notifications: in-app messages (DingTalk / 浙政钉 / e-mail channels go through the outbox later)."""


def register(app):
    from app.notify import views

    app.register_blueprint(views.bp)
