"""科室技术目录 (seed 000 §三.9(1)): the hospital catalogue items each department performs.

Invariants:
- a department's catalogue holds items of the hospital catalogue (医院医疗技术目录库), one row per department × item;
  removing sets is_active False and keeps the row (who and when), adding again reactivates it with the new adder;
- a department with at least one active row may only apply for, and be batch-granted, items of its catalogue;
  an empty catalogue restricts nothing, so departments without one keep working as before. 新技术新项目授权
  items (limited to the project team instead), 紧急授权 items (their own flow) and 护理操作授权 items (nursing
  management, hospital-wide) are outside the restriction;
- the department head maintains the own department, 医务处 every department (permission
  `privileges.dept_catalogue` and its data scope); every change is audited; services flush, the caller commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from io import BytesIO
from typing import Any

from sqlalchemy import Select, or_, select

from app.audit import services as audit
from app.auth.models import Department, User
from app.auth.services import data_scope
from app.db import db, utcnow
from app.errors import Forbidden, NotFound, ValidationFailed
from app.privileges.models import DeptCatalogueItem, PrivilegeCategory, PrivilegeItem

PERMISSION = "privileges.dept_catalogue"
# 护理操作 (seed 000 §三.5) is authorised per nurse under the hospital's nursing management, not by the department's
# list of the medical technologies it performs (§三.9(1))
EXEMPT_CATEGORIES = ("new_tech", "emergency", "nursing")
ADD_MAX = 200

AUDIT_LABELS = {
    "privilege.dept_catalogue_added": "科室技术目录加入项目",
    "privilege.dept_catalogue_removed": "科室技术目录移除项目",
}


# ---------------------------------------------------------------- who sees which department


def departments(viewer: User) -> list[Department]:
    """Active departments whose catalogue the viewer maintains (own department for a head, all for 医务处)."""
    return data_scope(viewer, PERMISSION).departments()


def get_department(*, viewer: User, dept_id: int | None) -> Department:
    """A department the viewer may maintain. Raises Forbidden without the permission or outside its scope,
    NotFound for an unknown department."""
    scope = data_scope(viewer, PERMISSION)
    dept = db.session.get(Department, dept_id) if dept_id else None
    if dept is None:
        raise NotFound("科室不存在")
    if scope.level.value == "self" or not scope.allows(dept_id=dept.id, campus_id=dept.campus_id):
        raise Forbidden("只能维护本科室的技术目录", dept_id=dept.id)
    return dept


# ---------------------------------------------------------------- reading


def dept_item_ids(dept_id: int | None) -> set[int] | None:
    """Active catalogue item ids of a department; None when it has no catalogue (no restriction)."""
    if not dept_id:
        return None
    ids = set(db.session.scalars(select(DeptCatalogueItem.item_id).where(DeptCatalogueItem.dept_id == dept_id,
                                                                         DeptCatalogueItem.is_active.is_(True))))
    return ids or None


def restricts(item: PrivilegeItem) -> bool:
    """Whether the department catalogue limits this item (not for new-tech, emergency and nursing items)."""
    return item.category.code not in EXEMPT_CATEGORIES


def entries_query(*, dept_id: int, q: str | None = None, category: str | None = None,
                  include_removed: bool = False) -> Select:
    """A department's catalogue rows with their items, in hospital catalogue order."""
    stmt = (select(DeptCatalogueItem).join(PrivilegeItem, DeptCatalogueItem.item_id == PrivilegeItem.id)
            .join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id)
            .where(DeptCatalogueItem.dept_id == dept_id)
            .order_by(DeptCatalogueItem.is_active.desc(), PrivilegeCategory.sort_order, PrivilegeItem.sort_order,
                      PrivilegeItem.id))
    if not include_removed:
        stmt = stmt.where(DeptCatalogueItem.is_active.is_(True))
    return _filtered(stmt, q=q, category=category)


def candidates_query(*, q: str | None = None, category: str | None = None) -> Select:
    """Active hospital catalogue items to choose from (the 加入 page)."""
    stmt = (select(PrivilegeItem).join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id)
            .where(PrivilegeItem.is_active.is_(True), PrivilegeCategory.is_active.is_(True))
            .order_by(PrivilegeCategory.sort_order, PrivilegeItem.sort_order, PrivilegeItem.id))
    return _filtered(stmt, q=q, category=category)


def _filtered(stmt: Select, *, q: str | None, category: str | None) -> Select:
    if category:
        stmt = stmt.where(PrivilegeCategory.code == category)
    if q and q.strip():
        like = f"%{q.strip()}%"
        stmt = stmt.where(or_(PrivilegeItem.code.ilike(like), PrivilegeItem.name.ilike(like),
                              PrivilegeItem.procedure_code.ilike(like), PrivilegeItem.chapter.ilike(like)))
    return stmt


def active_ids_among(dept_id: int, item_ids: Iterable[int]) -> set[int]:
    wanted = list(item_ids)
    if not wanted:
        return set()
    return set(db.session.scalars(select(DeptCatalogueItem.item_id).where(
        DeptCatalogueItem.dept_id == dept_id, DeptCatalogueItem.is_active.is_(True),
        DeptCatalogueItem.item_id.in_(wanted))))


# ---------------------------------------------------------------- changes


def add_items(*, viewer: User | str | None, dept: Department, item_ids: Sequence[int | str]) -> list[DeptCatalogueItem]:
    """Put hospital catalogue items into a department's catalogue (audited). All or nothing: raises
    ValidationFailed with `item_ids/N` paths (unknown, inactive, already in the catalogue, repeated)."""
    errors: dict[str, str] = {}
    ids: list[int | None] = []
    for idx, raw in enumerate(item_ids or []):
        try:
            ids.append(int(raw))
        except (TypeError, ValueError):
            ids.append(None)
            errors[f"item_ids/{idx}"] = "项目编号无效"
    if not ids:
        errors["item_ids"] = "请至少选择一个项目"
    elif len(ids) > ADD_MAX:
        errors["item_ids"] = f"一次最多加入 {ADD_MAX} 个项目"
    wanted = [i for i in ids if i is not None]
    items = {i.id: i for i in db.session.scalars(select(PrivilegeItem).where(PrivilegeItem.id.in_(wanted)))}
    rows = {r.item_id: r for r in db.session.scalars(select(DeptCatalogueItem).where(
        DeptCatalogueItem.dept_id == dept.id, DeptCatalogueItem.item_id.in_(wanted)))}
    seen: set[int] = set()
    for idx, item_id in enumerate(ids):
        if item_id is None:
            continue
        path, item = f"item_ids/{idx}", items.get(item_id)
        if item_id in seen:
            errors[path] = "重复选择了同一项目"
        elif item is None:
            errors[path] = "院内目录中没有该项目"
        elif not item.is_active or not item.category.is_active:
            errors[path] = f"“{item.name}”已在院内目录停用，不能加入"
        elif item_id in rows and rows[item_id].is_active:
            errors[path] = f"“{item.name}”已在{dept.name}的科室技术目录中"
        seen.add(item_id)
    if errors:
        raise ValidationFailed(errors)
    actor_id = viewer.id if isinstance(viewer, User) else None
    now = utcnow()
    changed: list[DeptCatalogueItem] = []
    for item_id in wanted:
        row = rows.get(item_id)
        if row is None:
            row = DeptCatalogueItem(dept_id=dept.id, item_id=item_id)
            db.session.add(row)
        row.is_active, row.added_at, row.added_by_id = True, now, actor_id
        row.removed_at = row.removed_by_id = None
        row.item = items[item_id]
        changed.append(row)
    db.session.flush()
    for row in changed:
        audit.record(viewer, "privilege.dept_catalogue_added", row,
                     after={"dept": dept.code, "item": row.item.code, "item_name": row.item.name})
    return changed


def get_entry(*, viewer: User, entry_id: int) -> DeptCatalogueItem:
    """A catalogue row of a department the viewer maintains. Raises NotFound, Forbidden."""
    row = db.session.get(DeptCatalogueItem, entry_id)
    if row is None:
        raise NotFound("科室技术目录记录不存在")
    get_department(viewer=viewer, dept_id=row.dept_id)
    return row


def remove_item(*, viewer: User, entry: DeptCatalogueItem) -> DeptCatalogueItem:
    """Take an item out of its department's catalogue (kept as removed; audited). Grants already made stay; the
    department simply no longer applies for it. Raises ValidationFailed when it was already removed."""
    if not entry.is_active:
        raise ValidationFailed({"entry_id": "该项目已不在科室技术目录中"})
    entry.is_active = False
    entry.removed_at = utcnow()
    entry.removed_by_id = viewer.id
    db.session.flush()
    audit.record(viewer, "privilege.dept_catalogue_removed", entry,
                 before={"is_active": True}, after={"dept": entry.dept.code, "item": entry.item.code,
                                                    "item_name": entry.item.name, "is_active": False})
    return entry


# ---------------------------------------------------------------- export

EXPORT_COLUMNS = ["科室", "授权类别", "项目编码", "手术操作编码", "项目名称", "级别", "章节", "状态", "加入时间",
                  "加入人", "移除时间", "移除人"]


def workbook(entries: Iterable[DeptCatalogueItem]) -> bytes:
    """The rows as an .xlsx file (科室技术目录 export)."""
    from openpyxl import Workbook
    from openpyxl.utils import get_column_letter

    from app.core.timefmt import local

    wb = Workbook()
    ws = wb.active
    ws.title = "科室技术目录"
    ws.append(EXPORT_COLUMNS)
    for row in entries:
        item = row.item
        ws.append([row.dept.name, item.category.name, item.code, item.procedure_code or "", item.name,
                   item.grade or "", item.chapter or "", "在目录中" if row.is_active else "已移除", local(row.added_at),
                   row.added_by.name if row.added_by else "演示数据", local(row.removed_at) if row.removed_at else "",
                   row.removed_by.name if row.removed_by else ""])
    for idx, width in enumerate([12, 26, 20, 14, 40, 10, 18, 10, 18, 10, 18, 10], start=1):
        ws.column_dimensions[get_column_letter(idx)].width = width
    ws.freeze_panes = "A2"
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


# ---------------------------------------------------------------- demo catalogues

_COMMON = ("BASIC-DIAG", "BASIC-CONSULT", "BASIC-AUXDIAG", "BASIC-RX", "SP-ABX-1", "SP-ABX-2", "SP-ABX-3",
           "SP-NARC", "SP-EXAM", "SP-POCT")
# department code -> (item codes, procedure chapters of surgery/invasive items); a sensible demo subset per specialty
DEMO_CATALOGUES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "GS": (_COMMON + ("SP-ONC-1", "SP-ONC-2", "ENDO-1", "ENDO-2", "ENDO-3", "ENDO-4", "RT-07", "RT-08", "RT-10",
                      "RT-12"),
           ("消化系统手术", "体被系统手术", "内分泌系统手术", "血液和淋巴系统手术", "各种诊断性和治疗性操作")),
    "CARD": (_COMMON + ("RT-09", "RT-11"), ("心血管系统手术", "操作和介入NEC", "各种诊断性和治疗性操作")),
    "ORTH": (_COMMON + ("RT-03", "RT-10"), ("肌肉骨骼系统手术", "各种诊断性和治疗性操作")),
    "ANES": (_COMMON + ("ANES-1", "ANES-2", "ANES-3", "ANES-4", "RT-11"), ("各种诊断性和治疗性操作",)),
    "LAB": (("BASIC-AUXDIAG", "SP-POCT"), ()),
}


def seed_demo() -> int:
    """Demo department catalogues from the hospital catalogue for the demo departments (only for a department that
    has never had one, so the office's edits survive a re-run). Returns the rows created."""
    depts = {d.code: d for d in db.session.scalars(select(Department).where(
        Department.code.in_(list(DEMO_CATALOGUES))))}
    has_rows = set(db.session.scalars(select(DeptCatalogueItem.dept_id).distinct()))
    created = 0
    for code, (item_codes, chapters) in DEMO_CATALOGUES.items():
        dept = depts.get(code)
        if dept is None or dept.id in has_rows:
            continue
        stmt = (select(PrivilegeItem.id).join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id)
                .where(PrivilegeItem.is_active.is_(True)))
        conditions: list[Any] = [PrivilegeItem.code.in_(item_codes)]
        if chapters:
            conditions.append(PrivilegeCategory.code.in_(("surgery", "invasive")) & PrivilegeItem.chapter.in_(chapters))
        ids = list(db.session.scalars(stmt.where(or_(*conditions)).order_by(PrivilegeItem.sort_order)))
        for item_id in ids:
            db.session.add(DeptCatalogueItem(dept_id=dept.id, item_id=item_id, added_at=utcnow()))
        created += len(ids)
    db.session.flush()
    return created
