"""Pages of the technology domain (one module per area, one blueprint)."""

from flask import Blueprint

bp = Blueprint("technology", __name__, url_prefix="/technology")

from app.technology.views import day_surgery, ethics, high_risk, home, new_tech, restricted  # noqa: E402,F401
