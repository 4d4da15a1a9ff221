"""Audit log: every task action and every change to business data, with who, when, where, before/after."""


def register(app):
    from app.audit import views
    from app.web import add_nav

    app.register_blueprint(views.bp)
    add_nav("audit.index", "审计日志", "audit.view", order=90)
