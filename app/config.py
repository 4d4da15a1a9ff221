"""Configuration: the embedded default (SQLite, in-process work) unless the environment says otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass
class Config:
    SECRET_KEY: str = "medloop-dev-secret-change-me"
    SQLALCHEMY_DATABASE_URI: str = f"sqlite:///{ROOT / 'instance' / 'medloop.sqlite'}"
    SQLALCHEMY_ENGINE_OPTIONS: dict = field(default_factory=dict)
    REDIS_URL: str | None = None
    CELERY_ALWAYS_EAGER: bool = True
    TESTING: bool = False
    WTF_CSRF_ENABLED: bool = True
    WTF_CSRF_TIME_LIMIT: int | None = None
    # 等保 2.0: session timeout and lockout for local passwords
    PERMANENT_SESSION_LIFETIME: int = 30 * 60
    SESSION_IDLE_MINUTES: int = 30
    LOGIN_MAX_FAILURES: int = 5
    LOGIN_LOCK_MINUTES: int = 15
    PASSWORD_MAX_AGE_DAYS: int = 180
    SESSION_COOKIE_HTTPONLY: bool = True
    SESSION_COOKIE_SAMESITE: str = "Lax"
    PROCESSES_DIR: str = str(ROOT / "processes")
    FORMS_DIR: str = str(ROOT / "forms")
    STATIC_VENDOR_DIR: str = str(ROOT / "node_modules")
    UPLOAD_DIR: str = str(ROOT / "instance" / "uploads")
    # a reviewer whose step waits longer than this many days is reminded (privilege flow)
    REVIEW_REMINDER_DAYS: int = 3
    IN_PROCESS_SCHEDULER: bool = True
    # origins allowed to frame /embed pages (HIS doctor/nurse stations); 'self' always included
    EMBED_ALLOWED_ORIGINS: list[str] = field(default_factory=list)
    DEPLOY_PROCESSES_ON_START: bool = True

    @classmethod
    def from_env(cls) -> Config:
        cfg = cls()
        if os.environ.get("MEDLOOP_SECRET_KEY"):
            cfg.SECRET_KEY = os.environ["MEDLOOP_SECRET_KEY"]
        url = os.environ.get("DATABASE_URL")
        if url:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://"):]
            cfg.SQLALCHEMY_DATABASE_URI = url
        redis_url = os.environ.get("REDIS_URL")
        if redis_url:
            cfg.REDIS_URL = redis_url
            cfg.CELERY_ALWAYS_EAGER = False
            cfg.IN_PROCESS_SCHEDULER = False
        if os.environ.get("MEDLOOP_EMBED_ALLOWED_ORIGINS"):
            cfg.EMBED_ALLOWED_ORIGINS = os.environ["MEDLOOP_EMBED_ALLOWED_ORIGINS"].replace(",", " ").split()
        cfg.REVIEW_REMINDER_DAYS = _env_int("MEDLOOP_REVIEW_REMINDER_DAYS", cfg.REVIEW_REMINDER_DAYS)
        if cfg.SQLALCHEMY_DATABASE_URI.startswith("sqlite:///"):
            Path(cfg.SQLALCHEMY_DATABASE_URI[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return cfg
