"""Technology management drives the clinical-privilege grants HIS checks (seed 000 §二.2–3, §三.1, §三.6):
限制类技术 approval opens its 限制类医疗技术授权 item, stopping it suspends the department's grants and filing it
again resumes them; a high-risk authorisation is checked against the linked item's eligibility rules and held as a
grant of it, so GET /api/v1/privileges/check answers for it."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.db import utcnow
from app.errors import ValidationFailed
from app.outbox.models import OutboxMessage
from app.privileges import services as privileges
from app.privileges.models import DeptCatalogueItem, Grant, PrivilegeItem
from app.technology.models import HighRiskAuthorization, HighRiskItem, RestrictedTechnology
from app.technology.services import high_risk, restricted
from app.workflow import services as wf
from tests.conftest import check_privilege
from tests.technology.test_restricted import _through_ethics

pytestmark = pytest.mark.usefixtures("fresh_check_cache")  # the HIS check API answers below


@pytest.fixture
def ask(client, his, db_session):
    """The HIS check for one physician and item, after committing what the test did so far."""

    def _ask(staff_no: str, category: str, code: str) -> dict:
        db_session.commit()
        return check_privilege(client, his, staff_no, category, code)

    return _ask


@pytest.fixture
def make_physician(db_session):
    """A fresh physician of a demo department with a 执业证 (or none)."""
    from app.archives.models import Certificate, CertificateType
    from app.auth.models import Department
    from app.auth.services import create_user

    counter = {"n": 0}

    def _make(title: str | None = "主治医师", *, dept: str = "CARD", cert: bool = True):
        counter["n"] += 1
        d = db_session.scalar(select(Department).where(Department.code == dept))
        person = create_user(username=f"link{counter['n']}", name=f"关联医生{counter['n']}", password=None, dept=d,
                             roles=["physician"], staff_no=f"LK{counter['n']:03d}", title=title,
                             check_strength=False)
        if cert:
            practice = db_session.scalar(select(CertificateType).where(CertificateType.code == "practice"))
            db_session.add(Certificate(user_id=person.id, type_id=practice.id, number=f"P-LK{counter['n']}",
                                       expiry_date=privileges.today() + timedelta(days=365)))
        db_session.flush()
        return person

    return _make


def _tech(db_session, seq: int) -> RestrictedTechnology:
    return db_session.scalar(select(RestrictedTechnology).where(RestrictedTechnology.seq == seq))


def _item(db_session, code: str) -> PrivilegeItem:
    return db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == code))


def _audits(db_session, action: str) -> list[AuditLog]:
    return list(db_session.scalars(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id)))


def _his_messages(db_session, grant: Grant) -> list[dict]:
    rows = db_session.scalars(select(OutboxMessage).where(OutboxMessage.channel == "his").order_by(OutboxMessage.id))
    return [m.payload for m in rows if m.payload.get("grant_id") == grant.id]


def _grant(user, dept_code: str, usernames: list[str], code: str) -> list[Grant]:
    from app.auth.models import Department
    from app.db import db

    dept = db.session.scalar(select(Department).where(Department.code == dept_code))
    plan = privileges.batch_grant(viewer=user("mao"), dept_id=dept.id, user_ids=[user(u).id for u in usernames],
                                  item_codes=[code], reason="科室授权考核小组考核合格")
    return [r.grant for r in plan.rows if r.grant is not None]


def _approve_and_file(application, do, ready, user, db_session, filing_no: str) -> None:
    _through_ethics(application, do, ready, user, db_session)
    do(application.instance_id, "approval", "mao", decision="approve", comment="同意开展")
    do(application.instance_id, "filing", "mao", filing_no=filing_no, filed_on="2026-12-20", authority="省卫生健康委")


# ---------------------------------------------------------------- 限制类技术


def test_approval_opens_the_privilege_item_and_a_granted_physician_is_allowed(user, do, ready, db_session, ask,
                                                                              client, login):
    tech = _tech(db_session, 5)  # 性别重置技术: not in 心血管内科's 科室技术目录
    item = _item(db_session, "RT-05")
    item.is_active = False  # the office had switched it off
    db_session.flush()
    card = user("card_doc").dept_id
    assert tech.privilege_item_id is None and restricted.privilege_item(tech).id == item.id
    application = restricted.apply(applicant=user("card_doc"),
                                   data={"technology_id": tech.id, "conditions": "具备规范要求的人员与设备"})
    _through_ethics(application, do, ready, user, db_session)
    assert not item.is_active  # nothing opens before approval
    do(application.instance_id, "approval", "mao", decision="approve", comment="同意开展")
    assert application.status == "filing"
    assert tech.privilege_item_id == item.id and item.is_active
    assert db_session.scalar(select(DeptCatalogueItem.is_active).where(DeptCatalogueItem.dept_id == card,
                                                                       DeptCatalogueItem.item_id == item.id))
    [linked] = _audits(db_session, "technology.restricted_item_linked")
    assert linked.after["item"] == "RT-05" and linked.after["application"] == application.number
    assert ask("D2002", "restricted_tech", "RT-05")["reason"] == "未获得该项授权"
    # the physicians apply as usual (here the office's batch grant: eligibility and the department catalogue hold)
    [grant] = _grant(user, "CARD", ["card_doc"], "RT-05")
    body = ask("D2002", "restricted_tech", "RT-05")
    assert body["allowed"] is True and body["grant"]["id"] == grant.id
    assert any(p["status"] == "active" for p in _his_messages(db_session, grant))
    assert restricted.department_grants(application) == [grant]
    login("mao")
    html = client.get(f"/technology/restricted/{application.id}").get_data(as_text=True)
    assert "RT-05 性别重置技术" in html and "孙医生" in html and "生效中" in html
    html = client.get("/technology/restricted/catalogue").get_data(as_text=True)
    assert "RT-05" in html and "（已关联）" in html


def test_a_second_department_reuses_the_linked_item(user, do, ready, db_session):
    tech = _tech(db_session, 12)
    first = restricted.apply(applicant=user("card_doc"), data={"technology_id": tech.id, "conditions": "心内"})
    _through_ethics(first, do, ready, user, db_session)
    do(first.instance_id, "approval", "mao", decision="approve")
    second = restricted.apply(applicant=user("gs_doc"), data={"technology_id": tech.id, "conditions": "普外"})
    _through_ethics(second, do, ready, user, db_session)
    do(second.instance_id, "approval", "mao", decision="approve")
    assert tech.privilege_item_id == _item(db_session, "RT-12").id
    assert len(_audits(db_session, "technology.restricted_item_linked")) == 1
    synced = [a for a in _audits(db_session, "privilege.catalogue_item_synced") if a.after.get("code") == "RT-12"]
    assert synced == []  # the seeded item was already active: nothing to re-open


def test_the_annual_review_stop_suspends_the_department_grants_and_filing_again_resumes_them(
        user, do, ready, db_session, ask):
    tech = _tech(db_session, 10)  # 心血管内科 and 普外科 both perform it
    application = restricted.apply(applicant=user("card_doc"), data={"technology_id": tech.id, "conditions": "条件"},
                                   annual_interval="PT1S")
    _approve_and_file(application, do, ready, user, db_session, "浙卫备2026-101")
    doc, head = _grant(user, "CARD", ["card_doc", "card_head"], "RT-10")
    with pytest.raises(privileges.BatchRejected):  # another department may not until it is approved itself
        _grant(user, "GS", ["gs_head"], "RT-10")
    gs_application = restricted.apply(applicant=user("gs_head"), data={"technology_id": tech.id, "conditions": "条件"})
    _approve_and_file(gs_application, do, ready, user, db_session, "浙卫备2026-102")
    [other] = _grant(user, "GS", ["gs_head"], "RT-10")  # another department, with its own filing
    assert ask("D2002", "restricted_tech", "RT-10")["allowed"] is True
    time.sleep(1.1)
    assert wf.fire_due_timers() >= 1
    do(application.instance_id, "annual_summary", "card_doc", year=2026, total_cases=2, qc_summary="例数不足")
    do(application.instance_id, "annual_review", "mao", decision="stop", comment="年开展例数不足，停止开展")
    assert application.status == "stopped"
    assert (doc.status, head.status, other.status) == ("suspended", "suspended", "active")
    assert "经年度审核停止开展" in doc.revoked_reason and "年开展例数不足" in doc.revoked_reason
    assert application.suspended_grants["grant_ids"] == [doc.id, head.id]
    assert [p["status"] for p in _his_messages(db_session, doc)][-1] == "suspended"  # pushed to HIS
    body = ask("D2002", "restricted_tech", "RT-10")
    assert body["allowed"] is False
    assert body["reason"] == f"授权已暂停：{doc.revoked_reason}" and application.number in body["reason"]
    assert ask("D1001", "restricted_tech", "RT-10")["allowed"] is True  # 普外科 is not affected
    # meanwhile the office ends one of them for good: filing again must not bring it back
    privileges.revoke_grant(grant=head, reason="调离导管室", actor=user("mao"))
    again = restricted.apply(applicant=user("card_doc"), data={"technology_id": tech.id, "conditions": "整改后条件"})
    _through_ethics(again, do, ready, user, db_session)
    do(again.instance_id, "approval", "mao", decision="approve")
    assert doc.status == "suspended"  # approved is not yet filed
    do(again.instance_id, "filing", "mao", filing_no="浙卫备2027-007", filed_on="2027-01-20", authority="省卫生健康委")
    assert (doc.status, head.status) == ("active", "revoked")
    [resumed] = _audits(db_session, "technology.restricted_grants_resumed")
    assert resumed.after["grant_ids"] == [doc.id]
    assert ask("D2002", "restricted_tech", "RT-10")["allowed"] is True


def test_ending_the_flow_after_approval_suspends_the_grants_too(user, do, ready, db_session, ask):
    tech = _tech(db_session, 9)
    application = restricted.apply(applicant=user("card_doc"), data={"technology_id": tech.id, "conditions": "条件"})
    _through_ethics(application, do, ready, user, db_session)
    do(application.instance_id, "approval", "mao", decision="approve")
    [grant] = _grant(user, "CARD", ["card_doc"], "RT-09")
    wf.terminate(instance_id=application.instance_id, actor=user("flow"), reason="卫生健康委不予备案")
    assert application.status == "withdrawn" and grant.status == "suspended"
    assert "备案追踪已终止" in grant.revoked_reason and "不予备案" in grant.revoked_reason
    assert ask("D2002", "restricted_tech", "RT-09")["reason"].startswith("授权已暂停：限制类技术「心室辅助技术」")


# ---------------------------------------------------------------- 高风险诊疗技术


def _hr(db_session, code: str = "HR-CARD-01") -> HighRiskItem:
    return db_session.scalar(select(HighRiskItem).where(HighRiskItem.code == code))


def _count(db_session, model) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


def test_authorising_checks_the_linked_items_rules_field_by_field(user, db_session, make_physician):
    item = _hr(db_session)  # linked to SUR-00.6600x008: 三级手术, 主治医师 and a 执业证
    before = (_count(db_session, HighRiskAuthorization), _count(db_session, Grant))
    junior = make_physician("住院医师", cert=False)
    with pytest.raises(ValidationFailed) as err:
        high_risk.authorize(item=item, data={"user_id": junior.id}, actor=user("mao"))
    errors = {e["path"]: e["message"] for e in err.value.errors}
    assert errors == {"eligibility/title": "职称不符：该项目需主治医师及以上，当前为住院医师",
                      "eligibility/certificate": "缺少执业证：该项目需有效的执业证，档案中未登记"}
    with pytest.raises(ValidationFailed) as err:  # 主任医师 without a 执业证 on file
        high_risk.authorize(item=item, data={"user_id": user("expert1").id}, actor=user("mao"))
    assert [e["path"] for e in err.value.errors] == ["eligibility/certificate"]
    departed, disabled = make_physician(), make_physician()
    departed.departed_at = utcnow()
    disabled.is_active = False
    db_session.flush()
    for person, message in ((departed, "已离职，不能授权"), (disabled, "的账号已停用，不能授权")):
        with pytest.raises(ValidationFailed) as err:
            high_risk.authorize(item=item, data={"user_id": person.id}, actor=user("mao"))
        assert err.value.errors == [{"path": "user_id", "message": person.name + message}]
    # only the office (privileges.manage over the person) may let an unfit person through
    with pytest.raises(ValidationFailed) as err:
        high_risk.authorize(item=item, data={"user_id": junior.id, "override_reason": "科主任认为可以"},
                            actor=user("card_head"))
    assert {e["path"] for e in err.value.errors} == {"override_reason", "eligibility/title",
                                                     "eligibility/certificate"}
    assert (_count(db_session, HighRiskAuthorization), _count(db_session, Grant)) == before  # nothing written
    auth = high_risk.authorize(item=item, data={"user_id": junior.id, "role_in_team": "助手",
                                                "override_reason": "上级医师全程指导下担任助手，证件补办中"},
                               actor=user("mao"))
    assert auth.override_reason.startswith("上级医师全程指导") and auth.grant_id is not None
    # (the demo data's authorisations audit their own overrides: only this one's are looked at)
    [tech_audit] = [a for a in _audits(db_session, "technology.high_risk_eligibility_overridden")
                    if a.entity_id == str(auth.id)]
    assert set(tech_audit.after["problems"]) == {"eligibility/title", "eligibility/certificate"}
    [grant_audit] = [a for a in _audits(db_session, "privilege.eligibility_overridden")
                     if a.entity_id == str(auth.grant_id)]
    assert grant_audit.after["user_id"] == junior.id and len(grant_audit.after["problems"]) == 2
    # an item not linked to a privilege item has no rules to check and nothing for HIS
    plain = high_risk.authorize(item=_hr(db_session, "HR-GS-01"), data={"user_id": user("gs_doc2").id},
                                actor=user("mao"))
    assert plain.grant_id is None and plain.override_reason is None


def test_an_authorisation_is_checkable_by_his_and_revoking_it_stops_the_grant(user, db_session, ask):
    item = _hr(db_session)
    head = user("card_head")
    assert ask("D2001", "surgery", "SUR-00.6600x008")["reason"] == "未获得该项授权"
    auth = high_risk.authorize(item=item, data={"user_id": head.id, "role_in_team": "术者"}, actor=user("mao"))
    grant = db_session.get(Grant, auth.grant_id)
    assert grant.status == "active" and grant.item.code == "SUR-00.6600x008" and grant.user_id == head.id
    assert grant.valid_until is not None and auth.valid_until == grant.valid_until  # the category's period
    assert [p["status"] for p in _his_messages(db_session, grant)] == ["active"]
    body = ask("D2001", "surgery", "SUR-00.6600x008")
    assert body["allowed"] is True and body["grant"]["id"] == grant.id
    assert ask("D2001", "surgery", grant.item.procedure_code)["allowed"] is True
    assert high_risk.is_authorised(user_id=head.id, item=item)
    assert grant.id in {g.id for g in high_risk.linked_grants(item)}
    # suspended in the privilege system: the authorisation does not count either, as HIS says
    privileges.suspend_grant(grant=grant, reason="不良事件调查期间", actor=user("mao"))
    assert not high_risk.is_authorised(user_id=head.id, item=item)
    assert ask("D2001", "surgery", "SUR-00.6600x008")["reason"] == "授权已暂停：不良事件调查期间"
    high_risk.revoke_authorization(auth=auth, actor=user("mao"), reason="调查结论：暂停开展该技术")
    assert grant.status == "revoked" and "授权已取消：调查结论" in grant.revoked_reason
    body = ask("D2001", "surgery", "SUR-00.6600x008")
    assert body["allowed"] is False and body["reason"] == f"授权已停止：{grant.revoked_reason}"
    assert not high_risk.is_authorised(user_id=head.id, item=item)


def test_a_grant_already_held_is_reused_and_outlives_one_of_two_authorisations(user, db_session, ask):
    item = _hr(db_session)
    [held] = _grant(user, "CARD", ["card_head"], "SUR-00.6600x008")
    twin = high_risk.create_item(data={"code": "HR-CARD-09", "name": "药物球囊（复杂病变）", "category": "interventional",
                                       "dept_id": item.dept_id, "privilege_item_id": item.privilege_item_id},
                                 actor=user("mao"))
    grants_before = _count(db_session, Grant)
    first = high_risk.authorize(item=item, data={"user_id": user("card_head").id}, actor=user("mao"))
    second = high_risk.authorize(item=twin, data={"user_id": user("card_head").id}, actor=user("mao"))
    assert first.grant_id == second.grant_id == held.id and _count(db_session, Grant) == grants_before
    high_risk.revoke_authorization(auth=first, actor=user("mao"), reason="不再担任术者")
    assert held.status == "active" and ask("D2001", "surgery", "SUR-00.6600x008")["allowed"] is True
    high_risk.revoke_authorization(auth=second, actor=user("mao"), reason="不再担任术者")
    assert held.status == "revoked" and ask("D2001", "surgery", "SUR-00.6600x008")["allowed"] is False
    [again] = _grant(user, "CARD", ["card_head"], "SUR-00.6600x008")
    privileges.suspend_grant(grant=again, reason="复核中", actor=user("mao"))
    with pytest.raises(ValidationFailed) as err:  # a suspended grant is the privilege office's to resume first
        high_risk.authorize(item=item, data={"user_id": user("card_head").id}, actor=user("mao"))
    assert [e["path"] for e in err.value.errors] == ["user_id"] and "已暂停（复核中）" in err.value.errors[0]["message"]


def test_an_item_suspended_at_its_evaluation_resumes_the_grants_when_a_later_one_continues(user, do, db_session, ask):
    item = _hr(db_session)
    [demo] = [a for a in item.authorizations if a.status == "active"]  # the demo data's: 孙医生, with its grant
    demo_grant = db_session.get(Grant, demo.grant_id)
    assert demo_grant.status == "active" and demo.user_id == user("card_doc").id
    auth = high_risk.authorize(item=item, data={"user_id": user("card_head").id}, actor=user("mao"))
    grant = db_session.get(Grant, auth.grant_id)
    first = high_risk.start_evaluation(item=item, actor=user("mao"), year=2033)
    do(first.instance_id, "self_evaluation", "card_head", cases_year=2, self_assessment="poor", summary="并发症多")
    do(first.instance_id, "mao_evaluation", "mao", decision="suspend", comment="暂停开展")
    assert item.status == "suspended" and grant.status == "suspended" and demo_grant.status == "suspended"
    assert first.suspended_grants["grant_ids"] == [demo_grant.id, grant.id]
    assert not high_risk.is_authorised(user_id=user("card_head").id, item=item)
    assert "2033年度评估决定暂停开展" in ask("D2001", "surgery", "SUR-00.6600x008")["reason"]
    later = high_risk.start_evaluation(item=item, actor=user("mao"), year=2034)
    do(later.instance_id, "self_evaluation", "card_head", cases_year=20, self_assessment="good", summary="条件已改善")
    do(later.instance_id, "mao_evaluation", "mao", decision="continue", comment="恢复开展")
    assert item.status == "active" and grant.status == "active" and auth.status == "active"
    assert demo_grant.status == "active"
    assert high_risk.is_authorised(user_id=user("card_head").id, item=item)
    assert ask("D2001", "surgery", "SUR-00.6600x008")["allowed"] is True
    [resumed] = _audits(db_session, "technology.high_risk_grants_resumed")
    assert resumed.after == {"year": 2034, "grant_ids": [demo_grant.id, grant.id]}


def test_the_authorise_form_shows_eligibility_errors_and_takes_an_override(client, login, user, db_session):
    token = login("mao")
    item = _hr(db_session)
    url = f"/technology/high-risk/{item.id}/staff"
    resp = client.post(url, data={"csrf_token": token, "user_id": str(user("expert1").id), "role_in_team": "术者"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "缺少执业证" in html and 'name="override_reason"' in html
    resp = client.post(url, data={"csrf_token": token, "user_id": str(user("expert1").id), "role_in_team": "术者",
                                  "override_reason": "外院专家，执业证已备案待录入"})
    assert resp.status_code == 302
    html = client.get(f"/technology/high-risk/{item.id}").get_data(as_text=True)
    assert "医务处特批：外院专家" in html and "SUR-00.6600x008 生效中" in html


def _edit(item: HighRiskItem, **changes) -> dict:
    data = {key: getattr(item, key) for key in high_risk.EDITABLE}
    return data | changes


def test_retiring_an_item_stops_only_the_grants_held_for_its_authorisations(user, db_session, ask, make_physician):
    item = _hr(db_session)  # the demo data authorised 孙医生 (D2002) through SUR-00.6600x008
    [demo] = [a for a in item.authorizations if a.status == "active"]
    demo_grant = db_session.get(Grant, demo.grant_id)
    assert ask("D2002", "surgery", "SUR-00.6600x008")["allowed"] is True
    twin = high_risk.create_item(data={"code": "HR-CARD-09", "name": "药物球囊（复杂病变）", "category": "interventional",
                                       "dept_id": item.dept_id, "privilege_item_id": item.privilege_item_id},
                                 actor=user("mao"))
    head = high_risk.authorize(item=item, data={"user_id": user("card_head").id}, actor=user("mao"))
    head_twin = high_risk.authorize(item=twin, data={"user_id": user("card_head").id}, actor=user("mao"))
    shared = db_session.get(Grant, head.grant_id)
    assert head_twin.grant_id == shared.id
    other = make_physician()  # holds the privilege for other reasons: the office's batch grant
    [own] = _grant(user, "CARD", [other.username], "SUR-00.6600x008")

    high_risk.retire_item(item=item, actor=user("mao"), reason="设备报废，本院不再开展")
    assert demo_grant.status == "revoked" and "已停用：设备报废" in demo_grant.revoked_reason
    assert [p["status"] for p in _his_messages(db_session, demo_grant)][-1] == "revoked"  # pushed to HIS
    assert shared.status == "active" and own.status == "active"  # another authorisation / other reasons
    assert demo.status == "active" and head.status == "active"  # authorisations stay on record
    [retired] = [a for a in _audits(db_session, "technology.high_risk_retired") if a.entity_id == str(item.id)]
    assert retired.after["grants_stopped"] == [demo_grant.id]
    assert retired.after["grants_kept"] == {str(shared.id): head_twin.id}
    assert ask("D2002", "surgery", "SUR-00.6600x008")["allowed"] is False
    assert ask("D2001", "surgery", "SUR-00.6600x008")["allowed"] is True
    assert ask(other.staff_no, "surgery", "SUR-00.6600x008")["allowed"] is True
    assert not high_risk.is_authorised(user_id=user("card_head").id, item=item)
    assert high_risk.is_authorised(user_id=user("card_head").id, item=twin)
    # the retired item's authorisation keeps nothing alive: revoking the twin's stops the shared grant
    high_risk.revoke_authorization(auth=head_twin, actor=user("mao"), reason="不再担任术者")
    assert shared.status == "revoked" and own.status == "active"
    assert ask("D2001", "surgery", "SUR-00.6600x008")["allowed"] is False


def test_relinking_an_item_moves_its_authorisations_grants_to_the_new_item(user, db_session, ask, make_physician):
    from app.privileges.services import today

    item = _hr(db_session)
    old, new = item.privilege_item_id, _item(db_session, "SUR-36.0700x004")
    [demo] = [a for a in item.authorizations if a.status == "active"]  # 孙医生 (D2002), from the demo data
    demo_grant = db_session.get(Grant, demo.grant_id)
    head = high_risk.authorize(item=item, data={"user_id": user("card_head").id}, actor=user("mao"))
    head_grant = db_session.get(Grant, head.grant_id)
    other = make_physician()
    [own] = _grant(user, "CARD", [other.username], "SUR-00.6600x008")  # not for the item: left alone
    held = Grant(user_id=user("card_doc").id, item_id=new.id, valid_from=today())  # 孙医生 already holds the new one
    db_session.add(held)
    db_session.flush()
    # a person whose grant of the new item is suspended cannot be moved onto it: nothing changes
    privileges.suspend_grant(grant=held, reason="复核中", actor=user("mao"))
    with pytest.raises(ValidationFailed) as err:
        high_risk.update_item(item=item, data=_edit(item, privilege_item_id=new.id), actor=user("mao"))
    [error] = err.value.errors
    assert error["path"] == "privilege_item_id" and "孙医生的医疗权限" in error["message"] and "已暂停" in error["message"]
    assert item.privilege_item_id == old and (demo_grant.status, head_grant.status) == ("active", "active")
    privileges.resume_grant(grant=held, reason="复核通过", actor=user("mao"))

    overrides_before = len(_audits(db_session, "privilege.eligibility_overridden"))
    high_risk.update_item(item=item, data=_edit(item, privilege_item_id=new.id), actor=user("mao"))
    assert item.privilege_item_id == new.id
    for grant in (demo_grant, head_grant):
        assert grant.status == "revoked" and "对应的医疗权限项目已改为：SUR-36.0700x004" in grant.revoked_reason
        assert [p["status"] for p in _his_messages(db_session, grant)][-1] == "revoked"
    assert own.status == "active"
    assert demo.grant_id == held.id  # reused
    moved = db_session.get(Grant, head.grant_id)
    assert moved.id not in (head_grant.id, held.id) and moved.item_id == new.id and moved.status == "active"
    assert moved.user_id == user("card_head").id and [p["status"] for p in _his_messages(db_session, moved)] == ["active"]
    assert len(_audits(db_session, "privilege.eligibility_overridden")) == overrides_before  # no re-check to override
    [relinked] = _audits(db_session, "technology.high_risk_relinked")
    assert relinked.before == {"privilege_item": "SUR-00.6600x008"}
    assert relinked.after["privilege_item"] == "SUR-36.0700x004"
    assert relinked.after["grants_stopped"] == [demo_grant.id, head_grant.id]
    assert relinked.after["authorisations"][str(head.id)]["grant_id"] == moved.id
    assert relinked.after["authorisations"][str(demo.id)]["grant_reused"] is True
    for staff_no in ("D2001", "D2002"):
        assert ask(staff_no, "surgery", "SUR-36.0700x004")["allowed"] is True
        assert ask(staff_no, "surgery", "SUR-00.6600x008")["allowed"] is False
    assert ask(other.staff_no, "surgery", "SUR-00.6600x008")["allowed"] is True
    assert high_risk.is_authorised(user_id=user("card_head").id, item=item)
    # unlinked: the grants end and the authorisations stand on their own
    high_risk.update_item(item=item, data=_edit(item, privilege_item_id=None), actor=user("mao"))
    assert (moved.status, held.status) == ("revoked", "revoked") and head.grant_id is None and demo.grant_id is None
    assert high_risk.is_authorised(user_id=user("card_head").id, item=item)
