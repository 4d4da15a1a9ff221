"""Who-am-I for API callers."""

from __future__ import annotations

from flask import Blueprint, g
from flask_login import current_user

from app.auth.access import api_auth
from app.auth.services import permissions_of

bp = Blueprint("auth_api", __name__, url_prefix="/api/v1")


@bp.get("/me")
@api_auth()
def me():
    if g.api_system:
        return {"system": g.api_system}
    return {
        "id": current_user.id,
        "username": current_user.username,
        "name": current_user.name,
        "permissions": {k: v.value for k, v in permissions_of(current_user).items()},
    }
