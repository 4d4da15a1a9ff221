"""Demo data for the embedded default and the browser tests (idempotent)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from app.auth.models import Campus, Department, User
from app.auth.services import create_user, ensure_roles
from app.db import db

DEMO_PASSWORD = "Medloop@2026"

CAMPUSES = [("HQ", "总院"), ("EAST", "东院区")]
DEPARTMENTS = [
    ("GS", "普外科", "HQ", "1001", "clinical"),
    ("CARD", "心内科", "HQ", "1002", "clinical"),
    ("ORTH", "骨科", "EAST", "2001", "clinical"),
    ("ANES", "麻醉科", "HQ", "1010", "clinical"),
    ("LAB", "检验科", "HQ", "1020", "tech"),
    ("PHARM", "药剂科", "HQ", "1030", "tech"),
    ("MAO", "医务处", "HQ", "9001", "admin"),
    ("IT", "信息科", "HQ", "9002", "admin"),
]
# username, name, dept, roles, staff_no, title
USERS = [
    ("admin", "系统管理员", "IT", ["admin"], "A0001", None),
    ("flow", "流程管理员", "IT", ["process_admin"], "A0002", None),
    ("mao", "王医务", "MAO", ["mao"], "M0001", "主任科员"),
    ("committee", "李主任委员", "MAO", ["committee"], "M0002", "主任医师"),
    ("gs_head", "张主任", "GS", ["dept_head", "dept_group", "physician"], "D1001", "主任医师"),
    ("gs_doc", "陈医生", "GS", ["physician"], "D1002", "主治医师"),
    ("gs_doc2", "刘医生", "GS", ["physician"], "D1003", "住院医师"),
    ("card_head", "赵主任", "CARD", ["dept_head", "dept_group", "physician"], "D2001", "主任医师"),
    ("card_doc", "孙医生", "CARD", ["physician"], "D2002", "副主任医师"),
    ("orth_doc", "周医生", "ORTH", ["physician"], "D3001", "主治医师"),
    ("nurse", "吴护士", "GS", ["nurse"], "N1001", "主管护师"),
    ("pharm", "郑药师", "PHARM", ["pharmacist"], "P1001", "主管药师"),
    ("quality", "冯质控", "MAO", ["quality"], "Q0001", None),
    ("expert1", "钱专家", "CARD", ["expert", "physician"], "TE001", "主任医师"),
    ("expert2", "韩专家", "ORTH", ["expert", "physician"], "TE002", "主任医师"),
    ("ethics1", "蒋委员", "MAO", ["ethics_member"], "TH001", "主任医师"),
    ("ethics2", "沈委员", "MAO", ["ethics_member"], "TH002", "副主任医师"),
    ("ethics3", "杨委员", "MAO", ["ethics_member"], "TH003", "主任药师"),
]

# other domains add their demo loaders here (name -> function returning a count)
EXTRA_LOADERS: dict[str, Callable[[], int]] = {}


def load_demo() -> dict[str, int]:
    """Create demo campuses, departments and one user per role; then run each domain's demo loader."""
    ensure_roles()
    campuses = {c.code: c for c in db.session.scalars(select(Campus))}
    for code, name in CAMPUSES:
        if code not in campuses:
            campuses[code] = Campus(code=code, name=name)
            db.session.add(campuses[code])
    db.session.flush()
    depts = {d.code: d for d in db.session.scalars(select(Department))}
    for code, name, campus, his_code, kind in DEPARTMENTS:
        if code not in depts:
            depts[code] = Department(code=code, name=name, campus_id=campuses[campus].id, his_code=his_code, kind=kind)
            db.session.add(depts[code])
    db.session.flush()
    existing = set(db.session.scalars(select(User.username)))
    created = 0
    for username, name, dept, roles, staff_no, title in USERS:
        if username in existing:
            continue
        create_user(username=username, name=name, password=DEMO_PASSWORD, dept=depts[dept], roles=roles,
                    staff_no=staff_no, title=title, check_strength=False)
        created += 1
    from app.deploy import deploy_shipped

    deployed = deploy_shipped()
    summary = {"院区": len(campuses), "科室": len(depts), "新建用户": created,
               "新部署表单": deployed["forms"], "新部署流程": deployed["processes"]}
    for name, loader in EXTRA_LOADERS.items():
        summary[name] = loader()
    return summary
