"""Completeness per person (missing sections, profile fields, certificates) and per department; statistics."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from app.archives import certificates, services
from app.archives.models import CertificateType
from app.auth.models import Campus, Department

from .conftest import PDF

PROFILE = {"gender": "女", "birth_date": "1990-03-07", "id_number": "330106199003071228", "education": "硕士研究生",
           "degree": "硕士", "hire_date": "2016-07-01"}


def _type(db_session, code: str) -> CertificateType:
    return db_session.scalar(select(CertificateType).where(CertificateType.code == code))


def _dept(db_session, code: str) -> Department:
    campus = db_session.scalar(select(Campus).where(Campus.code == "HQ"))
    d = Department(code=code, name=f"测试科{code}", campus_id=campus.id, his_code=f"H{code}")
    db_session.add(d)
    db_session.flush()
    return d


def test_completeness_counts_profile_sections_and_required_certificates(deployed, user, make_staff, db_session,
                                                                         upload_dir):
    mao = user("mao")
    _dept(db_session, "CMP1")
    doc = make_staff(dept="CMP1", title="主治医师")
    profile = services.get_profile(doc)
    # profile (1) + 4 required sections + diploma/qualification/practice (physician) + title (主治医师) = 9 items
    assert profile.completeness == 0 and len(profile.missing) == 9
    assert "基本信息缺少：性别、出生日期、身份证号、最高学历、最高学位、入职日期" in profile.missing
    services.submit_change(staff=doc, section_key="profile", actor=mao, data=PROFILE)
    services.submit_change(staff=doc, section_key="work", actor=mao,
                           data={"start_date": "2016-07-01", "employer": "本院"})
    services.submit_change(staff=doc, section_key="education", actor=mao,
                           data={"start_date": "2008-09-01", "school": "浙江大学", "education": "硕士研究生"})
    db_session.refresh(profile)
    assert profile.completeness == round(100 * 3 / 9)
    assert "缺少定期考核" in profile.missing and "缺少职称评聘" in profile.missing
    today = services.today()
    for code in ("diploma", "qualification", "title"):
        certificates.add_certificate(staff=doc, actor=mao, data=certificates.CertificateInput(type_id=_type(db_session, code).id),
                                     files=[certificates.Upload(f"{code}.pdf", PDF)])
    certificates.add_certificate(staff=doc, actor=mao, data=certificates.CertificateInput(
        type_id=_type(db_session, "practice").id, expiry_date=(today - timedelta(days=1)).isoformat()),
        files=[certificates.Upload("practice.pdf", PDF)])
    db_session.refresh(profile)
    assert profile.completeness == round(100 * 6 / 9)
    assert any(m.startswith("执业证已过期") for m in profile.missing)
    rows = {r.dept_name: r for r in services.department_completeness(viewer=mao)}
    assert rows["测试科CMP1"].staff == 1 and rows["测试科CMP1"].average == round(100 * 6 / 9)
    assert rows["测试科CMP1"].buckets["medium"] == 1 and rows["测试科CMP1"].complete == 0


def test_settings_change_what_is_required(deployed, user, make_staff, db_session):
    mao = user("mao")
    _dept(db_session, "CMP2")
    # no physician or nurse role: no certificate required (nurses need the nurse certificates)
    doc = make_staff(dept="CMP2", title="住院医师", roles=("pharmacist",))
    assert services.get_profile(doc).missing == ["基本信息缺少：性别、出生日期、身份证号、最高学历、最高学位、入职日期",
                                                 "缺少教育经历", "缺少工作经历", "缺少职称评聘", "缺少定期考核"]
    rules = {s.key: {"requires_review": s.requires_review, "is_required": False, "staff_editable": s.staff_editable}
             for s in services.sections() if s.editable}
    services.save_settings(rules=rules, actor=mao)
    profile = services.get_profile(doc)
    db_session.refresh(profile)
    assert profile.missing == ["基本信息缺少：性别、出生日期、身份证号、最高学历、最高学位、入职日期"]
    assert profile.completeness == 0
    services.submit_change(staff=doc, section_key="profile", actor=mao, data=PROFILE)
    db_session.refresh(profile)
    assert profile.completeness == 100


def test_statistics_group_by_department_title_degree_and_age(deployed, user, make_staff, db_session):
    mao = user("mao")
    _dept(db_session, "CMP3")
    a = make_staff(dept="CMP3", title="主治医师")
    b = make_staff(dept="CMP3", title="主任医师")
    services.submit_change(staff=a, section_key="profile", actor=mao, data=PROFILE)
    services.submit_change(staff=b, section_key="profile", actor=mao,
                           data={"birth_date": "1960-01-01", "degree": "博士", "gender": "男"})
    head = make_staff(dept="CMP3", title="主任医师", roles=("dept_head",))
    stats = services.statistics(viewer=head)  # dept scope: only CMP3
    assert stats.total == 3
    assert dict(stats.by_dept) == {"测试科CMP3": 3}
    assert dict(stats.by_title) == {"主任医师": 2, "主治医师": 1}
    assert dict(stats.by_degree) == {"硕士": 1, "博士": 1, "（未填）": 1}
    ages = dict(stats.by_age)
    assert ages["60 岁及以上"] == 1 and ages["30–39 岁"] == 1 and ages["未填出生日期"] == 1
    assert stats.dept_title["测试科CMP3"] == {"主治医师": 1, "主任医师": 2}
    full = services.statistics(viewer=mao)
    assert full.total > stats.total
