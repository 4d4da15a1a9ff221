"""Applications, the end-of-flow hook and grant scoping (the workflow engine's start is stubbed here)."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.db import utcnow
from app.errors import Forbidden, ValidationFailed
from app.notify.models import Notification
from app.privileges import services
from app.privileges.models import Grant, GrantStatus, PrivilegeApplication, PrivilegeCategory


def _count(db_session, model) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


def test_bad_application_reports_each_field_and_creates_nothing(db_session, user, item):
    before = _count(db_session, PrivilegeApplication)
    ok = item("BASIC-DIAG")
    inactive = item("BASIC-CONSULT")
    inactive.is_active = False
    with pytest.raises(ValidationFailed) as err:
        services.create_application(applicant=user("gs_doc"), reason="  ",
                                    item_ids=[ok.id, "abc", 99999999, ok.id, inactive.id])
    paths = {e["path"]: e["message"] for e in err.value.errors}
    assert set(paths) == {"reason", "item_ids/1", "item_ids/2", "item_ids/3", "item_ids/4"}
    assert paths["reason"] == "“申请理由”为必填项"
    assert paths["item_ids/2"] == "授权项目不存在" and "重复" in paths["item_ids/3"]
    assert "停用" in paths["item_ids/4"]
    assert _count(db_session, PrivilegeApplication) == before


def test_empty_selection_and_departed_applicant_are_refused(db_session, user, item):
    with pytest.raises(ValidationFailed) as err:
        services.create_application(applicant=user("gs_doc"), item_ids=[], reason="x")
    assert {e["path"] for e in err.value.errors} == {"item_ids"}
    leaver = user("gs_doc2")
    leaver.departed_at = utcnow()
    with pytest.raises(ValidationFailed) as err:
        services.create_application(applicant=leaver, item_ids=[item("BASIC-RX").id], reason="x")
    assert {e["path"] for e in err.value.errors} == {"applicant"}


def test_held_grant_blocks_until_the_renewal_window(db_session, user, item, make_grant):
    doc, rx = user("gs_doc"), item("BASIC-RX")
    grant = make_grant(doc, rx, days_left=400)
    with pytest.raises(ValidationFailed) as err:
        services.create_application(applicant=doc, item_ids=[rx.id], reason="再授权")
    assert "有效授权" in err.value.errors[0]["message"] and err.value.errors[0]["path"] == "item_ids/0"
    grant.valid_until = services.today() + timedelta(days=services.RENEWAL_WINDOW_DAYS - 1)
    application = services.create_application(applicant=doc, item_ids=[rx.id], reason="再授权")
    assert application.status == "draft"


def test_open_application_for_the_same_item_is_refused(db_session, user, item, fake_start):
    doc = user("gs_doc")
    first = services.apply(applicant=doc, item_ids=[item("SP-POCT").id], reason="门诊需要")
    with pytest.raises(ValidationFailed) as err:
        services.create_application(applicant=doc, item_ids=[item("BASIC-DIAG").id, item("SP-POCT").id],
                                    reason="再次")
    assert err.value.errors == [{"path": "item_ids/1", "message": f"“POCT（即时检验）操作与报告权”已有审核中的申请（{first.number}）"}]


def test_submit_starts_the_flow_with_the_decision_inputs(db_session, user, item, surgery_item, fake_start, app):
    doc = user("gs_head")  # 主任医师 with a passed 定期考核: fits grade-4 surgery and 特殊使用级
    op4 = surgery_item(4)
    application = services.apply(applicant=doc, reason="开展肝胆外科手术",
                                 item_ids=[op4.id, item("SP-ABX-3").id, item("ENDO-2").id])
    [call] = fake_start
    assert call["key"] == "privilege_grant" and call["business_key"] == application.number
    assert call["actor"] is doc and call["dept_id"] == doc.dept_id and call["campus_id"] == doc.campus_id
    data = call["data"]
    assert data["application_id"] == application.id
    assert data["max_surgery_grade"] == 4 and data["max_antibacterial_level"] == 3
    assert data["max_anesthesia_grade"] == 0 and data["max_endoscopy_grade"] == 2
    assert data["categories"] == ["endoscopy", "special", "surgery"]
    assert data["reminder_duration"] == f"P{app.config['REVIEW_REMINDER_DAYS']}D"
    assert {i["code"] for i in data["items"]} == {op4.code, "SP-ABX-3", "ENDO-2"}
    assert application.status == "in_review" and application.instance_id == 900001
    assert application.submitted_at is not None
    actions = db_session.scalars(select(AuditLog.action).where(AuditLog.entity_type == "privilege_applications",
                                                               AuditLog.entity_id == str(application.id))).all()
    assert set(actions) == {"privilege.application_created", "privilege.application_submitted"}


def _instance(application, status="completed"):
    return SimpleNamespace(id=application.instance_id, status=status, business_key=application.number)


def test_approval_grants_every_item_with_the_category_validity(db_session, user, item, surgery_item, fake_start):
    doc, approver = user("gs_doc"), user("committee")
    op3 = surgery_item(3)
    application = services.apply(applicant=doc, item_ids=[op3.id, item("EM-ABX").id], reason="需要")
    services.finalize_application(instance=_instance(application), actor=approver,
                                  data={"application_id": application.id, "final_decision": "approved",
                                        "comment": "同意", "reason": "需要（已补充）"})
    assert application.status == "approved" and application.final_comment == "同意"
    assert application.reason == "需要（已补充）" and application.decided_at is not None
    grants = {g.item.code: g for g in services.grants_for_application(application)}
    today = services.today()
    surgery = grants[op3.code]
    assert surgery.valid_from == today and surgery.granted_by_id == approver.id
    assert surgery.valid_until == today.replace(year=today.year + 2) - timedelta(days=1)
    assert grants["EM-ABX"].valid_until == today + timedelta(days=6)  # 紧急授权: 7 days
    note = db_session.scalar(select(Notification).where(Notification.user_id == doc.id)
                             .order_by(Notification.id.desc()).limit(1))
    assert "已批准" in note.title and op3.name in note.body
    # the engine may call the hook again (retry): nothing doubles
    services.finalize_application(instance=_instance(application), actor=approver,
                                  data={"application_id": application.id, "final_decision": "approved"})
    assert len(services.grants_for_application(application)) == 2


def test_rejection_and_withdrawal_close_without_grants(db_session, user, item, fake_start):
    doc = user("gs_doc")
    a1 = services.apply(applicant=doc, item_ids=[item("BASIC-DIAG").id], reason="理由一")
    services.finalize_application(instance=_instance(a1, "rejected"), actor=user("gs_head"),
                                  data={"application_id": a1.id, "final_decision": "rejected", "comment": "考核未通过"})
    assert a1.status == "rejected" and a1.final_comment == "考核未通过"
    a2 = services.apply(applicant=doc, item_ids=[item("BASIC-DIAG").id], reason="理由二")
    # the engine's withdraw passes the withdrawal reason as data["reason"]: the application's reason stays
    services.finalize_application(instance=_instance(a2, "withdrawn"), actor=doc,
                                  data={"final_decision": "withdrawn", "reason": "不再需要"})
    assert a2.status == "withdrawn" and a2.reason == "理由二" and a2.final_comment == "不再需要"
    assert services.grants_for_application(a1) == [] and services.grants_for_application(a2) == []


def test_an_end_without_an_outcome_leaves_the_application_in_review(db_session, user, item, fake_start):
    application = services.apply(applicant=user("gs_doc"), item_ids=[item("BASIC-AUXDIAG").id], reason="x")
    services.finalize_application(instance=_instance(application, "running"), actor=None,
                                  data={"application_id": application.id})
    assert application.status == "in_review"


def test_renewal_replaces_the_old_grant(db_session, user, item, make_grant, fake_start):
    doc, rx = user("gs_doc"), item("BASIC-RX")
    old = make_grant(doc, rx, days_left=10)
    application = services.apply(applicant=doc, item_ids=[rx.id], reason="到期再授权")
    services.finalize_application(instance=_instance(application), actor=user("mao"),
                                  data={"application_id": application.id, "final_decision": "approved"})
    assert old.status == "expired" and application.number in old.revoked_reason
    active = db_session.scalars(select(Grant).where(Grant.user_id == doc.id, Grant.item_id == rx.id,
                                                    Grant.status == "active")).all()
    assert len(active) == 1 and active[0].application_id == application.id


def _grant_setup(user, item, make_grant):
    make_grant(user("gs_doc"), item("BASIC-DIAG"))
    make_grant(user("gs_doc2"), item("BASIC-CONSULT"))
    make_grant(user("card_doc"), item("SP-NARC"))
    # lapsed, status not yet updated (韩专家 of 骨科: no demo grant; 周医生 holds the demo high-risk one)
    make_grant(user("expert2"), item("SP-POCT"), days_left=-5)


def _holders(db_session, viewer, **filters):
    stmt = services.grants_query(viewer=viewer, filters=services.GrantFilter(**filters))
    return sorted({g.user.username for g in db_session.scalars(stmt)})


def test_grants_are_scoped_by_role(db_session, user, item, make_grant):
    _grant_setup(user, item, make_grant)
    assert _holders(db_session, user("gs_doc")) == ["gs_doc"]
    assert _holders(db_session, user("gs_head")) == ["gs_doc", "gs_doc2"]
    assert {"gs_doc", "gs_doc2", "card_doc", "expert2"} <= set(_holders(db_session, user("mao")))
    with pytest.raises(Forbidden):
        services.grants_query(viewer=user("nurse"))


def test_grant_filters(db_session, user, item, make_grant):
    _grant_setup(user, item, make_grant)
    mao = user("mao")
    assert "expert2" in _holders(db_session, mao, validity="expired")
    assert "expert2" in _holders(db_session, mao, status="expired")
    assert "expert2" not in _holders(db_session, mao, validity="valid")
    assert "expert2" not in _holders(db_session, mao, status="active")
    assert _holders(db_session, mao, q="麻醉药品") == ["card_doc"]
    assert set(_holders(db_session, mao, category="special")) >= {"card_doc", "expert2"}
    gs = user("gs_doc").dept_id
    assert _holders(db_session, mao, dept_id=gs) == ["gs_doc", "gs_doc2"]
    summary = dict(services.grant_counts_by_category(viewer=user("gs_head")))
    assert summary == {"基础诊疗项目授权": 2}


def test_expire_and_departure(db_session, user, item, make_grant):
    # 韩专家 holds nothing else (周医生 holds the demo high-risk authorisation's grant)
    lapsed = make_grant(user("expert2"), item("SP-POCT"), days_left=-1)
    live = make_grant(user("expert2"), item("BASIC-DIAG"))
    assert services.expire_grants() >= 1
    assert lapsed.status == GrantStatus.EXPIRED and live.status == GrantStatus.ACTIVE
    assert services.revoke_all_for_departure(user=user("expert2"), actor=user("mao")) == 1
    assert live.status == GrantStatus.REVOKED and live.revoked_reason == "人员离职"


def test_validity_until_handles_leap_days(db_session):
    from datetime import date

    cat = PrivilegeCategory(code="x", name="x", validity_years=1)
    assert services.validity_until(cat, date(2024, 2, 29)) == date(2025, 2, 27)
    assert services.validity_until(cat, date(2025, 3, 1)) == date(2026, 2, 28)
