"""Shared web plumbing: home page, pagination, time display, vendor static files."""


def register(app):
    from app.core import views

    app.register_blueprint(views.bp)
