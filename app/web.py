"""Template globals and filters shared by every page."""

from __future__ import annotations

import json

from flask import Flask
from flask_login import current_user
from markupsafe import Markup

from app.core.timefmt import local

# (order, endpoint, label, permission or None); domains add theirs in register()
NAV: list[tuple[int, str, str, str | None]] = []


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

        return {"can": can, "unread_notifications": unread, "nav_items": nav_items}
