"""Departure cascade (login, grants, open work, read-only archive) and reinstatement through the committee."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.archives import departure, services
from app.archives.models import Departure
from app.audit.models import AuditLog
from app.errors import Forbidden, InvalidTransition, ValidationFailed
from app.privileges import services as privileges
from app.privileges.models import Grant, PrivilegeItem
from app.workflow import services as wf
from app.workflow.models import ProcessInstance


def _item(db_session, code: str) -> PrivilegeItem:
    return db_session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == code))


def _grant(db_session, holder, item) -> Grant:
    from datetime import timedelta

    g = Grant(user_id=holder.id, item_id=item.id, status="active", valid_from=privileges.today() - timedelta(days=10),
              valid_until=privileges.today() + timedelta(days=300))
    db_session.add(g)
    db_session.flush()
    return g


def test_departure_cuts_login_grants_and_open_work_at_once(deployed, client, login, user, ready, db_session):
    head, doc, mao = user("gs_head"), user("gs_doc"), user("mao")
    grant = _grant(db_session, head, _item(db_session, "BASIC-DIAG"))
    others = privileges.apply(applicant=doc, item_ids=[_item(db_session, "BASIC-RX").id], reason="门诊处方")
    [review] = ready(others.instance_id)
    wf.claim(task_id=review.id, actor=head)
    own = privileges.apply(applicant=head, item_ids=[_item(db_session, "SP-POCT").id], reason="POCT")
    login("gs_head")
    assert client.get("/archives/me").status_code == 302
    token = login("mao")
    page = client.get(f"/archives/{head.id}/departure").get_data(as_text=True)
    assert "科室考核" in page and "发起的流程（将撤回）" in page
    resp = client.post(f"/archives/{head.id}/departure", data={"csrf_token": token, "kind": "resignation",
                                                               "departure_date": services.today().isoformat(),
                                                               "reason": "个人原因辞职"})
    assert resp.status_code == 302
    row = db_session.scalar(select(Departure).where(Departure.user_id == head.id))
    db_session.refresh(head)
    assert head.departed_at is not None and head.is_active is False
    # login refused at once
    from app.demo import DEMO_PASSWORD
    from tests.conftest import csrf_from

    client.post("/logout", data={"csrf_token": token})
    page = client.get("/login").get_data(as_text=True)
    refused = client.post("/login", data={"username": "gs_head", "password": DEMO_PASSWORD,
                                          "csrf_token": csrf_from(page)})
    assert refused.status_code != 302 and "已停用" in refused.get_data(as_text=True)
    # every grant ended with the reason
    db_session.refresh(grant)
    assert grant.status == "revoked" and "辞职" in grant.revoked_reason and "个人原因辞职" in grant.revoked_reason
    assert row.grants_revoked == 1
    # the claimed task went back to the group, the own application was withdrawn; both listed for 医务处
    db_session.refresh(review)
    assert review.status == "ready" and review.assignee_id is None
    db_session.refresh(own)
    assert own.status == "withdrawn"
    assert db_session.get(ProcessInstance, own.instance_id).status == "withdrawn"
    actions = {(a["kind"], a["action"]) for a in row.affected_tasks}
    assert actions == {("task", "released"), ("instance", "withdrawn")}
    login("mao")
    html = client.get(f"/archives/departures/{row.id}").get_data(as_text=True)
    assert "放回任务组" in html and "发起的流程已撤回" in html and "科室考核" in html
    assert db_session.scalar(select(AuditLog.id).where(AuditLog.action == "archive.departure_registered",
                                                       AuditLog.entity_id == str(row.id)))
    with pytest.raises(InvalidTransition):
        departure.register_departure(staff=head, kind="retirement", departure_date=services.today(), reason="x",
                                     actor=mao)


def test_departed_archive_is_read_only_for_the_department_head(deployed, client, login, user, db_session):
    doc, head, mao = user("gs_doc2"), user("gs_head"), user("mao")
    departure.register_departure(staff=doc, kind="retirement", departure_date=services.today(), reason="退休",
                                 actor=mao)
    assert services.can_view(head, doc)
    assert services.edit_mode(head, doc, "work") is None
    assert services.edit_mode(mao, doc, "work") == "direct"
    with pytest.raises(Forbidden):
        services.submit_change(staff=doc, section_key="work", actor=head,
                               data={"start_date": "2019-08-01", "employer": "本院"})
    token = login("gs_head")
    page = client.get(f"/archives/{doc.id}?tab=work").get_data(as_text=True)
    assert "档案只读" in page and "新增工作经历" not in page
    assert client.get(f"/archives/{doc.id}/work/new").status_code == 403
    assert client.post(f"/archives/{doc.id}/work/new", data={"csrf_token": token, "start_date": "2019-08-01",
                                                            "employer": "本院"}).status_code == 403
    services.submit_change(staff=doc, section_key="work", actor=mao,
                           data={"start_date": "2019-08-01", "employer": "本院"})  # 医务处 still maintains it


def test_departure_input_is_checked_and_only_the_office_registers(deployed, user, db_session):
    doc, mao = user("card_doc"), user("mao")
    with pytest.raises(ValidationFailed) as err:
        departure.register_departure(staff=doc, kind="fired", departure_date="2099-01-01", reason="", actor=mao)
    assert {e["path"] for e in err.value.errors} == {"kind", "departure_date", "reason"}
    db_session.refresh(doc)
    assert doc.departed_at is None and doc.is_active
    with pytest.raises(Forbidden):
        departure.register_departure(staff=doc, kind="dismissal", departure_date=services.today(), reason="x",
                                     actor=user("card_head"))


def test_reinstatement_needs_committee_approval_and_restores_login_but_not_grants(
        deployed, client, login, user, ready, db_session):
    doc, mao, committee = user("orth_doc"), user("mao"), user("committee")
    grant = _grant(db_session, doc, _item(db_session, "BASIC-DIAG"))
    row = departure.register_departure(staff=doc, kind="resignation", departure_date=services.today(),
                                       reason="外出进修", actor=mao)
    departure.request_reinstatement(departure=row, reason="进修结束返院", actor=mao)
    assert row.status == "reinstating"
    [task] = ready(row.reinstatement_instance_id)
    assert (task.spec_name, task.role_code) == ("committee_review", "committee")
    wf.send_back(task_id=task.id, actor=committee, reason="请附进修结业证明")
    [revise] = ready(row.reinstatement_instance_id)
    assert revise.assignee_id == mao.id
    wf.complete(task_id=revise.id, actor=mao, data={"reason": "进修结束返院，已附结业证明", "revision_note": "已补充"})
    db_session.refresh(doc)
    assert doc.departed_at is not None  # nothing changes before approval
    [task] = ready(row.reinstatement_instance_id)
    wf.complete(task_id=task.id, actor=committee, data={"decision": "approve", "comment": "同意复职"})
    db_session.refresh(row)
    db_session.refresh(doc)
    db_session.refresh(grant)
    assert row.status == "reinstated" and row.reinstatement_reason == "进修结束返院，已附结业证明"
    assert doc.departed_at is None and doc.is_active
    assert grant.status == "revoked"
    login("orth_doc")
    assert client.get("/archives/me").status_code == 302


def test_rejected_reinstatement_leaves_the_person_departed(deployed, user, ready, db_session):
    doc, mao, committee = user("card_doc"), user("mao"), user("committee")
    row = departure.register_departure(staff=doc, kind="dismissal", departure_date=services.today(), reason="违纪",
                                       actor=mao)
    departure.request_reinstatement(departure=row, reason="申诉", actor=mao)
    with pytest.raises(InvalidTransition):
        departure.request_reinstatement(departure=row, reason="再次", actor=mao)
    [task] = ready(row.reinstatement_instance_id)
    wf.complete(task_id=task.id, actor=committee, data={"decision": "reject", "comment": "不符合条件"})
    db_session.refresh(row)
    db_session.refresh(doc)
    assert row.status == "departed" and doc.departed_at is not None and not doc.is_active


def test_one_departure_registration_ends_every_grant_end_to_end(deployed, app, client, login, user, db_session):
    """Issue 5: login refused, HIS told at once, every grant queued for HIS as revoked, high-risk authorisations
    and day-surgery qualifications ended, the archive read-only, nothing deleted."""
    from sqlalchemy import func

    from app.auth.models import User
    from app.auth.services import create_api_token
    from app.demo import DEMO_PASSWORD
    from app.outbox.models import OutboxMessage
    from app.privileges import check
    from app.technology.models import (
        DaySurgeryProcedure,
        DaySurgeryQualification,
        HighRiskAuthorization,
        HighRiskItem,
    )
    from app.technology.services import day_surgery, high_risk
    from tests.conftest import csrf_from

    # a fresh check index: rolled-back earlier tests reuse version numbers (see tests/privileges/test_check_api.py)
    app.extensions[check.EXTENSION] = check.CheckCache(app)
    doc, mao = user("gs_doc"), user("mao")
    grants = [_grant(db_session, doc, _item(db_session, code)) for code in ("BASIC-DIAG", "BASIC-RX", "SP-POCT")]
    privileges.suspend_grant(grant=grants[2], reason="质控调查", actor=mao)  # a suspended grant ends too
    hr_items = [db_session.scalar(select(HighRiskItem).where(HighRiskItem.code == c)) for c in ("HR-GS-01", "HR-GS-02")]
    auths = [high_risk.authorize(item=i, data={"user_id": doc.id, "role_in_team": "术者"}, actor=mao) for i in hr_items]
    procs = list(db_session.scalars(select(DaySurgeryProcedure).where(DaySurgeryProcedure.specialty == "普通外科")
                                    .order_by(DaySurgeryProcedure.code).limit(2)))
    quals = [DaySurgeryQualification(user_id=doc.id, dept_id=doc.dept_id, procedure_id=p.id, status="active",
                                     valid_from=services.today()) for p in procs]
    db_session.add_all(quals)
    db_session.flush()
    day_surgery.suspend_qualification(qualification=quals[1], reason="并发症调查", actor=mao)
    his = {"Authorization": f"Bearer {create_api_token(system='HIS')}"}
    db_session.commit()
    counted = (Grant, HighRiskAuthorization, DaySurgeryQualification, User)
    before = {m: db_session.scalar(select(func.count()).select_from(m)) for m in counted}
    query = {"staff_no": doc.staff_no, "category": "basic", "code": "BASIC-DIAG"}
    assert client.get("/api/v1/privileges/check", query_string=query, headers=his).get_json()["allowed"] is True
    assert all(high_risk.is_authorised(user_id=doc.id, item=i) for i in hr_items)
    assert day_surgery.is_qualified(user_id=doc.id, procedure_id=procs[0].id)
    login("gs_doc")
    assert client.get("/archives/me").status_code == 302

    token = login("mao")
    resp = client.post(f"/archives/{doc.id}/departure", data={"csrf_token": token, "kind": "resignation",
                                                              "departure_date": services.today().isoformat(),
                                                              "reason": "个人原因辞职"})
    assert resp.status_code == 302
    row = db_session.scalar(select(Departure).where(Departure.user_id == doc.id))
    assert (row.grants_revoked, row.technology_revoked) == (3, 4)
    assert "4 项" in client.get(f"/archives/departures/{row.id}").get_data(as_text=True)

    # login refused
    client.post("/logout", data={"csrf_token": token})
    refused = client.post("/login", data={"username": "gs_doc", "password": DEMO_PASSWORD,
                                          "csrf_token": csrf_from(client.get("/login").get_data(as_text=True))})
    assert refused.status_code != 302 and "已停用" in refused.get_data(as_text=True)
    # HIS is refused at once, whatever the item
    for code in ("BASIC-DIAG", "BASIC-RX", "SP-POCT"):
        category = "special" if code.startswith("SP-") else "basic"
        body = client.get("/api/v1/privileges/check", headers=his,
                          query_string=query | {"category": category, "code": code}).get_json()
        assert body["allowed"] is False and "该医师已离职" in body["reason"], body
    # every grant ended with the reason and queued for HIS as revoked
    queued = db_session.scalars(select(OutboxMessage).where(OutboxMessage.channel == "his")
                                .order_by(OutboxMessage.id)).all()
    for grant in grants:
        db_session.refresh(grant)
        assert grant.status == "revoked" and "个人原因辞职" in grant.revoked_reason
        last = [m for m in queued if m.key == privileges.grant_key(grant)][-1]
        assert (last.payload["status"], last.payload["staff_no"], last.status) == ("revoked", doc.staff_no, "pending")
        assert "个人原因辞职" in last.payload["reason"]
    # high-risk authorisations and day-surgery qualifications ended, with the reason, audited
    for auth in auths:
        db_session.refresh(auth)
        assert (auth.status, auth.revoked_by_id) == ("revoked", mao.id) and "个人原因辞职" in auth.revoke_reason
        assert db_session.scalar(select(AuditLog.id).where(AuditLog.action == "technology.high_risk_revoked",
                                                           AuditLog.entity_id == str(auth.id)))
    for q in quals:
        db_session.refresh(q)
        assert (q.status, q.revoked_by_id) == ("revoked", mao.id) and "个人原因辞职" in q.revoke_reason
        assert db_session.scalar(select(AuditLog.id).where(
            AuditLog.action == "technology.day_surgery_qualification_revoked", AuditLog.entity_id == str(q.id)))
    assert not any(high_risk.is_authorised(user_id=doc.id, item=i) for i in hr_items)
    assert not any(day_surgery.is_qualified(user_id=doc.id, procedure_id=p.id) for p in procs)
    # the archive is read-only for the department head (archives.view / archives.edit, not archives.manage)
    token = login("gs_head")
    page = client.get(f"/archives/{doc.id}?tab=work").get_data(as_text=True)
    assert "档案只读" in page and "新增工作经历" not in page
    assert client.post(f"/archives/{doc.id}/work/new", data={"csrf_token": token, "start_date": "2019-08-01",
                                                            "employer": "本院"}).status_code == 403
    db_session.refresh(doc)  # loaded before the requests
    assert doc.departed_at is not None and doc.is_active is False
    assert services.edit_mode(user("gs_head"), doc, "work") is None
    # nothing deleted
    assert {m: db_session.scalar(select(func.count()).select_from(m)) for m in counted} == before
