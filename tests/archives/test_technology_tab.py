"""The archive's 技术授权 tab: clinical-privilege grants plus the technology domain's high-risk authorisations,
day-surgery qualifications and the new-technology projects the person leads or works on (read-only, linked)."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select

from app.archives import services
from app.auth.models import Department
from app.technology.models.day_surgery import DaySurgeryProcedure, DaySurgeryQualification
from app.technology.models.high_risk import HighRiskAuthorization, HighRiskItem
from app.technology.models.new_tech import NewTechProject


def _project(db_session, *, name: str, dept: Department, applicant, lead, team: list[str]) -> NewTechProject:
    row = NewTechProject(name=name, category="surgery", dept_id=dept.id, applicant_id=applicant.id, lead_id=lead.id,
                         team=team, description="测试项目", risk_level="medium", status="tracking")
    db_session.add(row)
    db_session.flush()
    return row


def test_technology_tab_shows_high_risk_day_surgery_and_new_technology(deployed, client, login, user, db_session):
    doc, head, other = user("gs_doc"), user("gs_head"), user("card_doc")
    gs = db_session.scalar(select(Department).where(Department.code == "GS"))
    item = HighRiskItem(code="T-HR-ARCH", name="档案测试高风险技术", category="interventional", dept_id=gs.id)
    db_session.add(item)
    db_session.flush()
    db_session.add_all([
        HighRiskAuthorization(item_id=item.id, user_id=doc.id, role_in_team="术者", valid_from=date(2024, 1, 1),
                              valid_until=date(2099, 12, 31)),
        HighRiskAuthorization(item_id=item.id, user_id=other.id, role_in_team="术者", valid_from=date(2024, 1, 1)),
    ])
    procedure = DaySurgeryProcedure(code="T-DS-ARCH", specialty="普通外科", disease_name="档案测试病种",
                                    procedure_name="档案测试日间术式", grade=2)
    db_session.add(procedure)
    db_session.flush()
    db_session.add(DaySurgeryQualification(user_id=doc.id, dept_id=gs.id, procedure_id=procedure.id,
                                           status="suspended", valid_from=date(2024, 3, 1), suspend_reason="质控暂停"))
    led = _project(db_session, name="档案测试负责项目", dept=gs, applicant=head, lead=doc, team=[])
    member = _project(db_session, name="档案测试参与项目", dept=gs, applicant=head, lead=head,
                      team=["张主任 主任医师 术者", "陈医生（主治医师，一助）"])
    _project(db_session, name="档案测试无关项目", dept=gs, applicant=head, lead=head, team=["陈医生甲 住院医师"])

    roles = {r.project.id: r.roles for r in services.new_tech_projects(doc)}
    assert roles == {led.id: ["项目负责人"], member.id: ["团队成员"]}
    assert {r.project.name for r in services.new_tech_projects(head)} == {
        "档案测试负责项目", "档案测试参与项目", "档案测试无关项目"}
    assert [a.item.name for a in services.high_risk_authorizations(doc)] == ["档案测试高风险技术"]

    login("gs_doc")  # the person's own archive
    html = client.get(f"/archives/{doc.id}?tab=privileges").get_data(as_text=True)
    assert "医疗权限授权" in html and 'id="high-risk-table"' in html and 'id="day-surgery-table"' in html
    assert f'href="/technology/high-risk/{item.id}"' in html and "档案测试高风险技术" in html and "术者" in html
    assert "档案测试日间术式" in html and "已暂停" in html and "质控暂停" in html
    assert f'href="/technology/new-tech/{led.id}"' in html and led.number in html
    assert f'href="/technology/new-tech/{member.id}"' in html and "团队成员" in html
    assert "档案测试无关项目" not in html
    # read-only: no action forms on this tab
    assert "<form" not in html.split('aria-label="档案栏目"', 1)[1]


def test_technology_tab_is_empty_for_a_person_without_records(deployed, client, login, user):
    login("mao")
    html = client.get(f"/archives/{user('pharm').id}?tab=privileges").get_data(as_text=True)
    assert "没有高风险诊疗技术授权" in html and "没有日间手术资质" in html and "没有负责或参与的新技术新项目" in html
