"""The 接口发件箱 operator page: permission, filters, error text, replay."""

from __future__ import annotations

from datetime import timedelta

from app.db import utcnow
from app.outbox import services as outbox
from app.outbox.models import OutboxStatus


def _dead(message, error="HIS 接口返回 HTTP 500：内部错误"):
    message.status = OutboxStatus.DEAD
    message.attempts = 8
    message.last_error = f"第 8 次发送失败，已停止重试：{error}"
    return message


def test_physician_and_mao_are_refused(client, login):
    for username in ("gs_doc", "mao"):
        login(username)
        assert client.get("/admin/outbox/").status_code == 403


def test_admin_sees_dead_messages_with_errors_and_replays_them(client, login, db_session):
    dead = _dead(outbox.enqueue(channel="his", event="privilege.changed", payload={"staff_no": "D1002"},
                                key="privilege:9:A"))
    later = outbox.enqueue(channel="his", event="privilege.changed", payload={"staff_no": "D1002"},
                           key="privilege:9:A")
    sent = outbox.enqueue(channel="his", event="privilege.changed", payload={"staff_no": "D2002"})
    sent.status, sent.sent_at = OutboxStatus.SENT, utcnow()
    db_session.commit()
    token = login("admin")
    html = client.get("/admin/outbox/?status=dead").get_data(as_text=True)
    assert f'id="message-{dead.id}"' in html and "已停止重试" in html and "HTTP 500" in html
    assert f'id="message-{sent.id}"' not in html and "重发" in html
    html = client.get("/admin/outbox/?status=pending").get_data(as_text=True)
    assert f'id="message-{later.id}"' in html and "等待前序消息" in html
    assert client.get(f"/admin/outbox/{dead.id}").status_code == 200

    assert client.post(f"/admin/outbox/{dead.id}/replay").status_code == 400  # no CSRF token
    resp = client.post(f"/admin/outbox/{dead.id}/replay", data={"csrf_token": token, "next": "/admin/outbox/"})
    assert resp.status_code == 302
    db_session.refresh(dead)
    assert dead.status == OutboxStatus.PENDING and dead.attempts == 0
    assert client.post(f"/admin/outbox/{dead.id}/replay", data={"csrf_token": token}).status_code == 409


def test_dispatch_button_sends_due_messages(client, login, db_session, channel):
    got = []
    channel("test-page", lambda m: got.append(m.id))
    message = outbox.enqueue(channel="test-page", event="e", payload={})
    message.next_attempt_at = utcnow() - timedelta(seconds=1)
    db_session.commit()
    token = login("admin")
    resp = client.post("/admin/outbox/dispatch", data={"csrf_token": token})
    assert resp.status_code == 302 and got == [message.id]


def test_empty_list_says_so(client, login):
    login("admin")
    html = client.get("/admin/outbox/?channel=nothing-here").get_data(as_text=True)
    assert "没有符合条件的接口消息" in html
