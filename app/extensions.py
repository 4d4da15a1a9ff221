"""Flask extensions, created once and bound in create_app."""

from flask_login import LoginManager
from flask_migrate import Migrate
from flask_wtf import CSRFProtect

from app.db import db

migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()

__all__ = ["db", "migrate", "login_manager", "csrf"]
