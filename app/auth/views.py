"""Login, logout and the session idle timeout."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user

from app.audit import services as audit
from app.auth import services
from app.auth.access import client_address, client_terminal, token_request
from app.db import db

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return url_for("home.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    username = ""
    if request.method == "POST":
        username = (request.form.get("username") or "").strip()
        password = request.form.get("password") or ""
        try:
            user = services.authenticate(
                username=username, password=password,
                max_failures=current_app.config["LOGIN_MAX_FAILURES"],
                lock_minutes=current_app.config["LOGIN_LOCK_MINUTES"],
            )
        except services.LoginFailed as exc:
            error = exc.message
            audit.record(None, "auth.login_failed", None, address=client_address(),
                         terminal=client_terminal(), extra={"username": username, "reason": exc.message})
            db.session.commit()
        else:
            session.clear()
            login_user(user)
            session.permanent = True
            session["last_seen"] = datetime.now(UTC).timestamp()
            audit.record(user, "auth.login", user, address=client_address(), terminal=client_terminal())
            db.session.commit()
            return redirect(_safe_next(request.args.get("next")))
    return render_template("auth/login.html", error=error, username=username), (401 if error else 200)


@bp.post("/logout")
def logout():
    if current_user.is_authenticated:
        audit.record(current_user, "auth.logout", current_user, address=client_address())
        db.session.commit()
    logout_user()
    session.clear()
    flash("您已安全退出", "info")
    return redirect(url_for("auth.login"))


def enforce_idle_timeout():
    """Log out a session idle for longer than SESSION_IDLE_MINUTES (等保 2.0 会话超时)."""
    if token_request() or not current_user.is_authenticated or request.endpoint in (None, "static", "vendor"):
        return None
    now = datetime.now(UTC).timestamp()
    last = session.get("last_seen")
    limit = current_app.config["SESSION_IDLE_MINUTES"] * 60
    if last is not None and now - last > limit:
        logout_user()
        session.clear()
        if request.path.startswith("/api/"):
            return None
        flash("长时间未操作，会话已超时，请重新登录", "warning")
        return redirect(url_for("auth.login", next=request.full_path))
    session["last_seen"] = now
    return None
