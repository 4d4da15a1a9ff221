"""Request-level access checks: page permission decorators and API authentication (token or session)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import g, redirect, request, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_login import current_user

from app.auth import services
from app.auth.permissions import PERMISSIONS
from app.db import db
from app.errors import Forbidden, Unauthorized


def require(*permissions: str) -> Callable:
    """Page decorator: log in first, then hold at least one of the permissions (none = any logged-in user)."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any):
            if not current_user.is_authenticated:
                if request.path.startswith("/api/"):
                    raise Unauthorized("请先登录或提供接口令牌")
                return redirect(url_for("auth.login", next=request.full_path))
            if permissions and not any(services.has_permission(current_user, p) for p in permissions):
                names = "、".join(PERMISSIONS.get(p, p) for p in permissions)
                raise Forbidden(f"没有权限：{names}")
            return view(*args, **kwargs)

        return wrapper

    return decorator


def api_auth(*permissions: str, allow_token: bool = True) -> Callable:
    """API decorator: a hospital system's Bearer token, or a logged-in user holding a permission. 401 otherwise."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any):
            header = request.headers.get("Authorization", "")
            g.api_system = None
            if header.startswith("Bearer "):
                if not allow_token:
                    raise Forbidden("该接口不接受系统令牌")
                found = services.verify_api_token_cached(header[7:].strip())
                if found is None:
                    raise Unauthorized("接口令牌无效或已吊销")
                g.api_token_id, g.api_system = found
                return view(*args, **kwargs)
            if not current_user.is_authenticated:
                raise Unauthorized("请提供接口令牌（Authorization: Bearer …）或先登录")
            if permissions and not any(services.has_permission(current_user, p) for p in permissions):
                names = "、".join(PERMISSIONS.get(p, p) for p in permissions)
                raise Forbidden(f"没有权限：{names}")
            return view(*args, **kwargs)

        return wrapper

    return decorator


class LazyCookieSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, except that a request without a session cookie (a hospital system's API
    call) gets an empty session without building the signing serializer; it is only built if the session is
    written to."""

    def open_session(self, app: Any, request: Any) -> Any:
        if app.secret_key and self.get_cookie_name(app) not in request.cookies:
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app: Any, session: Any, response: Any) -> None:
        if not session and not session.modified and not session.accessed:
            return  # nothing was read or written: no cookie to send, no Vary header to add
        super().save_session(app, session, response)


def token_request() -> bool:
    """A hospital system's API call: a Bearer token and no browser session cookie. Such calls skip the session
    machinery (login loading, idle timeout, password-change redirect): the token alone authenticates them."""
    environ = request.environ
    known = environ.get("medloop.token_request")
    if known is None:
        from flask import current_app

        known = environ["medloop.token_request"] = (
            environ.get("PATH_INFO", "").startswith("/api/")
            and environ.get("HTTP_AUTHORIZATION", "").startswith("Bearer ")
            and current_app.config.get("SESSION_COOKIE_NAME", "session") not in request.cookies)
    return bool(known)


def client_address() -> str:
    """Caller address (first X-Forwarded-For hop when behind the hospital proxy)."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    return (forwarded.split(",")[0].strip() or request.remote_addr or "")[:64]


def client_terminal() -> str:
    return (request.headers.get("X-Terminal-Id") or request.user_agent.string or "")[:255]


def load_user(user_id: str):
    from app.auth.models import User

    user = db.session.get(User, int(user_id)) if user_id.isdigit() else None
    if user is None or not user.is_active or user.departed_at is not None:
        return None
    return user
