from app.auth.models import User
from tests.conftest import csrf_from


def test_login_with_demo_password_lands_logged_in(client, login):
    login("mao")
    resp = client.get("/notifications/")
    assert resp.status_code == 200
    assert "站内消息" in resp.get_data(as_text=True)


def test_login_form_without_csrf_is_refused(client):
    resp = client.post("/login", data={"username": "mao", "password": "x"})
    assert resp.status_code == 400
    assert "CSRF" in resp.get_data(as_text=True)


def test_repeated_failures_lock_the_account(client, user, app, db_session):
    page = client.get("/login").get_data(as_text=True)
    token = csrf_from(page)
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        resp = client.post("/login", data={"username": "gs_doc2", "password": "wrong", "csrf_token": token})
        assert resp.status_code == 401
    assert "锁定" in resp.get_data(as_text=True)
    db_session.expire_all()
    u: User = user("gs_doc2")
    assert u.locked_until is not None
    # even the right password is refused while locked
    from app.demo import DEMO_PASSWORD

    resp = client.post("/login", data={"username": "gs_doc2", "password": DEMO_PASSWORD, "csrf_token": token})
    assert resp.status_code == 401 and "锁定" in resp.get_data(as_text=True)


def test_pages_redirect_anonymous_users_to_login(client):
    resp = client.get("/notifications/")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_api_without_credentials_is_401(client):
    resp = client.get("/api/v1/me")
    assert resp.status_code == 401
    assert resp.get_json()["error"]["message"]


def test_api_token_identifies_the_system(client, db_session):
    from app.auth.services import create_api_token

    token = create_api_token(system="HIS")
    resp = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200 and resp.get_json() == {"system": "HIS"}
    bad = client.get("/api/v1/me", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401


def test_audit_page_refuses_a_physician(client, login):
    login("gs_doc")
    assert client.get("/audit/").status_code == 403


def test_idle_session_times_out(client, login, app):
    login("mao")
    with client.session_transaction() as sess:
        sess["last_seen"] = sess["last_seen"] - app.config["SESSION_IDLE_MINUTES"] * 60 - 5
    resp = client.get("/notifications/")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
