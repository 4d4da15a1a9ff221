"""MedLoop: medical-affairs management and clinical closed loops on one BPMN workflow core."""

from __future__ import annotations

from importlib import import_module

from flask import Flask

from app.config import ROOT, Config
from app.db import db
from app.errors import register_error_handlers
from app.extensions import csrf, login_manager, migrate

# each domain package exposes register(app): blueprints, CLI commands, signals
DOMAINS = ("core", "auth", "audit", "notify", "outbox", "workflow", "forms", "privileges", "archives", "technology",
           "loops")


def create_app(config: Config | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=False)
    cfg = config or Config.from_env()
    app.config.from_object(cfg)
    db.init_app(app)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"), compare_type=True, render_as_batch=True)
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "请先登录"
    login_manager.login_message_category = "warning"

    from app.auth.access import load_user

    login_manager.user_loader(load_user)

    from app.celery_app import celery_init_app

    celery_init_app(app)
    register_error_handlers(app)
    for name in DOMAINS:
        import_module(f"app.{name}").register(app)
        if (ROOT / "app" / name / "models.py").exists():
            import_module(f"app.{name}.models")

    from app.auth.views import enforce_idle_timeout
    from app.web import install_template_helpers

    app.before_request(enforce_idle_timeout)
    install_template_helpers(app)

    app.config["WTF_CSRF_CHECK_DEFAULT"] = False

    @app.before_request
    def _csrf_unless_system_token():
        # hospital systems authenticate API calls with a Bearer token and carry no browser session,
        # so CSRF (a browser attack) applies to every other unsafe request
        from flask import request

        if request.method in ("GET", "HEAD", "OPTIONS"):
            return None
        if request.path.startswith("/api/"):
            from flask_login import current_user

            # token callers and anonymous callers (who get 401 from the view) carry no session to forge
            if request.headers.get("Authorization", "").startswith("Bearer ") or not current_user.is_authenticated:
                return None
        if request.path.startswith("/soap/"):
            return None
        csrf.protect()
        return None

    @app.after_request
    def _security_headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        if not resp.headers.get("Content-Security-Policy"):
            resp.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        return resp

    return app
