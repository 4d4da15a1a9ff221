"""护理操作授权 (seed 000 §三.5): nursing items in the catalogue, the nursing title ladder and 护士执业证书 as their
rules, and a nurse applying online through the grant flow (科室考核 → 医务处, no 护理部 role yet) to a grant that the
HIS check API answers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from app.privileges import dept_catalogue, eligibility, services
from app.privileges.models import Grant, PrivilegeApplication, PrivilegeCategory

ROOT = Path(__file__).resolve().parents[2]
from app.workflow import models as wf_models  # noqa: E402
from app.workflow import services as wf  # noqa: E402
from tests.conftest import check_privilege  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_check_cache")  # the HIS check API answers below


@pytest.fixture
def deployed(db_session, user):
    from app.forms import services as forms

    forms.sync_files(ROOT / "forms")
    return wf.upload_version(bpmn_xml=(ROOT / "processes" / "privilege_grant.bpmn").read_text(encoding="utf-8"),
                             dmn={"privilege_levels.dmn": (ROOT / "processes" / "privilege_levels.dmn")
                                  .read_text(encoding="utf-8")},
                             actor=user("flow"), note="护理操作授权流程测试")


@pytest.fixture
def make_nurse(db_session):
    """A fresh nurse of 普外科 with a title, with or without a 护士执业证书."""
    from app.archives.models import Certificate, CertificateType
    from app.auth.models import Department
    from app.auth.services import create_user

    counter = {"n": 0}

    def _make(title: str | None = "护士", *, cert: bool = True):
        counter["n"] += 1
        gs = db_session.scalar(select(Department).where(Department.code == "GS"))
        nurse = create_user(username=f"nur{counter['n']}", name=f"护理{counter['n']}", password=None, dept=gs,
                            roles=["nurse"], staff_no=f"NU{counter['n']:03d}", title=title, check_strength=False)
        if cert:
            kind = db_session.scalar(select(CertificateType).where(CertificateType.code == "nurse_practice"))
            db_session.add(Certificate(user_id=nurse.id, type_id=kind.id, number=f"N-{counter['n']}",
                                       expiry_date=services.today() + timedelta(days=400)))
        db_session.flush()
        return nurse

    return _make


def _ready(application):
    task = wf_models.HumanTask
    return list(wf.db.session.scalars(select(task).where(task.instance_id == application.instance_id,
                                                         task.status == "ready")))


def test_the_catalogue_has_a_nursing_category_with_nurse_rules(db_session, item):
    nursing = db_session.scalar(select(PrivilegeCategory).where(PrivilegeCategory.code == "nursing"))
    assert nursing.name == "护理操作授权" and nursing.is_active and nursing.validity_years == 2
    assert (nursing.default_min_title, nursing.default_cert_types) == ("护士", ["nurse_practice"])
    assert eligibility.requirements(item("NUR-BASIC")) == ["护士及以上", "有效的护士执业证书"]
    assert eligibility.requirements(item("NUR-CVAD")) == ["护师及以上", "有效的护士执业证书"]
    assert eligibility.requirements(item("NUR-PICC")) == ["主管护师及以上", "有效的护士执业证书"]
    assert item("NUR-PICC").rules_note.startswith(eligibility.DEMO_NOTE)
    assert not dept_catalogue.restricts(item("NUR-BASIC"))  # nursing management, not the department's tech list


def test_the_nursing_title_ladder_and_the_nurse_certificate_decide(db_session, item, user, make_nurse):
    junior = make_nurse("护士")
    verdicts = eligibility.check_items(junior, [item("NUR-BASIC"), item("NUR-CVAD"), item("NUR-PICC")],
                                       on=services.today())
    assert verdicts[item("NUR-BASIC").id].ok
    assert verdicts[item("NUR-CVAD").id].message == "职称不符：该项目需护师及以上，当前为护士"
    senior = make_nurse("副主任护师")
    assert all(v.ok for v in eligibility.check_items(senior, [item("NUR-PICC"), item("NUR-ECMO")],
                                                    on=services.today()).values())
    uncertified = make_nurse("主管护师", cert=False)
    [verdict] = eligibility.check_items(uncertified, [item("NUR-BASIC")], on=services.today()).values()
    assert verdict.message == "缺少护士执业证书：该项目需有效的护士执业证书，档案中未登记"
    # a physician is on another ladder and holds a physician's 执业证, not a nurse's
    [doctor] = eligibility.check_items(user("gs_head"), [item("NUR-BASIC")], on=services.today()).values()
    assert "职称不符：该项目需护士及以上，当前为主任医师" in doctor.message and "缺少护士执业证书" in doctor.message
    # and a nurse does not meet a physician title
    [rx] = eligibility.check_items(senior, [item("BASIC-RX")], on=services.today()).values()
    assert "职称不符：该项目需住院医师及以上，当前为副主任护师" in rx.message


def test_demo_nurse_applies_online_through_the_flow_to_a_grant_the_check_api_allows(
        client, login, his, deployed, db_session, user, item):
    nurse = user("nurse")  # 吴护士, 普外科, 主管护师, 护士执业证书 on file
    token = login("nurse")
    page = client.get("/privileges/apply", query_string={"category": "nursing"}).get_data(as_text=True)
    assert "护理操作授权" in page and "经外周静脉置入中心静脉导管（PICC）置管" in page
    refused = client.post("/privileges/apply", data={"csrf_token": token, "item_ids": [str(item("BASIC-RX").id)],
                                                     "reason": "处方"})
    assert refused.status_code == 400 and "职称不符：该项目需住院医师及以上，当前为主管护师" in refused.get_data(as_text=True)
    picc, cvad = item("NUR-PICC"), item("NUR-CVAD")
    resp = client.post("/privileges/apply", data={"csrf_token": token, "item_ids": [str(picc.id), str(cvad.id)],
                                                  "reason": "取得 PICC 专科护士培训合格证书，申请置管与维护"})
    assert resp.status_code == 302, resp.get_data(as_text=True)[:2000]
    application = db_session.scalar(select(PrivilegeApplication).where(PrivilegeApplication.applicant_id == nurse.id))
    assert application.status == "in_review" and application.dept_id == nurse.dept_id
    assert application.number in client.get("/privileges/applications").get_data(as_text=True)

    # 科室考核: the department's assessment group (普外科: 张主任, head of department) — the lane is per department
    [dept] = _ready(application)
    assert (dept.spec_name, dept.role_code, dept.dept_id) == ("dept_review", "dept_group", nurse.dept_id)
    assert not wf.is_candidate(dept, user("card_head"))
    wf.complete(task_id=dept.id, actor=user("gs_head"), data={"decision": "approve", "score": 92})
    # then 医务处 (no 护理部 role exists: the office stands in for it); nursing items need no committee (DMN rule 6)
    [mao] = _ready(application)
    assert (mao.spec_name, mao.role_code) == ("mao_review", "mao")
    wf.complete(task_id=mao.id, actor=user("mao"), data={"decision": "approve", "qualification_checked": True})
    db_session.refresh(application)
    assert application.status == "approved" and _ready(application) == []
    grants = db_session.scalars(select(Grant).where(Grant.application_id == application.id)).all()
    assert sorted(g.item.code for g in grants) == ["NUR-CVAD", "NUR-PICC"]
    assert all(g.user_id == nurse.id and g.valid_until for g in grants)
    db_session.commit()

    for code in ("NUR-PICC", "NUR-CVAD"):
        assert check_privilege(client, his, "N1001", "nursing", code)["allowed"] is True, code
    other = check_privilege(client, his, "N1001", "nursing", "NUR-ECMO")
    assert other["allowed"] is False and other["reason"] == "未获得该项授权"
    stats = services.privilege_statistics(viewer=user("mao"), year=services.today().year,
                                          month=services.today().month)
    kinds = {r.label: r.grants[0] for r in stats.tables["kind"]}
    assert kinds["护理操作"] >= 2
