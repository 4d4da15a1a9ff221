"""The HIS check API: answers, input errors, authentication, and the cache seeing every change at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.db import utcnow
from app.outbox.models import OutboxMessage
from app.privileges import check as checker
from app.privileges import services
from app.privileges.models import GrantStatus
from tests.conftest import check_privilege

URL = "/api/v1/privileges/check"


pytestmark = pytest.mark.usefixtures("fresh_check_cache")


def test_an_effective_grant_is_allowed(client, his, user, item, make_grant, db_session):
    grant = make_grant(user("gs_doc"), item("BASIC-CONSULT"), days_left=100)
    db_session.commit()
    body = check_privilege(client, his, "D1002", "basic", "BASIC-CONSULT")
    assert body["allowed"] is True and body["reason"].startswith("已授权")
    assert body["grant"] == {"id": grant.id, "valid_from": grant.valid_from.isoformat(),
                             "valid_until": grant.valid_until.isoformat(), "status": "active", "expires_at": None}
    assert (body["staff_no"], body["category"], body["code"]) == ("D1002", "basic", "BASIC-CONSULT")


def test_surgery_is_checked_by_its_procedure_code_too(client, his, user, surgery_item, make_grant, db_session):
    op = surgery_item(3)
    make_grant(user("gs_doc"), op)
    db_session.commit()
    assert check_privilege(client, his, "D1002", "surgery", op.procedure_code)["allowed"] is True
    assert check_privilege(client, his, "D1002", "surgery", op.code)["allowed"] is True
    assert check_privilege(client, his, "D1003", "surgery", op.procedure_code)["reason"] == "未获得该项授权"


def test_denials_name_the_reason(client, his, user, item, make_grant, db_session):
    doc = user("gs_doc")
    make_grant(doc, item("BASIC-RX"), days_left=-1)  # active but past its last day
    make_grant(doc, item("SP-POCT"), status=GrantStatus.EXPIRED, days_left=-10)
    later = make_grant(doc, item("SP-EXAM"))
    later.valid_from = services.today() + timedelta(days=3)
    db_session.commit()
    cases = {
        ("D1002", "basic", "BASIC-DIAG"): "未获得该项授权",
        ("D1002", "basic", "BASIC-RX"): "授权已于",
        ("D1002", "special", "SP-POCT"): "授权已过期",
        ("D1002", "special", "SP-EXAM"): "尚未生效",
        ("NOBODY", "basic", "BASIC-DIAG"): "工号不存在",
        ("D1002", "basic", "NO-SUCH-ITEM"): "授权项目不存在",
        ("D1002", "nonsense", "BASIC-DIAG"): "授权类别不存在",
        ("D1002", "special", "BASIC-DIAG"): "授权项目不存在",  # right code, wrong category
    }
    for (staff_no, category, code), reason in cases.items():
        body = check_privilege(client, his, staff_no, category, code)
        assert body["allowed"] is False and reason in body["reason"], (code, body)
    assert check_privilege(client, his, "D1002", "basic", "BASIC-RX")["grant"]["status"] == "expired"
    assert check_privilege(client, his, "NOBODY", "basic", "BASIC-DIAG")["grant"] is None


def test_a_suspension_is_seen_by_the_very_next_check(client, his, user, item, make_grant, db_session):
    grant = make_grant(user("gs_doc"), item("BASIC-CONSULT"))
    db_session.commit()
    assert check_privilege(client, his, "D1002", "basic", "BASIC-CONSULT")["allowed"] is True  # the index is now loaded
    services.suspend_grant(grant=grant, reason="医疗安全事件调查期间暂停", actor=user("mao"))
    db_session.commit()
    body = check_privilege(client, his, "D1002", "basic", "BASIC-CONSULT")
    assert body["allowed"] is False and body["reason"] == "授权已暂停：医疗安全事件调查期间暂停"
    assert body["grant"]["status"] == "suspended"
    services.resume_grant(grant=grant, reason="调查结束", actor=user("mao"))
    db_session.commit()
    assert check_privilege(client, his, "D1002", "basic", "BASIC-CONSULT")["allowed"] is True
    services.revoke_grant(grant=grant, reason="考核不合格", actor=user("mao"))
    db_session.commit()
    assert check_privilege(client, his, "D1002", "basic", "BASIC-CONSULT")["reason"] == "授权已停止：考核不合格"


def test_new_grants_and_expiry_are_seen_at_once(client, his, user, item, make_grant, db_session):
    assert check_privilege(client, his, "D1003", "basic", "BASIC-AUXDIAG")["allowed"] is False
    grant = make_grant(user("gs_doc2"), item("BASIC-AUXDIAG"), days_left=-1)
    grant.valid_until = services.today() + timedelta(days=10)
    db_session.commit()
    assert check_privilege(client, his, "D1003", "basic", "BASIC-AUXDIAG")["allowed"] is True
    services.expire_grants(on=services.today() + timedelta(days=11))
    db_session.commit()
    assert check_privilege(client, his, "D1003", "basic", "BASIC-AUXDIAG")["reason"].startswith("授权已过期")


def test_departed_or_disabled_physicians_are_not_allowed(client, his, user, item, make_grant, db_session):
    doc, other = user("gs_doc"), user("card_doc")
    make_grant(doc, item("BASIC-DIAG"))
    make_grant(other, item("BASIC-DIAG"))
    db_session.commit()
    assert check_privilege(client, his, "D1002", "basic", "BASIC-DIAG")["allowed"] is True
    assert check_privilege(client, his, "D2002", "basic", "BASIC-DIAG")["allowed"] is True
    other.is_active = False  # disabled in user administration: no privilege service involved
    db_session.commit()
    assert check_privilege(client, his, "D2002", "basic", "BASIC-DIAG")["reason"] == "该医师账号已停用"
    doc.departed_at = utcnow()
    services.revoke_all_for_departure(user=doc, actor=user("mao"))
    db_session.commit()
    body = check_privilege(client, his, "D1002", "basic", "BASIC-DIAG")
    assert body["allowed"] is False and "离职" in body["reason"]
    pushed = db_session.scalars(select(OutboxMessage).where(OutboxMessage.channel == "his")).all()
    assert [m.payload["status"] for m in pushed if m.payload["staff_no"] == "D1002"] == ["revoked"]


def test_batch_answers_in_order(client, his, user, item, make_grant, db_session):
    make_grant(user("gs_doc"), item("BASIC-RX"))
    db_session.commit()
    checks = [{"staff_no": "D1002", "category": "basic", "code": "BASIC-RX"},
              {"staff_no": "D1002", "category": "basic", "code": "BASIC-DIAG"},
              {"staff_no": "X", "category": "basic", "code": "BASIC-RX"}]
    resp = client.post(URL, json={"checks": checks}, headers=his)
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["count"] == 3 and [r["allowed"] for r in body["results"]] == [True, False, False]
    assert [r["code"] for r in body["results"]] == ["BASIC-RX", "BASIC-DIAG", "BASIC-RX"]


def test_bad_input_is_400_with_field_paths(client, his):
    resp = client.get(URL, query_string={"staff_no": "D1002", "category": " "}, headers=his)
    assert resp.status_code == 400
    errors = {e["path"]: e["message"] for e in resp.get_json()["error"]["errors"]}
    assert errors == {"category": "必填：授权类别编码", "code": "必填：授权项目编码"}
    resp = client.get(URL, query_string={"staff_no": "D" * 33, "category": "basic", "code": "x"}, headers=his)
    assert [e["path"] for e in resp.get_json()["error"]["errors"]] == ["staff_no"]

    cases = [
        ({"checks": []}, ["checks"]),
        ({"nothing": 1}, ["checks"]),
        ({"checks": [{"staff_no": "D1002", "category": "basic", "code": "BASIC-RX"}] * 501}, ["checks"]),
        ({"checks": [{"staff_no": "D1002", "category": "basic", "code": "BASIC-RX"}, "x",
                     {"staff_no": 7, "category": "basic"}]}, ["checks/1", "checks/2/staff_no", "checks/2/code"]),
    ]
    for body, paths in cases:
        resp = client.post(URL, json=body, headers=his)
        assert resp.status_code == 400, body
        assert [e["path"] for e in resp.get_json()["error"]["errors"]] == paths
    resp = client.post(URL, data="not json", headers=his | {"Content-Type": "application/json"})
    assert resp.status_code == 400
    ok = client.post(URL, json={"checks": [{"staff_no": "D1002", "category": "basic", "code": "BASIC-RX"}] * 500},
                     headers=his)
    assert ok.status_code == 200 and ok.get_json()["count"] == 500


def test_without_a_valid_token_it_is_401(client, db_session):
    query = {"staff_no": "D1002", "category": "basic", "code": "BASIC-RX"}
    assert client.get(URL, query_string=query).status_code == 401
    resp = client.get(URL, query_string=query, headers={"Authorization": "Bearer ml_wrong"})
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "unauthorized"
    assert client.post(URL, json={"checks": []}, headers={"Authorization": "Bearer ml_wrong"}).status_code == 401


def test_a_logged_in_user_needs_privileges_view(client, login, db_session):
    query = {"staff_no": "D1002", "category": "basic", "code": "BASIC-RX"}
    login("nurse")
    assert client.get(URL, query_string=query).status_code == 403
    login("gs_doc")
    assert client.get(URL, query_string=query).status_code == 200


def test_emergency_grants_are_allowed_to_the_minute(app, db_session, user, item, fake_start):
    start = utcnow()
    emergency = services.create_emergency_grant(holder=user("gs_doc2"), item=item("SP-ABX-3"), hours=2,
                                                reason="抢救：脓毒性休克，无高级职称医师在场", actor=user("mao"),
                                                now=start)
    db_session.commit()
    with app.test_request_context():
        index = checker.cache_for(app).current()
        assert index is not None
        ok = checker.check_in_index(index, "D1003", "special", "SP-ABX-3", now=start + timedelta(minutes=119))
        late = checker.check_in_index(index, "D1003", "special", "SP-ABX-3", now=start + timedelta(minutes=120))
    assert ok.allowed and ok.reason.startswith("紧急授权，有效至")
    assert not late.allowed and "紧急授权已于" in late.reason
    assert ok.as_dict()["grant"]["expires_at"] == emergency.expires_at.isoformat()


def test_cached_and_uncached_answers_agree(app, db_session, user, item, surgery_item, make_grant):
    doc = user("gs_doc")
    make_grant(doc, item("BASIC-RX"))
    make_grant(doc, item("BASIC-DIAG"), days_left=-2)
    make_grant(doc, item("SP-POCT"), status=GrantStatus.SUSPENDED)
    make_grant(doc, item("SP-EXAM"), status=GrantStatus.REVOKED)
    op = surgery_item(2)
    make_grant(doc, op)
    user("card_doc").departed_at = utcnow()
    db_session.commit()
    keys = [("D1002", "basic", "BASIC-RX"), ("D1002", "basic", "BASIC-DIAG"), ("D1002", "special", "SP-POCT"),
            ("D1002", "special", "SP-EXAM"), ("D1002", "surgery", op.procedure_code), ("D1002", "surgery", op.code),
            ("D2002", "basic", "BASIC-RX"), ("ZZ", "basic", "BASIC-RX"), ("D1002", "x", "y"),
            ("D1002", "basic", "NOPE"), ("D1002", "basic", "BASIC-CONSULT")]
    now = datetime.now(UTC)
    with app.test_request_context():
        index = checker.load_index()
        cached = [checker.check_in_index(index, *k, now=now) for k in keys]
        direct = [checker.check_uncached(*k, now=now) for k in keys]
    assert cached == direct
    assert [r.allowed for r in cached] == [True, False, False, False, True, True, False, False, False, False, False]


def test_the_switch_turns_the_index_off(app, db_session, client, his, user, item, make_grant, monkeypatch):
    cache = checker.cache_for(app)
    monkeypatch.setattr(cache, "enabled", False)
    before = cache.reloads
    make_grant(user("gs_doc"), item("BASIC-RX"))
    db_session.commit()
    assert check_privilege(client, his, "D1002", "basic", "BASIC-RX")["allowed"] is True
    assert cache.reloads == before


def test_an_unreadable_redis_stamp_falls_back_to_the_database(app, db_session, client, his, user, item,
                                                              make_grant, monkeypatch):
    cache = checker.cache_for(app)
    monkeypatch.setattr(cache, "redis_url", "redis://127.0.0.1:1/0")  # nothing listens there
    monkeypatch.setattr(cache, "_redis", None)
    make_grant(user("gs_doc"), item("BASIC-RX"))
    db_session.commit()
    assert check_privilege(client, his, "D1002", "basic", "BASIC-RX")["allowed"] is True


def test_the_stamp_lives_in_redis_when_configured():
    assert checker.stamp_redis_url({"REDIS_URL": "redis://r/1"}) == "redis://r/1"
    assert checker.stamp_redis_url({"REDIS_URL": "redis://r/1", "PRIVILEGE_CHECK_REDIS_URL": "redis://p/2"}) == \
        "redis://p/2"
    assert checker.stamp_redis_url({"REDIS_URL": None}) is None


def test_grant_changes_are_pushed_to_his_with_the_payload(db_session, user, item, make_grant):
    grant = make_grant(user("gs_doc"), item("BASIC-CONSULT"))
    services.suspend_grant(grant=grant, reason="暂停原因", actor=user("mao"))
    message = db_session.scalar(select(OutboxMessage).where(OutboxMessage.key == services.grant_key(grant)))
    p = message.payload
    assert (message.channel, message.event) == ("his", "privilege.changed")
    assert {k: p[k] for k in ("staff_no", "code", "category", "grade", "status", "valid_from", "valid_until",
                              "reason")} == {
        "staff_no": "D1002", "code": "BASIC-CONSULT", "category": "basic", "grade": None, "status": "suspended",
        "valid_from": grant.valid_from.isoformat(), "valid_until": grant.valid_until.isoformat(), "reason": "暂停原因"}


# ---------------------------------------------------------------- two app instances sharing the database (and Redis)


@pytest.fixture(scope="module")
def shared_url():
    import redis

    from tests.conftest import REDIS_URL, own_database

    with own_database("privcache") as (_setup, url):
        redis.Redis.from_url(REDIS_URL).delete(checker.REDIS_STAMP_KEY)  # the rebuilt database starts again at 0
        yield url


def _instance(url: str, redis_url: str | None):
    from app import create_app
    from tests.conftest import make_config

    return create_app(make_config(url, PRIVILEGE_CHECK_REDIS_URL=redis_url))


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_a_change_in_one_instance_is_seen_by_the_next_check_in_another(shared_url, backend):
    from app.auth.models import User
    from app.auth.services import create_api_token
    from app.db import db
    from app.privileges.models import Grant, PrivilegeItem
    from tests.conftest import REDIS_URL

    redis_url = REDIS_URL if backend == "redis" else None
    writer, reader = _instance(shared_url, redis_url), _instance(shared_url, redis_url)
    with writer.app_context():
        doc = db.session.scalar(select(User).where(User.username == "orth_doc"))
        mao = db.session.scalar(select(User).where(User.username == "mao"))
        item = db.session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == "SP-ONC-1"))
        for old in db.session.scalars(select(Grant).where(Grant.user_id == doc.id, Grant.item_id == item.id)):
            old.status = GrantStatus.REVOKED  # leftovers of the other backend's run
        doc.departed_at, doc.is_active = None, True
        token = create_api_token(system=f"HIS-{backend}")
        db.session.commit()
        doc_id, mao_id, item_id = doc.id, mao.id, item.id

    http = reader.test_client()
    headers = {"Authorization": f"Bearer {token}"}

    def allowed() -> tuple[bool, str]:
        body = http.get(URL, query_string={"staff_no": "D3001", "category": "special", "code": "SP-ONC-1"},
                        headers=headers).get_json()
        return body["allowed"], body["reason"]

    def change(fn) -> None:
        with writer.app_context():
            fn(db.session.get(User, doc_id), db.session.get(User, mao_id))
            db.session.commit()
            db.session.remove()

    assert allowed()[0] is False  # the reader has now loaded its index

    def grant(doc, mao):
        db.session.add(Grant(user_id=doc.id, item_id=item_id, status=GrantStatus.ACTIVE,
                             valid_from=services.today(), valid_until=services.today() + timedelta(days=30)))

    change(grant)
    assert allowed()[0] is True

    def suspend(doc, mao):
        g = db.session.scalar(select(Grant).where(Grant.user_id == doc.id, Grant.item_id == item_id,
                                                  Grant.status == GrantStatus.ACTIVE.value))
        services.suspend_grant(grant=g, reason="跨实例暂停", actor=mao)

    change(suspend)
    assert allowed() == (False, "授权已暂停：跨实例暂停")

    def resume(doc, mao):
        g = db.session.scalar(select(Grant).where(Grant.user_id == doc.id, Grant.item_id == item_id,
                                                  Grant.status == GrantStatus.SUSPENDED.value))
        services.resume_grant(grant=g, reason="恢复", actor=mao)

    change(resume)
    assert allowed()[0] is True

    def depart(doc, mao):
        doc.departed_at = utcnow()
        services.revoke_all_for_departure(user=doc, actor=mao)

    change(depart)
    assert allowed() == (False, "该医师已离职，医疗权限已全部停止")
    with reader.app_context():
        reloads = checker.cache_for(reader).reloads
    assert allowed()[0] is False  # nothing changed: answered from the same index
    with reader.app_context():
        assert checker.cache_for(reader).reloads == reloads
    for application in (writer, reader):
        with application.app_context():
            db.engine.dispose()


_WRITER = """
import sys
from datetime import timedelta
from sqlalchemy import select
from app import create_app
from app.auth.models import User
from app.db import db
from app.privileges import services
from app.privileges.models import Grant, GrantStatus, PrivilegeItem
from tests.conftest import make_config

app = create_app(make_config(sys.argv[1], PRIVILEGE_CHECK_REDIS_URL=sys.argv[2]))
with app.app_context():
    doc = db.session.scalar(select(User).where(User.username == "orth_doc"))
    item = db.session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == "SP-ONC-2"))
    db.session.add(Grant(user_id=doc.id, item_id=item.id, status=GrantStatus.ACTIVE, valid_from=services.today(),
                         valid_until=services.today() + timedelta(days=30)))
    db.session.commit()
"""


def test_a_commit_in_another_process_reaches_the_listening_reader_through_pubsub(shared_url, monkeypatch):
    """The reader reads no Redis key per check: the version arrives on the channel. The key re-read is pushed far
    away and the reader's own Redis client fails on use, so only the published message can bring the change."""
    import subprocess
    import sys
    import time as clock

    from app.auth.models import User
    from app.auth.services import create_api_token
    from app.db import db
    from app.privileges.models import Grant, PrivilegeItem
    from tests.conftest import REDIS_URL

    redis_url = REDIS_URL.rsplit("/", 1)[0] + "/4"  # its own channel: no listener of this process uses it yet
    monkeypatch.setattr(checker, "RESYNC_SECONDS", 3600.0)
    import redis

    redis.Redis.from_url(redis_url).delete(checker.REDIS_STAMP_KEY)
    reader = _instance(shared_url, redis_url)
    with reader.app_context():
        doc = db.session.scalar(select(User).where(User.username == "orth_doc"))
        item = db.session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == "SP-ONC-2"))
        for old in db.session.scalars(select(Grant).where(Grant.user_id == doc.id, Grant.item_id == item.id)):
            old.status = GrantStatus.REVOKED
        doc.departed_at, doc.is_active = None, True
        token = create_api_token(system="HIS-pubsub")
        db.session.commit()
    http = reader.test_client()

    def allowed() -> bool:
        return http.get(URL, query_string={"staff_no": "D3001", "category": "special", "code": "SP-ONC-2"},
                        headers={"Authorization": f"Bearer {token}"}).get_json()["allowed"]

    assert allowed() is False  # loads the index and starts the listener
    listener = checker.listener_for(redis_url)
    for _ in range(200):
        if listener.live:
            break
        clock.sleep(0.05)
    assert listener.live
    with reader.app_context():
        cache = checker.cache_for(reader)

        class NoKeyReads:
            def __getattr__(self, name):
                raise AssertionError(f"the reader asked Redis directly ({name})")

        monkeypatch.setattr(cache, "_redis", NoKeyReads())
        before, patches = cache.read_stamp(), cache.patches
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", _WRITER, shared_url, redis_url], cwd=root, check=True, timeout=120)
    seen = False
    for _ in range(200):  # the publish arrives within milliseconds; allow a loaded machine 10 s
        if allowed():
            seen = True
            break
        clock.sleep(0.05)
    assert seen
    with reader.app_context():
        assert cache.read_stamp() > before
        assert cache.patches == patches + 1  # answered from the patched index, not from a database fallback
        db.engine.dispose()


def test_a_grant_change_patches_only_that_physician_and_a_catalogue_change_reloads_all(
        app, db_session, client, his, user, item, make_grant):
    make_grant(user("gs_doc"), item("BASIC-RX"))
    db_session.commit()
    cache = checker.cache_for(app)
    assert check_privilege(client, his, "D1002", "basic", "BASIC-RX")["allowed"] is True
    full, patches = cache.full_reloads, cache.patches
    other = make_grant(user("card_doc"), item("BASIC-RX"))
    db_session.commit()
    assert check_privilege(client, his, "D2002", "basic", "BASIC-RX")["allowed"] is True
    assert check_privilege(client, his, "D1002", "basic", "BASIC-RX")["allowed"] is True  # untouched entries survive
    assert (cache.full_reloads, cache.patches) == (full, patches + 1)
    from app.privileges.models import PrivilegeIndexChange

    logged = db_session.scalars(select(PrivilegeIndexChange.user_id).order_by(PrivilegeIndexChange.id.desc())
                                .limit(1)).all()
    assert logged == [other.user_id]
    item("BASIC-RX").is_active = False
    db_session.commit()
    assert check_privilege(client, his, "D2002", "basic", "BASIC-RX")["reason"] == "该授权项目已停用"
    assert cache.full_reloads == full + 1


def test_token_checks_take_the_short_path_and_answer_as_flask_does(app, client, his, user, item, make_grant,
                                                                  db_session, monkeypatch):
    """The WSGI short path answers well-formed token GETs byte for byte as the Flask view does; anything else
    (bad parameters, no or a bad token, POST) falls through to Flask's usual answers."""
    from app.privileges.fastpath import CheckFastPath

    fast = app.extensions["privilege_check_fastpath"]
    assert isinstance(fast, CheckFastPath)
    make_grant(user("gs_doc"), item("BASIC-RX"))
    db_session.commit()
    query = {"staff_no": "D1002", "category": "basic", "code": "BASIC-RX"}
    before = fast.answered
    short = client.get(URL, query_string=query, headers=his)
    assert fast.answered == before + 1
    assert short.get_json()["allowed"] is True
    assert short.headers["Content-Type"] == "application/json"
    assert short.headers["X-Content-Type-Options"] == "nosniff"
    with monkeypatch.context() as patch:  # the same request through the Flask view: the same bytes
        patch.setattr(CheckFastPath, "__call__", lambda self, environ, start: self.next(environ, start))
        assert client.get(URL, query_string=query, headers=his).get_data() == short.get_data()
    before = fast.answered
    bad = client.get(URL, query_string={"staff_no": "D1002", "category": "basic"}, headers=his)
    assert bad.status_code == 400 and "code" in bad.get_data(as_text=True)
    assert client.get(URL, query_string=query, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get(URL, query_string=query).status_code == 401
    assert fast.answered == before
