"""People and access: campuses, departments, users, roles, permissions with data scope, login, API tokens."""


def register(app):
    from app.audit.services import ACTION_LABELS
    from app.auth import admin, api, services, views
    from app.auth.access import LazyCookieSessionInterface
    from app.web import add_nav

    app.session_interface = LazyCookieSessionInterface()
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(admin.account_bp)
    app.before_request(admin.enforce_password_change)
    app.jinja_env.filters["mask_phone"] = services.mask_phone
    ACTION_LABELS.update(services.AUDIT_LABELS)
    add_nav("auth_admin.users", "用户管理", "users.manage", order=91)
    add_nav("auth_admin.roles", "角色与权限", "users.manage", order=92)
    add_nav("auth_admin.departments", "院区与科室", "users.manage", order=93)
