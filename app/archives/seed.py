"""Shipped data (certificate types and requirements) and demo archives for the embedded default (idempotent)."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select

from app.auth.models import User
from app.db import db

from . import certificates, services
from .models import Certificate, CertificateType

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def demo_id_number(area: str, birth: date, seq: int) -> str:
    """A well-formed ID number (valid check digit) for demo people; not a real person's."""
    body = f"{area}{birth:%Y%m%d}{seq:03d}"
    return body + "10X98765432"[sum(int(c) * w for c, w in zip(body, _WEIGHTS, strict=True)) % 11]


# username -> (gender, birth, education, degree, hire date, specialty)
DEMO = {
    "gs_head": ("男", date(1972, 3, 14), "博士研究生", "博士", date(1998, 7, 1), "肝胆胰外科、腹腔镜微创手术"),
    "gs_doc": ("男", date(1986, 9, 2), "硕士研究生", "硕士", date(2012, 7, 15), "胃肠外科"),
    "gs_doc2": ("女", date(1994, 5, 20), "大学本科", "学士", date(2019, 8, 1), "普通外科"),
    "card_head": ("男", date(1969, 11, 8), "博士研究生", "博士", date(1995, 7, 1), "冠心病介入治疗"),
    "card_doc": ("女", date(1979, 1, 30), "硕士研究生", "硕士", date(2005, 7, 1), "心律失常"),
    "orth_doc": ("男", date(1984, 6, 18), "硕士研究生", "硕士", date(2011, 7, 1), "关节外科"),
    "nurse": ("女", date(1990, 4, 12), "大学本科", "学士", date(2012, 7, 1), "外科护理"),
    "pharm": ("男", date(1988, 10, 5), "硕士研究生", "硕士", date(2014, 7, 1), "临床药学"),
}

# demo physicians with a passed 定期考核 on file (the seniors; the others show the missing record)
ASSESSED = ("gs_head", "card_head", "card_doc")


def seed_archives() -> int:
    """Certificate types/requirements, and one archive (profile, education, title, one certificate) per demo
    clinical user. Returns how many archives were created."""
    certificates.seed_types()
    users = {u.username: u for u in db.session.scalars(select(User).where(User.username.in_(list(DEMO))))}
    types = {t.code: t for t in db.session.scalars(select(CertificateType))}
    this_year = services.today().year
    created = 0
    for i, (username, (gender, birth, edu, degree, hired, specialty)) in enumerate(DEMO.items()):
        user = users.get(username)
        if user is None or services.get_profile(user) is not None:
            continue
        services.ensure_profile(user=user, actor="演示数据", origin="demo")
        profile = {
            "gender": gender, "birth_date": birth.isoformat(), "id_number": demo_id_number("330106", birth, 10 + i * 2),
            "education": edu, "degree": degree, "hire_date": hired.isoformat(), "specialty": specialty,
            "practice_cert_no": f"1103301{birth:%y}{i:06d}" if username not in ("nurse", "pharm") else None,
            "practice_category": {"nurse": "护理", "pharm": "药学"}.get(username, "临床"),
        }
        services.submit_change(staff=user, section_key=services.PROFILE, actor="演示数据", source="demo",
                               data={k: v for k, v in profile.items() if v is not None})
        services.submit_change(staff=user, section_key="education", actor="演示数据", source="demo", data={
            "start_date": date(birth.year + 18, 9, 1).isoformat(), "end_date": date(birth.year + 23, 7, 1).isoformat(),
            "school": "浙江大学医学院", "major": "临床医学" if username not in ("nurse", "pharm") else "护理学",
            "education": "大学本科", "degree": "学士", "study_form": "全日制"})
        if user.title:
            services.submit_change(staff=user, section_key="title_appointment", actor="演示数据", source="demo", data={
                "title": user.title if user.title in ("住院医师", "主治医师", "副主任医师", "主任医师", "主管护师", "主管药师")
                else "其他", "qualified_date": date(max(hired.year + 5, 2000), 6, 1).isoformat(), "method": "考试"})
        if "practice" in types and username not in ("nurse", "pharm"):
            # valid for at least a year from the day the demo is loaded (privileges need a valid 执业证)
            db.session.add(Certificate(user_id=user.id, type_id=types["practice"].id, number=f"P{330000 + i}",
                                       issuer="浙江省卫生健康委员会", issue_date=date(hired.year, 9, 1),
                                       expiry_date=date(this_year + 1 + i % 3, 12, 31), source="demo"))
        if "nurse_practice" in types and username == "nurse":
            # 护士执业证书: registration valid 5 years (《护士条例》); her 护士资格证 is left missing (reminder demo)
            db.session.add(Certificate(user_id=user.id, type_id=types["nurse_practice"].id, number=f"N{330000 + i}",
                                       issuer="浙江省卫生健康委员会", issue_date=date(this_year - 2, 9, 1),
                                       expiry_date=date(this_year + 3, 8, 31), source="demo"))
        if username in ASSESSED:
            # a 定期考核 passed last year: senior privileges (e.g. grade-4 surgery) ask for one within 3 years
            services.submit_change(staff=user, section_key="periodic_assessment", actor="演示数据", source="demo",
                                   data={"cycle": f"{this_year - 3}-{this_year - 1}",
                                         "assessment_date": date(this_year - 1, 6, 30).isoformat(),
                                         "kind": "一般程序", "result": "合格", "assessing_body": "市医师定期考核委员会"})
        created += 1
    db.session.flush()
    services.refresh_completeness()
    return created
