"""People and access: campuses, departments, users, roles, permissions with data scope, login, API tokens."""


def register(app):
    from app.auth import api, views

    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
