"""Privilege management for 医务处: suspend/resume/stop pages, emergency grants through the engine, batch grants,
expiry and reminders, statistics — and 403 for everyone else."""

from __future__ import annotations

from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path

import pytest
from openpyxl import load_workbook
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.core.timefmt import SHANGHAI
from app.db import utcnow
from app.errors import InvalidTransition, ValidationFailed
from app.notify.models import Notification
from app.outbox.models import OutboxMessage
from app.privileges import services
from app.privileges.models import (
    EmergencyGrant,
    Grant,
    GrantReminder,
    GrantStatus,
    PrivilegeApplication,
    PrivilegeApplicationItem,
)

ROOT = Path(__file__).resolve().parents[2]
from app.workflow import models as wf_models  # noqa: E402
from app.workflow import services as wf  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_check_cache(app):
    """Each test starts with an empty index: the rolled-back transactions of earlier tests reuse version numbers
    that an index loaded by them would wrongly take for current (in production versions only ever grow)."""
    from app.privileges import check

    app.extensions[check.EXTENSION] = check.CheckCache(app)


def _his_messages(db_session, grant) -> list[OutboxMessage]:
    return list(db_session.scalars(select(OutboxMessage).where(OutboxMessage.key == services.grant_key(grant))
                                   .order_by(OutboxMessage.id)))


def _count(db_session, model) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


# ---------------------------------------------------------------- permissions


def test_management_pages_are_403_for_a_physician(client, login, user, item, make_grant, db_session):
    grant = make_grant(user("gs_doc"), item("BASIC-RX"))
    db_session.commit()
    token = login("gs_doc")
    for url in ("/privileges/manage/grants", "/privileges/manage/grants/export.xlsx",
                f"/privileges/manage/grants/{grant.id}", "/privileges/manage/emergency",
                "/privileges/manage/emergency/new", "/privileges/manage/batch", "/privileges/manage/stats",
                "/privileges/manage/stats/export.xlsx"):
        assert client.get(url).status_code == 403, url
    for url in (f"/privileges/manage/grants/{grant.id}/suspend", f"/privileges/manage/grants/{grant.id}/revoke",
                "/privileges/manage/emergency/new", "/privileges/manage/batch"):
        assert client.post(url, data={"csrf_token": token, "reason": "x"}).status_code == 403, url
    db_session.refresh(grant)
    assert grant.status == GrantStatus.ACTIVE


def test_dept_head_without_manage_permission_is_refused_too(client, login):
    login("gs_head")
    assert client.get("/privileges/manage/grants").status_code == 403


# ---------------------------------------------------------------- suspend / resume / stop


def test_mao_suspends_resumes_and_stops_a_grant_with_reasons(client, login, user, item, make_grant, db_session):
    grant = make_grant(user("gs_doc"), item("BASIC-CONSULT"))
    db_session.commit()
    token = login("mao")
    html = client.get("/privileges/manage/grants", query_string={"q": "陈医生"}).get_data(as_text=True)
    assert "会诊权限" in html and f"/privileges/manage/grants/{grant.id}" in html
    page = client.get(f"/privileges/manage/grants/{grant.id}").get_data(as_text=True)
    assert "立即暂停" in page and "停止授权" in page and "恢复授权" not in page

    resp = client.post(f"/privileges/manage/grants/{grant.id}/suspend", data={"csrf_token": token, "reason": " "})
    assert resp.status_code == 400 and "请填写暂停原因" in resp.get_data(as_text=True)
    db_session.refresh(grant)
    assert grant.status == GrantStatus.ACTIVE and _his_messages(db_session, grant) == []

    resp = client.post(f"/privileges/manage/grants/{grant.id}/suspend",
                       data={"csrf_token": token, "reason": "病历质量问题待查"})
    assert resp.status_code == 302
    db_session.refresh(grant)
    assert (grant.status, grant.revoked_reason, grant.revoked_by_id) == ("suspended", "病历质量问题待查", user("mao").id)
    page = client.get(f"/privileges/manage/grants/{grant.id}").get_data(as_text=True)
    assert "恢复授权" in page and "立即暂停" not in page and "暂停医疗权限" in page  # history shows the action

    assert client.post(f"/privileges/manage/grants/{grant.id}/suspend",
                       data={"csrf_token": token, "reason": "再次"}).status_code == 409
    assert client.post(f"/privileges/manage/grants/{grant.id}/resume",
                       data={"csrf_token": token, "reason": "核查无问题"}).status_code == 302
    db_session.refresh(grant)
    assert grant.status == GrantStatus.ACTIVE and grant.revoked_reason is None
    assert client.post(f"/privileges/manage/grants/{grant.id}/revoke",
                       data={"csrf_token": token, "reason": "定期考核不合格"}).status_code == 302
    db_session.refresh(grant)
    assert grant.status == GrantStatus.REVOKED
    assert client.post(f"/privileges/manage/grants/{grant.id}/resume",
                       data={"csrf_token": token, "reason": "x"}).status_code == 409

    assert [m.payload["status"] for m in _his_messages(db_session, grant)] == ["suspended", "active", "revoked"]
    actions = list(db_session.scalars(select(AuditLog.action).where(AuditLog.entity_type == "privilege_grants",
                                                                    AuditLog.entity_id == str(grant.id))
                                      .order_by(AuditLog.id)))
    assert actions == ["privilege.grant_suspended", "privilege.grant_resumed", "privilege.grant_revoked"]
    titles = list(db_session.scalars(select(Notification.title).where(Notification.user_id == user("gs_doc").id)))
    assert any("已暂停" in t for t in titles) and any("已停止" in t for t in titles)


def test_a_suspended_grant_past_its_validity_cannot_be_resumed(db_session, user, item, make_grant):
    grant = make_grant(user("gs_doc"), item("BASIC-CONSULT"), days_left=5)
    services.suspend_grant(grant=grant, reason="暂停", actor=user("mao"))
    with pytest.raises(InvalidTransition, match="重新申请"):
        services.resume_grant(grant=grant, reason="恢复", actor=user("mao"), on=services.today() + timedelta(days=6))


def test_approved_application_grants_are_pushed_to_his(db_session, user, item, make_grant, fake_start):
    doc, rx = user("gs_doc"), item("BASIC-RX")
    old = make_grant(doc, rx, days_left=20)
    application = services.apply(applicant=doc, item_ids=[rx.id], reason="再授权")
    from types import SimpleNamespace

    services.finalize_application(instance=SimpleNamespace(id=1, status="completed", business_key=application.number),
                                  data={"application_id": application.id, "final_decision": "approved"},
                                  actor=user("mao"))
    messages = _his_messages(db_session, old)
    assert [(m.payload["grant_id"], m.payload["status"]) for m in messages] == [
        (old.id, "expired"), (messages[1].payload["grant_id"], "active")]
    assert messages[1].payload["reason"] == f"申请 {application.number} 审批通过"


# ---------------------------------------------------------------- emergency grants through the engine


@pytest.fixture
def deployed(db_session, user):
    from app.forms import services as forms

    forms.sync_files(ROOT / "forms")
    return wf.upload_version(
        bpmn_xml=(ROOT / "processes" / "privilege_emergency_review.bpmn").read_text(encoding="utf-8"),
        actor=user("flow"), note="紧急授权流程测试")


def _ready(instance_id):
    return list(wf.db.session.scalars(select(wf_models.HumanTask).where(
        wf_models.HumanTask.instance_id == instance_id, wf_models.HumanTask.status == "ready")))


def test_emergency_grant_page_then_review_keeps_it(deployed, client, login, user, item, db_session):
    token = login("mao")
    assert "办理紧急授权" in client.get("/privileges/manage/emergency/new").get_data(as_text=True)
    resp = client.post("/privileges/manage/emergency/new",
                       data={"csrf_token": token, "staff_no": "D1003", "item_code": "SP-ABX-3", "hours": "24",
                             "reason": "抢救：重症肺炎，特殊使用级抗菌药物，无高级职称医师在场", "patient_ref": "ZY0001"})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    emergency = db_session.scalar(select(EmergencyGrant).order_by(EmergencyGrant.id.desc()).limit(1))
    grant = emergency.grant
    assert grant.status == GrantStatus.ACTIVE and grant.user_id == user("gs_doc2").id
    assert emergency.expires_at - emergency.starts_at == timedelta(hours=24)
    assert _his_messages(db_session, grant)[0].payload["emergency"] is True

    [task] = _ready(emergency.review_instance_id)
    assert (task.spec_name, task.role_code) == ("mao_review", "mao")
    page = client.get(f"/tasks/{task.id}").get_data(as_text=True)
    assert emergency.number in page and "重症肺炎" in page  # the context renderer above the form
    with pytest.raises(ValidationFailed):
        wf.complete(task_id=task.id, actor=user("mao"), data={"decision": "reject"})  # comment required
    wf.complete(task_id=task.id, actor=user("mao"), data={"decision": "approve", "emergency_confirmed": True})
    db_session.refresh(emergency)
    assert emergency.review_status == "kept" and emergency.reviewed_by_id == user("mao").id
    assert grant.status == GrantStatus.ACTIVE and _ready(emergency.review_instance_id) == []
    html = client.get("/privileges/manage/emergency").get_data(as_text=True)
    assert emergency.number in html and "审核维持至到期" in html


def test_emergency_review_rejection_revokes_at_once(deployed, db_session, user, item):
    emergency = services.create_emergency_grant(holder=user("gs_doc2"), item=item("EM-SURG"), hours=72,
                                                reason="夜间急诊剖腹探查，上级医师不在院", actor=user("mao"))
    [task] = _ready(emergency.review_instance_id)
    wf.complete(task_id=task.id, actor=user("mao"), data={"decision": "reject", "comment": "未达紧急情形"})
    db_session.refresh(emergency)
    grant = emergency.grant
    assert emergency.review_status == "revoked" and grant.status == GrantStatus.REVOKED
    assert grant.revoked_reason == "紧急授权事后审核未通过：未达紧急情形"
    assert [m.payload["status"] for m in _his_messages(db_session, grant)] == ["active", "revoked"]
    instance = db_session.get(wf_models.ProcessInstance, emergency.review_instance_id)
    assert instance.status == "completed"


def test_emergency_grants_expire_to_the_hour(db_session, user, item, fake_start):
    start = utcnow() - timedelta(hours=3)
    emergency = services.create_emergency_grant(holder=user("gs_doc2"), item=item("SP-ABX-3"), hours=2,
                                                reason="抢救", actor=user("mao"), now=start)
    assert services.expire_emergency_grants(now=start + timedelta(hours=1)) == 0
    assert services.expire_emergency_grants() == 1
    assert emergency.grant.status == GrantStatus.EXPIRED and emergency.grant.revoked_reason == "紧急授权时限届满"
    assert services.expire_emergency_grants() == 0


def test_emergency_grant_is_validated(db_session, user, item, make_grant, fake_start):
    mao = user("mao")
    with pytest.raises(ValidationFailed) as exc:
        services.create_emergency_grant(holder=user("gs_doc"), item=None, hours="100", reason=" ", actor=mao)
    assert {e["path"] for e in exc.value.errors} == {"item_code", "hours", "reason"}
    make_grant(user("gs_doc"), item("SP-ABX-2"))
    with pytest.raises(ValidationFailed, match="提交的数据有误") as exc:
        services.create_emergency_grant(holder=user("gs_doc"), item=item("SP-ABX-2"), hours=8, reason="x", actor=mao)
    assert "已持有此项授权" in exc.value.errors[0]["message"]
    suspended = make_grant(user("gs_doc"), item("SP-ONC-2"), status=GrantStatus.SUSPENDED)
    with pytest.raises(ValidationFailed) as exc:
        services.create_emergency_grant(holder=suspended.user, item=suspended.item, hours=8, reason="x", actor=mao)
    assert "暂停" in exc.value.errors[0]["message"]
    leaver = user("card_doc")
    leaver.departed_at = utcnow()
    with pytest.raises(ValidationFailed) as exc:
        services.create_emergency_grant(holder=leaver, item=item("SP-ABX-3"), hours=8, reason="x", actor=mao)
    assert exc.value.errors[0]["path"] == "staff_no"
    assert fake_start == []


def test_emergency_form_errors_are_400_and_change_nothing(client, login, db_session):
    before = _count(db_session, EmergencyGrant)
    token = login("mao")
    resp = client.post("/privileges/manage/emergency/new",
                       data={"csrf_token": token, "staff_no": "NOPE", "item_code": "SP-ABX-3", "hours": "73",
                             "reason": ""})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "医师不存在" in html and "1–72 小时" in html and "“紧急授权理由”为必填项" in html
    assert _count(db_session, EmergencyGrant) == before


# ---------------------------------------------------------------- batch grants


def test_batch_grant_reports_each_row_and_is_all_or_nothing(client, login, user, item, make_grant, db_session):
    gs = user("gs_doc").dept_id
    make_grant(user("gs_doc"), item("BASIC-CONSULT"), days_left=400)  # held: skipped
    expiring = make_grant(user("gs_doc2"), item("BASIC-CONSULT"), days_left=20)  # renewal window: replaced
    before = _count(db_session, Grant)
    token = login("mao")
    html = client.get("/privileges/manage/batch", query_string={"dept": gs}).get_data(as_text=True)
    assert "陈医生" in html and "刘医生" in html and "孙医生" not in html

    ids = [str(user("gs_doc").id), str(user("gs_doc2").id), str(user("card_doc").id)]
    form = {"csrf_token": token, "dept_id": str(gs), "user_ids": ids, "item_codes": "BASIC-CONSULT\nNO-SUCH",
            "reason": "2026 年度科室考核合格", "action": "confirm"}
    resp = client.post("/privileges/manage/batch", data=form)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "授权项目不存在" in html and "不属于普外科" in html
    assert _count(db_session, Grant) == before

    form |= {"user_ids": ids[:2], "item_codes": "BASIC-CONSULT, BASIC-AUXDIAG", "action": "preview"}
    resp = client.post("/privileges/manage/batch", data=form)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "确认授予" in html and "跳过" in html and "再授权" in html
    assert _count(db_session, Grant) == before

    resp = client.post("/privileges/manage/batch", data=form | {"action": "confirm"})
    assert resp.status_code == 200 and "授予结果" in resp.get_data(as_text=True)
    assert _count(db_session, Grant) == before + 3  # 2 × AUXDIAG + the renewal of gs_doc2's CONSULT
    db_session.refresh(expiring)
    assert expiring.status == GrantStatus.EXPIRED
    new = db_session.scalars(select(Grant).where(Grant.user_id == user("gs_doc2").id, Grant.status == "active")).all()
    assert {g.item.code for g in new} == {"BASIC-CONSULT", "BASIC-AUXDIAG"}
    assert all(g.granted_by_id == user("mao").id for g in new)
    assert db_session.scalar(select(AuditLog).where(AuditLog.action == "privilege.batch_granted")) is not None
    assert _count(db_session, OutboxMessage) >= 4  # 3 new grants + the replaced one


def test_batch_plan_field_errors(db_session, user):
    plan = services.plan_batch_grant(viewer=user("mao"), dept_id=None, user_ids=["x"], item_codes=[], reason="",
                                     valid_from="2020-01-01")
    assert set(plan.errors) == {"dept_id", "user_ids/0", "user_ids", "item_codes", "reason", "valid_from"}
    assert plan.has_errors and plan.rows == []


# ---------------------------------------------------------------- expiry and reminders


def test_reminders_go_once_per_grant_and_threshold(db_session, user, item, make_grant):
    doc = user("gs_doc")
    in_45 = make_grant(doc, item("BASIC-RX"), days_left=45)
    in_20 = make_grant(doc, item("BASIC-DIAG"), days_left=20)
    make_grant(doc, item("BASIC-CONSULT"), days_left=100)  # too far
    make_grant(doc, item("SP-POCT"), days_left=10, status=GrantStatus.SUSPENDED)  # not active
    today = services.today()

    def notes(user_id, needle="将于"):
        return [t for t in db_session.scalars(select(Notification.title).where(Notification.user_id == user_id))
                if needle in t]

    assert services.remind_expiring(on=today) == {"60": 1, "30": 1}
    assert services.remind_expiring(on=today) == {"60": 0, "30": 0}  # idempotent
    assert len(notes(doc.id)) == 2
    assert len(notes(user("mao").id, "天内到期")) == 1  # one digest for 医务处
    reminded = {(r.grant_id, r.days_before) for r in db_session.scalars(select(GrantReminder))}
    assert {(in_45.id, 60), (in_20.id, 30)} <= reminded

    later = today + timedelta(days=16)  # in_45 is now 29 days out: its 30-day reminder is due
    assert services.remind_expiring(on=later) == {"60": 0, "30": 1}
    assert services.remind_expiring(on=later + timedelta(days=1)) == {"60": 0, "30": 0}
    assert len(notes(doc.id)) == 3 and len(notes(user("mao").id, "天内到期")) == 2


def test_daily_job_expires_lapsed_grants_and_pushes_them(db_session, user, item, make_grant):
    lapsed = make_grant(user("gs_doc"), item("BASIC-RX"), days_left=-1)
    result = services.expire_and_remind()
    assert result["expired"] >= 1 and lapsed.status == GrantStatus.EXPIRED
    assert [m.payload["status"] for m in _his_messages(db_session, lapsed)] == ["expired"]
    from app.privileges.tasks import periodic

    out = periodic()  # the in-process scheduler's tick commits and finds nothing more to do
    assert out["emergency_expired"] == 0


# ---------------------------------------------------------------- statistics (seed §三.8)


def _at(y, m, d=10):
    return datetime(y, m, d, 12, tzinfo=SHANGHAI)


def test_statistics_count_by_category_department_title_and_grade(client, login, db_session, user, item,
                                                                  surgery_item):
    gs, gs2, card = user("gs_doc"), user("gs_doc2"), user("card_doc")  # 主治医师, 住院医师 (普外科); 副主任医师 (心内科)
    s2, s3 = surgery_item(2), surgery_item(3)

    def grant(holder, it, when):
        g = Grant(user_id=holder.id, item_id=it.id, status=GrantStatus.ACTIVE, valid_from=when.date(),
                  valid_until=when.date() + timedelta(days=700), granted_at=when)
        db_session.add(g)
        db_session.flush()
        return g

    grant(gs, s2, _at(2031, 3))
    grant(gs2, s2, _at(2031, 3, 31))
    grant(gs, item("BASIC-RX"), _at(2031, 3, 1))
    grant(card, s3, _at(2031, 2))
    grant(card, item("BASIC-RX"), _at(2030, 3))
    grant(card, item("BASIC-DIAG"), _at(2031, 4, 1))  # next month: not counted anywhere
    em = grant(gs2, item("SP-ABX-3"), _at(2031, 3, 5))
    db_session.add(EmergencyGrant(grant_id=em.id, starts_at=em.granted_at, expires_at=em.granted_at +
                                  timedelta(hours=2), hours=2, reason="抢救"))
    application = PrivilegeApplication(applicant_id=gs.id, dept_id=gs.dept_id, status="in_review", reason="x",
                                       submitted_at=_at(2031, 3, 2))
    db_session.add(application)
    db_session.flush()
    for it in (s2, s3, item("BASIC-RX")):
        db_session.add(PrivilegeApplicationItem(application_id=application.id, item_id=it.id))
    db_session.add(PrivilegeApplication(applicant_id=card.id, dept_id=card.dept_id, status="draft", reason="x"))
    db_session.flush()

    stats = services.privilege_statistics(viewer=user("mao"), year=2031, month=3)
    rows = {dim: {r.label: (r.grants, r.applications) for r in stats.tables[dim]} for dim, _ in
            services.STAT_DIMENSIONS}
    assert stats.totals.grants == (4, 1, 1) and stats.totals.applications == (1, 0, 0)
    assert rows["category"]["手术（介入）分级及治疗性操作授权"] == ((2, 1, 0), (1, 0, 0))
    assert rows["category"]["基础诊疗项目授权"] == ((1, 0, 1), (1, 0, 0))
    assert rows["category"]["紧急授权"] == ((1, 0, 0), (0, 0, 0))
    assert rows["dept"]["普外科"] == ((4, 0, 0), (1, 0, 0)) and rows["dept"]["心内科"] == ((0, 1, 1), (0, 0, 0))
    assert rows["title"]["主治医师"] == ((2, 0, 0), (1, 0, 0)) and rows["title"]["住院医师"] == ((2, 0, 0), (0, 0, 0))
    assert rows["title"]["副主任医师"] == ((0, 1, 1), (0, 0, 0))
    assert rows["surgery_grade"] == {"二级手术": ((2, 0, 0), (1, 0, 0)), "三级手术": ((0, 1, 0), (1, 0, 0))}
    surgery = next(r for r in stats.tables["category"] if r.label.startswith("手术"))
    assert surgery.grants_mom == 100.0 and surgery.grants_yoy is None
    assert stats.totals.grants_mom == 300.0 and stats.totals.grants_yoy == 300.0

    login("mao")
    html = client.get("/privileges/manage/stats", query_string={"month": "2031-03"}).get_data(as_text=True)
    assert 'id="total-grants">4<' in html and "二级手术" in html and "+300.0%" in html
    assert client.get("/privileges/manage/stats", query_string={"month": "2031-13"}).status_code == 400
    resp = client.get("/privileges/manage/stats/export.xlsx", query_string={"month": "2031-03"})
    assert resp.status_code == 200
    wb = load_workbook(BytesIO(resp.data))
    assert wb.sheetnames == ["按授权类别", "按工作量类别", "按科室", "按职称", "按手术级别", "按授权项目"]
    sheet = wb["按手术级别"]
    assert [c.value for c in sheet[3]][:6] == ["二级手术", 2, 0, "—", 0, "—"]
