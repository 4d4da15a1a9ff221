"""Physician archives (医师技术档案, seed 000 §一.1/§一.4): profile, section records with full history, review of
changes, data scope, completeness and statistics.

Invariants:
- every change to a section record (or to the basic information, section `profile`) is a new ArchiveRecord
  version; versions are never edited or deleted: a deletion is itself a version (action `delete`) that hides
  the entry once effective; at most one version of an entry is effective and at most one is open
  (pending/returned) at a time;
- section data is validated against the section's form template (forms/archive_<section>.json, or the office's
  newer version in the form editor) before anything is written: bad input raises ValidationFailed with field
  paths and changes nothing;
- a change to a section the registry marks `requires_review`, made by anyone but a holder of archives.manage,
  starts `archive_change_review` and takes effect only when the flow ends with final_decision "approved";
- a person sees their own archive; others need archives.view within its data scope; changes need
  archives.manage (direct) or are the person's own / archives.edit within scope (through review where the
  section requires it); a departed person's archive is read-only for everyone without archives.manage;
- ID numbers are shown masked (3301**********1234) to viewers without archives.manage;
- every change is audited in the caller's transaction; services flush, the caller commits.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from io import BytesIO
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import joinedload

from app.audit import services as audit
from app.auth.models import Department, Role, User, UserRole
from app.auth.services import DataScope, data_scope, has_permission
from app.core.timefmt import SHANGHAI
from app.db import db, utcnow
from app.errors import Conflict, Forbidden, InvalidTransition, NotFound, ValidationFailed
from app.forms import services as forms
from app.forms.schema import FormDef, ordered, properties
from app.notify import services as notify

from .models import (
    OPEN_RECORD_STATUSES,
    ArchiveEntry,
    ArchiveProfile,
    ArchiveRecord,
    ArchiveSectionSetting,
    Certificate,
    CertificateRequirement,
    CertificateType,
    RecordStatus,
)

PROCESS_KEY = "archive_change_review"
PROFILE = "profile"

AUDIT_LABELS = {
    "archive.profile_created": "建立医师档案",
    "archive.record_changed": "档案记录变更生效",
    "archive.change_submitted": "提交档案变更（待审核）",
    "archive.change_revised": "修改被退回的档案变更",
    "archive.change_approved": "档案变更审核通过",
    "archive.change_rejected": "档案变更审核未通过",
    "archive.change_returned": "档案变更退回修改",
    "archive.change_withdrawn": "档案变更撤回",
    "archive.settings_changed": "修改档案栏目设置",
    "archive.certificate_created": "登记证件",
    "archive.certificate_updated": "修改证件",
    "archive.certificate_deleted": "删除证件",
    "archive.certificate_file_added": "上传证件扫描件",
    "archive.certificate_file_deleted": "删除证件扫描件",
    "archive.certificate_type_saved": "维护证件类型",
    "archive.certificate_requirement_saved": "维护证件必备要求",
    "archive.certificate_batch_uploaded": "批量上传证件",
    "archive.hr_imported": "人事数据导入",
    "archive.hr_staff_created": "人事数据新增人员（待确认）",
    "archive.hr_staff_confirmed": "确认人事新增人员",
    "archive.hr_diff_accepted": "采纳人事数据差异",
    "archive.hr_diff_ignored": "忽略人事数据差异",
    "archive.departure_registered": "登记离职",
    "archive.departure_task_released": "离职人员待办放回任务组",
    "archive.reinstatement_requested": "报送复职申请",
    "archive.reinstated": "复职生效",
    "archive.reinstatement_rejected": "复职未获批准",
    "archive.reinstatement_withdrawn": "复职申请撤回",
    "archive.reinstatement_terminated": "复职流程终止",
}


def today() -> date:
    """The current hospital-local day (Asia/Shanghai)."""
    return datetime.now(SHANGHAI).date()


# ---------------------------------------------------------------- the section registry


@dataclass(frozen=True)
class SectionDef:
    """One archive section. kind: profile (basic information), records (versioned form records), or a read-only
    view onto another domain (privileges, departure)."""

    key: str
    title: str
    kind: str = "records"
    requires_review: bool = False
    is_required: bool = False
    staff_editable: bool = True

    @property
    def form_key(self) -> str | None:
        return f"archive_{self.key}" if self.kind in ("records", "profile") else None

    @property
    def editable(self) -> bool:
        return self.kind in ("records", "profile")


# shipped defaults (seed 000 §一.1 lists the sections); the office changes the rules on the settings page
SECTIONS: tuple[SectionDef, ...] = (
    SectionDef(PROFILE, "基本信息", kind="profile", requires_review=True, is_required=True),
    SectionDef("education", "教育经历", requires_review=True, is_required=True),
    SectionDef("work", "工作经历", is_required=True),
    SectionDef("title_appointment", "职称评聘", requires_review=True, is_required=True),
    SectionDef("publications", "论文专著"),
    SectionDef("research", "科研情况"),
    SectionDef("new_technology", "新技术新项目", requires_review=True),
    SectionDef("society_roles", "社会团体任职"),
    SectionDef("further_training", "进修培训"),
    SectionDef("periodic_assessment", "定期考核", requires_review=True, is_required=True),
    SectionDef("academic_exchange", "学术交流"),
    SectionDef("rewards_penalties", "奖惩记录", requires_review=True),
    SectionDef("multi_site_practice", "多点执业", requires_review=True),
    SectionDef("competitions", "技术比赛/竞赛"),
    SectionDef("safety_behaviour", "医疗安全行为", staff_editable=False),
    SectionDef("rotation", "轮转记录"),
    SectionDef("major_incidents", "重大差错及事故处理", staff_editable=False),
    SectionDef("privileges", "技术授权", kind="privileges"),
    SectionDef("departure", "离职登记", kind="departure"),
)
SECTION_KEYS = tuple(s.key for s in SECTIONS)
RECORD_SECTIONS = tuple(s.key for s in SECTIONS if s.kind == "records")

# basic-information fields counted by completeness, and fields hidden from viewers without archives.manage
PROFILE_REQUIRED = ("gender", "birth_date", "id_number", "education", "degree", "hire_date")
SENSITIVE_FIELDS: dict[str, tuple[str, ...]] = {PROFILE: ("id_number",)}
PROFILE_COLUMNS = ("gender", "birth_date", "id_number", "education", "degree", "practice_cert_no", "hire_date",
                   "specialty")


def sections() -> list[SectionDef]:
    """Every section with the office's current rules applied (settings rows override the defaults)."""
    rows = {r.section: r for r in db.session.scalars(select(ArchiveSectionSetting))}
    out = []
    for s in SECTIONS:
        row = rows.get(s.key)
        if row is not None and s.editable:
            s = replace(s, requires_review=row.requires_review, is_required=row.is_required,
                        staff_editable=row.staff_editable)
        out.append(s)
    return out


def section(key: str) -> SectionDef:
    """One section with its current rules. Raises NotFound for an unknown key."""
    for s in sections():
        if s.key == key:
            return s
    raise NotFound(f"档案栏目 {key} 不存在", section=key)


def save_settings(*, rules: dict[str, dict[str, bool]], actor: User) -> list[ArchiveSectionSetting]:
    """Store the office's section rules (requires_review / is_required / staff_editable per section), audited,
    and recompute every completeness (required sections changed). Raises ValidationFailed for unknown sections."""
    editable = {s.key for s in SECTIONS if s.editable}
    unknown = [k for k in rules if k not in editable]
    if unknown:
        raise ValidationFailed({f"rules/{k}": "未知的档案栏目" for k in unknown})
    rows = {r.section: r for r in db.session.scalars(select(ArchiveSectionSetting))}
    before = {k: {"requires_review": s.requires_review, "is_required": s.is_required,
                  "staff_editable": s.staff_editable} for k, s in ((s.key, s) for s in sections()) if k in editable}
    changed = []
    for key, values in rules.items():
        row = rows.get(key)
        if row is None:
            row = ArchiveSectionSetting(section=key)
            db.session.add(row)
        row.requires_review = bool(values.get("requires_review"))
        row.is_required = bool(values.get("is_required"))
        row.staff_editable = bool(values.get("staff_editable"))
        row.updated_by_id = actor.id
        changed.append(row)
    db.session.flush()
    after = {s.key: {"requires_review": s.requires_review, "is_required": s.is_required,
                     "staff_editable": s.staff_editable} for s in sections() if s.key in editable}
    audit.record(actor, "archive.settings_changed", None, entity_type="archive_section_settings",
                 before=before, after=after)
    refresh_completeness()
    return changed


def section_form(key: str) -> FormDef:
    """The current form template of a section (the office's newest version, else the shipped file)."""
    s = section(key)
    if s.form_key is None:
        raise NotFound(f"栏目「{s.title}」没有表单")
    return forms.get_form(s.form_key)


def form_for_viewer(form: FormDef, *, viewer: Any, staff: User, section_key: str) -> FormDef:
    """The form without the fields the viewer may not see (ID number for viewers without archives.manage)."""
    hidden = [f for f in SENSITIVE_FIELDS.get(section_key, ()) if not is_manager(viewer, staff)]
    if not hidden:
        return form
    schema = dict(form.schema)
    schema["properties"] = {k: v for k, v in properties(form.schema).items() if k not in hidden}
    if isinstance(schema.get("required"), list):
        schema["required"] = [r for r in schema["required"] if r not in hidden]
    return FormDef(key=form.key, version=form.version, schema=schema, ui=form.ui)


# ---------------------------------------------------------------- data scope


def _scope(viewer: Any, permission: str) -> DataScope | None:
    if not isinstance(viewer, User) or not has_permission(viewer, permission):
        return None
    return data_scope(viewer, permission)


def is_manager(actor: Any, staff: User) -> bool:
    """archives.manage covering the person (hospital systems importing HR data count as managers)."""
    if isinstance(actor, str):
        return True
    scope = _scope(actor, "archives.manage")
    return scope is not None and scope.allows(user_id=staff.id, dept_id=staff.dept_id)


def can_view(viewer: Any, staff: User) -> bool:
    """Own archive, or archives.view / archives.manage / archives.edit covering the person."""
    if isinstance(viewer, User) and viewer.id == staff.id:
        return True
    for perm in ("archives.view", "archives.manage", "archives.edit"):
        scope = _scope(viewer, perm)
        if scope is not None and scope.allows(user_id=staff.id, dept_id=staff.dept_id):
            return True
    return False


def ensure_can_view(viewer: Any, staff: User) -> None:
    """Raises Forbidden unless the viewer may see the person's archive."""
    if not can_view(viewer, staff):
        raise Forbidden("没有权限查看该人员的档案", user_id=staff.id)


def edit_mode(actor: Any, staff: User, section_key: str) -> str | None:
    """How the actor may change a section of the person's archive: "direct", "review" (through
    archive_change_review) or None (read-only)."""
    s = section(section_key)
    if not s.editable:
        return None
    if is_manager(actor, staff):
        return "direct"
    if staff.departed_at is not None or not isinstance(actor, User):
        return None  # 离职人员档案只读（种子 000 §一.3）
    if not s.staff_editable:
        return None
    scope = _scope(actor, "archives.edit")
    own = actor.id == staff.id
    if own or (scope is not None and scope.allows(user_id=staff.id, dept_id=staff.dept_id)):
        return "review" if s.requires_review else "direct"
    return None


def mask_id_number(value: str | None) -> str:
    """3301**********1234: keep the first and last four characters."""
    if not value:
        return ""
    if len(value) <= 8:
        return "*" * len(value)
    return f"{value[:4]}{'*' * (len(value) - 8)}{value[-4:]}"


def shown_id_number(viewer: Any, staff: User, value: str | None) -> str:
    return (value or "") if is_manager(viewer, staff) else mask_id_number(value)


def viewable_query(viewer: User, stmt: Select, *, user_col, dept_col) -> Select:
    """Narrow a statement to the people whose archives the viewer may see (own archive always)."""
    conds = []
    for perm in ("archives.view", "archives.manage", "archives.edit"):
        scope = _scope(viewer, perm)
        if scope is None:
            continue
        if scope.level.value == "group":
            return stmt
        if scope.level.value == "campus":
            conds.append(dept_col.in_(select(Department.id).where(Department.campus_id == scope.campus_id)))
        elif scope.level.value == "dept":
            conds.append(dept_col == scope.dept_id)
    conds.append(user_col == viewer.id)
    return stmt.where(or_(*conds))


def may_list(viewer: User) -> bool:
    return any(has_permission(viewer, p) for p in ("archives.view", "archives.manage", "archives.edit"))


# ---------------------------------------------------------------- profiles


def get_profile(user: User) -> ArchiveProfile | None:
    return db.session.scalar(select(ArchiveProfile).where(ArchiveProfile.user_id == user.id))


def ensure_profile(*, user: User, actor: Any, origin: str = "manual", hr_pending: bool = False) -> ArchiveProfile:
    """The person's archive profile, created (audited) when missing."""
    profile = get_profile(user)
    if profile is not None:
        return profile
    profile = ArchiveProfile(user_id=user.id, data={}, origin=origin, hr_pending=hr_pending, missing=[])
    profile.user = user
    db.session.add(profile)
    db.session.flush()
    audit.record(actor, "archive.profile_created", profile, after={"user_id": user.id, "origin": origin})
    refresh_completeness(user_ids=[user.id])
    return profile


def _parse_date(value: Any) -> date | None:
    if isinstance(value, date):
        return value
    if not value:
        return None
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


ID_RE = re.compile(r"^[1-9]\d{5}(18|19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])\d{3}[\dXx]$")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_number_problem(value: str) -> str | None:
    """Why an 18-digit resident ID number (GB 11643-1999) is not valid; None when it is."""
    if not ID_RE.match(value or ""):
        return "身份证号格式不正确（18 位，末位可为 X）"
    total = sum(int(c) * w for c, w in zip(value[:17], _ID_WEIGHTS, strict=True))
    if "10X98765432"[total % 11] != value[17].upper():
        return "身份证号校验位不正确，请核对"
    try:
        date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return "身份证号中的出生日期无效"
    return None


def facts_from_id(value: str | None) -> tuple[date | None, str | None]:
    """(birth date, gender) encoded in a valid ID number."""
    if not value or id_number_problem(value):
        return None, None
    birth = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    return birth, ("男" if int(value[16]) % 2 else "女")


def _apply_profile(profile: ArchiveProfile, data: dict[str, Any]) -> None:
    """Project effective basic information onto the profile's typed columns (used by filters and stats)."""
    profile.data = dict(data)
    id_number = (data.get("id_number") or "").upper() or None
    birth, gender = facts_from_id(id_number)
    profile.id_number = id_number
    profile.gender = data.get("gender") or gender
    profile.birth_date = _parse_date(data.get("birth_date")) or birth
    profile.education = data.get("education") or None
    profile.degree = data.get("degree") or None
    profile.practice_cert_no = data.get("practice_cert_no") or None
    profile.hire_date = _parse_date(data.get("hire_date"))
    profile.specialty = data.get("specialty") or None


def profile_entry(user: User, *, create: bool = False) -> ArchiveEntry | None:
    entry = db.session.scalar(select(ArchiveEntry).where(ArchiveEntry.user_id == user.id,
                                                         ArchiveEntry.section == PROFILE))
    if entry is None and create:
        entry = ArchiveEntry(user_id=user.id, section=PROFILE)
        db.session.add(entry)
        db.session.flush()
    return entry


def profile_data(user: User) -> dict[str, Any]:
    """The effective basic information (empty when none has been recorded)."""
    profile = get_profile(user)
    return dict(profile.data or {}) if profile else {}


# ---------------------------------------------------------------- records


def _extra_errors(section_key: str, form: FormDef, data: dict[str, Any]) -> dict[str, str]:
    """Rules JSON Schema cannot say: date ranges, the ID number check digit and its birth date."""
    errors: dict[str, str] = {}
    props = properties(form.schema)

    def title(name: str) -> str:
        return str(props.get(name, {}).get("title") or name)

    for start, end in (("start_date", "end_date"), ("filing_date", "end_date"), ("qualified_date", "appointed_date")):
        a, b = _parse_date(data.get(start)), _parse_date(data.get(end))
        if a and b and b < a:
            errors[end] = f"“{title(end)}”不能早于“{title(start)}”"
    if section_key == PROFILE and data.get("id_number"):
        problem = id_number_problem(str(data["id_number"]))
        if problem:
            errors["id_number"] = problem
        else:
            birth, _gender = facts_from_id(str(data["id_number"]))
            given = _parse_date(data.get("birth_date"))
            if given and birth and given != birth:
                errors["birth_date"] = f"出生日期与身份证号不一致（身份证号为 {birth.isoformat()}）"
    for name, prop in props.items():
        if prop.get("format") == "date" and name in data and _parse_date(data[name]) is None:
            errors.setdefault(name, f"“{title(name)}”应为有效的日期（如 2024-05-01）")
    return errors


def validate_section_data(section_key: str, data: dict[str, Any], *, form: FormDef | None = None) -> dict[str, Any]:
    """Check data against the section's form and the extra rules. Raises ValidationFailed (all fields at once)."""
    form = form or section_form(section_key)
    errors = forms.validation_errors(form, data)
    seen = {e["path"] for e in errors}
    errors += [{"path": k, "message": v} for k, v in _extra_errors(section_key, form, data).items() if k not in seen]
    if errors:
        raise ValidationFailed(errors, message=f"“{form.title}”填写有误，请按提示修改")
    return data


def effective_version(entry_id: int) -> ArchiveRecord | None:
    """The version of an entry in force (None while its first version is under review)."""
    return db.session.scalar(select(ArchiveRecord).where(ArchiveRecord.entry_id == entry_id,
                                                         ArchiveRecord.status == RecordStatus.EFFECTIVE.value))


def open_version(entry_id: int) -> ArchiveRecord | None:
    """The version of an entry under review or returned for revision, if any."""
    return db.session.scalar(select(ArchiveRecord).where(ArchiveRecord.entry_id == entry_id,
                                                         ArchiveRecord.status.in_(OPEN_RECORD_STATUSES)))


def _next_version(entry_id: int) -> int:
    return (db.session.scalar(select(func.max(ArchiveRecord.version)).where(ArchiveRecord.entry_id == entry_id))
            or 0) + 1


def get_entry(*, entry_id: int, staff: User | None = None) -> ArchiveEntry:
    """An entry (of the person when given). Raises NotFound."""
    entry = db.session.get(ArchiveEntry, entry_id)
    if entry is None or (staff is not None and entry.user_id != staff.id):
        raise NotFound("档案记录不存在", entry_id=entry_id)
    return entry


def _actor_name(actor: Any) -> str:
    return actor if isinstance(actor, str) else getattr(actor, "name", "") or "系统"


def submit_change(*, staff: User, section_key: str, actor: Any, data: dict[str, Any] | None = None,
                  entry_id: int | None = None, delete: bool = False, reason: str | None = None,
                  source: str = "manual", revision_note: str | None = None) -> ArchiveRecord:
    """Add, change or delete one record of a section (entry_id None = add; profile has one entry per person).

    Effective at once for archives.manage or a section without review; otherwise a pending version and a new
    `archive_change_review` instance (or, when the actor's own change was returned, the revision that
    resubmits it). Raises Forbidden, NotFound, Conflict (a change already in review), ValidationFailed."""
    s = section(section_key)
    mode = edit_mode(actor, staff, section_key)
    if mode is None:
        if staff.departed_at is not None:
            raise Forbidden("该人员已离职，档案只读（仅医务处可维护）", user_id=staff.id)
        raise Forbidden(f"没有权限修改该人员的“{s.title}”", user_id=staff.id)
    reason = (reason or "").strip() or None
    if s.kind == "profile":
        entry = profile_entry(staff)
    elif entry_id is not None:
        entry = get_entry(entry_id=entry_id, staff=staff)
        if entry.section != section_key:
            raise NotFound("档案记录不存在", entry_id=entry_id)
    else:
        entry = None
    if entry is not None and entry.is_deleted:
        raise InvalidTransition("该记录已删除", entry_id=entry.id)
    current = effective_version(entry.id) if entry is not None else None
    pending = open_version(entry.id) if entry is not None else None
    form = section_form(section_key)
    if delete:
        if s.kind == "profile":
            raise InvalidTransition("基本信息不能删除")
        if current is None:
            raise InvalidTransition("该记录尚未生效，不能删除；如需放弃请撤回审核流程")
        if not reason:
            raise ValidationFailed({"reason": "请填写删除原因"})
        payload = dict(current.data)
    else:
        payload = dict(data or {})
        if s.kind == "profile":
            # fields hidden from this actor keep their stored value
            prior = pending or current
            base = dict(prior.data) if prior is not None else profile_data(staff)
            for name in SENSITIVE_FIELDS.get(PROFILE, ()):
                if not is_manager(actor, staff) and base.get(name) not in (None, ""):
                    payload[name] = base[name]
        validate_section_data(section_key, payload, form=form)
        compare = pending.data if pending is not None else (current.data if current is not None else None)
        if compare is not None and dict(compare) == payload:
            raise ValidationFailed({"data": "内容没有变化，无需提交"}, message="内容没有变化，无需提交")
    revising = False
    if pending is not None:
        if pending.status == RecordStatus.PENDING:
            raise Conflict("该记录已有变更在审核中，请等待医务处审核结果", entry_id=pending.entry_id)
        if not isinstance(actor, User) or pending.submitted_by_id != actor.id:
            raise Conflict("该变更已退回提交人修改，请由提交人修改后重新提交", entry_id=pending.entry_id)
        revising = True
    if entry is None:
        entry = ArchiveEntry(user_id=staff.id, section=section_key)
        db.session.add(entry)
        db.session.flush()
    action = "delete" if delete else ("update" if current is not None else "create")
    row = ArchiveRecord(
        entry_id=entry.id, user_id=staff.id, section=section_key, version=_next_version(entry.id), action=action,
        data=payload, form_key=form.key, form_version=form.version, supersedes_id=current.id if current else None,
        source=source, reason=reason, submitted_by_id=actor.id if isinstance(actor, User) else None,
        submitted_by_name=_actor_name(actor), submitted_at=utcnow(),
    )
    row.entry = entry
    db.session.add(row)
    db.session.flush()
    before = dict(current.data) if current else None
    if revising and pending is not None:
        pending.status = RecordStatus.SUPERSEDED
        row.status = RecordStatus.PENDING
        row.instance_id = pending.instance_id
        db.session.flush()
        audit.record(actor, "archive.change_revised", row, before={"record_id": pending.id, "data": pending.data},
                     after={"data": payload, "reason": reason})
        _resubmit(row, actor, revision_note or reason or "已按退回意见修改档案内容")
    elif mode == "direct":
        _make_effective(row, actor)
        audit.record(actor, "archive.record_changed", row, before=before,
                     after={"section": section_key, "action": action, "data": payload, "reason": reason,
                            "version": row.version})
    else:
        row.status = RecordStatus.PENDING
        db.session.flush()
        _start_review(row, staff, actor)
        audit.record(actor, "archive.change_submitted", row, before=before,
                     after={"section": section_key, "action": action, "data": payload, "reason": reason,
                            "instance_id": row.instance_id})
    refresh_completeness(user_ids=[staff.id])
    return row


def _make_effective(row: ArchiveRecord, actor: Any) -> None:
    previous = db.session.scalar(select(ArchiveRecord).where(ArchiveRecord.entry_id == row.entry_id,
                                                             ArchiveRecord.status == RecordStatus.EFFECTIVE.value,
                                                             ArchiveRecord.id != row.id))
    now = utcnow()
    if previous is not None:
        previous.status = RecordStatus.SUPERSEDED
    row.status = RecordStatus.EFFECTIVE
    row.decided_at = now
    row.decided_by_id = actor.id if isinstance(actor, User) else None
    entry = db.session.get(ArchiveEntry, row.entry_id)
    assert entry is not None
    if row.action == "delete":
        entry.is_deleted = True
        entry.deleted_at = now
    if row.section == PROFILE:
        staff = db.session.get(User, row.user_id)
        assert staff is not None
        profile = ensure_profile(user=staff, actor=actor)
        _apply_profile(profile, dict(row.data))
        if profile.origin == "hr" and profile.hr_pending:
            pass  # confirmation of HR-created staff is a separate step (hr.confirm_staff)
    db.session.flush()


def _flow_title(row: ArchiveRecord, staff: User) -> str:
    dept = f"（{staff.dept.name}）" if staff.dept else ""
    return f"{staff.name}{dept}档案变更：{section(row.section).title}·{row.action_label}"[:200]


def change_summary(row: ArchiveRecord) -> str:
    """One line naming the record (its first listed fields), for titles and notifications."""
    try:
        form = forms.get_form(row.form_key or f"archive_{row.section}", version=row.form_version)
    except NotFound:
        return ""
    cols = list_columns(form)[:3]
    return "，".join(display_value(row.data.get(c)) for c in cols if row.data.get(c) not in (None, ""))[:120]


def _start_review(row: ArchiveRecord, staff: User, actor: User) -> None:
    from app.workflow import services as wf

    instance = wf.start(
        key=PROCESS_KEY, business_key=f"DA{row.id}", title=_flow_title(row, staff), actor=actor,
        dept_id=staff.dept_id, campus_id=staff.campus_id,
        data={"record_id": row.id, "staff_id": staff.id, "staff_name": staff.name, "staff_no": staff.staff_no or "",
              "dept_name": staff.dept.name if staff.dept else "", "section": row.section,
              "section_title": section(row.section).title, "action": row.action, "action_label": row.action_label,
              "summary": change_summary(row), "submitter_name": actor.name},
    )
    row.instance_id = instance.id
    db.session.flush()


def _resubmit(row: ArchiveRecord, actor: User, note: str) -> None:
    """Complete the initiator's `revise` task of the returned change: the flow goes back to 医务处."""
    from app.workflow import services as wf
    from app.workflow.models import HumanTask, TaskStatus

    task = db.session.scalar(select(HumanTask).where(HumanTask.instance_id == row.instance_id,
                                                     HumanTask.status == TaskStatus.READY,
                                                     HumanTask.spec_name == "revise"))
    if task is None:
        raise Conflict("未找到该变更的“修改档案变更”待办，可能已被处理", record_id=row.id)
    wf.complete(task_id=task.id, actor=actor, data={"revision_note": note[:1000]})


def _rows_of_instance(instance_id: int, statuses: Sequence[str]) -> list[ArchiveRecord]:
    return list(db.session.scalars(
        select(ArchiveRecord).where(ArchiveRecord.instance_id == instance_id, ArchiveRecord.status.in_(statuses))
        .with_for_update().execution_options(populate_existing=True)))


def on_review_task_completed(*, instance: Any, task: Any, data: dict[str, Any], actor: Any) -> None:
    """Engine hook: 医务处 returned the change (→ returned) or the submitter resubmitted it (→ pending)."""
    if task.spec_name == "mao_review" and data.get("decision") == "return":
        for row in _rows_of_instance(instance.id, [RecordStatus.PENDING.value]):
            row.status = RecordStatus.RETURNED
            row.decision_comment = (data.get("comment") or "").strip() or None
            audit.record(actor, "archive.change_returned", row, after={"comment": row.decision_comment})
    elif task.spec_name == "revise":
        for row in _rows_of_instance(instance.id, [RecordStatus.RETURNED.value]):
            row.status = RecordStatus.PENDING
    db.session.flush()


def finalize_change(*, instance: Any, data: dict[str, Any], actor: Any) -> list[ArchiveRecord]:
    """Engine end hook: approved → the version takes effect; rejected → rejected; withdrawn/terminated →
    withdrawn. Notifies the submitter; audited; idempotent (closed versions are left alone)."""
    rows = _rows_of_instance(instance.id, OPEN_RECORD_STATUSES)
    decision = data.get("final_decision")
    status = str(getattr(instance, "status", "") or "")
    if decision not in ("approved", "rejected") and status in ("withdrawn", "terminated"):
        decision = status
    if decision not in ("approved", "rejected", "withdrawn", "terminated"):
        return rows
    comment = (data.get("comment") or data.get("reason") or "").strip() or None
    for row in rows:
        staff = db.session.get(User, row.user_id)
        assert staff is not None
        title = section(row.section).title
        row.decision_comment = comment
        if decision == "approved":
            _make_effective(row, actor)
            audit.record(actor, "archive.change_approved", row, after={"comment": comment, "version": row.version})
            message = f"您提交的档案变更（{staff.name}·{title}·{row.action_label}）已审核通过并生效"
        elif decision == "rejected":
            row.status = RecordStatus.REJECTED
            row.decided_at = utcnow()
            row.decided_by_id = actor.id if isinstance(actor, User) else None
            audit.record(actor, "archive.change_rejected", row, after={"comment": comment})
            message = f"您提交的档案变更（{staff.name}·{title}·{row.action_label}）未通过审核"
        else:
            row.status = RecordStatus.WITHDRAWN
            row.decided_at = utcnow()
            audit.record(actor, "archive.change_withdrawn", row, after={"instance_status": decision,
                                                                        "reason": comment})
            message = f"档案变更（{staff.name}·{title}·{row.action_label}）已撤回"
        if row.submitted_by_id and getattr(actor, "id", None) != row.submitted_by_id:
            notify.notify(user_ids=[row.submitted_by_id], title=message, body=comment,
                          link=f"/archives/{staff.id}?tab={row.section}", kind="result")
        db.session.flush()
        refresh_completeness(user_ids=[staff.id])
    return rows


def record_for_instance(instance_id: int) -> ArchiveRecord | None:
    """The newest version under review in a flow instance (for the task page's context)."""
    return db.session.scalar(select(ArchiveRecord).where(ArchiveRecord.instance_id == instance_id)
                             .order_by(ArchiveRecord.id.desc()).limit(1))


# ---------------------------------------------------------------- reading sections


def list_columns(form: FormDef) -> list[str]:
    """Fields shown as table columns: the template's ui:columns, else its first five fields."""
    props = properties(form.schema)
    cols = form.ui.get("ui:columns") if isinstance(form.ui, dict) else None
    if isinstance(cols, list):
        picked = [c for c in cols if isinstance(c, str) and c in props]
        if picked:
            return picked
    return ordered(props, form.ui)[:5]


def display_value(value: Any) -> str:
    if value is True:
        return "是"
    if value is False:
        return "否"
    if value is None:
        return ""
    if isinstance(value, list):
        return "、".join(display_value(v) for v in value)
    if isinstance(value, dict):
        return "；".join(f"{k}：{display_value(v)}" for k, v in value.items())
    return str(value)


def _sort_date(form: FormDef, data: dict[str, Any]) -> str:
    for name in ordered(properties(form.schema), form.ui):
        if properties(form.schema)[name].get("format") == "date" and data.get(name):
            return str(data[name])
    return ""


@dataclass
class EntryView:
    entry: ArchiveEntry
    effective: ArchiveRecord | None
    open: ArchiveRecord | None

    @property
    def shown(self) -> ArchiveRecord:
        record = self.effective or self.open
        assert record is not None
        return record


def section_entries(*, staff: User, section_key: str) -> list[EntryView]:
    """Entries of a section that exist (effective) or are on their way (pending/returned), newest first."""
    rows = db.session.scalars(
        select(ArchiveRecord).join(ArchiveEntry, ArchiveRecord.entry_id == ArchiveEntry.id)
        .where(ArchiveRecord.user_id == staff.id, ArchiveRecord.section == section_key,
               ArchiveEntry.is_deleted.is_(False),
               ArchiveRecord.status.in_([RecordStatus.EFFECTIVE.value, *OPEN_RECORD_STATUSES]))
        .options(joinedload(ArchiveRecord.entry)).order_by(ArchiveRecord.entry_id, ArchiveRecord.version))
    by_entry: dict[int, EntryView] = {}
    for row in rows:
        view = by_entry.setdefault(row.entry_id, EntryView(entry=row.entry, effective=None, open=None))
        if row.status == RecordStatus.EFFECTIVE:
            view.effective = row
        else:
            view.open = row
    if not by_entry:
        return []
    try:
        form = section_form(section_key)
    except NotFound:
        return list(by_entry.values())
    return sorted(by_entry.values(), key=lambda v: (_sort_date(form, v.shown.data), v.entry.id), reverse=True)


def section_counts(staff: User) -> dict[str, int]:
    """section -> number of entries in force (for the tab badges)."""
    rows = db.session.execute(
        select(ArchiveRecord.section, func.count(func.distinct(ArchiveRecord.entry_id)))
        .join(ArchiveEntry, ArchiveRecord.entry_id == ArchiveEntry.id)
        .where(ArchiveRecord.user_id == staff.id, ArchiveEntry.is_deleted.is_(False),
               ArchiveRecord.status == RecordStatus.EFFECTIVE.value)
        .group_by(ArchiveRecord.section))
    return {str(r[0]): int(r[1]) for r in rows}


def open_changes(staff: User) -> list[ArchiveRecord]:
    """Versions of the person's archive waiting for review or revision."""
    return list(db.session.scalars(select(ArchiveRecord).where(ArchiveRecord.user_id == staff.id,
                                                               ArchiveRecord.status.in_(OPEN_RECORD_STATUSES))
                                   .order_by(ArchiveRecord.id)))


@dataclass
class FieldChange:
    name: str
    label: str
    old: str
    new: str


@dataclass
class VersionView:
    record: ArchiveRecord
    changes: list[FieldChange] = field(default_factory=list)


def entry_history(*, entry: ArchiveEntry, viewer: Any) -> list[VersionView]:
    """Every version of an entry, oldest first, with the field changes against the version it was based on
    (ID numbers masked for viewers without archives.manage)."""
    staff = db.session.get(User, entry.user_id)
    assert staff is not None
    records = list(db.session.scalars(select(ArchiveRecord).where(ArchiveRecord.entry_id == entry.id)
                                      .order_by(ArchiveRecord.version)))
    by_id = {r.id: r for r in records}
    hidden = set() if is_manager(viewer, staff) else set(SENSITIVE_FIELDS.get(entry.section, ()))
    out = []
    for r in records:
        try:
            form = forms.get_form(r.form_key or f"archive_{r.section}", version=r.form_version)
            props = properties(form.schema)
            names = ordered(props, form.ui)
        except NotFound:
            props, names = {}, []
        base = by_id.get(r.supersedes_id or 0)
        old = dict(base.data) if base is not None else {}
        new = dict(r.data) if r.action != "delete" else {}
        keys = names + sorted(k for k in set(old) | set(new) if k not in names)
        changes = []
        for k in keys:
            if old.get(k) == new.get(k) and r.action != "delete":
                continue
            if r.action == "delete" and k not in old:
                continue
            ov, nv = display_value(old.get(k)), display_value(new.get(k))
            if k in hidden:
                ov, nv = mask_id_number(ov), mask_id_number(nv)
            changes.append(FieldChange(k, str(props.get(k, {}).get("title") or k), ov, nv))
        out.append(VersionView(record=r, changes=changes))
    return out


def privilege_grants(staff: User) -> list[Any]:
    """The person's clinical-privilege grants, every status (技术授权, read-only here)."""
    from app.privileges.models import Grant

    return list(db.session.scalars(select(Grant).where(Grant.user_id == staff.id)
                                   .order_by(Grant.status, Grant.valid_from.desc(), Grant.id)))


def high_risk_authorizations(staff: User) -> list[Any]:
    """The person's high-risk technology authorisations (高风险诊疗技术授权), in force first, every status."""
    from app.technology.models.high_risk import HighRiskAuthorization

    return list(db.session.scalars(
        select(HighRiskAuthorization).where(HighRiskAuthorization.user_id == staff.id)
        .options(joinedload(HighRiskAuthorization.item))
        .order_by(HighRiskAuthorization.status, HighRiskAuthorization.valid_from.desc(), HighRiskAuthorization.id)))


def day_surgery_qualifications(staff: User) -> list[Any]:
    """The person's day-surgery qualifications (日间手术资质, one per procedure), every status."""
    from app.technology.models.day_surgery import DaySurgeryQualification

    return list(db.session.scalars(
        select(DaySurgeryQualification).where(DaySurgeryQualification.user_id == staff.id)
        .order_by(DaySurgeryQualification.status, DaySurgeryQualification.valid_from.desc(),
                  DaySurgeryQualification.id)))


@dataclass
class ProjectRole:
    """A new-technology project and the person's part in it (负责人 / 申请人 / 团队成员)."""

    project: Any
    roles: list[str]


_TEAM_SPLIT = re.compile(r"[\s,，、;；:：/（）()]+")


def _in_team(team: Any, staff: User) -> bool:
    # team members are free text ("姓名 职称 分工", one per line); a member is named by a whole word of it
    names = {n for n in (staff.name, staff.staff_no) if n}
    return any(names & set(_TEAM_SPLIT.split(str(member))) for member in team or ())


def new_tech_projects(staff: User) -> list[ProjectRole]:
    """New-technology projects the person leads, applied for or is a team member of, newest first."""
    from app.technology.models.new_tech import NewTechProject

    rows = db.session.execute(select(NewTechProject.id, NewTechProject.lead_id, NewTechProject.applicant_id,
                                     NewTechProject.team))
    ids = {pid for pid, lead, applicant, team in rows if staff.id in (lead, applicant) or _in_team(team, staff)}
    if not ids:
        return []
    out = []
    for project in db.session.scalars(select(NewTechProject).where(NewTechProject.id.in_(ids))
                                      .order_by(NewTechProject.id.desc())):
        roles = [label for label, hit in (("项目负责人", project.lead_id == staff.id),
                                          ("申请人", project.applicant_id == staff.id),
                                          ("团队成员", _in_team(project.team, staff))) if hit]
        out.append(ProjectRole(project=project, roles=roles))
    return out


# ---------------------------------------------------------------- completeness


COMPLETENESS_BUCKETS = {"complete": "完整（100%）", "high": "较完整（80–99%）", "medium": "部分（50–79%）",
                        "low": "欠缺（<50%）"}


def bucket_condition(bucket: str):
    col = ArchiveProfile.completeness
    return {"complete": col >= 100, "high": and_(col >= 80, col < 100), "medium": and_(col >= 50, col < 80),
            "low": col < 50}.get(bucket)


def required_certificate_types(*, title: str | None, roles: Iterable[str],
                               requirements: Sequence[CertificateRequirement] | None = None) -> list[CertificateType]:
    """Certificate types a person with this title and these roles must hold (data: certificate_requirements)."""
    reqs = requirements if requirements is not None else list(db.session.scalars(select(CertificateRequirement)))
    role_set = set(roles)
    out: dict[int, CertificateType] = {}
    for r in reqs:
        if not r.type.is_active:
            continue
        if r.title and r.title != (title or ""):
            continue
        if r.role_code and r.role_code not in role_set:
            continue
        out[r.type_id] = r.type
    return sorted(out.values(), key=lambda t: (t.sort_order, t.id))


@dataclass
class Completeness:
    percent: int
    total: int
    missing: list[str]


def _compute(profile: ArchiveProfile, *, title: str | None, roles: set[str], required_sections: list[SectionDef],
             have_sections: set[str], certs: list[Certificate], requirements: Sequence[CertificateRequirement],
             on: date) -> Completeness:
    missing: list[str] = []
    total = 1
    data = profile.data or {}
    labels = {"gender": "性别", "birth_date": "出生日期", "id_number": "身份证号", "education": "最高学历",
              "degree": "最高学位", "hire_date": "入职日期"}
    empty = [labels[f] for f in PROFILE_REQUIRED
             if data.get(f) in (None, "") and getattr(profile, f, None) in (None, "")]
    if empty:
        missing.append("基本信息缺少：" + "、".join(empty))
    for s in required_sections:
        if s.kind != "records":
            continue
        total += 1
        if s.key not in have_sections:
            missing.append(f"缺少{s.title}")
    for ctype in required_certificate_types(title=title, roles=roles, requirements=requirements):
        total += 1
        mine = [c for c in certs if c.type_id == ctype.id]
        if not mine:
            missing.append(f"缺少{ctype.name}")
        elif not any(c.files for c in mine):
            missing.append(f"{ctype.name}未上传扫描件")
        elif all(c.expiry_date is not None and c.expiry_date < on for c in mine):
            latest = max(c.expiry_date for c in mine if c.expiry_date is not None)
            missing.append(f"{ctype.name}已过期（{latest.isoformat()}）")
        elif ctype.has_expiry and all(c.expiry_date is None for c in mine):
            # registered before the date was required: no expiry reminder can be sent for it
            missing.append(f"{ctype.name}未填写有效期至")
    done = total - len(missing)
    return Completeness(percent=int(round(100 * done / total)) if total else 100, total=total, missing=missing)


def refresh_completeness(*, user_ids: Sequence[int] | None = None, on: date | None = None) -> int:
    """Recompute completeness (percent and missing items) of the given people's archives (all when None).
    Returns how many profiles were recomputed. Called after every change and by the daily job."""
    on = on or today()
    stmt = select(ArchiveProfile).options(joinedload(ArchiveProfile.user))
    if user_ids is not None:
        if not user_ids:
            return 0
        stmt = stmt.where(ArchiveProfile.user_id.in_(list(user_ids)))
    profiles = list(db.session.scalars(stmt))
    if not profiles:
        return 0
    ids = [p.user_id for p in profiles]
    required = [s for s in sections() if s.is_required]
    have: dict[int, set[str]] = defaultdict(set)
    for uid, sec in db.session.execute(
            select(ArchiveRecord.user_id, ArchiveRecord.section).join(ArchiveEntry, ArchiveRecord.entry_id == ArchiveEntry.id)
            .where(ArchiveRecord.user_id.in_(ids), ArchiveEntry.is_deleted.is_(False),
                   ArchiveRecord.status == RecordStatus.EFFECTIVE.value).distinct()):
        have[int(uid)].add(str(sec))
    roles: dict[int, set[str]] = defaultdict(set)
    for uid, code in db.session.execute(select(UserRole.user_id, Role.code).join(Role, Role.id == UserRole.role_id)
                                        .where(UserRole.user_id.in_(ids))):
        roles[int(uid)].add(str(code))
    certs: dict[int, list[Certificate]] = defaultdict(list)
    for cert in db.session.scalars(select(Certificate).where(Certificate.user_id.in_(ids),
                                                             Certificate.is_deleted.is_(False))):
        certs[cert.user_id].append(cert)
    requirements = list(db.session.scalars(select(CertificateRequirement)))
    now = utcnow()
    for p in profiles:
        result = _compute(p, title=p.user.title, roles=roles[p.user_id], required_sections=required,
                          have_sections=have[p.user_id], certs=certs[p.user_id], requirements=requirements, on=on)
        if p.completeness != result.percent or list(p.missing or []) != result.missing:
            p.completeness = result.percent
            p.missing = result.missing
        p.completeness_at = now
    db.session.flush()
    return len(profiles)


@dataclass
class DeptCompleteness:
    dept_id: int | None
    dept_name: str
    staff: int
    complete: int
    average: int
    buckets: dict[str, int]


def department_completeness(*, viewer: User) -> list[DeptCompleteness]:
    """Per department (within the viewer's scope, people not departed): headcount, complete archives, average
    completeness and the count per bucket."""
    stmt = (select(ArchiveProfile.completeness, User.dept_id, Department.name)
            .join(User, ArchiveProfile.user_id == User.id).outerjoin(Department, User.dept_id == Department.id)
            .where(User.departed_at.is_(None)))
    stmt = viewable_query(viewer, stmt, user_col=User.id, dept_col=User.dept_id)
    acc: dict[int | None, list[Any]] = {}
    for pct, dept_id, name in db.session.execute(stmt):
        row = acc.setdefault(dept_id, [name or "（未分配科室）", []])
        row[1].append(int(pct))
    out = []
    for dept_id, (name, values) in acc.items():
        buckets = Counter(_bucket(v) for v in values)
        out.append(DeptCompleteness(dept_id=dept_id, dept_name=name, staff=len(values),
                                    complete=buckets.get("complete", 0),
                                    average=int(round(sum(values) / len(values))) if values else 0,
                                    buckets={k: buckets.get(k, 0) for k in COMPLETENESS_BUCKETS}))
    return sorted(out, key=lambda d: (d.average, d.dept_name))


def _bucket(percent: int) -> str:
    if percent >= 100:
        return "complete"
    if percent >= 80:
        return "high"
    if percent >= 50:
        return "medium"
    return "low"


# ---------------------------------------------------------------- list, export, statistics


@dataclass(frozen=True)
class ArchiveFilter:
    q: str | None = None
    dept_id: int | None = None
    title: str | None = None
    degree: str | None = None
    bucket: str | None = None
    status: str | None = None  # active / departed / pending (HR-created, to confirm)


STATUS_FILTERS = {"active": "在职", "departed": "已离职", "pending": "人事新增待确认"}


def archive_query(*, viewer: User, filters: ArchiveFilter | None = None) -> Select:
    """Archive profiles the viewer may see, filtered; ordered by department and staff number."""
    f = filters or ArchiveFilter()
    stmt = (select(ArchiveProfile).join(User, ArchiveProfile.user_id == User.id)
            .options(joinedload(ArchiveProfile.user).joinedload(User.dept))
            .order_by(User.dept_id, User.staff_no, User.id))
    stmt = viewable_query(viewer, stmt, user_col=User.id, dept_col=User.dept_id)
    if f.q:
        like = f"%{f.q.strip()}%"
        stmt = stmt.where(or_(User.name.ilike(like), User.staff_no.ilike(like), ArchiveProfile.specialty.ilike(like)))
    if f.dept_id:
        stmt = stmt.where(User.dept_id == f.dept_id)
    if f.title:
        stmt = stmt.where(User.title == f.title)
    if f.degree:
        stmt = stmt.where(ArchiveProfile.degree == f.degree) if f.degree != "未填" else \
            stmt.where(ArchiveProfile.degree.is_(None))
    cond = bucket_condition(f.bucket or "")
    if cond is not None:
        stmt = stmt.where(cond)
    if f.status == "active":
        stmt = stmt.where(User.departed_at.is_(None), ArchiveProfile.hr_pending.is_(False))
    elif f.status == "departed":
        stmt = stmt.where(User.departed_at.is_not(None))
    elif f.status == "pending":
        stmt = stmt.where(ArchiveProfile.hr_pending.is_(True))
    return stmt


def filter_options(viewer: User) -> dict[str, list[Any]]:
    """Departments, titles and degrees present within the viewer's scope (for the filter lists)."""
    base = select(User.dept_id).join(ArchiveProfile, ArchiveProfile.user_id == User.id)
    base = viewable_query(viewer, base, user_col=User.id, dept_col=User.dept_id)
    dept_ids = {d for d in db.session.scalars(base) if d is not None}
    depts = list(db.session.scalars(select(Department).where(Department.id.in_(dept_ids)).order_by(Department.code)))
    titles_stmt = viewable_query(viewer, select(User.title).join(ArchiveProfile, ArchiveProfile.user_id == User.id)
                                 .where(User.title.is_not(None)).distinct(), user_col=User.id, dept_col=User.dept_id)
    titles = sorted({t for t in db.session.scalars(titles_stmt) if t})
    degrees = ["博士", "硕士", "学士", "无学位", "未填"]
    return {"departments": depts, "titles": titles, "degrees": degrees}


def archive_status(profile: ArchiveProfile) -> tuple[str, str]:
    if profile.user.departed_at is not None:
        return "departed", "已离职"
    if profile.hr_pending:
        return "pending", "待确认"
    return "active", "在职"


EXPORT_COLUMNS = ["工号", "姓名", "科室", "职称", "性别", "出生日期", "身份证号", "最高学历", "最高学位", "执业证书编号",
                  "入职日期", "专业特长", "完整度(%)", "缺项", "状态"]


def archives_workbook(profiles: Iterable[ArchiveProfile], *, viewer: User) -> bytes:
    """The archive list as an .xlsx file (ID numbers masked unless the viewer holds archives.manage)."""
    from openpyxl import Workbook
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "医师档案"
    ws.append(EXPORT_COLUMNS)
    for p in profiles:
        u = p.user
        ws.append([u.staff_no or "", u.name, u.dept.name if u.dept else "", u.title or "", p.gender or "",
                   p.birth_date.isoformat() if p.birth_date else "", shown_id_number(viewer, u, p.id_number),
                   p.education or "", p.degree or "", p.practice_cert_no or "",
                   p.hire_date.isoformat() if p.hire_date else "", p.specialty or "", p.completeness,
                   "；".join(p.missing or []), archive_status(p)[1]])
    for idx, width in enumerate([10, 10, 12, 12, 6, 12, 22, 12, 10, 20, 12, 24, 10, 50, 8], start=1):
        ws.column_dimensions[get_column_letter(idx)].width = width
    ws.freeze_panes = "A2"
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


AGE_BANDS = ("30 岁以下", "30–39 岁", "40–49 岁", "50–59 岁", "60 岁及以上", "未填出生日期")


def age_band(birth: date | None, on: date) -> str:
    if birth is None:
        return AGE_BANDS[-1]
    age = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    if age < 30:
        return AGE_BANDS[0]
    if age < 40:
        return AGE_BANDS[1]
    if age < 50:
        return AGE_BANDS[2]
    if age < 60:
        return AGE_BANDS[3]
    return AGE_BANDS[4]


@dataclass
class Statistics:
    total: int
    by_dept: list[tuple[str, int]]
    by_title: list[tuple[str, int]]
    by_degree: list[tuple[str, int]]
    by_education: list[tuple[str, int]]
    by_age: list[tuple[str, int]]
    by_gender: list[tuple[str, int]]
    dept_title: dict[str, dict[str, int]]


def statistics(*, viewer: User, include_departed: bool = False, on: date | None = None) -> Statistics:
    """Headcounts of archived staff within the viewer's scope by department, title, degree, education, age
    band and gender, plus a department × title table (数据汇总统计, seed 000 §一.4)."""
    on = on or today()
    stmt = (select(User.title, Department.name, ArchiveProfile.degree, ArchiveProfile.education,
                   ArchiveProfile.birth_date, ArchiveProfile.gender)
            .join(User, ArchiveProfile.user_id == User.id).outerjoin(Department, User.dept_id == Department.id)
            .where(ArchiveProfile.hr_pending.is_(False)))
    if not include_departed:
        stmt = stmt.where(User.departed_at.is_(None))
    stmt = viewable_query(viewer, stmt, user_col=User.id, dept_col=User.dept_id)
    dept: Counter[str] = Counter()
    title: Counter[str] = Counter()
    degree: Counter[str] = Counter()
    edu: Counter[str] = Counter()
    age: Counter[str] = Counter()
    gender: Counter[str] = Counter()
    cross: dict[str, Counter[str]] = defaultdict(Counter)
    total = 0
    for t, d, dg, ed, birth, g in db.session.execute(stmt):
        total += 1
        dname, tname = d or "（未分配科室）", t or "（未填职称）"
        dept[dname] += 1
        title[tname] += 1
        degree[dg or "（未填）"] += 1
        edu[ed or "（未填）"] += 1
        age[age_band(birth, on)] += 1
        gender[g or "（未填）"] += 1
        cross[dname][tname] += 1

    def ranked(c: Counter[str]) -> list[tuple[str, int]]:
        return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))

    return Statistics(total=total, by_dept=ranked(dept), by_title=ranked(title), by_degree=ranked(degree),
                      by_education=ranked(edu), by_age=[(b, age[b]) for b in AGE_BANDS if age[b]],
                      by_gender=ranked(gender), dept_title={k: dict(v) for k, v in sorted(cross.items())})


def statistics_workbook(stats: Statistics) -> bytes:
    """The statistics as an .xlsx file, one sheet per dimension."""
    from openpyxl import Workbook

    wb = Workbook()
    first = True
    for name, rows in (("按科室", stats.by_dept), ("按职称", stats.by_title), ("按学位", stats.by_degree),
                       ("按学历", stats.by_education), ("按年龄段", stats.by_age), ("按性别", stats.by_gender)):
        ws = wb.active if first else wb.create_sheet()
        assert ws is not None
        first = False
        ws.title = name
        ws.append([name[1:], "人数", "占比(%)"])
        for label, n in rows:
            ws.append([label, n, round(100 * n / stats.total, 1) if stats.total else 0])
    ws = wb.create_sheet("科室×职称")
    titles = sorted({t for row in stats.dept_title.values() for t in row})
    ws.append(["科室", *titles, "合计"])
    for dept, row in stats.dept_title.items():
        ws.append([dept, *[row.get(t, 0) for t in titles], sum(row.values())])
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()
