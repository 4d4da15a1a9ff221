"""Home page and npm-installed front-end libraries served from node_modules (never a CDN)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, abort, current_app, redirect, send_from_directory, url_for
from flask_login import current_user

bp = Blueprint("home", __name__)

# only these folders of node_modules are served
VENDOR_ROOTS = ("bpmn-js/dist", "echarts/dist", "htmx.org/dist")


@bp.get("/")
def index():
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login"))
    return redirect(url_for("tasks.inbox"))


@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


@bp.get("/vendor/<path:filename>", endpoint="vendor")
def vendor(filename: str):
    if not any(filename.startswith(root + "/") for root in VENDOR_ROOTS) or ".." in filename:
        abort(404)
    root = Path(current_app.config["STATIC_VENDOR_DIR"])
    return send_from_directory(root, filename, max_age=86400)
