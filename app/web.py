"""Template globals and filters shared by every page."""

from __future__ import annotations

import json

from flask import Flask
from flask_login import current_user
from markupsafe import Markup

from app.core.timefmt import local

# (order, endpoint, label, permission or None); domains add theirs in register()
NAV: list[tuple[int, str, str, str | None]] = []


# menu groups by endpoint prefix; anything else falls under 系统管理
NAV_GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("工作台", ("tasks.", "workflow.mine")),
    ("医师档案", ("archives.",)),
    ("医疗权限", ("privileges.", "privilege_admin.", "privilege_catalogue.")),
    ("医疗技术", ("technology.",)),
    ("医疗闭环", ("loop_views.search", "loop_alerts.", "loops_dashboard.", "loops_config.", "loop_views.links")),
    ("系统管理", ()),
]


def add_nav(endpoint: str, label: str, permission: str | None = None, order: int = 50) -> None:
    if not any(item[1] == endpoint for item in NAV):
        NAV.append((order, endpoint, label, permission))
        NAV.sort()


def install_template_helpers(app: Flask) -> None:
    from app.auth.services import has_permission
    from app.notify.services import unread_count

    app.jinja_env.filters["local"] = local
    app.jinja_env.filters["tojson_pretty"] = lambda v: Markup.escape(json.dumps(v, ensure_ascii=False, indent=2))

    @app.context_processor
    def _globals():
        def can(permission: str) -> bool:
            return bool(current_user.is_authenticated and has_permission(current_user, permission))

        def unread() -> int:
            return unread_count(current_user.id) if current_user.is_authenticated else 0

        def nav_items():
            return [(ep, label, perm) for _o, ep, label, perm in NAV if ep in app.view_functions]

        def nav_groups():
            """The visible menu: [(group label, [(endpoint, label)])], groups in a fixed order."""
            groups: dict[str, list[tuple[str, str]]] = {name: [] for name, _p in NAV_GROUPS}
            for _o, ep, label, perm in NAV:
                if ep not in app.view_functions or (perm and not can(perm)):
                    continue
                name = next((g for g, prefixes in NAV_GROUPS if ep.startswith(prefixes)), "系统管理")
                groups[name].append((ep, label))
            return [(name, items) for name, items in groups.items() if items]

        return {"can": can, "unread_notifications": unread, "nav_items": nav_items, "nav_groups": nav_groups}
