"""Test fixtures: the real PostgreSQL (schema from migrations/), one rolled-back transaction per test."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import create_app
from app.config import Config
from app.db import db

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/medloop_test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def ensure_database(url: str) -> None:
    """Create the test database if it is missing (PostgreSQL only)."""
    u = make_url(url)
    if not u.drivername.startswith("postgresql"):
        return
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.scalar(text("select 1 from pg_database where datname = :n"), {"n": u.database})
        if not exists:
            conn.execute(text(f'create database "{u.database}"'))
    admin.dispose()


def reset_schema(app) -> None:
    """Drop everything and build the schema through the Alembic migrations."""
    from flask_migrate import upgrade

    with app.app_context():
        with db.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("drop schema public cascade; create schema public"))
        upgrade()


def make_config(url: str, **overrides) -> Config:
    cfg = Config()
    cfg.SQLALCHEMY_DATABASE_URI = url
    cfg.TESTING = True
    cfg.WTF_CSRF_ENABLED = True
    cfg.IN_PROCESS_SCHEDULER = False
    cfg.SECRET_KEY = "test-secret"
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


class IsolatedClient(FlaskClient):
    """Each request gets its own app context (own g, own session), as in production, even when the
    test holds one open; both share the test's connection, so rolled-back test data stays visible."""

    def open(self, *args, **kwargs):
        with self.application.app_context():
            return super().open(*args, **kwargs)


def demo_app(url: str, **config) -> Flask:
    """An app on `url` (created if missing) with the schema rebuilt and the demo data committed."""
    ensure_database(url)
    application = create_app(make_config(url, **config))
    reset_schema(application)
    with application.app_context():
        from app.demo import load_demo

        load_demo()
        db.session.commit()
    return application


def drop_database(url: str) -> None:
    """Drop a test database, ending whatever connections still hold it."""
    u = make_url(url)
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'drop database if exists "{u.database}" with (force)'))
    admin.dispose()


@contextmanager
def own_database(suffix: str, **config) -> Iterator[tuple[Flask, str]]:
    """(app, url) on a database of its own, <test db>_<suffix>, with the demo data committed: for tests whose code
    commits for real (threads, processes, servers, other app instances); disposed and dropped afterwards."""
    base = make_url(PG_URL)
    url = base.set(database=f"{base.database}_{suffix}").render_as_string(hide_password=False)
    application = demo_app(url, **config)
    try:
        yield application, url
    finally:
        with application.app_context():
            db.session.remove()
            db.engine.dispose()
        drop_database(url)


@pytest.fixture(scope="session")
def app():
    application = demo_app(PG_URL)
    application.test_client_class = IsolatedClient
    return application


@pytest.fixture
def db_session(app, monkeypatch) -> Iterator:
    with app.app_context():
        conn = db.engine.connect()
        outer = conn.begin()
        # Flask-SQLAlchemy binds through db.engines, not a session bind
        monkeypatch.setitem(db.engines, None, conn)
        db.session.remove()
        db.session.configure(join_transaction_mode="create_savepoint")
        yield db.session  # app commits become savepoint releases
        db.session.remove()
        outer.rollback()
        conn.close()
        db.session.configure(join_transaction_mode="conditional_savepoint")


@pytest.fixture
def fresh_check_cache(app):
    """An empty privilege-check index for the test (`pytestmark = pytest.mark.usefixtures("fresh_check_cache")`):
    the rolled-back transactions of earlier tests reuse version numbers that an index loaded by them would wrongly
    take for current (in production versions only ever grow)."""
    from app.privileges import check

    app.extensions[check.EXTENSION] = check.CheckCache(app)


@pytest.fixture
def his(db_session) -> dict[str, str]:
    """Headers carrying a fresh HIS Bearer token (tests/loops and tests/connectors define their own `his`)."""
    from app.auth.services import create_api_token

    token = create_api_token(system="HIS")
    db_session.commit()
    return {"Authorization": f"Bearer {token}"}


CHECK_URL = "/api/v1/privileges/check"


def check_privilege(client, headers: dict[str, str], staff_no: str, category: str, code: str) -> dict:
    """HIS's privilege check for one physician and item: the 200 answer's JSON."""
    resp = client.get(CHECK_URL, query_string={"staff_no": staff_no, "category": category, "code": code},
                      headers=headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


@pytest.fixture
def client(app, db_session):
    return app.test_client()


def csrf_from(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


@pytest.fixture
def login(client) -> Callable:
    """Log the test client in as a demo user; returns the CSRF token for later posts."""
    from app.demo import DEMO_PASSWORD

    def _login(username: str, password: str = DEMO_PASSWORD) -> str:
        client.post("/logout", data={"csrf_token": csrf_from(client.get("/login").get_data(as_text=True))})
        page = client.get("/login").get_data(as_text=True)
        resp = client.post("/login", data={"username": username, "password": password, "csrf_token": csrf_from(page)})
        assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
        return csrf_from(client.get("/notifications/").get_data(as_text=True))

    return _login


@pytest.fixture
def user(db_session) -> Callable:
    """Look up a demo user by username."""
    from sqlalchemy import select

    from app.auth.models import User

    def _get(username: str) -> User:
        return db_session.scalar(select(User).where(User.username == username))

    return _get
