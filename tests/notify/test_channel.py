"""Pushing notifications to DingTalk / 浙政钉 through the outbox, against a real HTTP server on 127.0.0.1 standing
in for the DingTalk open API, the 浙政钉 open platform and a group custom robot (signatures checked there)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote_plus, urlsplit

import pytest
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.db import utcnow
from app.notify import services as notify
from app.notify.models import DeptRobot, Notification, NotifyAccount
from app.outbox import services as outbox
from app.outbox.models import OutboxMessage, OutboxStatus
from connectors import dingtalk

APP_KEY, APP_SECRET, AGENT_ID, TOKEN = "ding-app-key", "ding-app-secret", "2890001", "tok-medloop-1"
ROBOT_TOKEN, ROBOT_SECRET = "robot-token-abcdef123456", "SEC0123456789abcdef"
ZZD_KEY, ZZD_SECRET, ZZD_TENANT = "zzd-app-key", "zzd-app-secret", "196729"
PUBLIC = "https://medloop.hospital.example"


@dataclass
class FakeDing:
    """One server for the three APIs. `fail_always` answers 500 to every work notice."""

    base: str = ""
    fail_always: bool = False
    token_calls: list[dict] = field(default_factory=list)
    notices: list[dict] = field(default_factory=list)
    robot_posts: list[dict] = field(default_factory=list)
    zzd_posts: list[dict] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _robot_sign_ok(timestamp: str, sign: str) -> bool:
    # as DingTalk documents it: base64(HMAC-SHA256(secret, timestamp + "\n" + secret)), URL-encoded
    expected = base64.b64encode(hmac.new(ROBOT_SECRET.encode(), f"{timestamp}\n{ROBOT_SECRET}".encode(),
                                         hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected, sign)


def _zzd_sign_ok(headers, path: str, form: dict[str, str]) -> bool:
    params = "&".join(f"{k}={form[k]}" for k in sorted(form))
    text = "\n".join(["POST", headers["X-Hmac-Auth-Timestamp"], headers["X-Hmac-Auth-Nonce"], path, params])
    expected = base64.b64encode(hmac.new(ZZD_SECRET.encode(), text.encode(), hashlib.sha256).digest()).decode()
    return headers.get("apiKey") == ZZD_KEY and hmac.compare_digest(expected, headers["X-Hmac-Auth-Signature"])


@pytest.fixture
def fake_ding(monkeypatch) -> Iterator[FakeDing]:
    state = FakeDing()
    monkeypatch.setattr(dingtalk, "_tokens", {})  # a fresh token cache for each server

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict | str) -> None:
            payload = (body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)).encode()
            with state.lock:
                state.statuses.append(status)
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self):  # noqa: N802 - http.server's naming
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/gettoken":
                with state.lock:
                    state.token_calls.append(query)
                if (query.get("appkey"), query.get("appsecret")) != (APP_KEY, APP_SECRET):
                    return self._answer(200, {"errcode": 40089, "errmsg": "不合法的corpid或corpsecret"})
                return self._answer(200, {"errcode": 0, "errmsg": "ok", "access_token": TOKEN, "expires_in": 7200})
            return self._answer(404, {"errcode": 404})

        def do_POST(self):  # noqa: N802
            url = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/topapi/message/corpconversation/asyncsend_v2":
                with state.lock:
                    state.notices.append({"query": query, "body": json.loads(raw)})
                if state.fail_always:
                    return self._answer(500, "钉钉服务暂不可用")
                if query.get("access_token") != TOKEN:
                    return self._answer(200, {"errcode": 40014, "errmsg": "不合法的access_token"})
                return self._answer(200, {"errcode": 0, "errmsg": "ok", "task_id": 1, "request_id": "r1"})
            if url.path == "/robot/send":
                # parse the sign by hand: parse_qs would turn the '+' of base64 into spaces before unquoting
                raw_query = dict(part.split("=", 1) for part in url.query.split("&"))
                ok = (raw_query.get("access_token") == ROBOT_TOKEN
                      and _robot_sign_ok(raw_query.get("timestamp", ""), unquote_plus(raw_query.get("sign", ""))))
                with state.lock:
                    state.robot_posts.append({"query": raw_query, "body": json.loads(raw), "sign_ok": ok})
                if not ok:
                    return self._answer(200, {"errcode": 310000, "errmsg": "sign not match"})
                return self._answer(200, {"errcode": 0, "errmsg": "ok"})
            if url.path == "/message/workNotification":
                form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                ok = _zzd_sign_ok(self.headers, url.path, form)
                with state.lock:
                    state.zzd_posts.append({"form": form, "headers": dict(self.headers), "sign_ok": ok})
                if not ok:
                    return self._answer(200, {"success": False, "errorCode": "403", "errorMsg": "签名错误"})
                return self._answer(200, {"success": True, "content": {"success": True, "data": {"msgId": "m1"}}})
            return self._answer(404, {"errcode": 404})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def dingtalk_channel(app, monkeypatch, fake_ding) -> FakeDing:
    for name, value in {"NOTIFY_CHANNEL": "dingtalk", "DINGTALK_API_BASE": fake_ding.base,
                        "DINGTALK_APP_KEY": APP_KEY, "DINGTALK_APP_SECRET": APP_SECRET, "DINGTALK_AGENT_ID": AGENT_ID,
                        "PUBLIC_BASE_URL": PUBLIC + "/", "NOTIFY_CHANNEL_KINDS": None}.items():
        monkeypatch.setitem(app.config, name, value)
    return fake_ding


def pushes(db_session, channel: str = "notify") -> list[OutboxMessage]:
    return list(db_session.scalars(select(OutboxMessage).where(OutboxMessage.channel == channel)
                                   .order_by(OutboxMessage.id)))


def bind(user, channel: str, account: str) -> None:
    notify.set_accounts(user=user, values={channel: account}, actor=user)


def test_configured_dingtalk_channel_sends_a_work_notice_with_token_agent_and_userid(db_session, dingtalk_channel,
                                                                                     user):
    doc, doc2 = user("gs_doc"), user("gs_doc2")
    bind(doc, "dingtalk", "gsdoc01")
    rows = notify.notify(user_ids=[doc.id, doc2.id], title="【超时】检验闭环 医嘱 CH-1", body="采集节点已超时 20 分钟",
                         link="/loops/orders/CH-1", kind="alert")
    assert len(rows) == 2  # the in-app rows for both, account or not
    (message,) = pushes(db_session)  # only the recipient with an account is pushed
    assert message.key == f"notify:user:{doc.id}" and message.event == "notify.alert"
    assert message.payload["account_id"] == "gsdoc01" and message.payload["notification_id"] in {r.id for r in rows}
    assert message.payload["url"] == f"{PUBLIC}/loops/orders/CH-1"

    result = outbox.dispatch_due(now=utcnow())
    assert result["sent"] == 1 and message.status == OutboxStatus.SENT
    assert dingtalk_channel.token_calls == [{"appkey": APP_KEY, "appsecret": APP_SECRET}]
    (notice,) = dingtalk_channel.notices
    assert notice["query"] == {"access_token": TOKEN}
    assert notice["body"]["agent_id"] == int(AGENT_ID) and notice["body"]["userid_list"] == "gsdoc01"
    assert notice["body"]["msg"] == {"msgtype": "text", "text": {
        "content": f"【超时】检验闭环 医嘱 CH-1\n采集节点已超时 20 分钟\n{PUBLIC}/loops/orders/CH-1"}}

    # a second notice reuses the cached token, and one user's pushes keep their order
    notify.notify(user_ids=[doc.id], title="第二条", kind="reminder")
    notify.notify(user_ids=[doc.id], title="第三条", kind="reminder")
    outbox.dispatch_due(now=utcnow())
    outbox.dispatch_due(now=utcnow())
    assert len(dingtalk_channel.token_calls) == 1
    assert [n["body"]["msg"]["text"]["content"] for n in dingtalk_channel.notices[1:]] == ["第二条", "第三条"]


def test_the_push_is_written_in_the_notifications_transaction(db_session, dingtalk_channel, user):
    doc = user("gs_doc")
    bind(doc, "dingtalk", "gsdoc01")
    before = (db_session.scalar(select(func.count()).select_from(Notification)), len(pushes(db_session)))
    nested = db_session.begin_nested()
    notify.notify(user_ids=[doc.id], title="将被回滚", kind="alert")
    assert len(pushes(db_session)) == before[1] + 1
    nested.rollback()
    assert (db_session.scalar(select(func.count()).select_from(Notification)), len(pushes(db_session))) == before


def test_server_errors_are_retried_then_dead_lettered_and_replayed_from_the_outbox_page(
        app, client, login, db_session, dingtalk_channel, monkeypatch, user):
    monkeypatch.setitem(app.config, "OUTBOX_MAX_ATTEMPTS", 3)
    dingtalk_channel.fail_always = True
    doc = user("gs_doc")
    bind(doc, "dingtalk", "gsdoc01")
    notify.notify(user_ids=[doc.id], title="危急值升级", kind="alert")
    (message,) = pushes(db_session)
    now = utcnow()
    outcomes = []
    for _ in range(3):
        result = outbox.dispatch_due(now=now)
        outcomes.append((result["retried"], result["dead"]))
        now += timedelta(hours=7)  # past any backoff
    assert outcomes == [(1, 0), (1, 0), (0, 1)]
    assert message.status == OutboxStatus.DEAD and message.attempts == 3
    assert "HTTP 500" in message.last_error and "已停止重试" in message.last_error
    assert len(dingtalk_channel.notices) == 3
    db_session.commit()

    dingtalk_channel.fail_always = False
    csrf = login("admin")
    page = client.get("/admin/outbox/?status=dead&channel=notify").get_data(as_text=True)
    assert f'id="message-{message.id}"' in page and "工作通知（钉钉 / 浙政钉）" in page
    resp = client.post(f"/admin/outbox/{message.id}/replay", data={"csrf_token": csrf})
    assert resp.status_code == 302
    db_session.refresh(message)
    assert message.status == OutboxStatus.PENDING
    assert outbox.dispatch_due(now=utcnow())["sent"] >= 1
    assert message.status == OutboxStatus.SENT and dingtalk_channel.statuses[-1] == 200


def test_a_recipient_without_an_account_gets_the_in_app_message_only(db_session, dingtalk_channel, user):
    doc2 = user("gs_doc2")
    (row,) = notify.notify(user_ids=[doc2.id], title="证件即将到期", kind="reminder")
    assert row.id is not None and row.user_id == doc2.id
    assert pushes(db_session) == []


def test_channel_none_keeps_notifications_in_app_even_with_an_account(app, db_session, dingtalk_channel,
                                                                      monkeypatch, user):
    monkeypatch.setitem(app.config, "NOTIFY_CHANNEL", "none")
    doc = user("gs_doc")
    bind(doc, "dingtalk", "gsdoc01")
    (row,) = notify.notify(user_ids=[doc.id], title="仅站内", kind="alert")
    assert row.id is not None and pushes(db_session) == []
    assert outbox.dispatch_due(now=utcnow())["claimed"] == 0 and dingtalk_channel.notices == []


def test_kinds_can_be_limited_and_an_account_on_another_channel_is_not_used(app, db_session, dingtalk_channel,
                                                                            monkeypatch, user):
    monkeypatch.setitem(app.config, "NOTIFY_CHANNEL_KINDS", "alert,reminder")
    doc = user("gs_doc")
    bind(doc, "zzd", "10086")
    notify.notify(user_ids=[doc.id], title="只有浙政钉账号", kind="alert")
    assert pushes(db_session) == []  # the channel is DingTalk
    bind(doc, "dingtalk", "gsdoc01")
    notify.notify(user_ids=[doc.id], title="普通通知", kind="info")
    assert pushes(db_session) == []  # info is not among NOTIFY_CHANNEL_KINDS
    notify.notify(user_ids=[doc.id], title="催办", kind="reminder")
    assert [m.payload["title"] for m in pushes(db_session)] == ["催办"]


def test_missing_app_credentials_keep_pushes_waiting_without_counting_attempts(app, db_session, dingtalk_channel,
                                                                               monkeypatch, user):
    monkeypatch.setitem(app.config, "DINGTALK_APP_SECRET", None)
    monkeypatch.delenv("DINGTALK_APP_SECRET", raising=False)
    doc = user("gs_doc")
    bind(doc, "dingtalk", "gsdoc01")
    notify.notify(user_ids=[doc.id], title="等待配置", kind="alert")
    (message,) = pushes(db_session)
    assert outbox.dispatch_due(now=utcnow())["not_configured"] == 1
    assert message.status == OutboxStatus.PENDING and message.attempts == 0
    assert "DINGTALK_APP_SECRET" in message.last_error and dingtalk_channel.token_calls == []


def test_zzd_work_notice_is_signed_and_carries_tenant_receiver_and_message_id(app, db_session, fake_ding,
                                                                              monkeypatch, user):
    for name, value in {"NOTIFY_CHANNEL": "zzd", "ZZD_API_BASE": fake_ding.base, "ZZD_APP_KEY": ZZD_KEY,
                        "ZZD_APP_SECRET": ZZD_SECRET, "ZZD_TENANT_ID": ZZD_TENANT, "PUBLIC_BASE_URL": PUBLIC,
                        "NOTIFY_CHANNEL_KINDS": None}.items():
        monkeypatch.setitem(app.config, name, value)
    doc = user("gs_doc")
    bind(doc, "zzd", "10086")
    notify.notify(user_ids=[doc.id], title="医疗权限“四级手术”将于 2026-12-31 到期", body="请及时申请再授权 & 复核",
                  link="/privileges/apply", kind="reminder")
    (message,) = pushes(db_session)
    assert outbox.dispatch_due(now=utcnow())["sent"] == 1 and message.status == OutboxStatus.SENT
    (post,) = fake_ding.zzd_posts
    assert post["sign_ok"], post
    assert post["headers"]["X-Hmac-Auth-Version"] == "1.0" and post["headers"]["X-Hmac-Auth-Timestamp"].endswith(
        "+08:00")
    form = post["form"]
    assert (form["tenantId"], form["receiverIds"], form["bizMsgId"]) == (ZZD_TENANT, "10086", f"medloop-{message.id}")
    assert json.loads(form["msg"]) == {"msgtype": "text", "text": {"content": (
        "医疗权限“四级手术”将于 2026-12-31 到期\n请及时申请再授权 & 复核\n" + PUBLIC + "/privileges/apply")}}


def test_a_wrong_zzd_secret_is_a_failed_attempt(app, db_session, fake_ding, monkeypatch, user):
    for name, value in {"NOTIFY_CHANNEL": "zzd", "ZZD_API_BASE": fake_ding.base, "ZZD_APP_KEY": ZZD_KEY,
                        "ZZD_APP_SECRET": "wrong", "ZZD_TENANT_ID": ZZD_TENANT}.items():
        monkeypatch.setitem(app.config, name, value)
    doc = user("gs_doc")
    bind(doc, "zzd", "10086")
    notify.notify(user_ids=[doc.id], title="签名错误", kind="alert")
    (message,) = pushes(db_session)
    assert outbox.dispatch_due(now=utcnow())["retried"] == 1
    assert "签名错误" in message.last_error and fake_ding.zzd_posts[0]["sign_ok"] is False


def test_department_robot_posts_signed_alerts_into_the_group(app, db_session, fake_ding, monkeypatch, user):
    monkeypatch.setitem(app.config, "NOTIFY_CHANNEL", "none")  # the robot works without a work-notice app
    monkeypatch.setitem(app.config, "NOTIFY_ROBOT_KINDS", "alert")
    monkeypatch.setitem(app.config, "PUBLIC_BASE_URL", PUBLIC)
    doc, nurse, cardio = user("gs_doc"), user("nurse"), user("card_doc")
    robot = notify.save_robot(robot=None, dept_id=doc.dept_id, secret=ROBOT_SECRET, actor=user("admin"),
                              webhook_url=f"{fake_ding.base}/robot/send?access_token={ROBOT_TOKEN}")
    # two recipients of one department: one group message; a department without a robot: none
    notify.notify(user_ids=[doc.id, nurse.id, cardio.id], title="【异常】检验闭环 医嘱 CH-9", body="样本不足",
                  link="/loops/orders/CH-9", kind="alert")
    notify.notify(user_ids=[doc.id], title="个人证件提醒", kind="reminder")  # not an urgent kind: not in the group
    (message,) = pushes(db_session, "notify_robot")
    assert message.key == f"notify:robot:{doc.dept_id}" and "secret" not in json.dumps(message.payload)
    assert outbox.dispatch_due(now=utcnow())["sent"] == 1 and message.status == OutboxStatus.SENT
    (post,) = fake_ding.robot_posts
    assert post["sign_ok"] and abs(int(post["query"]["timestamp"]) - datetime.now(UTC).timestamp() * 1000) < 3.6e6
    assert post["body"] == {"msgtype": "text", "text": {
        "content": f"【异常】检验闭环 医嘱 CH-9\n样本不足\n{PUBLIC}/loops/orders/CH-9"}}

    # a wrong secret is refused by DingTalk: a failed attempt, retried
    notify.save_robot(robot=robot, dept_id=robot.dept_id, webhook_url=robot.webhook_url, secret="SECwrong",
                      actor=user("admin"))
    notify.notify(user_ids=[doc.id], title="【超时】再一条", kind="alert")
    result = outbox.dispatch_due(now=utcnow())
    assert result["retried"] == 1 and fake_ding.robot_posts[-1]["sign_ok"] is False
    assert "310000" in pushes(db_session, "notify_robot")[-1].last_error


def test_robot_sign_matches_the_documented_recipe():
    ts = 1700000000000
    expected = base64.b64encode(hmac.new(b"SECabc", b"1700000000000\nSECabc", hashlib.sha256).digest()).decode()
    assert unquote_plus(dingtalk.robot_sign("SECabc", ts)) == expected
    url = dingtalk.robot_url("https://oapi.dingtalk.com/robot/send?access_token=x", "SECabc", timestamp_ms=ts)
    assert url.startswith("https://oapi.dingtalk.com/robot/send?access_token=x&timestamp=1700000000000&sign=")
    assert dingtalk.robot_url("https://h/robot/send?access_token=x", None) == "https://h/robot/send?access_token=x"


# ---------------------------------------------------------------- a real caller: critical value escalation


def _loop_event(order_no: str, node: str, at: datetime) -> dict:
    return {"source": "LIS", "event_id": f"{order_no}-{node}", "order_no": order_no, "order_type": "critical_value",
            "node": node, "occurred_at": at.isoformat(), "operator": {"id": "N1001", "name": "吴护士"},
            "patient": {"id": "P1", "name": "王五"}, "dept": "1001"}


def test_critical_value_escalation_reaches_dingtalk_and_the_department_group(app, client, db_session,
                                                                             dingtalk_channel, user):
    from app.auth.services import create_api_token
    from app.loops import services as loops
    from app.loops.alerts import scan_alerts

    mao, head = user("mao"), user("gs_head")
    bind(mao, "dingtalk", "mao001")
    bind(head, "dingtalk", "gshead01")
    notify.save_robot(robot=None, dept_id=head.dept_id, secret=ROBOT_SECRET, actor=user("admin"),
                      webhook_url=f"{dingtalk_channel.base}/robot/send?access_token={ROBOT_TOKEN}")
    token = create_api_token(system="LIS")
    db_session.commit()
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=3)
    resp = client.post("/api/v1/loop-events", json={"events": [_loop_event("CH-CV1", "request", start)]},
                       headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200 and resp.get_json()["rejected"] == 0
    for _ in range(10):
        if loops.apply_pending().applied == 0:
            break
    scan_alerts(now=start + timedelta(minutes=31))

    escalations = [m for m in pushes(db_session) if m.payload["title"].startswith("【升级·")]
    assert {m.payload["account_id"] for m in escalations} == {"mao001", "gshead01"}
    assert all(m.payload["url"] == f"{PUBLIC}/loops/orders/CH-CV1" for m in escalations)
    assert pushes(db_session, "notify_robot")  # the ordering department's group hears it too
    for _ in range(5):
        if outbox.dispatch_due(now=utcnow())["claimed"] == 0:
            break
    assert {n["body"]["userid_list"] for n in dingtalk_channel.notices} >= {"mao001", "gshead01"}
    assert dingtalk_channel.robot_posts and all(p["sign_ok"] for p in dingtalk_channel.robot_posts)


# ---------------------------------------------------------------- pages


def test_own_settings_page_validates_in_chinese_and_saves_with_an_audit_row(client, login, db_session, user):
    csrf = login("gs_doc")
    page = client.get("/notifications/settings").get_data(as_text=True)
    assert 'id="account-form"' in page and "钉钉用户 ID" in page and "浙政钉账号 ID" in page
    assert "当前未启用外部通知渠道" in page

    resp = client.post("/notifications/settings", data={"csrf_token": csrf, "dingtalk": "张 三!", "zzd": "abc"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400
    assert "钉钉用户 ID 只能包含字母、数字及 _ . @ $ -，且不超过 64 个字符" in html
    assert "浙政钉账号 ID（accountId）应为不超过 20 位的数字" in html
    assert 'id="err-dingtalk"' in html and 'id="err-zzd"' in html and 'value="张 三!"' in html
    assert notify.accounts_of(user("gs_doc").id) == {}

    resp = client.post("/notifications/settings", data={"csrf_token": csrf, "dingtalk": " gsdoc01 ", "zzd": "10086"})
    assert resp.status_code == 302
    assert notify.accounts_of(user("gs_doc").id) == {"dingtalk": "gsdoc01", "zzd": "10086"}
    logs = list(db_session.scalars(select(AuditLog).where(AuditLog.action == "notify.account_changed",
                                                          AuditLog.entity_id == str(user("gs_doc").id))))
    assert len(logs) == 2 and all("10086" not in json.dumps(log.after) for log in logs)  # masked in the audit

    # someone else's account cannot be taken over; clearing a field unbinds it
    csrf = login("gs_doc2")
    resp = client.post("/notifications/settings", data={"csrf_token": csrf, "dingtalk": "gsdoc01", "zzd": ""})
    assert resp.status_code == 400 and "该钉钉账号已绑定到其他用户" in resp.get_data(as_text=True)
    csrf = login("gs_doc")
    assert client.post("/notifications/settings", data={"csrf_token": csrf, "dingtalk": "gsdoc01",
                                                        "zzd": ""}).status_code == 302
    assert notify.accounts_of(user("gs_doc").id) == {"dingtalk": "gsdoc01"}


def test_send_test_from_settings_goes_through_the_channel(client, login, db_session, dingtalk_channel, user):
    bind(user("gs_doc"), "dingtalk", "gsdoc01")
    db_session.commit()
    csrf = login("gs_doc")
    assert "当前外部通知渠道：钉钉工作通知" in client.get("/notifications/settings").get_data(as_text=True)
    assert client.post("/notifications/settings/test", data={"csrf_token": csrf}).status_code == 302
    (message,) = pushes(db_session)
    assert message.payload["title"] == "测试通知" and message.payload["account_id"] == "gsdoc01"


def test_admin_lists_accounts_masked_and_edits_them(client, login, db_session, user):
    bind(user("gs_doc"), "dingtalk", "gsdoc0123456")
    db_session.commit()
    login("gs_doc")
    assert client.get("/notifications/accounts").status_code == 403
    csrf = login("admin")
    html = client.get("/notifications/accounts?q=陈医生").get_data(as_text=True)
    assert f'id="user-{user("gs_doc").id}"' in html and "gs********56" in html and "gsdoc0123456" not in html
    doc2 = user("gs_doc2")
    resp = client.post(f"/notifications/accounts/{doc2.id}", data={"csrf_token": csrf, "dingtalk": "",
                                                                   "zzd": "1" * 21})
    assert resp.status_code == 400 and "应为不超过 20 位的数字" in resp.get_data(as_text=True)
    resp = client.post(f"/notifications/accounts/{doc2.id}", data={"csrf_token": csrf, "dingtalk": "", "zzd": "20001"})
    assert resp.status_code == 302
    row = db_session.scalar(select(NotifyAccount).where(NotifyAccount.user_id == doc2.id))
    assert (row.channel, row.account_id, row.updated_by_id) == ("zzd", "20001", user("admin").id)


def test_robot_pages_validate_and_never_show_the_secret(client, login, db_session, user):
    login("gs_doc")
    assert client.get("/notifications/robots").status_code == 403
    csrf = login("admin")
    dept_id = user("gs_doc").dept_id
    resp = client.post("/notifications/robots/new", data={"csrf_token": csrf, "dept_id": "", "webhook_url": "ftp://x",
                                                          "secret": "密钥", "is_active": "1"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "请选择科室" in html and "Webhook 地址应为 http(s):// 开头" in html
    assert "加签密钥应为不超过 128 个字符的可见英文字符" in html
    resp = client.post("/notifications/robots/new", data={
        "csrf_token": csrf, "dept_id": str(dept_id), "is_active": "1", "secret": ROBOT_SECRET,
        "webhook_url": f"https://oapi.dingtalk.com/robot/send?access_token={ROBOT_TOKEN}"})
    assert resp.status_code == 302
    html = client.get("/notifications/robots").get_data(as_text=True)
    assert "access_token=ro********56" in html and ROBOT_TOKEN not in html and ROBOT_SECRET not in html
    assert "已设置" in html
    robot_id = notify.robot_query().with_only_columns(DeptRobot.id)
    page = client.get(f"/notifications/robots/{db_session.scalar(robot_id)}").get_data(as_text=True)
    assert 'id="robot-form"' in page and ROBOT_SECRET not in page and "已设置：留空保持不变" in page
    assert 'id="robot-form"' in client.get("/notifications/robots/new").get_data(as_text=True)
    resp = client.post("/notifications/robots/new", data={
        "csrf_token": csrf, "dept_id": str(dept_id), "webhook_url": "https://oapi.dingtalk.com/robot/send?x=1"})
    assert resp.status_code == 400 and "已设置群机器人" in resp.get_data(as_text=True)
    log = db_session.scalar(select(AuditLog).where(AuditLog.action == "notify.robot_saved"))
    assert log is not None and ROBOT_SECRET not in json.dumps(log.after) and log.after["signed"] is True
