"""Catalogues and demo data of the technology domain (idempotent seeding, run by the demo loader and `medloop`).

- 国家限制类技术目录（2022年版）: the committed copy in app/privileges/data (12 items; spec titles partly inferred);
- 日间手术病种及术式推荐目录（国卫医函〔2016〕306号附件3，43 项）: app/technology/data, transcribed from the
  2019 manual; grades are NOT published per procedure, so the grades set here are demo values and say so;
- a small demo high-risk catalogue and demo day-surgery cases (source_system "demo") for the embedded default.
"""

from __future__ import annotations

import csv
import logging
import random
import re
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select

from app.auth.models import Department, User
from app.db import db
from app.errors import DomainError, ValidationFailed
from app.privileges import technology_link
from app.technology.models.day_surgery import DaySurgeryCase, DaySurgeryProcedure
from app.technology.models.high_risk import HighRiskAuthorization, HighRiskItem
from app.technology.models.restricted import RestrictedTechnology

log = logging.getLogger(__name__)
DATA_DIR = Path(__file__).resolve().parent / "data"
RESTRICTED_CSV = Path(__file__).resolve().parents[1] / "privileges" / "data" / "national_restricted_medical_technologies_2022.csv"
DAY_SURGERY_CSV = DATA_DIR / "day_surgery_recommended_list_2016.csv"
DAY_SURGERY_SOURCE = "日间手术病种及术式推荐目录（国卫医函〔2016〕306号附件3）"
DEMO_GRADE_NOTE = "手术级别为演示值（国家未按术式发布分级），正式使用前须按本院手术分级目录核定"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [{k: (v or "").strip() for k, v in row.items()} for row in csv.DictReader(fh)]


def seed_restricted() -> int:
    """The 12 nationally restricted technologies (idempotent by sequence number)."""
    existing = {t.seq: t for t in db.session.scalars(select(RestrictedTechnology))}
    for row in _rows(RESTRICTED_CSV):
        seq = int(row["seq"])
        tech = existing.get(seq) or RestrictedTechnology(seq=seq, is_active=True)
        tech.name = row["technology_name"]
        tech.is_new_2022 = row.get("new_in_2022_vs_2017") == "是"
        tech.spec_title = row.get("management_spec_title") or None
        tech.qc_title = row.get("qc_indicator_title") or None
        tech.effective_date = date.fromisoformat(row["effective_date"]) if row.get("effective_date") else None
        if seq not in existing:
            db.session.add(tech)
            existing[seq] = tech
    db.session.flush()
    return len(existing)


def demo_grade(name: str) -> int:
    """A demo surgery grade from the procedure name (keyword rule; see DEMO_GRADE_NOTE)."""
    if re.search(r"内固定|椎间盘镜|经皮肾镜|关节镜", name):
        return 3
    if re.search(r"镜|激光|碎石|修补|剥脱|切除术|成形|矫形", name):
        return 2
    return 1


def seed_day_surgery() -> int:
    """The 43 recommended day-surgery procedures (idempotent by code DS-NNN; a hospital's edits of grade kept)."""
    existing = {p.code: p for p in db.session.scalars(select(DaySurgeryProcedure))}
    for row in _rows(DAY_SURGERY_CSV):
        code = f"DS-{int(row['seq']):03d}"
        proc = existing.get(code)
        if proc is None:
            proc = DaySurgeryProcedure(code=code, is_active=True, grade=demo_grade(row["procedure_name"]))
            db.session.add(proc)
            existing[code] = proc
        proc.specialty = row["specialty"] or "未注明"
        proc.disease_name = row["disease_name"]
        proc.icd10_code = row["icd10_code"] or None
        proc.procedure_name = row["procedure_name"]
        proc.icd9_code = row["icd9cm3_code"] or None
        proc.source = DAY_SURGERY_SOURCE
        notes = [DEMO_GRADE_NOTE]
        if row.get("transcription_note"):
            notes.append(f"转录说明：{row['transcription_note']}")
        proc.note = "；".join(notes)[:500]
    db.session.flush()
    return len(existing)


# (code, name, category, dept code, procedure code, linked privilege item code, requirements)
HIGH_RISK_DEMO = [
    ("HR-CARD-01", "经皮冠状动脉药物球囊扩张成形术", "interventional", "CARD", "00.6600x008", "SUR-00.6600x008",
     "取得心血管介入诊疗技术培训合格证明；主治医师及以上；按《心血管疾病介入诊疗技术临床应用管理规范》"),
    ("HR-CARD-02", "经皮冠状动脉覆膜支架置入术", "interventional", "CARD", "36.0700x004", "SUR-36.0700x004",
     "副主任医师及以上，独立完成冠状动脉介入治疗满规定例数"),
    ("HR-ORTH-01", "髋关节置换修正术", "surgery", "ORTH", "81.5300", "SUR-81.5300",
     "副主任医师及以上；按《人工关节置换技术临床应用管理规范》"),
    ("HR-GS-01", "腹腔镜下胰十二指肠切除术", "surgery", "GS", None, None, "主任医师；具备开腹胰十二指肠切除术经验"),
    ("HR-GS-02", "内镜逆行胰胆管造影（ERCP）及治疗", "endoscopy", "GS", None, None, "内镜四级授权；按内镜诊疗技术规范"),
    ("HR-ANES-01", "困难气道纤维支气管镜引导插管", "anesthesia", "ANES", None, None, "麻醉科主治医师及以上，经困难气道培训考核"),
]
HIGH_RISK_DEMO_STAFF = [("HR-CARD-01", "card_doc", "术者"), ("HR-ORTH-01", "orth_doc", "术者"), ("HR-GS-01", "gs_head", "术者")]
DEMO_OVERRIDE_REASON = "演示数据：按本院高风险技术考核结果授权"


def seed_high_risk_demo() -> int:
    """A demo high-risk catalogue (only where the departments exist; existing items are left as edited)."""
    depts = {d.code: d for d in db.session.scalars(select(Department))}
    existing = {i.code: i for i in db.session.scalars(select(HighRiskItem))}
    try:
        from app.privileges.models import PrivilegeItem

        privilege_ids = {code: pid for code, pid in db.session.execute(select(PrivilegeItem.code, PrivilegeItem.id))}
    except Exception:  # noqa: BLE001 - the privilege catalogue is optional here
        privilege_ids = {}
    for code, name, category, dept, proc, link, req in HIGH_RISK_DEMO:
        if code in existing or dept not in depts:
            continue
        item = HighRiskItem(code=code, name=name, category=category, dept_id=depts[dept].id, procedure_code=proc,
                            privilege_item_id=privilege_ids.get(link) if link else None, requirements=req,
                            status="active", note="演示目录，按本院高风险诊疗技术目录调整")
        db.session.add(item)
        existing[code] = item
    db.session.flush()
    _authorise_demo_staff(existing)
    return len(existing)


def _authorise_demo_staff(items: dict[str, HighRiskItem]) -> int:
    """Authorise the demo staff through the service, as 医务处 (the demo `mao` user) would: a linked item's
    authorisation then holds a privilege grant HIS sees, and a demo person who does not fit the item's rules is let
    through with DEMO_OVERRIDE_REASON (audited). Each in its own savepoint: one refused leaves the others. A person
    with any authorisation of the item already (active or not) is left alone. Demo grants are not pushed to a HIS
    (the pushes queued for them are dropped before they are committed): HIS reads them through the check API like any
    grant. Returns the number authorised."""
    from app.outbox.models import OutboxMessage
    from app.privileges.services import HIS_CHANNEL
    from app.technology.services import high_risk

    users = {u.username: u for u in db.session.scalars(select(User))}
    actor = users.get("mao")
    if actor is None:
        return 0
    done = 0
    for code, username, role in HIGH_RISK_DEMO_STAFF:
        target, holder = items.get(code), users.get(username)
        if target is None or holder is None:
            continue
        if db.session.scalar(select(HighRiskAuthorization.id).where(HighRiskAuthorization.item_id == target.id,
                                                                    HighRiskAuthorization.user_id == holder.id)):
            continue
        data = {"user_id": holder.id, "role_in_team": role,
                "valid_from": (date.today() - timedelta(days=90)).isoformat()}
        queued_before = db.session.scalar(select(func.max(OutboxMessage.id))) or 0
        try:
            with db.session.begin_nested():
                try:
                    high_risk.authorize(item=target, data=data, actor=actor)
                except ValidationFailed as err:
                    if not any(e["path"].startswith(f"{technology_link.ELIGIBILITY_PATH}/") for e in err.errors):
                        raise
                    high_risk.authorize(item=target, data=data | {"override_reason": DEMO_OVERRIDE_REASON},
                                        actor=actor)
                db.session.execute(delete(OutboxMessage).where(OutboxMessage.id > queued_before,
                                                               OutboxMessage.channel == HIS_CHANNEL))
        except DomainError as err:
            log.warning("demo high-risk authorisation %s for %s refused: %s", code, username, err)
            continue
        done += 1
    db.session.flush()
    return done


def seed_catalogues() -> int:
    """Every technology catalogue; returns the number of catalogue rows."""
    return seed_restricted() + seed_day_surgery() + seed_high_risk_demo()


DEMO_SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗"


def seed_demo_cases(*, days: int = 60, seed: int = 2016) -> int:
    """Demo day-surgery cases for 普通外科 and 骨科 over the last `days` days (once; source_system "demo")."""
    if db.session.scalar(select(func.count()).select_from(DaySurgeryCase)
                         .where(DaySurgeryCase.source_system == "demo")):
        return 0
    depts = {d.code: d for d in db.session.scalars(select(Department))}
    plan = [("GS", "普通外科", "gs_doc"), ("ORTH", "骨科", "orth_doc")]
    users = {u.username: u for u in db.session.scalars(select(User))}
    rng = random.Random(seed)
    created = 0
    end = date.today()
    for dept_code, specialty, surgeon in plan:
        dept = depts.get(dept_code)
        procs = list(db.session.scalars(select(DaySurgeryProcedure).where(DaySurgeryProcedure.specialty == specialty)))
        if dept is None or not procs:
            continue
        for n in range(24):
            proc = rng.choice(procs)
            day = end - timedelta(days=rng.randrange(days))
            cancelled = rng.random() < 0.06
            flags = {"unplanned_reoperation": False, "complication": False, "transferred": False,
                     "delayed_discharge": False, "unplanned_readmission": False}
            if not cancelled:
                flags["complication"] = rng.random() < 0.05
                flags["unplanned_reoperation"] = rng.random() < 0.02
                flags["transferred"] = rng.random() < 0.03
                flags["delayed_discharge"] = rng.random() < 0.06
                flags["unplanned_readmission"] = rng.random() < 0.03
            db.session.add(DaySurgeryCase(
                source_system="demo", external_id=f"DEMO-{dept_code}-{n + 1:03d}",
                patient_name=rng.choice(DEMO_SURNAMES) + "*", patient_no=f"{rng.randrange(10**7, 10**8)}",
                dept_id=dept.id, surgeon_id=users[surgeon].id if surgeon in users else None, procedure_id=proc.id,
                procedure_code=proc.icd9_code, procedure_name=proc.procedure_name, grade=proc.grade or 2,
                scheduled_date=day, admitted_on=day, surgery_date=None if cancelled else day,
                discharged_on=None if cancelled else day + timedelta(days=2 if flags["delayed_discharge"] else 1),
                cancelled_same_day=cancelled, cancel_reason="患者血压控制不佳" if cancelled else None,
                note="演示数据", **flags))
            created += 1
    db.session.flush()
    return created
