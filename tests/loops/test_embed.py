"""Embedded loop view for HIS stations: launch tokens issued to a system's Bearer token, used without a second
login; expired, forged, revoked and other-order tokens refused with a Chinese 401; CSP frame-ancestors."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import pytest
from sqlalchemy import select

from app.audit.models import AuditLog
from app.auth.models import ApiToken
from app.loops import services
from app.loops.embed import issue_launch_token

BASE = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)


def ev(order_no: str, node: str, minute: int, **extra):
    body = {"source": "HIS", "event_id": f"{order_no}-{node}", "order_no": order_no, "order_type": "exam",
            "node": node, "occurred_at": (BASE + timedelta(minutes=minute)).isoformat(),
            "operator": {"id": "D1002", "name": "陈医生"},
            "patient": {"id": "P778899", "name": "李四", "inpatient_no": "ZY778899"}, "dept": "1001"}
    body.update(extra)
    return body


@pytest.fixture
def his(client, db_session):
    from app.auth.services import create_api_token

    token = create_api_token(system="HIS")
    db_session.commit()
    resp = client.post("/api/v1/loop-events", headers={"Authorization": f"Bearer {token}"},
                       json={"events": [ev("E-1", "request", 0), ev("E-1", "senior_review", 20),
                                        ev("E-1", "nurse_check", 30)]})
    assert resp.get_json()["accepted"] == 3
    for _ in range(5):
        if services.apply_pending().applied == 0:
            break
    db_session.commit()
    return token


def launch(client, token, order_no="E-1", staff_no="N1001", ttl=120):
    return client.post("/api/v1/launch-tokens", headers={"Authorization": f"Bearer {token}"},
                       json={"order_no": order_no, "user": {"staff_no": staff_no, "name": "吴护士"}, "ttl": ttl})


def embed_path(url: str) -> str:
    u = urlparse(url)
    return f"{u.path}?{u.query}"


def test_system_gets_a_launch_token_and_opens_the_timeline_without_login(client, his, db_session):
    resp = launch(client, his)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["expires_in"] == 120 and body["expires_at"] <= time.time() + 121
    assert "/embed/orders/E-1?token=" in body["url"]
    page = client.get(embed_path(body["url"]))
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "检查闭环" in html and 'data-node="booking" data-status="current"' in html
    assert 'class="mainnav"' not in html and "退出" not in html  # compact layout, no main navigation
    assert "李四" in html  # N1001 is 吴护士, a nurse holding loops.patient_identity
    assert page.headers["Content-Security-Policy"] == "frame-ancestors 'self'"
    assert "X-Frame-Options" not in page.headers
    assert page.headers["Referrer-Policy"] == "no-referrer"
    issued = db_session.scalar(select(AuditLog).where(AuditLog.action == "loops.launch_token_issued"))
    assert issued.actor_name == "HIS" and issued.entity_id == "E-1" and issued.extra["staff_no"] == "N1001"


def test_identity_is_masked_unless_the_staff_member_may_see_it(client, his):
    for staff_no in ("X9999", "P1001", "Q0001"):  # unknown, a pharmacist, 质控 (no loops.patient_identity)
        html = client.get(embed_path(launch(client, his, staff_no=staff_no).get_json()["url"])).get_data(as_text=True)
        assert "李四" not in html and "李*" in html and "ZY****99" in html and "已脱敏" in html


def test_framing_is_limited_to_configured_origins(app, client, his, monkeypatch):
    monkeypatch.setitem(app.config, "EMBED_ALLOWED_ORIGINS", ["https://his.hospital.local", "http://10.1.2.3:8080"])
    page = client.get(embed_path(launch(client, his).get_json()["url"]))
    assert page.headers["Content-Security-Policy"] == \
        "frame-ancestors 'self' https://his.hospital.local http://10.1.2.3:8080"


def test_expired_token_is_refused_with_a_chinese_401(app, client, his, db_session):
    api_token = db_session.scalar(select(ApiToken).where(ApiToken.system == "HIS").order_by(ApiToken.id.desc()))
    with app.test_request_context():
        token, _exp = issue_launch_token(api_token=api_token, order_no="E-1", staff_no="N1001", ttl=60,
                                         now=time.time() - 120)
    resp = client.get(f"/embed/orders/E-1?token={token}")
    assert resp.status_code == 401
    html = resp.get_data(as_text=True)
    assert "启动令牌已过期" in html and "李四" not in html
    assert resp.headers["Content-Security-Policy"] == "frame-ancestors 'self'"


def test_forged_and_missing_tokens_are_refused(client, his):
    token = launch(client, his).get_json()["token"]
    payload, sig = token.rsplit(".", 1)
    tampered = payload + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
    for bad in (tampered, "garbage", "eyJraWQiOjF9.abc", ""):
        resp = client.get(f"/embed/orders/E-1?token={bad}")
        assert resp.status_code == 401, bad
        assert "启动令牌" in resp.get_data(as_text=True)
    # a token signed with another secret (e.g. by someone who only knows the system's token hash)
    from itsdangerous import URLSafeSerializer

    forged = URLSafeSerializer("guess", salt="medloop.loops.embed-launch").dumps(
        {"sys": "HIS", "kid": 1, "ord": "E-1", "staff": "N1001", "exp": int(time.time()) + 100})
    assert client.get(f"/embed/orders/E-1?token={forged}").status_code == 401


def test_token_for_another_order_is_refused(client, his):
    token = launch(client, his, order_no="E-2").get_json()["token"]
    resp = client.get(f"/embed/orders/E-1?token={token}")
    assert resp.status_code == 401 and "与所查看的医嘱不符" in resp.get_data(as_text=True)


def test_revoking_the_system_token_kills_its_launch_tokens(client, his, db_session):
    url = launch(client, his).get_json()["url"]
    api_token = db_session.scalar(select(ApiToken).where(ApiToken.system == "HIS").order_by(ApiToken.id.desc()))
    api_token.revoked_at = datetime.now(UTC)
    db_session.commit()
    resp = client.get(embed_path(url))
    assert resp.status_code == 401 and "已吊销" in resp.get_data(as_text=True)


def test_launch_token_request_is_validated(client, his):
    assert launch(client, his, ttl=301).get_json()["error"]["errors"][0]["path"] == "ttl"
    resp = client.post("/api/v1/launch-tokens", headers={"Authorization": f"Bearer {his}"},
                       json={"order_no": "", "user": {"name": "x"}})
    assert resp.status_code == 400
    assert {e["path"] for e in resp.get_json()["error"]["errors"]} == {"order_no", "user/staff_no"}
    assert client.post("/api/v1/launch-tokens", json={"order_no": "E-1"}).status_code == 401
    assert client.post("/api/v1/launch-tokens", headers={"Authorization": "Bearer nope"},
                       json={"order_no": "E-1", "user": {"staff_no": "N1001"}}).status_code == 401


def test_unknown_order_with_a_valid_token_shows_an_empty_state(client, his):
    url = launch(client, his, order_no="E-404").get_json()["url"]
    resp = client.get(embed_path(url))
    assert resp.status_code == 404 and "尚未收到医嘱「E-404」" in resp.get_data(as_text=True)
