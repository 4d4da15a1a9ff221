"""Catalogue maintenance for 医务处 (seed 000 §三.9(2): the hospital's technology catalogue is kept up to date with
national requirements): items added, edited, retired and reactivated; a category's default validity and active
flag; Excel export, and import of an updated national list (preview, then apply).

Invariants:
- catalogue rows are never deleted: an item leaves the catalogue by retiring (`is_active` false); its grants are
  kept untouched and the HIS check answers 该授权项目已停用 until it is reactivated (app/privileges/check.py sees
  the change through its session events);
- item codes are unique hospital-wide (the database says so), and within a category no two items share an
  ICD-9-CM-3 procedure code, which must exist in the national code table the catalogue is seeded from;
- an item that has grants keeps its category and code (HIS and the grants refer to them): retire it and add a
  new one instead; 新技术新项目 items follow their project (app/technology) and are not edited here;
- the catalogue is hospital-wide, so changing it takes privileges.manage at group scope;
- every change is audited with before/after in the same transaction; services flush, the view commits.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask_login import current_user
from sqlalchemy import Select, func, or_, select

from app.audit import services as audit
from app.audit.models import AuditLog
from app.auth.access import require
from app.auth.models import Scope, User
from app.auth.services import scope_of
from app.core.paging import paginate
from app.core.timefmt import SHANGHAI
from app.db import db
from app.errors import Forbidden, InvalidTransition, NotFound, ValidationFailed
from app.privileges import eligibility
from app.privileges.catalogue import DATA_DIR, GRADE_NAMES, shared_data_dir
from app.privileges.data import build
from app.privileges.models import Grant, GrantStatus, PrivilegeCategory, PrivilegeItem
from app.privileges.services import HIS_CHANNEL

# ---------------------------------------------------------------- rules

GRADED_CATEGORIES = ("surgery", "anesthesia", "endoscopy")  # 一级至四级 (seed 000 §三.1)
PROCEDURE_CATEGORIES = ("surgery", "invasive")  # authorised by ICD-9-CM-3 code; the check API answers by it too
CODE_PREFIXES = {"surgery": "SUR", "invasive": "INV"}  # item code derived from the procedure code when left blank
NEW_TECH_CATEGORY = "new_tech"  # items follow their project (services.sync_new_tech_item), not maintained here
NEW_TECH_SOURCE_PREFIX = "新技术新项目 "
# 特殊项目 grades: antibacterial (《抗菌药物临床应用管理办法》) and antitumour drug levels
SPECIAL_GRADES = {"非限制使用级": 1, "普通使用级": 1, "限制使用级": 2, "特殊使用级": 3}
GRADE_ALIASES = {name: lvl for lvl, name in GRADE_NAMES.items()} | {
    alias: lvl for lvl in GRADE_NAMES for alias in (str(lvl), f"{lvl}级")}

ITEM_CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PROCEDURE_CODE_RE = re.compile(r"^[0-9A-Za-z.-]+$")
CODE_MAX, NAME_MAX, PROCEDURE_MAX, REQUIREMENTS_MAX, NOTE_MAX, SOURCE_MAX = 64, 200, 32, 2000, 500, 200
REASON_MAX = 500
VALIDITY_YEARS_MAX = 10
IMPORT_MAX_ROWS = 20000
ICD_TITLE = "《手术操作分类代码国家临床版2.0》"

ITEM_FIELDS = ("category", "code", "name", "grade", "procedure_code", "requirements", "note", "source")
FIELD_LABELS = {"category": "类别编码", "code": "项目编码", "name": "项目名称", "grade": "级别",
                "procedure_code": "手术操作编码", "requirements": "准入要求", "note": "备注", "source": "依据",
                "reason": "变更原因", "validity_years": "默认有效期（年）", "is_active": "启用", "file": "导入文件",
                "min_title": "最低职称", "cert_mode": "必备证件设置", "cert_types": "必备证件",
                "requires_assessment": "定期考核", "rules_note": "规则说明", "default_min_title": "默认最低职称",
                "default_cert_types": "默认必备证件", "default_requires_assessment": "默认须定期考核合格"}
# what an audit snapshot of an item compares (and what an edit may change)
ITEM_ATTRS = ("category_id", "code", "name", "grade", "grade_level", "procedure_code", "procedure_category",
              "chapter", "requirements", "note", "source", "is_active")
ATTR_LABELS = {"category_id": "类别", "code": "项目编码", "name": "项目名称", "grade": "级别",
               "grade_level": "级别序号", "procedure_code": "手术操作编码", "procedure_category": "编码类别",
               "chapter": "章节", "requirements": "准入要求", "note": "备注", "source": "依据", "is_active": "状态",
               # eligibility rules (app.privileges.eligibility), audited as privilege.item_rules_saved
               "min_title": "最低职称", "cert_types": "必备证件", "requires_assessment": "须定期考核合格",
               "rules_note": "规则说明", "rules": "资格规则"}

AUDIT_LABELS = {
    "privilege.catalogue_item_created": "新增权限目录项目",
    "privilege.catalogue_item_updated": "修改权限目录项目",
    "privilege.catalogue_item_retired": "停用权限目录项目",
    "privilege.catalogue_item_reactivated": "重新启用权限目录项目",
    "privilege.catalogue_category_updated": "修改授权类别设置",
    "privilege.catalogue_imported": "导入权限目录",
}


def today() -> date:
    return datetime.now(SHANGHAI).date()


def _text(value: Any) -> str:
    """A form value or sheet cell as exact text: integer floats lose their '.0', nothing else is reinterpreted."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value).strip()


def ensure_catalogue_scope(actor: User) -> None:
    """Raise Forbidden unless the actor manages privileges for the whole hospital (the catalogue is shared)."""
    if scope_of(actor, "privileges.manage") is not Scope.GROUP:
        raise Forbidden("权限目录为全院共用，维护目录须具有全院范围的“医疗权限管理”权限")


def category_grades(category_code: str | None) -> dict[str, int]:
    """The grade names a category's items may carry (name -> level); empty for a category without grades."""
    if category_code in GRADED_CATEGORIES:
        return {name: lvl for lvl, name in GRADE_NAMES.items()}
    if category_code == "special":
        return dict(SPECIAL_GRADES)
    return {}


def is_project_item(item: PrivilegeItem) -> bool:
    """A 新技术新项目 item kept in step with its project by app/technology."""
    return (item.category is not None and item.category.code == NEW_TECH_CATEGORY
            and (item.source or "").startswith(NEW_TECH_SOURCE_PREFIX))


# ---------------------------------------------------------------- eligibility rules on the forms and sheets
# An item's rules (minimum title, certificate types, 定期考核) are kept by eligibility.save_item_rules; None is
# "the category's default". The form sends them with rules_form=1; a sheet with the rule columns, in its cells.

RULE_KEYS = ("min_title", "cert_mode", "cert_types", "requires_assessment", "rules_note")
RULE_ATTRS = ("min_title", "cert_types", "requires_assessment")
CERT_MODES = {"inherit": "沿用类别默认", "custom": "按本项目设置"}
ASSESSMENT_CHOICES = {"": "沿用类别默认", "1": "须近 3 年定期考核合格", "0": "不要求"}
YES, NO, NONE_CERT = ("是", "须", "要求", "1", "true", "True", "on"), ("否", "不要求", "0", "false", "False"), "无"
CERT_SPLIT = re.compile(r"[、,，;；/\s]+")


def _flag(value: Any, *, path: str, label: str, errors: dict[str, str]) -> bool | None:
    """A tri-state flag from a form or cell: blank = None (the default), 是/否 and the like."""
    if isinstance(value, bool) or value is None:
        return value
    text = _text(value)
    if not text:
        return None
    if text in YES:
        return True
    if text in NO:
        return False
    errors[path] = f"{label}应为“是”“否”或留空（沿用类别默认），不能为“{text}”"
    return None


def _cert_list(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [_text(v) for v in value if _text(v)]
    return [v for v in CERT_SPLIT.split(_text(value)) if v]


def _clean_rules(raw: Mapping[str, Any], *, force: bool = False) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The item rules a form or API call sends (None when it sends none), and the errors by field (Chinese)."""
    if not force and not any(k in raw for k in RULE_KEYS):
        return None, {}
    errors: dict[str, str] = {}
    mode = _text(raw.get("cert_mode")) or ("custom" if raw.get("cert_types") else "inherit")
    if mode not in CERT_MODES:
        errors["cert_mode"] = "必备证件请选择“沿用类别默认”或“按本项目设置”"
    certs = _cert_list(raw.get("cert_types")) if mode == "custom" else None
    title, codes, rule_errors = eligibility.clean_rules(min_title=_text(raw.get("min_title")), cert_types=certs)
    errors.update(rule_errors)
    assessment = _flag(raw.get("requires_assessment"), path="requires_assessment", label="定期考核", errors=errors)
    note = _text(raw.get("rules_note")) or None
    if note and len(note) > eligibility.RULES_NOTE_MAX:
        errors["rules_note"] = f"规则说明不能超过 {eligibility.RULES_NOTE_MAX} 字"
    return {"min_title": title, "cert_types": codes, "requires_assessment": assessment, "rules_note": note}, errors


def _rule_changes(item: PrivilegeItem | None, rules: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Rule attribute -> (before, after) where the rules differ from the item's (a blank note changes nothing)."""
    out = {a: (getattr(item, a) if item is not None else None, rules[a]) for a in RULE_ATTRS}
    changed = {a: v for a, v in out.items() if v[0] != v[1]}
    if rules.get("rules_note") and (item is None or rules["rules_note"] != item.rules_note):
        changed["rules_note"] = (item.rules_note if item is not None else None, rules["rules_note"])
    return changed


def _save_rules(item: PrivilegeItem, rules: Mapping[str, Any], actor: User) -> None:
    eligibility.save_item_rules(item=item, actor=actor, min_title=rules["min_title"], cert_types=rules["cert_types"],
                                requires_assessment=rules["requires_assessment"],
                                rules_note=rules.get("rules_note") or item.rules_note)


def rule_text(attr: str, value: Any, cert_names: Mapping[str, str] | None = None) -> str:
    """A rule value as the sheet and the change lists show it (blank = the category default)."""
    if value is None:
        return ""
    if attr == "cert_types":
        names = cert_names if cert_names is not None else eligibility.cert_type_names()
        return "、".join(names.get(str(c), str(c)) for c in value) if value else NONE_CERT
    if attr == "requires_assessment":
        return "是" if value else "否"
    return str(value)


# ---------------------------------------------------------------- the national procedure code table


@dataclass(frozen=True)
class Procedure:
    code: str
    name: str
    category: str  # 手术 / 介入治疗 / 治疗性操作 / 诊断性操作


_procedure_cache: dict[tuple[tuple[str, float], ...], dict[str, Procedure]] = {}


def procedure_files() -> list[Path]:
    """The full national table in the shared reference folder, else the committed subsets the catalogue ships."""
    shared = shared_data_dir()
    if shared is not None and (shared / build.PROCEDURES_FILE).is_file():
        return [shared / build.PROCEDURES_FILE]
    return [p for p in (DATA_DIR / build.SURGERY_SUBSET, DATA_DIR / build.INVASIVE_SUBSET) if p.is_file()]


def procedure_table() -> dict[str, Procedure]:
    """ICD-9-CM-3 (国家临床版 2.0) code -> procedure, read once per file version."""
    files = procedure_files()
    key = tuple((str(p), p.stat().st_mtime) for p in files)
    table = _procedure_cache.get(key)
    if table is None:
        table = {}
        for path in files:
            for row in build.read_csv(path):
                code = (row.get("code") or "").strip()
                if code:
                    table.setdefault(code, Procedure(code, row.get("name_zh") or "", row.get("category") or ""))
        _procedure_cache.clear()
        _procedure_cache[key] = table
    return table


# ---------------------------------------------------------------- validation


class Catalogue:
    """The categories and items, loaded once for validating one form or a whole import."""

    def __init__(self) -> None:
        self.categories = list(db.session.scalars(select(PrivilegeCategory).order_by(PrivilegeCategory.sort_order)))
        self.by_code = {c.code: c for c in self.categories}
        self.by_name = {c.name: c for c in self.categories}
        self.items: dict[str, PrivilegeItem] = {i.code: i for i in db.session.scalars(select(PrivilegeItem))}
        self.procedure_owners: dict[tuple[int, str], list[PrivilegeItem]] = {}
        for item in self.items.values():
            if item.procedure_code:
                self.procedure_owners.setdefault((item.category_id, item.procedure_code), []).append(item)

    def category(self, value: str) -> PrivilegeCategory | None:
        return self.by_code.get(value) or self.by_name.get(value)


def _grant_count(item: PrivilegeItem) -> int:
    return db.session.scalar(select(func.count()).select_from(Grant).where(Grant.item_id == item.id)) or 0


def _clean_item(raw: Mapping[str, Any], *, catalogue: Catalogue, current: PrivilegeItem | None,
                check_procedure_owner: bool = True) -> tuple[dict[str, Any], dict[str, str]]:
    """Validated item values (attribute -> value, plus `category`) and the errors keyed by field (Chinese)."""
    text = {f: _text(raw.get(f)) for f in ITEM_FIELDS}
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}

    category = catalogue.category(text["category"]) if text["category"] else None
    if not text["category"]:
        errors["category"] = "请选择授权类别"
    elif category is None:
        errors["category"] = f"授权类别不存在：{text['category']}"
    elif category.code == NEW_TECH_CATEGORY and (current is None or current.category_id != category.id):
        errors["category"] = "新技术新项目授权项目随新技术新项目立项审批自动生成，不能在目录中新增"
    values["category"] = category
    values["category_id"] = category.id if category is not None else None

    # procedure code first: a blank item code of a procedure category is derived from it
    proc_code = text["procedure_code"]
    procedure: Procedure | None = None
    if proc_code:
        if category is not None and category.code not in PROCEDURE_CATEGORIES:
            errors["procedure_code"] = f"“{category.name}”不按手术操作编码授权，手术操作编码请留空"
        elif len(proc_code) > PROCEDURE_MAX or not PROCEDURE_CODE_RE.match(proc_code):
            errors["procedure_code"] = "手术操作编码格式不正确（ICD-9-CM-3 国家临床版 2.0，如 51.2201 或 35.2300x002）"
        else:
            procedure = procedure_table().get(proc_code)
            if procedure is None:
                errors["procedure_code"] = f"手术操作编码 {proc_code} 不在{ICD_TITLE}中"
    values["procedure_code"] = procedure.code if procedure else None
    values["procedure_category"] = procedure.category[:16] if procedure else None
    values["chapter"] = build.chapter_of(procedure.code) if procedure else None

    code = text["code"]
    if not code and procedure is not None and category is not None and category.code in CODE_PREFIXES:
        code = f"{CODE_PREFIXES[category.code]}-{procedure.code}"
    if not code:
        errors["code"] = "项目编码为必填项"
    elif len(code) > CODE_MAX or not ITEM_CODE_RE.match(code):
        errors["code"] = f"项目编码为 1–{CODE_MAX} 位字母、数字、点、下划线或短横线，以字母或数字开头"
    else:
        other = catalogue.items.get(code)
        if other is not None and other is not current:
            if category is not None and other.category_id == category.id:
                errors["code"] = f"“{category.name}”中已有项目编码 {code}（{other.name}）"
            else:
                errors["code"] = f"项目编码 {code} 已被“{other.category.name}”的“{other.name}”使用（项目编码全院唯一）"
    values["code"] = code

    if not text["name"]:
        errors["name"] = "项目名称为必填项"
    elif len(text["name"]) > NAME_MAX:
        errors["name"] = f"项目名称不能超过 {NAME_MAX} 字"
    values["name"] = text["name"]

    grades = category_grades(category.code if category is not None else None)
    grade, level = text["grade"], None
    if grade:
        if category is None:
            pass
        elif not grades:
            errors["grade"] = f"“{category.name}”不分级，级别请留空"
        else:
            level = grades.get(grade)
            if level is None and category.code in GRADED_CATEGORIES:
                level = GRADE_ALIASES.get(grade)
                grade = GRADE_NAMES.get(level or 0, grade)
            if level is None:
                errors["grade"] = f"“{category.name}”的级别应为：{'、'.join(grades)}"
    elif category is not None and category.code in GRADED_CATEGORIES:
        errors["grade"] = f"“{category.name}”须填写级别（一级至四级）"
    values["grade"], values["grade_level"] = (grade or None), level

    for f, limit in (("requirements", REQUIREMENTS_MAX), ("note", NOTE_MAX), ("source", SOURCE_MAX)):
        if len(text[f]) > limit:
            errors[f] = f"{FIELD_LABELS[f]}不能超过 {limit} 字"
        values[f] = text[f] or None

    if current is not None and (category is not None and category.id != current.category_id
                                or "code" not in errors and code != current.code):
        held = _grant_count(current)
        if held:
            path = "category" if category is not None and category.id != current.category_id else "code"
            errors.setdefault(path, f"该项目已有 {held} 条授权记录，不能修改类别或项目编码（可停用后新增项目）")

    if check_procedure_owner and procedure is not None and category is not None:
        owners = [i for i in catalogue.procedure_owners.get((category.id, procedure.code), []) if i is not current]
        if owners:
            errors["procedure_code"] = _procedure_taken(category, procedure.code, owners[0])
    return values, errors


def _procedure_taken(category: PrivilegeCategory, proc_code: str, owner: PrivilegeItem) -> str:
    retired = "（已停用，可重新启用该项目）" if not owner.is_active else ""
    return f"“{category.name}”中已有手术操作编码 {proc_code} 的项目“{owner.name}”（{owner.code}）{retired}"


def _snapshot(item: PrivilegeItem) -> dict[str, Any]:
    return {a: getattr(item, a) for a in ITEM_ATTRS}


def _apply_values(item: PrivilegeItem, values: Mapping[str, Any]) -> None:
    for attr in ITEM_ATTRS:
        if attr != "is_active" and attr in values:
            setattr(item, attr, values[attr])


def _changes(item: PrivilegeItem, values: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {a: (getattr(item, a), values[a]) for a in ITEM_ATTRS
            if a in values and getattr(item, a) != values[a]}


def _next_sort_order(category_id: int) -> int:
    current = db.session.scalar(select(func.max(PrivilegeItem.sort_order))
                                .where(PrivilegeItem.category_id == category_id))
    return (current or 0) + 1


def _ensure_editable(item: PrivilegeItem) -> None:
    if is_project_item(item):
        raise InvalidTransition(f"该项目随{item.source}自动维护（立项、转常规、结题），请在新技术新项目中办理")


# ---------------------------------------------------------------- item services


def create_item(*, data: Mapping[str, Any], actor: User) -> PrivilegeItem:
    """Add a catalogue item (active). Audited. Raises Forbidden, ValidationFailed (nothing written)."""
    ensure_catalogue_scope(actor)
    values, errors = _clean_item(data, catalogue=Catalogue(), current=None)
    rules, rule_errors = _clean_rules(data)
    errors.update(rule_errors)
    if errors:
        raise ValidationFailed(errors)
    item = PrivilegeItem(is_active=True, sort_order=_next_sort_order(values["category_id"]))
    _apply_values(item, values)
    db.session.add(item)
    db.session.flush()
    audit.record(actor, "privilege.catalogue_item_created", item, after=_snapshot(item))
    if rules is not None:
        _save_rules(item, rules, actor)
    return item


def update_item(*, item: PrivilegeItem, data: Mapping[str, Any], actor: User) -> dict[str, tuple[Any, Any]]:
    """Change an item's fields and, when sent, its eligibility rules (eligibility.save_item_rules); returns what
    changed (attribute -> (before, after); `rules` for the rules), audited when anything did. A 新技术新项目 item
    keeps its fields (they follow the project) but its rules may change. Raises Forbidden, InvalidTransition (a
    field of a 新技术新项目 item), ValidationFailed (nothing written)."""
    ensure_catalogue_scope(actor)
    values, errors = _clean_item(data, catalogue=Catalogue(), current=item)
    rules, rule_errors = _clean_rules(data)
    changes = _changes(item, values) if not errors else {}
    if changes or (errors and rules is None):
        _ensure_editable(item)
    errors.update(rule_errors)
    if errors:
        raise ValidationFailed(errors)
    if changes:
        before = _snapshot(item)
        _apply_values(item, values)
        db.session.flush()
        audit.record(actor, "privilege.catalogue_item_updated", item, before=before, after=_snapshot(item))
    if rules is not None and (rule_changes := _rule_changes(item, rules)):
        _save_rules(item, rules, actor)
        changes["rules"] = ({a: v[0] for a, v in rule_changes.items()}, {a: v[1] for a, v in rule_changes.items()})
    return changes


def _clean_reason(reason: str | None, label: str) -> str:
    text = (reason or "").strip()
    if not text:
        raise ValidationFailed({"reason": f"请填写{label}原因"})
    if len(text) > REASON_MAX:
        raise ValidationFailed({"reason": f"{label}原因不能超过 {REASON_MAX} 字"})
    return text


def active_grant_counts(item_ids: Sequence[int], *, on: date | None = None) -> dict[int, int]:
    """Grants in force (active and not past their last day) per item id."""
    if not item_ids:
        return {}
    on = on or today()
    rows = db.session.execute(
        select(Grant.item_id, func.count()).where(
            Grant.item_id.in_(list(item_ids)), Grant.status == GrantStatus.ACTIVE.value, Grant.valid_from <= on,
            or_(Grant.valid_until.is_(None), Grant.valid_until >= on)).group_by(Grant.item_id))
    return {int(item_id): int(n) for item_id, n in rows}


ITEM_EVENT = "privilege.item_changed"


def push_item_change(item: PrivilegeItem, *, reason: str, active_grants: int | None = None) -> Any:
    """Tell HIS that a catalogue item was retired or brought back (one message for the item, ordered per item):
    its holders' grants are kept, so HIS learns it here rather than from a message per grant."""
    from app.outbox import services as outbox

    payload = {"code": item.code, "name": item.name, "category": item.category.code if item.category else None,
               "procedure_code": item.procedure_code, "active": bool(item.is_active), "reason": reason,
               "active_grants": active_grants, "changed_at": today().isoformat()}
    return outbox.enqueue(channel=HIS_CHANNEL, event=ITEM_EVENT, payload=payload, key=f"item:{item.code}")


def _retire(item: PrivilegeItem, *, reason: str, actor: User, extra: dict[str, Any] | None = None) -> int:
    held = active_grant_counts([item.id]).get(item.id, 0)
    before = _snapshot(item)
    item.is_active = False
    db.session.flush()
    audit.record(actor, "privilege.catalogue_item_retired", item, before=before, after=_snapshot(item),
                 reason=reason, active_grants=held, **(extra or {}))
    push_item_change(item, reason=reason, active_grants=held)
    return held


def retire_item(*, item: PrivilegeItem, reason: str, actor: User) -> int:
    """Retire an item (never deleted): no new applications, and the HIS check answers 该授权项目已停用 for its
    grants, which are kept. Returns how many grants were in force. Audited. Raises Forbidden, ValidationFailed,
    InvalidTransition (already retired, or a 新技术新项目 item)."""
    ensure_catalogue_scope(actor)
    _ensure_editable(item)
    text = _clean_reason(reason, "停用")
    if not item.is_active:
        raise InvalidTransition("该项目已停用")
    return _retire(item, reason=text, actor=actor)


def reactivate_item(*, item: PrivilegeItem, reason: str, actor: User) -> PrivilegeItem:
    """Bring a retired item back: its kept grants count again at the HIS check. Audited. Raises Forbidden,
    ValidationFailed, InvalidTransition (already active, or a 新技术新项目 item)."""
    ensure_catalogue_scope(actor)
    _ensure_editable(item)
    text = _clean_reason(reason, "启用")
    if item.is_active:
        raise InvalidTransition("该项目已在启用状态")
    before = _snapshot(item)
    item.is_active = True
    db.session.flush()
    audit.record(actor, "privilege.catalogue_item_reactivated", item, before=before, after=_snapshot(item),
                 reason=text)
    push_item_change(item, reason=text, active_grants=active_grant_counts([item.id]).get(item.id, 0))
    return item


def get_item(item_id: int) -> PrivilegeItem:
    item = db.session.get(PrivilegeItem, item_id)
    if item is None:
        raise NotFound("权限目录项目不存在")
    return item


def item_history(item: PrivilegeItem) -> list[AuditLog]:
    """The item's audit rows, newest first."""
    return list(db.session.scalars(select(AuditLog).where(AuditLog.entity_type == PrivilegeItem.__tablename__,
                                                          AuditLog.entity_id == str(item.id))
                                   .order_by(AuditLog.id.desc())))


# ---------------------------------------------------------------- category services


def update_category(*, category: PrivilegeCategory, data: Mapping[str, Any], actor: User) -> dict[str, Any]:
    """Set a category's default validity (years), active flag and, when sent, the eligibility defaults of its items
    (default_min_title, default_cert_types, default_requires_assessment: what an item without its own rule
    asks); a change of the flag needs a reason. New grants take the new validity, existing ones keep theirs; a
    retired category's items all answer 该授权项目已停用; new applications are checked against the new defaults.
    Returns what changed; audited. Raises Forbidden, ValidationFailed (nothing written)."""
    ensure_catalogue_scope(actor)
    errors: dict[str, str] = {}
    raw_years = _text(data.get("validity_years"))
    years = category.validity_years
    if category.validity_days:
        if raw_years and raw_years != str(category.validity_years):
            errors["validity_years"] = f"“{category.name}”按天计有效期（{category.validity_days} 天），不按年设置"
    elif not raw_years:
        errors["validity_years"] = "请填写默认有效期（年）"
    elif not raw_years.isdigit() or not 1 <= int(raw_years) <= VALIDITY_YEARS_MAX:
        errors["validity_years"] = f"默认有效期应为 1–{VALIDITY_YEARS_MAX} 的整数（年）"
    else:
        years = int(raw_years)
    active = _text(data.get("is_active")) in ("1", "true", "on", "是")
    reason = _text(data.get("reason"))
    if len(reason) > REASON_MAX:
        errors["reason"] = f"变更原因不能超过 {REASON_MAX} 字"
    elif active != category.is_active and not reason:
        errors["reason"] = "启用或停用类别须填写原因"
    wanted: list[tuple[str, Any]] = [("validity_years", years), ("is_active", active)]
    if any(k in data for k in CATEGORY_RULE_KEYS):
        # an empty certificate list is stored as [] ("none required"), never None: None means "never set" to the
        # demo loader (eligibility.seed_rules), which would put its defaults back
        title, codes, rule_errors = eligibility.clean_rules(
            min_title=_text(data.get("default_min_title")), cert_types=_cert_list(data.get("default_cert_types")),
            title_field="default_min_title", cert_field="default_cert_types")
        errors.update(rule_errors)
        assessment = _flag(data.get("default_requires_assessment"), path="default_requires_assessment",
                           label="默认须定期考核合格", errors=errors)
        wanted += [("default_min_title", title), ("default_cert_types", codes or []),
                   ("default_requires_assessment", bool(assessment))]
    if errors:
        raise ValidationFailed(errors)
    changes = {k: v for k, v in wanted if getattr(category, k) != v}
    if changes:
        before = audit.snapshot(category)
        for attr, value in changes.items():
            setattr(category, attr, value)
        db.session.flush()
        audit.record(actor, "privilege.catalogue_category_updated", category, before=before,
                     after=audit.snapshot(category), reason=reason or None)
    return changes


CATEGORY_RULE_KEYS = ("default_min_title", "default_cert_types", "default_requires_assessment")


def get_category(category_id: int) -> PrivilegeCategory:
    category = db.session.get(PrivilegeCategory, category_id)
    if category is None:
        raise NotFound("授权类别不存在")
    return category


def category_item_counts() -> dict[int, tuple[int, int]]:
    """Category id -> (active items, all items)."""
    rows = db.session.execute(select(PrivilegeItem.category_id, func.count(),
                                     func.count().filter(PrivilegeItem.is_active.is_(True)))
                              .group_by(PrivilegeItem.category_id))
    return {int(cid): (int(active), int(total)) for cid, total, active in rows}


# ---------------------------------------------------------------- list and export


@dataclass
class ItemFilter:
    q: str | None = None
    category: str | None = None
    grade_level: int | None = None
    active: bool | None = None


def items_query(filters: ItemFilter) -> Select:
    """Every catalogue item (retired ones too) matching the filters, in catalogue order."""
    stmt = (select(PrivilegeItem).join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id)
            .order_by(PrivilegeCategory.sort_order, PrivilegeItem.sort_order, PrivilegeItem.id))
    if filters.category:
        stmt = stmt.where(PrivilegeCategory.code == filters.category)
    if filters.q:
        like = f"%{filters.q}%"
        stmt = stmt.where(or_(PrivilegeItem.code.ilike(like), PrivilegeItem.name.ilike(like),
                              PrivilegeItem.procedure_code.ilike(like)))
    if filters.grade_level is not None:
        stmt = stmt.where(PrivilegeItem.grade_level == filters.grade_level)
    if filters.active is not None:
        stmt = stmt.where(PrivilegeItem.is_active.is_(filters.active))
    return stmt


IMPORT_COLUMNS = [("category", "类别编码"), ("code", "项目编码"), ("name", "项目名称"), ("grade", "级别"),
                  ("procedure_code", "手术操作编码"), ("requirements", "准入要求"),
                  # optional eligibility rules: blank = the category default; 必备证件 by name or code, 无 = none
                  ("min_title", "最低职称"), ("cert_types", "必备证件"), ("requires_assessment", "定期考核")]
SHEET_RULE_COLUMNS = ("min_title", "cert_types", "requires_assessment")
EXPORT_EXTRA = ["类别名称", "状态", "生效中授权", "编码类别", "章节", "备注", "依据", "规则说明"]


def catalogue_workbook(items: Iterable[PrivilegeItem]) -> bytes:
    """The items as .xlsx: the import columns first (the file can be edited and imported back), then details."""
    from openpyxl import Workbook
    from openpyxl.utils import get_column_letter

    items = list(items)
    counts = active_grant_counts([i.id for i in items])
    names = eligibility.cert_type_names()
    wb = Workbook()
    ws = wb.active
    ws.title = "医疗权限目录"
    ws.append([label for _k, label in IMPORT_COLUMNS] + EXPORT_EXTRA)
    for i in items:
        ws.append([i.category.code, i.code, i.name, i.grade or "", i.procedure_code or "", i.requirements or "",
                   *(rule_text(a, getattr(i, a), names) for a in SHEET_RULE_COLUMNS),
                   i.category.name, "启用" if i.is_active else "已停用", counts.get(i.id, 0),
                   i.procedure_category or "", i.chapter or "", i.note or "", i.source or "", i.rules_note or ""])
    for row in ws.iter_rows(min_row=2, max_col=5):
        for cell in row:
            cell.number_format = "@"  # codes stay text when the file is edited and imported back
    for idx, width in enumerate([14, 20, 40, 12, 16, 50, 12, 20, 8, 26, 8, 10, 12, 18, 40, 30, 40], start=1):
        ws.column_dimensions[get_column_letter(idx)].width = width
    ws.freeze_panes = "A2"
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


# ---------------------------------------------------------------- import of an updated national list

HEADER_ALIASES = {alias: key for key, names in {
    "category": ("类别编码", "授权类别编码", "类别", "category"),
    "code": ("项目编码", "code"),
    "name": ("项目名称", "name"),
    "grade": ("级别", "grade"),
    "procedure_code": ("手术操作编码", "手术编码", "ICD-9-CM-3", "procedure_code"),
    "requirements": ("准入要求", "授权条件", "requirements"),
    "min_title": ("最低职称", "min_title"),
    "cert_types": ("必备证件", "必备证件类型", "cert_types"),
    "requires_assessment": ("定期考核", "须定期考核合格", "requires_assessment"),
}.items() for alias in names}
REQUIRED_COLUMNS = ("category", "code", "name")
ROW_ACTION_LABELS = {"add": "新增", "update": "更新", "reactivate": "更新并重新启用", "unchanged": "无变化",
                     "error": "错误"}


@dataclass
class SheetRow:
    line: int
    values: dict[str, str]
    numeric_procedure: float | None = None  # the procedure code cell held a number


@dataclass
class ImportRow:
    line: int
    values: dict[str, str]
    action: str = "unchanged"
    code: str = ""
    item: PrivilegeItem | None = None
    clean: dict[str, Any] = field(default_factory=dict)
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    locked: str | None = None  # why this row may not change the catalogue (a 新技术新项目 item)
    rules: dict[str, Any] | None = None  # the eligibility rules, when the sheet has a rule column
    rule_changes: dict[str, tuple[str, str]] = field(default_factory=dict)  # attribute -> (before, after) as text

    @property
    def action_label(self) -> str:
        return ROW_ACTION_LABELS[self.action]

    @property
    def change_text(self) -> str:
        parts = []
        for attr, (old, new) in self.changes.items():
            if attr in ("category_id", "grade_level", "procedure_category", "chapter"):
                continue
            if attr == "is_active":
                parts.append("状态：已停用 → 启用")
                continue
            parts.append(f"{ATTR_LABELS[attr]}：{old if old not in (None, '') else '（空）'} → "
                         f"{new if new not in (None, '') else '（空）'}")
        for attr, (old_text, new_text) in self.rule_changes.items():
            parts.append(f"{ATTR_LABELS[attr]}：{old_text or '（类别默认）'} → {new_text or '（类别默认）'}")
        return "；".join(parts)


@dataclass
class ImportPlan:
    rows: list[ImportRow]
    missing: list[PrivilegeItem]  # active items of the file's categories the file does not list
    missing_grants: dict[int, int]
    categories: list[PrivilegeCategory]

    @property
    def errors(self) -> list[dict[str, str]]:
        return [{"path": f"rows/{r.line}/{f}", "message": m} for r in self.rows for f, m in r.errors.items()]

    @property
    def has_errors(self) -> bool:
        return any(r.errors for r in self.rows)

    @property
    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ROW_ACTION_LABELS}
        for r in self.rows:
            out[r.action] += 1
        return out


@dataclass
class ImportReport:
    plan: ImportPlan
    added: list[PrivilegeItem] = field(default_factory=list)
    updated: list[PrivilegeItem] = field(default_factory=list)
    retired: list[PrivilegeItem] = field(default_factory=list)

    @property
    def errors(self) -> list[ImportRow]:
        return [r for r in self.plan.rows if r.errors]


def _padded_procedure(value: float) -> str | None:
    """A procedure code typed as a number lost its zeros (51.2200 -> 51.22, 00.01 -> 0.01): ICD-9-CM-3 numeric
    codes are two digits, a point and four digits, so that form is tried when the cell's text is not a code."""
    if 0 <= value < 100 and round(value, 4) == value:
        return f"{value:07.4f}"
    return None


def read_sheet(content: bytes) -> tuple[list[SheetRow], dict[str, str]]:
    """The data rows of the first sheet (values keyed by field, exact text) and the column titles as found.
    Raises ValidationFailed (path `file`) when the file cannot be read or lacks a required column."""
    from openpyxl import load_workbook

    try:
        wb = load_workbook(BytesIO(content), read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds for a file that is not .xlsx
        raise ValidationFailed({"file": "无法读取该文件，请上传 .xlsx 格式的 Excel 文件"}) from exc
    try:
        ws = wb.worksheets[0] if wb.worksheets else None
        lines = iter(ws.iter_rows(values_only=True)) if ws is not None else iter(())
        header = next(lines, None) or ()
        columns: dict[int, str] = {}
        titles: dict[str, str] = {}
        for i, cell in enumerate(header):
            title = _text(cell)
            key = HEADER_ALIASES.get(title.replace(" ", "")) or HEADER_ALIASES.get(title)
            if key and key not in titles:
                columns[i], titles[key] = key, title
        missing = [FIELD_LABELS[k] for k in REQUIRED_COLUMNS if k not in titles]
        if missing:
            raise ValidationFailed({"file": "第 1 行应为表头，缺少列：" + "、".join(missing)
                                    + "（列名：类别编码、项目编码、项目名称、级别、手术操作编码、准入要求）"})
        rows: list[SheetRow] = []
        for line, cells in enumerate(lines, start=2):
            values = {key: _text(cells[i]) if i < len(cells) else "" for i, key in columns.items()}
            if not any(values.values()):
                continue
            if len(rows) >= IMPORT_MAX_ROWS:
                raise ValidationFailed({"file": f"单次最多导入 {IMPORT_MAX_ROWS} 行，请分批导入"})
            numeric = None
            if "procedure_code" in titles:
                idx = next(i for i, k in columns.items() if k == "procedure_code")
                cell = cells[idx] if idx < len(cells) else None
                if isinstance(cell, int | float) and not isinstance(cell, bool):
                    numeric = float(cell)
            rows.append(SheetRow(line, values, numeric))
    finally:
        wb.close()
    if not rows:
        raise ValidationFailed({"file": "文件中没有数据行"})
    return rows, titles


def _cert_lookup() -> dict[str, str]:
    """Certificate type name or code -> code (a sheet names them either way)."""
    names = eligibility.cert_type_names()
    return {name: code for code, name in names.items()} | {code: code for code in names}


def _sheet_rules(raw: Mapping[str, str], titles: Mapping[str, str], current: PrivilegeItem | None,
                 lookup: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The rules of a row of a sheet with rule columns (a column the sheet lacks keeps the item's value)."""
    errors: dict[str, str] = {}
    title = raw.get("min_title", "") if "min_title" in titles else (current.min_title if current else None)
    certs: list[str] | None = current.cert_types if current is not None else None
    if "cert_types" in titles:
        text = raw.get("cert_types", "")
        listed: list[str] = []
        if text and text != NONE_CERT:
            for token in filter(None, CERT_SPLIT.split(text)):
                if token in lookup:
                    listed.append(lookup[token])
                else:
                    errors["cert_types"] = (f"必备证件“{token}”不是已有的证件类型（填证件名称或编码，多个用顿号分隔；"
                                            f"不要求证件填“{NONE_CERT}”，留空沿用类别默认）")
        certs = listed if text else None
    assessment = current.requires_assessment if current is not None else None
    if "requires_assessment" in titles:
        assessment = _flag(raw.get("requires_assessment"), path="requires_assessment", label="定期考核",
                           errors=errors)
    min_title, codes, rule_errors = eligibility.clean_rules(min_title=title, cert_types=certs)
    for path, message in rule_errors.items():
        errors.setdefault(path.split("/")[0], message)
    return {"min_title": min_title, "cert_types": codes, "requires_assessment": assessment, "rules_note": None}, errors


def plan_import(*, content: bytes, actor: User) -> ImportPlan:
    """What importing the sheet would do, row by row, with every row's errors (row number and column, Chinese).
    Writes nothing. Raises Forbidden, ValidationFailed (the file as a whole is unusable)."""
    ensure_catalogue_scope(actor)
    sheet, titles = read_sheet(content)
    catalogue = Catalogue()
    procedures = procedure_table()
    with_rules = any(k in titles for k in SHEET_RULE_COLUMNS)
    lookup = _cert_lookup() if with_rules else {}
    cert_names = eligibility.cert_type_names() if with_rules else {}
    rows: list[ImportRow] = []
    seen: dict[str, int] = {}
    listed: set[str] = set()
    for src in sheet:
        raw = dict(src.values)
        if (src.numeric_procedure is not None and raw.get("procedure_code") not in procedures
                and (padded := _padded_procedure(src.numeric_procedure)) in procedures):
            raw["procedure_code"] = padded
        row = ImportRow(line=src.line, values=raw)
        current = catalogue.items.get(raw.get("code", "")) if raw.get("code") else None
        if current is not None:
            # the national list does not carry the hospital's own notes; blank optional cells keep what is there
            for f in ("procedure_code", "requirements"):
                if not raw.get(f):
                    raw[f] = getattr(current, f) or ""
            raw["note"], raw["source"] = current.note or "", current.source or ""
        values, errors = _clean_item(raw, catalogue=catalogue, current=current, check_procedure_owner=False)
        if with_rules:
            row.rules, rule_errors = _sheet_rules(raw, titles, current, lookup)
            errors.update(rule_errors)
            if not rule_errors:
                row.rule_changes = {a: (rule_text(a, old, cert_names), rule_text(a, new, cert_names))
                                    for a, (old, new) in _rule_changes(current, row.rules).items()}
        row.code, row.item, row.clean = values["code"] or raw.get("code", ""), current, values
        category = values["category"]
        if current is not None and category is not None and current.category_id != category.id:
            errors["category"] = f"项目编码 {current.code} 属于“{current.category.name}”，导入不能改变项目的类别"
        if current is not None and is_project_item(current):
            row.locked = f"该项目随{current.source}自动维护，不能通过导入修改"
        elif category is not None and category.code == NEW_TECH_CATEGORY:
            row.locked = "新技术新项目授权项目随新技术新项目立项自动维护，不能通过导入新增或修改"
        if row.code:
            listed.add(row.code)
            if row.code in seen and "code" not in errors:
                errors["code"] = f"与第 {seen[row.code]} 行的项目编码重复"
            seen.setdefault(row.code, src.line)
        if src.numeric_procedure is not None and "procedure_code" in errors:
            errors["procedure_code"] += "（该单元格为数字格式，可能已丢失末尾或开头的 0，请将该列设置为文本格式后重新录入）"
        row.errors = errors
        rows.append(row)

    # within a category no two items may share a procedure code once the file is applied
    final: dict[str, tuple[int, str | None]] = {c: (i.category_id, i.procedure_code) for c, i in catalogue.items.items()}
    for row in rows:
        if not row.errors:
            final[row.code] = (row.clean["category_id"], row.clean["procedure_code"])
    claims: dict[tuple[int, str], list[str]] = {}
    for code, (cat_id, proc) in final.items():
        if proc:
            claims.setdefault((cat_id, proc), []).append(code)
    for row in rows:
        proc = row.clean.get("procedure_code")
        if row.errors or not proc:
            continue
        others = [c for c in claims.get((row.clean["category_id"], proc), []) if c != row.code]
        if others:
            owner = catalogue.items.get(others[0])
            if owner is not None:
                row.errors["procedure_code"] = _procedure_taken(row.clean["category"], proc, owner)
            else:
                line = next(r.line for r in rows if r.code == others[0])
                row.errors["procedure_code"] = f"与第 {line} 行的手术操作编码重复（同一类别）"

    for row in rows:
        if row.errors:
            row.action = "error"
            row.errors = {f: f"第 {row.line} 行“{titles.get(f, FIELD_LABELS[f])}”列：{m}" for f, m in row.errors.items()}
            continue
        if row.item is None:
            row.action = "add"
        else:
            row.changes = _changes(row.item, row.clean)
            if not row.item.is_active:
                row.changes["is_active"] = (False, True)
                row.action = "reactivate"
            else:
                row.action = "update" if row.changes or row.rule_changes else "unchanged"
        if row.locked and row.action != "unchanged":  # an unchanged row (a re-imported export) is fine
            row.action, row.changes, row.rule_changes = "error", {}, {}
            row.errors = {"category": f"第 {row.line} 行“{titles.get('category', FIELD_LABELS['category'])}”列："
                                      f"{row.locked}"}

    file_categories = {r.clean["category"].id: r.clean["category"] for r in rows
                       if r.clean.get("category") is not None and r.clean["category"].code != NEW_TECH_CATEGORY}
    missing = sorted((i for i in catalogue.items.values()
                      if i.category_id in file_categories and i.is_active and i.code not in listed),
                     key=lambda i: (i.category.sort_order, i.sort_order, i.id))
    return ImportPlan(rows=rows, missing=missing, missing_grants=active_grant_counts([i.id for i in missing]),
                      categories=sorted(file_categories.values(), key=lambda c: c.sort_order))


def apply_import(*, content: bytes, retire_missing: bool, reason: str, actor: User,
                 filename: str | None = None) -> ImportReport:
    """Apply the sheet: rows without errors add or update their item (a retired item listed again is reactivated);
    with `retire_missing`, active items of the file's categories that it does not list are retired. Rows with
    errors are skipped and reported. One audit row per item changed, plus one for the import. Raises Forbidden,
    ValidationFailed (a missing reason or an unusable file: nothing written)."""
    ensure_catalogue_scope(actor)
    text = _clean_reason(reason, "导入")
    plan = plan_import(content=content, actor=actor)
    report = ImportReport(plan=plan)
    via: dict[str, Any] = {"via": "import", "file": filename, "reason": text}
    orders: dict[int, int] = {}
    for row in plan.rows:
        if row.action == "add":
            cat_id = row.clean["category_id"]
            orders[cat_id] = orders.get(cat_id) or _next_sort_order(cat_id)
            item = PrivilegeItem(is_active=True, sort_order=orders[cat_id])
            orders[cat_id] += 1
            _apply_values(item, row.clean)
            db.session.add(item)
            db.session.flush()
            audit.record(actor, "privilege.catalogue_item_created", item, after=_snapshot(item),
                         extra={**via, "line": row.line})
            if row.rules is not None:
                _save_rules(item, row.rules, actor)
            row.item = item
            report.added.append(item)
        elif row.action in ("update", "reactivate") and row.item is not None:
            item = row.item
            if row.changes:  # fields (or the active flag); a row may change the rules only
                before = _snapshot(item)
                _apply_values(item, row.clean)
                item.is_active = True
                db.session.flush()
                action = ("privilege.catalogue_item_reactivated" if row.action == "reactivate"
                          else "privilege.catalogue_item_updated")
                audit.record(actor, action, item, before=before, after=_snapshot(item),
                             extra={**via, "line": row.line})
            if row.rules is not None and row.rule_changes:
                _save_rules(item, row.rules, actor)
            report.updated.append(item)
    if retire_missing:
        for item in plan.missing:
            _retire(item, reason=text, actor=actor, extra={"via": "import", "file": filename})
            report.retired.append(item)
    audit.record(actor, "privilege.catalogue_imported", entity_type="privilege_catalogue_imports",
                 after={"added": len(report.added), "updated": len(report.updated), "retired": len(report.retired),
                        "errors": len(report.errors), "rows": len(plan.rows)}, extra=via)
    db.session.flush()
    return report


# ---------------------------------------------------------------- pages

bp = Blueprint("privilege_catalogue", __name__, url_prefix="/privileges/manage/catalogue")

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
IMPORT_DIR = "privilege_catalogue_imports"
IMPORT_TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")
IMPORT_KEEP_SECONDS = 24 * 3600
GRADE_FILTER = [(1, "一级 / 非限制使用级 / 普通使用级"), (2, "二级 / 限制使用级"), (3, "三级 / 特殊使用级"), (4, "四级")]
ACTIVE_FILTER = {"1": "启用", "0": "已停用"}


def _wants_json() -> bool:
    return request.accept_mimetypes.best == "application/json"


def _errors(exc: ValidationFailed) -> dict[str, str]:
    return {e["path"]: e["message"] for e in exc.errors}


def _item_filter() -> ItemFilter:
    grade = request.args.get("grade", "")
    active = request.args.get("active", "")
    return ItemFilter(q=(request.args.get("q") or "").strip() or None, category=request.args.get("category") or None,
                      grade_level=int(grade) if grade.isdigit() else None,
                      active={"1": True, "0": False}.get(active))


def _grade_choices() -> list[tuple[str, list[str]]]:
    return [("一级至四级（手术、麻醉、内镜）", list(GRADE_NAMES.values())), ("特殊项目（药物使用级别）", list(SPECIAL_GRADES))]


@bp.get("/")
@require("privileges.manage")
def items():
    page = paginate(items_query(_item_filter()))
    return render_template("privileges/catalogue_admin/items.html", page=page,
                           categories=db.session.scalars(select(PrivilegeCategory)
                                                         .order_by(PrivilegeCategory.sort_order)).all(),
                           grade_options=GRADE_FILTER, active_options=ACTIVE_FILTER,
                           grant_counts=active_grant_counts([i.id for i in page.items]))


@bp.get("/export.xlsx")
@require("privileges.manage")
def export():
    rows = db.session.scalars(items_query(_item_filter()).limit(50000)).unique()
    return send_file(BytesIO(catalogue_workbook(rows)), as_attachment=True,
                     download_name=f"医疗权限目录_{today().isoformat()}.xlsx", mimetype=XLSX)


def _render_item_form(*, item: PrivilegeItem | None, form: Mapping[str, Any], errors: dict[str, str] | None = None,
                      status_errors: dict[str, str] | None = None, status_message: str | None = None,
                      reason: str = "", status: int = 200):
    categories = db.session.scalars(select(PrivilegeCategory).order_by(PrivilegeCategory.sort_order)).all()
    return render_template(
        "privileges/catalogue_admin/item_form.html", item=item, form=form, errors=errors or {},
        status_errors=status_errors or {}, status_message=status_message, reason=reason,
        categories=[c for c in categories if item is not None and c.id == item.category_id
                    or c.code != NEW_TECH_CATEGORY],
        grade_choices=_grade_choices(), all_grades=[*GRADE_NAMES.values(), *SPECIAL_GRADES], graded=GRADED_CATEGORIES, procedure_categories=PROCEDURE_CATEGORIES,
        active_grants=active_grant_counts([item.id]).get(item.id, 0) if item is not None else 0,
        history=item_history(item) if item is not None else [],
        action_labels={**AUDIT_LABELS, **eligibility.AUDIT_LABELS},
        attr_labels=ATTR_LABELS, locked=item is not None and is_project_item(item), icd_title=ICD_TITLE,
        **_rule_choices(item),
    ), status


def _rule_choices(item: PrivilegeItem | None) -> dict[str, Any]:
    """What the eligibility-rule fields offer: the title ladders, the certificate types, the category defaults."""
    from app.archives.models import CertificateType

    names = eligibility.cert_type_names()
    types = db.session.scalars(select(CertificateType).order_by(CertificateType.sort_order, CertificateType.id)).all()
    return {"title_series": eligibility.TITLE_SERIES, "all_titles": eligibility.all_titles(), "cert_types": types,
            "cert_modes": CERT_MODES, "assessment_choices": ASSESSMENT_CHOICES,
            "category_rules": {c.code: eligibility.category_requirements(c, cert_names=names)
                               for c in db.session.scalars(select(PrivilegeCategory))},
            "item_requirements": eligibility.requirements(item) if item is not None else None}


def _form_values() -> dict[str, Any]:
    values: dict[str, Any] = {f: (request.form.get(f) or "").strip() for f in ITEM_FIELDS}
    if request.form.get("rules_form"):
        values.update({k: (request.form.get(k) or "").strip() for k in RULE_KEYS if k != "cert_types"})
        values["cert_types"] = [c for c in request.form.getlist("cert_types") if c.strip()]
    return values


def _item_form_data(item: PrivilegeItem) -> dict[str, Any]:
    return {"category": item.category.code, "code": item.code, "name": item.name, "grade": item.grade or "",
            "procedure_code": item.procedure_code or "", "requirements": item.requirements or "",
            "note": item.note or "", "source": item.source or "", **_item_rule_data(item)}


def _item_rule_data(item: PrivilegeItem) -> dict[str, Any]:
    return {"min_title": item.min_title or "", "cert_mode": "inherit" if item.cert_types is None else "custom",
            "cert_types": list(item.cert_types or []),
            "requires_assessment": {None: "", True: "1", False: "0"}[item.requires_assessment],
            "rules_note": item.rules_note or ""}


@bp.route("/items/new", methods=["GET", "POST"])
@require("privileges.manage")
def new_item():
    if request.method == "GET":
        return _render_item_form(item=None, form={"category": request.args.get("category", "")})
    form = _form_values()
    try:
        item = create_item(data=form, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        if _wants_json():
            raise
        return _render_item_form(item=None, form=form, errors=_errors(exc), status=400)
    db.session.commit()
    flash(f"已新增目录项目“{item.name}”（{item.code}）", "success")
    return redirect(url_for("privilege_catalogue.edit_item", item_id=item.id))


@bp.route("/items/<int:item_id>", methods=["GET", "POST"])
@require("privileges.manage")
def edit_item(item_id: int):
    item = get_item(item_id)
    if request.method == "GET":
        return _render_item_form(item=item, form=_item_form_data(item))
    form = _form_values()
    if is_project_item(item):  # its fields follow the project (shown disabled, so not posted): only rules change
        form = {**_item_form_data(item), **{k: v for k, v in form.items() if k in RULE_KEYS}}
    try:
        changes = update_item(item=item, data=form, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        if _wants_json():
            raise
        return _render_item_form(item=get_item(item_id), form=form, errors=_errors(exc), status=400)
    except InvalidTransition as exc:
        db.session.rollback()
        if _wants_json():
            raise
        return _render_item_form(item=get_item(item_id), form=form, status_message=exc.message, status=409)
    db.session.commit()
    if changes:
        flash(f"已保存“{item.name}”：" + "、".join(ATTR_LABELS[a] for a in changes
                                                  if a not in ("grade_level", "procedure_category", "chapter")),
              "success")
    else:
        flash("没有修改任何内容", "info")
    return redirect(url_for("privilege_catalogue.edit_item", item_id=item.id))


@bp.post("/items/<int:item_id>/<any(retire, reactivate):action>")
@require("privileges.manage")
def item_status(item_id: int, action: str):
    item = get_item(item_id)
    reason = request.form.get("reason", "")
    try:
        if action == "retire":
            held = retire_item(item=item, reason=reason, actor=current_user)
        else:
            reactivate_item(item=item, reason=reason, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        if _wants_json():
            raise
        item = get_item(item_id)
        return _render_item_form(item=item, form=_item_form_data(item), status_errors=_errors(exc), reason=reason,
                                 status=400)
    except InvalidTransition as exc:
        db.session.rollback()
        if _wants_json():
            raise
        item = get_item(item_id)
        return _render_item_form(item=item, form=_item_form_data(item), status_message=exc.message, reason=reason,
                                 status=409)
    db.session.commit()
    if action == "retire":
        tail = f"；其 {held} 项生效中的授权保留，HIS 校验将答复“该授权项目已停用”" if held else ""
        flash(f"已停用“{item.name}”{tail}", "success")
    else:
        category_note = "（所属类别已停用，类别启用前仍不可用）" if not item.category.is_active else ""
        flash(f"已重新启用“{item.name}”{category_note}", "success")
    return redirect(url_for("privilege_catalogue.edit_item", item_id=item.id))


@bp.get("/categories")
@require("privileges.manage")
def categories():
    cats = db.session.scalars(select(PrivilegeCategory).order_by(PrivilegeCategory.sort_order)).all()
    names = eligibility.cert_type_names()
    return render_template("privileges/catalogue_admin/categories.html", categories=cats,
                           item_counts=category_item_counts(),
                           category_rules={c.code: eligibility.category_requirements(c, cert_names=names) for c in cats})


def _render_category(category: PrivilegeCategory, form: Mapping[str, Any], errors: dict[str, str] | None = None,
                     status: int = 200):
    held = db.session.scalar(
        select(func.count()).select_from(Grant).join(PrivilegeItem, Grant.item_id == PrivilegeItem.id)
        .where(PrivilegeItem.category_id == category.id, Grant.status == GrantStatus.ACTIVE.value)) or 0
    history = list(db.session.scalars(select(AuditLog).where(
        AuditLog.entity_type == PrivilegeCategory.__tablename__, AuditLog.entity_id == str(category.id))
        .order_by(AuditLog.id.desc())))
    return render_template("privileges/catalogue_admin/category_form.html", category=category, form=form,
                           errors=errors or {}, active_grants=held, history=history, action_labels=AUDIT_LABELS,
                           years_max=VALIDITY_YEARS_MAX, **_rule_choices(None)), status


@bp.route("/categories/<int:category_id>", methods=["GET", "POST"])
@require("privileges.manage")
def edit_category(category_id: int):
    category = get_category(category_id)
    if request.method == "GET":
        return _render_category(category, {"validity_years": str(category.validity_years),
                                           "is_active": category.is_active, "reason": "",
                                           "default_min_title": category.default_min_title or "",
                                           "default_cert_types": list(category.default_cert_types or []),
                                           "default_requires_assessment": category.default_requires_assessment})
    form: dict[str, Any] = {"validity_years": (request.form.get("validity_years") or "").strip(),
                            "is_active": request.form.get("is_active") == "1", "reason": request.form.get("reason", "")}
    if request.form.get("rules_form"):
        form |= {"default_min_title": (request.form.get("default_min_title") or "").strip(),
                 "default_cert_types": [c for c in request.form.getlist("default_cert_types") if c.strip()],
                 "default_requires_assessment": request.form.get("default_requires_assessment") == "1"}
    try:
        changes = update_category(category=category, data={**form, "is_active": "1" if form["is_active"] else ""},
                                  actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        if _wants_json():
            raise
        return _render_category(get_category(category_id), form, _errors(exc), status=400)
    db.session.commit()
    flash(f"已保存“{category.name}”的设置" if changes else "没有修改任何内容", "success" if changes else "info")
    return redirect(url_for("privilege_catalogue.categories"))


# ---------------------------------------------------------------- import pages: the upload is kept between
# preview and apply under UPLOAD_DIR (a generated name; the client's file name is only shown and audited)


def _import_dir() -> Path:
    return Path(current_app.config["UPLOAD_DIR"]) / IMPORT_DIR


def _store_upload(content: bytes) -> str:
    folder = _import_dir()
    folder.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - IMPORT_KEEP_SECONDS
    for old in folder.glob("*.xlsx"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:  # another worker removed it first
            pass
    token = secrets.token_hex(16)
    (folder / f"{token}.xlsx").write_bytes(content)
    return token


def _stored_upload(token: str) -> bytes | None:
    if not IMPORT_TOKEN_RE.match(token or ""):
        return None
    path = _import_dir() / f"{token}.xlsx"
    return path.read_bytes() if path.is_file() else None


def _render_import(*, plan: ImportPlan | None = None, report: ImportReport | None = None,
                   errors: dict[str, str] | None = None, token: str = "", filename: str = "",
                   retire_missing: bool = False, reason: str = "", status: int = 200):
    return render_template("privileges/catalogue_admin/import.html", plan=plan, report=report, errors=errors or {},
                           token=token, filename=filename, retire_missing=retire_missing, reason=reason,
                           columns=IMPORT_COLUMNS, icd_title=ICD_TITLE), status


@bp.get("/import")
@require("privileges.manage")
def import_form():
    return _render_import()


@bp.post("/import")
@require("privileges.manage")
def import_preview():
    upload = request.files.get("file")
    content = upload.read() if upload is not None else b""
    filename = (upload.filename or "")[:200] if upload is not None else ""
    try:
        if not content:
            raise ValidationFailed({"file": "请选择要导入的 Excel 文件（.xlsx）"})
        plan = plan_import(content=content, actor=current_user)
    except ValidationFailed as exc:
        if _wants_json():
            raise
        return _render_import(errors=_errors(exc), filename=filename, status=400)
    token = _store_upload(content)
    if _wants_json():
        return {"token": token, "counts": plan.counts, "errors": plan.errors,
                "missing": [i.code for i in plan.missing]}, 400 if plan.has_errors else 200
    return _render_import(plan=plan, token=token, filename=filename, status=400 if plan.has_errors else 200)


@bp.post("/import/apply")
@require("privileges.manage")
def import_apply():
    token = request.form.get("token", "")
    filename = (request.form.get("filename") or "")[:200]
    retire_missing = request.form.get("retire_missing") == "1"
    reason = request.form.get("reason", "")
    content = _stored_upload(token)
    if content is None:
        exc = ValidationFailed({"file": "导入文件已过期或不存在，请重新上传并预览"})
        if _wants_json():
            raise exc
        return _render_import(errors=_errors(exc), status=400)
    try:
        report = apply_import(content=content, retire_missing=retire_missing, reason=reason, actor=current_user,
                              filename=filename)
    except ValidationFailed as exc:
        db.session.rollback()
        if _wants_json():
            raise
        plan = plan_import(content=content, actor=current_user) if "reason" in _errors(exc) else None
        return _render_import(plan=plan, errors=_errors(exc), token=token, filename=filename,
                              retire_missing=retire_missing, reason=reason, status=400)
    db.session.commit()
    (_import_dir() / f"{token}.xlsx").unlink(missing_ok=True)
    if _wants_json():
        return {"added": [i.code for i in report.added], "updated": [i.code for i in report.updated],
                "retired": [i.code for i in report.retired], "errors": report.plan.errors}
    return _render_import(report=report, filename=filename)


# ---------------------------------------------------------------- registration


def register(app: Flask) -> None:
    from app.audit.services import ACTION_LABELS
    from app.web import add_nav

    app.register_blueprint(bp)
    ACTION_LABELS.update(AUDIT_LABELS)
    add_nav(f"{bp.name}.items", "目录维护", "privileges.manage", order=37)
