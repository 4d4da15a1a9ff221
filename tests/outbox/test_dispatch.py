"""The outbox against a real HTTP server on 127.0.0.1: retries with backoff, dead letters, replay, ordering."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.audit.models import AuditLog
from app.db import utcnow
from app.errors import InvalidTransition
from app.outbox import services as outbox
from app.outbox.models import OutboxMessage, OutboxStatus


def _his_message(**payload):
    return outbox.enqueue(channel="his", event="privilege.changed",
                          payload={"staff_no": "D1002", "code": "BASIC-CONSULT", **payload}, key="privilege:1:X")


def test_failed_sends_are_retried_with_exponential_backoff_then_sent(app, db_session, fake_his, his_url,
                                                                     monkeypatch):
    monkeypatch.setitem(app.config, "OUTBOX_RETRY_BASE_SECONDS", 30)
    fake_his.fail_first = 2
    message = _his_message(status="active")
    t0 = utcnow()

    assert outbox.dispatch_due(now=t0)["retried"] == 1
    assert (message.status, message.attempts) == (OutboxStatus.PENDING, 1)
    assert message.next_attempt_at == t0 + timedelta(seconds=30)
    assert "HTTP 500" in message.last_error and "30 秒后重试" in message.last_error

    assert outbox.dispatch_due(now=t0 + timedelta(seconds=29))["claimed"] == 0  # not due yet: nothing sent
    assert len(fake_his.received) == 1

    t1 = t0 + timedelta(seconds=30)
    assert outbox.dispatch_due(now=t1)["retried"] == 1
    assert message.attempts == 2 and message.next_attempt_at == t1 + timedelta(seconds=60)  # doubled

    assert outbox.dispatch_due(now=t1 + timedelta(seconds=60))["sent"] == 1
    assert message.status == OutboxStatus.SENT and message.sent_at is not None
    assert fake_his.statuses == [500, 500, 200]
    # every try carries the same message id, so HIS can de-duplicate
    assert {body["message_id"] for body in fake_his.received} == {message.id}
    assert fake_his.received[-1]["payload"] == {"staff_no": "D1002", "code": "BASIC-CONSULT", "status": "active"}
    assert fake_his.headers[-1]["X-MedLoop-Message-Id"] == str(message.id)
    assert outbox.dispatch_due(now=t1 + timedelta(hours=1))["claimed"] == 0  # sent once, never again


def test_backoff_is_capped():
    assert [outbox.backoff_seconds(n, base=30, cap=3600) for n in (1, 2, 3, 7, 8, 20)] == [30, 60, 120, 1920, 3600,
                                                                                             3600]


def test_dead_after_max_attempts_with_the_error_kept_then_replay_sends_it(app, db_session, fake_his, his_url,
                                                                           monkeypatch, user):
    monkeypatch.setitem(app.config, "OUTBOX_MAX_ATTEMPTS", 3)
    fake_his.fail_always = True
    message = _his_message(status="suspended")
    now = utcnow()
    outcomes = []
    for _ in range(5):
        result = outbox.dispatch_due(now=now)
        outcomes.append((result["retried"], result["dead"]))
        now += timedelta(hours=7)  # past any backoff
    assert outcomes == [(1, 0), (1, 0), (0, 1), (0, 0), (0, 0)]
    assert message.status == OutboxStatus.DEAD and message.attempts == 3
    assert message.last_error.startswith("第 3 次发送失败，已停止重试") and "HTTP 500" in message.last_error
    assert len(fake_his.received) == 3

    with pytest.raises(InvalidTransition):
        outbox.replay(message_id=_his_message().id, actor=user("admin"))  # only dead ones

    fake_his.fail_always = False
    outbox.replay(message_id=message.id, actor=user("admin"))
    assert (message.status, message.attempts) == (OutboxStatus.PENDING, 0)
    log = db_session.scalar(select(AuditLog).where(AuditLog.action == "outbox.replayed",
                                                   AuditLog.entity_id == str(message.id)))
    assert log is not None and log.before["status"] == "dead" and log.actor_name == user("admin").name
    assert outbox.dispatch_due(now=utcnow())["sent"] >= 1
    assert message.status == OutboxStatus.SENT and fake_his.statuses[-1] == 200


def test_unconfigured_his_keeps_messages_pending_without_counting_attempts(app, db_session, monkeypatch):
    monkeypatch.setitem(app.config, "HIS_PRIVILEGE_URL", None)
    monkeypatch.delenv("HIS_PRIVILEGE_URL", raising=False)
    message = _his_message()
    result = outbox.dispatch_due(now=utcnow())
    assert result["not_configured"] == 1
    assert (message.status, message.attempts, message.last_error) == (OutboxStatus.PENDING, 0, "未配置 HIS 接口地址")
    assert message.next_attempt_at > utcnow()


def test_an_unreachable_his_is_a_failed_attempt(app, db_session, monkeypatch):
    monkeypatch.setitem(app.config, "HIS_PRIVILEGE_URL", "http://127.0.0.1:9/his")  # discard port: refused
    message = _his_message()
    assert outbox.dispatch_due(now=utcnow())["retried"] == 1
    assert message.attempts == 1 and "无法连接 HIS 接口" in message.last_error


def test_a_later_message_of_a_key_waits_while_an_earlier_one_is_unsent(app, db_session, channel, monkeypatch,
                                                                       user):
    monkeypatch.setitem(app.config, "OUTBOX_MAX_ATTEMPTS", 2)
    sent: list[str] = []

    def send(message):
        if message.payload.get("fail") and not message.payload.get("fixed"):
            raise RuntimeError("对方拒收")
        sent.append(message.payload["name"])

    channel("test-order", send)
    a1 = outbox.enqueue(channel="test-order", event="e", payload={"name": "a1", "fail": True}, key="a")
    a2 = outbox.enqueue(channel="test-order", event="e", payload={"name": "a2"}, key="a")
    b1 = outbox.enqueue(channel="test-order", event="e", payload={"name": "b1"}, key="b")
    n1 = outbox.enqueue(channel="test-order", event="e", payload={"name": "n1"})  # no key: independent
    b2 = outbox.enqueue(channel="test-order", event="e", payload={"name": "b2"}, key="b")
    now = utcnow()

    outbox.dispatch_due(now=now)
    assert sent == ["b1", "n1"]  # a1 failed, so a2 waits; b2 waits for b1 until the next batch
    assert a2.status == OutboxStatus.PENDING and a2.attempts == 0
    assert outbox.blocked_ids([a2, b2]) == {a2.id}
    outbox.dispatch_due(now=now)
    assert sent == ["b1", "n1", "b2"]  # a1 is not due yet (backoff): a2 still waits

    later = now + timedelta(hours=7)
    outbox.dispatch_due(now=later)
    assert a1.status == OutboxStatus.DEAD and a2.status == OutboxStatus.PENDING  # dead still blocks its key
    outbox.dispatch_due(now=later + timedelta(hours=7))
    assert "a2" not in sent and a2.attempts == 0

    a1.payload = {**a1.payload, "fixed": True}
    outbox.replay(message_id=a1.id, actor=user("admin"))
    outbox.dispatch_due(now=utcnow())
    outbox.dispatch_due(now=utcnow())
    assert sent == ["b1", "n1", "b2", "a1", "a2"]
    assert {m.status for m in (a1, a2, b1, b2, n1)} == {OutboxStatus.SENT}


def test_enqueue_refuses_bad_calls(db_session):
    from app.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as exc:
        outbox.enqueue(channel="", event="x" * 65, payload=[], key="k" * 129)  # type: ignore[arg-type]
    assert {e["path"] for e in exc.value.errors} == {"channel", "event", "payload", "key"}
    assert db_session.scalar(select(OutboxMessage.id).where(OutboxMessage.event == "x" * 65)) is None


def test_celery_task_dispatches_and_commits_per_batch(app, db_session, channel):
    from app.outbox.tasks import dispatch_batches

    got: list[int] = []
    channel("test-task", lambda m: got.append(m.id))
    ids = [outbox.enqueue(channel="test-task", event="e", payload={"i": i}, key="same").id for i in range(3)]
    db_session.commit()
    totals = dispatch_batches(batch_size=10)
    assert got == ids  # one per batch (head of the key), in order, three batches
    assert totals["sent"] >= 3 and totals["batches"] >= 3
