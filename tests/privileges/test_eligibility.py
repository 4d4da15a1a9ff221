"""Who may hold a privilege (seed 000 §三.2): title, certificates, 定期考核 and the new-tech team are checked when a
physician applies and in batch grants; 医务处 may override with a reason, which is audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.errors import ValidationFailed
from app.privileges import eligibility, services
from app.privileges.models import Grant, PrivilegeApplication


def _count(db_session, model) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


def _errors(exc) -> dict[str, str]:
    return {e["path"]: e["message"] for e in exc.value.errors}


@pytest.fixture
def make_physician(db_session):
    """A fresh physician of a demo department, with or without a 执业证 (expiring in `cert_days` days)."""
    from app.archives.models import Certificate, CertificateType
    from app.auth.models import Department
    from app.auth.services import create_user

    counter = {"n": 0}

    def _make(title: str | None = "主治医师", *, dept: str = "GS", cert_days: int | None = 365):
        counter["n"] += 1
        d = db_session.scalar(select(Department).where(Department.code == dept))
        user = create_user(username=f"elig{counter['n']}", name=f"资格医生{counter['n']}", password=None, dept=d,
                           roles=["physician"], staff_no=f"EL{counter['n']:03d}", title=title,
                           check_strength=False)
        if cert_days is not None:
            practice = db_session.scalar(select(CertificateType).where(CertificateType.code == "practice"))
            db_session.add(Certificate(user_id=user.id, type_id=practice.id, number=f"P-EL{counter['n']}",
                                       expiry_date=services.today() + timedelta(days=cert_days)))
        db_session.flush()
        return user

    return _make


def _assessment(db_session, user, *, result: str = "合格", days_ago: int = 200):
    from app.archives.models import ArchiveEntry, ArchiveRecord

    when = services.today() - timedelta(days=days_ago)
    entry = ArchiveEntry(user_id=user.id, section="periodic_assessment")
    db_session.add(entry)
    db_session.flush()
    db_session.add(ArchiveRecord(entry_id=entry.id, user_id=user.id, section="periodic_assessment", version=1,
                                 action="create", status="effective", source="manual",
                                 data={"cycle": f"{when.year - 2}-{when.year}", "assessment_date": when.isoformat(),
                                       "result": result}))
    db_session.flush()


def test_titles_compare_by_rank_within_their_series():
    assert eligibility.title_rank("住院医师") == ("医疗", 1)
    assert eligibility.title_rank("副主任医师") == ("医疗", 3)
    assert eligibility.title_rank("主管药师") == ("药学", 2)
    assert eligibility.title_rank("主任科员") is None
    assert eligibility.title_requirement("主治医师") == "主治医师及以上"
    assert eligibility.title_requirement("主任医师") == "主任医师"


def test_a_too_junior_physician_gets_a_per_item_error_and_nothing_is_written(db_session, user, item, fake_start):
    before = _count(db_session, PrivilegeApplication)
    with pytest.raises(ValidationFailed) as err:
        services.apply(applicant=user("gs_doc2"), reason="门诊需要",
                       item_ids=[item("BASIC-DIAG").id, item("SP-ABX-2").id, item("SP-ABX-3").id])
    errors = _errors(err)
    assert errors["item_ids/1"] == "职称不符：该项目需主治医师及以上，当前为住院医师"
    assert errors["item_ids/2"].startswith("职称不符：该项目需副主任医师及以上，当前为住院医师")
    assert "定期考核不符" in errors["item_ids/2"]  # 特殊使用级 also needs a passed 定期考核
    assert "item_ids/0" not in errors  # 诊疗权限 fits
    assert _count(db_session, PrivilegeApplication) == before and fake_start == []


def test_a_senior_enough_physician_applies(db_session, user, item, fake_start):
    application = services.apply(applicant=user("gs_doc"), item_ids=[item("SP-ABX-2").id], reason="病区需要")
    assert application.status == "in_review" and application.override_reason is None


def test_a_missing_or_expired_certificate_blocks_the_item(db_session, item, make_physician):
    from app.archives.models import Certificate

    doc = make_physician("主治医师", cert_days=None)
    with pytest.raises(ValidationFailed) as err:
        services.create_application(applicant=doc, item_ids=[item("BASIC-DIAG").id], reason="x")
    assert _errors(err)["item_ids/0"] == "缺少执业证：该项目需有效的执业证，档案中未登记"

    expired = make_physician("主治医师", cert_days=-1)
    with pytest.raises(ValidationFailed) as err:
        services.create_application(applicant=expired, item_ids=[item("BASIC-DIAG").id], reason="x")
    last = services.today() - timedelta(days=1)
    assert _errors(err)["item_ids/0"] == f"执业证已过期：档案中的执业证有效期至 {last.isoformat()}，请先更新证件"

    # a deleted certificate does not count; a renewed one does
    cert = db_session.scalar(select(Certificate).where(Certificate.user_id == expired.id))
    db_session.add(Certificate(user_id=expired.id, type_id=cert.type_id, number="RENEWED", is_deleted=True,
                               expiry_date=services.today() + timedelta(days=900)))
    db_session.flush()
    with pytest.raises(ValidationFailed):
        services.create_application(applicant=expired, item_ids=[item("BASIC-DIAG").id], reason="x")
    cert.expiry_date = services.today()  # valid through its last day
    db_session.flush()
    assert services.create_application(applicant=expired, item_ids=[item("BASIC-DIAG").id], reason="x").id


def test_grade_4_needs_a_passed_periodic_assessment_within_three_years(db_session, surgery_item, make_physician):
    doc = make_physician("副主任医师")
    op4 = surgery_item(4)

    def problem() -> str | None:
        try:
            services.create_application(applicant=doc, item_ids=[op4.id], reason="四级手术")
        except ValidationFailed as exc:
            return {e["path"]: e["message"] for e in exc.errors}["item_ids/0"]
        return None

    assert problem() == "定期考核不符：该项目需近 3 年定期考核合格，档案中无已生效的定期考核记录"
    _assessment(db_session, doc, result="合格", days_ago=4 * 365)
    assert "已超过 3 年考核周期" in problem()
    _assessment(db_session, doc, result="不合格", days_ago=30)
    assert problem().startswith("定期考核不符：最近一次定期考核") and problem().endswith("结果为不合格")
    _assessment(db_session, doc, result="合格", days_ago=10)
    assert problem() is None


def test_the_office_overrides_with_a_reason_and_it_is_audited(db_session, user, item, fake_start):
    junior, mao = user("gs_doc2"), user("mao")
    abx3 = item("SP-ABX-3")
    with pytest.raises(ValidationFailed) as err:  # a physician cannot override for themselves
        services.apply(applicant=junior, item_ids=[abx3.id], reason="抢救需要", override_reason="我很需要",
                       actor=junior)
    assert _errors(err)["override_reason"] == "只有医务处（医疗权限管理）可以特批资格不符的项目"
    assert "item_ids/0" in _errors(err)
    with pytest.raises(ValidationFailed) as err:
        services.apply(applicant=junior, item_ids=[abx3.id], reason="抢救需要", override_reason="  ", actor=mao)
    assert set(_errors(err)) == {"item_ids/0"}  # an empty reason overrides nothing

    application = services.apply(applicant=junior, item_ids=[abx3.id], reason="抢救需要",
                                 override_reason="院感会诊专家组同意，限 ICU 轮转期间", actor=mao)
    assert application.override_reason == "院感会诊专家组同意，限 ICU 轮转期间"
    assert application.override_by_id == mao.id
    row = db_session.scalar(select(AuditLog).where(AuditLog.action == "privilege.eligibility_overridden",
                                                   AuditLog.entity_id == str(application.id)))
    assert row.actor_id == mao.id and row.after["reason"] == application.override_reason
    [overridden] = row.after["items"]
    assert overridden["code"] == "SP-ABX-3" and any("职称不符" in p for p in overridden["problems"])


def test_a_fitting_application_records_no_override(db_session, user, item, fake_start):
    application = services.apply(applicant=user("gs_doc"), item_ids=[item("BASIC-RX").id], reason="门诊",
                                 override_reason="无需特批", actor=user("mao"))
    assert application.override_reason is None
    assert db_session.scalar(select(AuditLog).where(AuditLog.action == "privilege.eligibility_overridden",
                                                    AuditLog.entity_id == str(application.id))) is None


def _project(db_session, user, *, team: list[str]):
    from app.technology.models import NewTechProject

    lead = user("gs_doc")
    project = NewTechProject(name="经皮内镜下胃造瘘术", category="surgery", dept_id=lead.dept_id,
                             campus_id=lead.campus_id, applicant_id=lead.id, lead_id=lead.id, team=team,
                             description="测试项目", risk_level="medium", status="tracking")
    db_session.add(project)
    db_session.flush()
    item = services.sync_new_tech_item(number=project.number, name=project.name, active=True, note="测试",
                                       actor=user("mao"))
    return project, item


def test_a_new_tech_item_is_for_the_project_team_only(db_session, user, item, fake_start):
    project, nt = _project(db_session, user, team=["刘医生 住院医师 助手", "D3001（外院进修）"])
    for member in ("gs_doc", "gs_doc2", "orth_doc"):  # lead; by name; by staff number
        assert services.create_application(applicant=user(member), item_ids=[nt.id], reason="团队成员").id
    with pytest.raises(ValidationFailed) as err:
        services.create_application(applicant=user("card_doc"), item_ids=[nt.id], reason="想参与")
    assert _errors(err)["item_ids/0"] == f"非项目团队成员：新技术新项目 {project.number} 仅限项目负责人及团队成员申请"
    with pytest.raises(ValidationFailed) as err:  # a catalogue item with no project behind it
        services.create_application(applicant=user("gs_doc"), item_ids=[item("NT-ROBOT-LAP").id], reason="x")
    assert "未找到该项目的立项记录" in _errors(err)["item_ids/0"]


def test_a_suspended_new_tech_project_takes_no_new_holders(db_session, user, fake_start):
    project, nt = _project(db_session, user, team=["刘医生 住院医师 助手"])
    project.status = "suspended"  # 中止 at its follow-up review
    db_session.flush()
    with pytest.raises(ValidationFailed) as err:
        services.create_application(applicant=user("gs_doc2"), item_ids=[nt.id], reason="团队成员")
    assert _errors(err)["item_ids/0"] == f"新技术新项目 {project.number} 已中止（暂停开展），中止期间不能新授权"
    project.status = "tracking"  # resumed
    db_session.flush()
    assert services.create_application(applicant=user("gs_doc2"), item_ids=[nt.id], reason="团队成员").id


def test_batch_rows_report_each_unfit_physician_and_the_override_grants_them(db_session, user, item):
    mao, gs = user("mao"), user("gs_doc").dept_id
    ids = [user("gs_doc").id, user("gs_doc2").id]
    before = _count(db_session, Grant)
    plan = services.plan_batch_grant(viewer=mao, dept_id=gs, user_ids=ids, item_codes=["SP-ABX-2", "ANES-1"],
                                     reason="2026 年度考核")
    rows = {(r.user.username, r.item.code): r for r in plan.rows}
    assert plan.has_errors and plan.counts == {"grant": 1, "renew": 0, "skip": 0, "error": 3}
    assert rows[("gs_doc", "SP-ABX-2")].status == "grant"
    assert rows[("gs_doc2", "SP-ABX-2")].message == "职称不符：该项目需主治医师及以上，当前为住院医师"
    assert rows[("gs_doc", "ANES-1")].message == "不在科室技术目录内：普外科的科室技术目录未包含该项目"
    with pytest.raises(services.BatchRejected) as err:
        services.batch_grant(viewer=mao, dept_id=gs, user_ids=ids, item_codes=["SP-ABX-2"], reason="2026 年度考核")
    assert [e["path"] for e in err.value.errors] == ["rows/1"]
    assert "职称不符" in err.value.errors[0]["message"]
    assert _count(db_session, Grant) == before

    last_audit = db_session.scalar(select(func.max(AuditLog.id)))  # the demo data has overrides of its own
    plan = services.batch_grant(viewer=mao, dept_id=gs, user_ids=ids, item_codes=["SP-ABX-2"],
                                reason="2026 年度考核", override_reason="科室人员紧缺，医务处会议纪要 2026-07")
    assert plan.counts["grant"] == 2 and _count(db_session, Grant) == before + 2
    overridden = [r for r in plan.rows if r.overridden]
    assert [r.user.username for r in overridden] == ["gs_doc2"] and "医务处特批" in overridden[0].message
    audits = db_session.scalars(select(AuditLog).where(AuditLog.action == "privilege.eligibility_overridden",
                                                       AuditLog.id > last_audit).order_by(AuditLog.id)).all()
    assert [a.entity_id for a in audits] == [str(overridden[0].grant.id)]
    assert audits[0].after["reason"] == "科室人员紧缺，医务处会议纪要 2026-07"
    batch = db_session.scalar(select(AuditLog).where(AuditLog.action == "privilege.batch_granted")
                              .order_by(AuditLog.id.desc()).limit(1))
    assert batch.after["overridden"] == [overridden[0].grant.id]


def test_batch_page_shows_the_unfit_rows_and_takes_an_override(client, login, user, db_session):
    token = login("mao")
    gs = user("gs_doc").dept_id
    form = {"csrf_token": token, "dept_id": str(gs), "user_ids": [str(user("gs_doc2").id)],
            "item_codes": "SP-ABX-2", "reason": "考核合格", "action": "preview"}
    resp = client.post("/privileges/manage/batch", data=form)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "职称不符：该项目需主治医师及以上，当前为住院医师" in html
    resp = client.post("/privileges/manage/batch", data=form | {"override_reason": "会议纪要 12 号", "action": "confirm"})
    assert resp.status_code == 200 and "授予结果" in resp.get_data(as_text=True)
    assert db_session.scalar(select(Grant).where(Grant.user_id == user("gs_doc2").id)) is not None


def test_apply_page_shows_each_requirement_and_whether_it_is_met(client, login, item):
    login("gs_doc2")
    html = client.get("/privileges/apply", query_string={"category": "special", "q": "抗菌"}).get_data(as_text=True)
    assert "✓ 住院医师及以上" in html and "✓ 有效的执业证" in html
    assert "✗ 职称不符：该项目需主治医师及以上，当前为住院医师" in html
    assert "✗ 定期考核不符" in html
    assert "医务处特批理由" not in html  # only the office may override
    token = login("gs_doc2")
    resp = client.post("/privileges/apply", data={"csrf_token": token, "item_ids": [str(item("SP-ABX-2").id)],
                                                  "reason": "需要"})
    assert resp.status_code == 400 and "职称不符：该项目需主治医师及以上" in resp.get_data(as_text=True)


def test_the_office_changes_an_items_rules(db_session, user, item):
    mao, abx2 = user("mao"), item("SP-ABX-2")
    assert abx2.rules_note.startswith("演示默认规则")
    with pytest.raises(ValidationFailed) as err:
        eligibility.save_item_rules(item=abx2, actor=mao, min_title="高级", cert_types=["practice", "nope"],
                                    requires_assessment=None, rules_note=None)
    assert set(_errors(err)) == {"min_title", "cert_types/1"}
    eligibility.save_item_rules(item=abx2, actor=mao, min_title="住院医师", cert_types=None,
                                requires_assessment=None, rules_note="院药事会 2026 年第 3 次会议")
    assert services.create_application(applicant=user("gs_doc2"), item_ids=[abx2.id], reason="x").id
    row = db_session.scalar(select(AuditLog).where(AuditLog.action == "privilege.item_rules_saved",
                                                   AuditLog.entity_id == str(abx2.id)))
    assert row.before["min_title"] == "主治医师" and row.after["min_title"] == "住院医师"
    assert eligibility.requirements(abx2) == ["住院医师及以上", "有效的执业证"]  # the category's 执业证 still applies


def test_the_review_context_shows_the_override(app, db_session, user, item, fake_start):
    from types import SimpleNamespace

    from app.privileges import flow

    application = services.apply(applicant=user("gs_doc2"), item_ids=[item("SP-ABX-2").id], reason="x",
                                 override_reason="专家组同意", actor=user("mao"))
    with app.test_request_context():
        html = str(flow.render_context(SimpleNamespace(id=application.instance_id, business_key=application.number)))
    assert "医务处特批" in html and "专家组同意" in html and "王医务" in html
