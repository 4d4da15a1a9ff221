"""Who may hold a clinical privilege (seed 000 §三.2 授权对象): structured rules on catalogue items, and their check.

Rules of an item (its own value, else its category's default):
- min_title: the lowest professional title. Titles compare by rank within one series, the series and order of the
  archive's 职称评聘 form (forms/archive_title_appointment.json): 住院医师 < 主治医师 < 副主任医师 < 主任医师, and
  likewise 护士 < 护师 < 主管护师 < 副主任护师 < 主任护师 and the 药师/技师 ladders. A title of another series, or
  none, does not meet the rule (a physician does not meet a nursing title, nor a nurse a physician title);
- cert_types: certificate type codes of the archives (证件类型, e.g. practice = 执业证, nurse_practice = 护士执业证书
  for the 护理操作 items of seed 000 §三.5): the physician's or nurse's archive must
  hold a certificate of each type, not deleted and not expired on the day;
- requires_assessment: 定期考核 passed within one cycle. The latest effective record of the archive section
  `periodic_assessment` must say 合格 and be dated within 3 years (《医师定期考核管理办法》: a 3-year cycle; a
  physician who failed, was deferred or has not been assessed for a cycle takes on no privilege that needs it).
Two scope rules go with them:
- a 新技术新项目授权 item made by sync_new_tech_item (code NT-XJS000123) is for that project's lead, applicant and
  team members only (the team lines are "姓名 职称 分工": matched by name or staff number);
- a department with a 科室技术目录 applies only for the items in it (app.privileges.dept_catalogue).

The seeded rules are demo defaults (rules_note says so): the office reviews and changes them per item.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, cast

from sqlalchemy import select

from app.audit import services as audit
from app.auth.models import User
from app.db import db
from app.errors import ValidationFailed
from app.privileges import dept_catalogue
from app.privileges.models import PrivilegeCategory, PrivilegeItem

# the title series of forms/archive_title_appointment.json, lowest first (rank = index: 0 员级, 1 初级 … 4 正高级)
TITLE_SERIES: dict[str, tuple[str, ...]] = {
    "医疗": ("医士", "住院医师", "主治医师", "副主任医师", "主任医师"),
    "护理": ("护士", "护师", "主管护师", "副主任护师", "主任护师"),
    "药学": ("药士", "药师", "主管药师", "副主任药师", "主任药师"),
    "技术": ("技士", "技师", "主管技师", "副主任技师", "主任技师"),
}
RANK_LABELS = ("员级", "初级", "中级", "副高级", "正高级")
ASSESSMENT_SECTION = "periodic_assessment"
ASSESSMENT_CYCLE_YEARS = 3
ASSESSMENT_PASS = "合格"
NEW_TECH_CATEGORY = "new_tech"
RULES_NOTE_MAX = 300

AUDIT_LABELS = {
    "privilege.eligibility_overridden": "医务处特批资格不符的医疗权限",
    "privilege.item_rules_saved": "修改授权资格规则",
}


def title_rank(title: str | None) -> tuple[str, int] | None:
    """(series, rank) of a professional title; None for a title outside the ladders (or none)."""
    for series, ladder in TITLE_SERIES.items():
        if title in ladder:
            return series, ladder.index(title)
    return None


def all_titles() -> list[str]:
    return [t for ladder in TITLE_SERIES.values() for t in ladder]


def title_requirement(min_title: str) -> str:
    series_rank = title_rank(min_title)
    if series_rank is not None and series_rank[1] == len(TITLE_SERIES[series_rank[0]]) - 1:
        return min_title  # the top of a ladder: "及以上" would be odd
    return f"{min_title}及以上"


# ---------------------------------------------------------------- the effective rules of an item


@dataclass(frozen=True)
class Rule:
    min_title: str | None
    cert_types: tuple[str, ...]
    requires_assessment: bool
    team_only: bool  # 新技术新项目: the project's team only
    project_number: str | None  # XJS000123 for an item made by sync_new_tech_item


def rule_of(item: PrivilegeItem) -> Rule:
    category: PrivilegeCategory = item.category
    certs = item.cert_types if item.cert_types is not None else (category.default_cert_types or [])
    assessment = item.requires_assessment if item.requires_assessment is not None \
        else bool(category.default_requires_assessment)
    team_only = category.code == NEW_TECH_CATEGORY
    number = item.code[3:] if team_only and item.code.startswith("NT-XJS") else None
    return Rule(min_title=item.min_title or category.default_min_title, cert_types=tuple(str(c) for c in certs),
                requires_assessment=assessment, team_only=team_only, project_number=number)


# ---------------------------------------------------------------- what the rules read about a physician


@dataclass
class Facts:
    user: User
    on: date
    certificates: dict[str, list[date | None]] = field(default_factory=dict)  # type code -> expiry dates
    assessment: dict[str, Any] | None = None  # data of the latest effective 定期考核 record
    dept_items: set[int] | None = None  # the department catalogue; None = no restriction
    dept_name: str = ""
    filed_restricted: set[int] = field(default_factory=set)  # RT items the department is approved to perform


def cert_type_names() -> dict[str, str]:
    from app.archives.models import CertificateType

    return {str(code): str(name) for code, name in db.session.execute(select(CertificateType.code,
                                                                             CertificateType.name))}


def gather(users: Sequence[User], *, on: date, dept_id: int | None = None) -> dict[int, Facts]:
    """Facts for several physicians in a few queries. dept_id: the department whose catalogue applies (a batch's
    department); by default each physician's own."""
    from app.archives.models import ArchiveEntry, ArchiveRecord, Certificate, CertificateType

    ids = [u.id for u in users]
    facts = {u.id: Facts(user=u, on=on, dept_name=u.dept.name if u.dept else "") for u in users}
    if not ids:
        return facts
    rows = db.session.execute(
        select(Certificate.user_id, CertificateType.code, Certificate.expiry_date)
        .join(CertificateType, Certificate.type_id == CertificateType.id)
        .where(Certificate.user_id.in_(ids), Certificate.is_deleted.is_(False)))
    for user_id, code, expiry in rows:
        facts[user_id].certificates.setdefault(str(code), []).append(expiry)
    records = db.session.execute(
        select(ArchiveRecord.user_id, ArchiveRecord.data)
        .join(ArchiveEntry, ArchiveRecord.entry_id == ArchiveEntry.id)
        .where(ArchiveRecord.user_id.in_(ids), ArchiveRecord.section == ASSESSMENT_SECTION,
               ArchiveRecord.status == "effective", ArchiveEntry.is_deleted.is_(False)))
    for record in records:
        record_user_id, raw = int(record[0]), cast(Any, record[1])
        data: dict[str, Any] = dict(raw or {})
        current = facts[record_user_id].assessment
        if current is None or str(data.get("assessment_date") or "") > str(current.get("assessment_date") or ""):
            facts[record_user_id].assessment = data
    catalogues: dict[int, set[int] | None] = {}
    filed: dict[int, set[int]] = {}
    for u in users:
        dept = dept_id if dept_id is not None else u.dept_id
        if dept is None:
            continue
        if dept not in catalogues:
            catalogues[dept] = dept_catalogue.dept_item_ids(dept)
            filed[dept] = _filed_restricted(dept)
        facts[u.id].dept_items = catalogues[dept]
        facts[u.id].filed_restricted = filed[dept]
        if dept_id is not None and dept_id != u.dept_id:
            from app.auth.models import Department

            other = db.session.get(Department, dept_id)
            facts[u.id].dept_name = other.name if other else ""
    return facts


RESTRICTED_CATEGORY = "restricted_tech"


def _filed_restricted(dept_id: int) -> set[int]:
    """Privilege items of the restricted technologies this department has been approved to perform (approved and
    awaiting filing, or filed and tracked; 备案 follows the first case within 15 working days): only then may its
    physicians be granted them; a stopped, rejected or pending application does not count."""
    from app.technology.models.restricted import RestrictedApplication, RestrictedStatus, RestrictedTechnology

    return {int(i) for i in db.session.scalars(  # type: ignore[arg-type]  # NULLs are filtered out below
        select(RestrictedTechnology.privilege_item_id)
        .join(RestrictedApplication, RestrictedApplication.technology_id == RestrictedTechnology.id)
        .where(RestrictedApplication.dept_id == dept_id,
               RestrictedApplication.status.in_((RestrictedStatus.FILING, RestrictedStatus.TRACKING)),
               RestrictedTechnology.privilege_item_id.is_not(None)))}


def _projects(numbers: Iterable[str]) -> dict[str, Any]:
    """New-tech projects by number (XJS000123), read from app.technology."""
    pks = {int(n[3:]) for n in numbers if n.startswith("XJS") and n[3:].isdigit()}
    if not pks:
        return {}
    from app.technology.models import NewTechProject

    return {p.number: p for p in db.session.scalars(select(NewTechProject).where(NewTechProject.id.in_(pks)))}


_TEAM_SPLIT = re.compile(r"[\s,，、;；:：/（）()]+")


def on_team(user: User, project: Any) -> bool:
    """Lead, applicant, or named on a team line (first word = name, or the staff number anywhere in it)."""
    if user.id in (project.lead_id, project.applicant_id):
        return True
    for line in project.team or []:
        words = [w for w in _TEAM_SPLIT.split(str(line)) if w]
        if not words:
            continue
        if words[0] == user.name or (user.staff_no and user.staff_no in words):
            return True
    return False


# ---------------------------------------------------------------- the check


@dataclass(frozen=True)
class Check:
    kind: str  # title / certificate / assessment / team / project / restricted_filing / dept_catalogue
    requirement: str  # what the rule asks, e.g. 主治医师及以上
    met: bool
    message: str = ""  # why not, when not met


@dataclass
class Eligibility:
    item: PrivilegeItem
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.met for c in self.checks)

    @property
    def problems(self) -> list[str]:
        return [c.message for c in self.checks if not c.met]

    @property
    def message(self) -> str:
        return "；".join(self.problems)


def evaluate(item: PrivilegeItem, facts: Facts, *, projects: dict[str, Any] | None = None,
             cert_names: dict[str, str] | None = None) -> Eligibility:
    """Every rule of one item against one physician's facts."""
    rule = rule_of(item)
    names = cert_names if cert_names is not None else cert_type_names()
    checks: list[Check] = []
    user = facts.user
    if rule.min_title:
        need = title_requirement(rule.min_title)
        req, have = title_rank(rule.min_title), title_rank(user.title)
        met = req is not None and have is not None and have[0] == req[0] and have[1] >= req[1]
        current = f"当前为{user.title}" if user.title else "当前未登记职称"
        checks.append(Check("title", need, met, "" if met else f"职称不符：该项目需{need}，{current}"))
    for code in rule.cert_types:
        name = names.get(code, code)
        expiries = facts.certificates.get(code, [])
        valid = any(e is None or e >= facts.on for e in expiries)
        if valid:
            checks.append(Check("certificate", f"有效的{name}", True))
        elif expiries:
            last = max(e for e in expiries if e is not None)
            checks.append(Check("certificate", f"有效的{name}", False,
                                f"{name}已过期：档案中的{name}有效期至 {last.isoformat()}，请先更新证件"))
        else:
            checks.append(Check("certificate", f"有效的{name}", False,
                                f"缺少{name}：该项目需有效的{name}，档案中未登记"))
    if rule.requires_assessment:
        need = f"近 {ASSESSMENT_CYCLE_YEARS} 年定期考核合格"
        checks.append(_assessment_check(facts, need))
    if rule.team_only:
        need = "新技术新项目团队成员"
        project = (projects if projects is not None else _projects([rule.project_number or ""])).get(
            rule.project_number or "")
        if project is None:
            checks.append(Check("team", need, False, "新技术新项目：未找到该项目的立项记录，仅立项项目的团队成员可以申请"))
        elif not on_team(user, project):
            checks.append(Check("team", need, False,
                                f"非项目团队成员：新技术新项目 {project.number} 仅限项目负责人及团队成员申请"))
        else:
            checks.append(Check("team", need, True))
        if project is not None and str(project.status) == "suspended":
            checks.append(Check("project", "项目正常开展", False,
                                f"新技术新项目 {project.number} 已中止（暂停开展），中止期间不能新授权"))
    if item.category is not None and item.category.code == RESTRICTED_CATEGORY:
        met = item.id in facts.filed_restricted
        checks.append(Check("restricted_filing", "本科室已获准开展该限制类技术", met, "" if met else
                            f"{facts.dept_name or '本科室'}未获准开展该限制类技术：须先经限制类技术审批通过"))
    if facts.dept_items is not None and dept_catalogue.restricts(item):
        met = item.id in facts.dept_items
        checks.append(Check("dept_catalogue", "本科室技术目录内", met,
                            "" if met else f"不在科室技术目录内：{facts.dept_name}的科室技术目录未包含该项目"))
    return Eligibility(item=item, checks=checks)


def _assessment_check(facts: Facts, need: str) -> Check:
    data = facts.assessment
    if not data:
        return Check("assessment", need, False, f"定期考核不符：该项目需{need}，档案中无已生效的定期考核记录")
    result = str(data.get("result") or "")
    cycle = str(data.get("cycle") or data.get("assessment_date") or "")
    if result != ASSESSMENT_PASS:
        return Check("assessment", need, False, f"定期考核不符：最近一次定期考核（{cycle}）结果为{result or '未填写'}")
    try:
        when = date.fromisoformat(str(data.get("assessment_date")))
    except ValueError:
        return Check("assessment", need, False, "定期考核不符：最近一次定期考核未填写有效的考核时间")
    try:
        limit = facts.on.replace(year=facts.on.year - ASSESSMENT_CYCLE_YEARS)
    except ValueError:  # 29 February
        limit = facts.on.replace(year=facts.on.year - ASSESSMENT_CYCLE_YEARS, day=28)
    if when < limit:
        return Check("assessment", need, False,
                     f"定期考核不符：最近一次定期考核合格为 {when.isoformat()}，已超过 {ASSESSMENT_CYCLE_YEARS} 年考核周期")
    return Check("assessment", need, True)


def check_items(user: User, items: Sequence[PrivilegeItem], *, on: date) -> dict[int, Eligibility]:
    """item id -> eligibility of one physician (the 申请权限 page and create_application)."""
    return {k[1]: v for k, v in check_matrix([user], items, on=on).items()}


def check_matrix(users: Sequence[User], items: Sequence[PrivilegeItem], *, on: date,
                 dept_id: int | None = None) -> dict[tuple[int, int], Eligibility]:
    """(user id, item id) -> eligibility for a batch, reading each kind of fact once."""
    facts = gather(users, on=on, dept_id=dept_id)
    projects = _projects(r.project_number for r in (rule_of(i) for i in items) if r.project_number)
    names = cert_type_names()
    return {(u.id, i.id): evaluate(i, facts[u.id], projects=projects, cert_names=names)
            for u in users for i in items}


def requirements(item: PrivilegeItem, *, cert_names: dict[str, str] | None = None) -> list[str]:
    """What an item asks, for display (without the department catalogue, which depends on who asks)."""
    rule = rule_of(item)
    names = cert_names if cert_names is not None else cert_type_names()
    out = [title_requirement(rule.min_title)] if rule.min_title else []
    out += [f"有效的{names.get(c, c)}" for c in rule.cert_types]
    if rule.requires_assessment:
        out.append(f"近 {ASSESSMENT_CYCLE_YEARS} 年定期考核合格")
    if rule.team_only:
        out.append("新技术新项目团队成员")
    return out


def category_requirements(category: PrivilegeCategory, *, cert_names: dict[str, str] | None = None) -> list[str]:
    """What an item of the category asks when it has no rule of its own (the category defaults), for display."""
    names = cert_names if cert_names is not None else cert_type_names()
    out = [title_requirement(category.default_min_title)] if category.default_min_title else []
    out += [f"有效的{names.get(str(c), str(c))}" for c in category.default_cert_types or []]
    if category.default_requires_assessment:
        out.append(f"近 {ASSESSMENT_CYCLE_YEARS} 年定期考核合格")
    return out


# ---------------------------------------------------------------- the office changes an item's rules


TITLE_HINT = "；".join(f"{series}：{'、'.join(ladder)}" for series, ladder in TITLE_SERIES.items())
OFFICE_NOTE = "医务处已核定"


def clean_rules(*, min_title: str | None, cert_types: Sequence[str] | None, title_field: str = "min_title",
                cert_field: str = "cert_types") -> tuple[str | None, list[str] | None, dict[str, str]]:
    """A minimum title and certificate type codes checked (blank title = None; duplicate codes dropped) and the
    errors by field path (Chinese; one per unknown certificate code, `cert_types/0` …)."""
    errors: dict[str, str] = {}
    title = (min_title or "").strip() or None
    if title and title_rank(title) is None:
        errors[title_field] = f"最低职称应为职称评聘中的职称（{TITLE_HINT}），不能为“{title}”"
    codes: list[str] | None = None
    if cert_types is not None:
        codes = list(dict.fromkeys(c.strip() for c in cert_types if c and c.strip()))
        known = cert_type_names()
        for idx, code in enumerate(codes):
            if code not in known:
                errors[f"{cert_field}/{idx}"] = f"证件类型“{code}”不存在"
    return title, codes, errors


def save_item_rules(*, item: PrivilegeItem, actor: User, min_title: str | None, cert_types: Sequence[str] | None,
                    requires_assessment: bool | None, rules_note: str | None) -> PrivilegeItem:
    """Set an item's eligibility rules (None = the category default). Audited. Raises ValidationFailed."""
    min_title, codes, errors = clean_rules(min_title=min_title, cert_types=cert_types)
    note = (rules_note or "").strip() or None
    if note and len(note) > RULES_NOTE_MAX:
        errors["rules_note"] = f"规则说明不超过 {RULES_NOTE_MAX} 字"
    if errors:
        raise ValidationFailed(errors)
    before = {"min_title": item.min_title, "cert_types": item.cert_types,
              "requires_assessment": item.requires_assessment, "rules_note": item.rules_note}
    changed = (min_title, codes, requires_assessment) != (item.min_title, item.cert_types, item.requires_assessment)
    if changed and note is not None and note == item.rules_note and note.startswith(DEMO_NOTE):
        note = None  # the office changed a demo rule: it is no longer the shipped default
    item.min_title, item.cert_types, item.requires_assessment = min_title, codes, requires_assessment
    item.rules_note = note or OFFICE_NOTE
    db.session.flush()
    audit.record(actor, "privilege.item_rules_saved", item, before=before,
                 after={"min_title": item.min_title, "cert_types": item.cert_types,
                        "requires_assessment": item.requires_assessment, "rules_note": item.rules_note})
    return item


# ---------------------------------------------------------------- demo defaults

DEMO_NOTE = "演示默认规则，医务处核定后可修改"
PRACTICE = ["practice"]
# category code -> (default min title, default certificate types, default assessment)
CATEGORY_DEFAULTS: dict[str, tuple[str | None, list[str], bool]] = {
    "basic": (None, PRACTICE, False),
    "special": (None, PRACTICE, False),
    "invasive": ("住院医师", PRACTICE, False),
    "surgery": ("住院医师", PRACTICE, False),
    "anesthesia": ("住院医师", PRACTICE, False),
    "endoscopy": ("住院医师", PRACTICE, False),
    "new_tech": (None, PRACTICE, False),
    "restricted_tech": ("主治医师", PRACTICE, True),
    "emergency": (None, [], False),  # an emergency is by definition outside the usual rules; reviewed afterwards
    # 护理操作 (seed 000 §三.5): a registered nurse (《护士条例》: 护士执业证书 in force); 定期考核 is the physicians'
    "nursing": ("护士", ["nurse_practice"], False),
}
ABX_RULE = "《抗菌药物临床应用管理办法》第二十四条"
ONC_RULE = "《抗肿瘤药物临床应用管理办法（试行）》"
SURGERY_RULE = "《医疗机构手术分级管理办法》（由医院按职称与能力确定，此为常用口径）"
NURSING_RULE = "本院护理技术操作授权管理（按护理职称与专科培训确定，此为常用口径）"
# item code -> (min title, requires assessment, basis)
ITEM_DEFAULTS: dict[str, tuple[str | None, bool, str]] = {
    "BASIC-DIAG": ("住院医师", False, "本院注册执业医师"),
    # 急会诊 may be taken by a 住院医师 registered here for a year: the minimum is 住院医师, the rest is in the text
    "BASIC-CONSULT": ("住院医师", False, "会诊制度（普通会诊主治医师及以上，急会诊可由住院医师承担）"),
    "BASIC-RX": ("住院医师", False, "《处方管理办法》"),
    "SP-ABX-1": ("住院医师", False, f"{ABX_RULE}：初级及以上"),
    "SP-ABX-2": ("主治医师", False, f"{ABX_RULE}：中级及以上"),
    "SP-ABX-3": ("副主任医师", True, f"{ABX_RULE}：高级职称"),
    "SP-ONC-1": ("主治医师", False, f"{ONC_RULE}：中级及以上"),
    "SP-ONC-2": ("副主任医师", True, f"{ONC_RULE}：高级职称"),
    "SP-NARC": ("住院医师", False, "《麻醉药品和精神药品管理条例》：执业医师"),
    "SP-EXAM": ("主治医师", False, "本院特殊检查管理"),
    # nursing titles (护士 < 护师 < 主管护师 < 副主任护师 < 主任护师): the usual hospital rule, for the office to confirm
    "NUR-BASIC": ("护士", False, NURSING_RULE),
    "NUR-FIRSTAID": ("护士", False, NURSING_RULE),
    "NUR-TRANSFUSION": ("护士", False, NURSING_RULE),
    "NUR-ABG": ("护师", False, NURSING_RULE),
    "NUR-CHEMO": ("护师", False, NURSING_RULE),
    "NUR-CVAD": ("护师", False, NURSING_RULE),
    "NUR-PICC": ("主管护师", False, NURSING_RULE),
    "NUR-AIRWAY": ("护师", False, NURSING_RULE),
    "NUR-HD": ("护师", False, NURSING_RULE),
    "NUR-CRRT": ("护师", False, NURSING_RULE),
    "NUR-ECMO": ("主管护师", False, NURSING_RULE),
    "NUR-WOUND": ("主管护师", False, NURSING_RULE),
}
GRADED_DEFAULTS: dict[str, dict[int, str]] = {  # category -> grade -> min title (grade 4 also needs 定期考核)
    "surgery": {1: "住院医师", 2: "住院医师", 3: "主治医师", 4: "副主任医师"},
    "anesthesia": {1: "住院医师", 2: "住院医师", 3: "主治医师", 4: "副主任医师"},
    "endoscopy": {1: "住院医师", 2: "主治医师", 3: "主治医师", 4: "副主任医师"},
}


def seed_rules() -> int:
    """Demo default rules: category defaults where never set, item rules where never set (rules_note empty), so
    the office's own rules survive a re-run. Returns the items given rules."""
    for category in db.session.scalars(select(PrivilegeCategory)):
        spec = CATEGORY_DEFAULTS.get(category.code)
        if spec is None or category.default_cert_types is not None:
            continue
        category.default_min_title, certs, category.default_requires_assessment = spec
        category.default_cert_types = list(certs)
    changed = 0
    for item in db.session.scalars(select(PrivilegeItem).where(PrivilegeItem.rules_note.is_(None))):
        code = item.category.code
        basis: str | None = None
        if item.code in ITEM_DEFAULTS:
            item.min_title, item.requires_assessment, basis = ITEM_DEFAULTS[item.code]
        elif code in GRADED_DEFAULTS and item.grade_level in GRADED_DEFAULTS[code]:
            level = int(item.grade_level or 0)
            item.min_title = GRADED_DEFAULTS[code][level]
            item.requires_assessment = level >= 4
            basis = SURGERY_RULE if code == "surgery" else "本院分级管理制度（演示口径）"
        elif code in CATEGORY_DEFAULTS and not item.code.startswith("NT-XJS"):
            basis = "按类别默认"
        if basis is None:
            continue
        item.rules_note = f"{DEMO_NOTE}（{basis}）"[:RULES_NOTE_MAX]
        changed += 1
    db.session.flush()
    return changed
