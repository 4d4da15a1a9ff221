"""Clinical privileges (医疗权限): catalogue, applications through the grant flow, grants."""


def register(app):
    from app.audit.services import ACTION_LABELS
    from app.demo import EXTRA_LOADERS
    from app.privileges import dept_catalogue, eligibility, flow, views
    from app.privileges.catalogue import seed_catalogue
    from app.privileges.services import AUDIT_LABELS
    from app.web import add_nav

    app.register_blueprint(views.bp)
    EXTRA_LOADERS["权限目录"] = seed_catalogue
    EXTRA_LOADERS["授权资格规则与科室技术目录"] = _seed_rules_and_dept_catalogues
    ACTION_LABELS.update(AUDIT_LABELS)
    ACTION_LABELS.update(eligibility.AUDIT_LABELS)
    ACTION_LABELS.update(dept_catalogue.AUDIT_LABELS)
    add_nav("privileges.apply", "申请权限", "privileges.apply", order=30)
    add_nav("privileges.my_applications", "我的权限申请", "privileges.apply", order=31)
    add_nav("privileges.grants", "授权查询", "privileges.view", order=32)
    add_nav("privileges.catalogue", "权限目录", "privileges.view", order=33)
    add_nav("privileges.dept_catalogue", "科室技术目录", dept_catalogue.PERMISSION, order=36)
    app.extensions["privileges_flow_hooks"] = flow.install()

    from app.privileges import admin, api, catalogue_admin, check, fastpath

    app.register_blueprint(admin.bp)
    catalogue_admin.register(app)  # 目录维护 (seed 000 §三.9(2))
    app.register_blueprint(api.bp)
    check.install(app)
    fastpath.install(app)
    app.extensions["privileges_flow_hooks"] += admin.install_hooks()
    add_nav("privilege_admin.grants", "权限管理", "privileges.manage", order=34)
    add_nav("privilege_admin.stats", "授权统计", "privileges.manage", order=35)


def _seed_rules_and_dept_catalogues() -> int:
    """Demo loader (after the catalogue): default eligibility rules, then the demo departments' catalogues."""
    from app.privileges import dept_catalogue, eligibility

    return eligibility.seed_rules() + dept_catalogue.seed_demo()
