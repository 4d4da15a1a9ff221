"""Clinical privileges (seed 000 §三): applications through the `privilege_grant` flow, and grants.

Invariants:
- an application names at least one active catalogue item, and only items its applicant neither holds
  (an effective grant not yet inside the renewal window) nor has in another open application;
- a departed user cannot apply, and every grant of theirs stops at once (`revoke_all_for_departure`);
- grants are only created when the flow ends with `final_decision == "approved"`; nothing is hard-deleted,
  a grant ends by changing status (expired / suspended / revoked) with who, when and why;
- every change is audited in the same transaction; services flush, the caller commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from io import BytesIO
from typing import Any

from sqlalchemy import Select, and_, func, or_, select

from app.audit import services as audit
from app.auth.models import Department, User
from app.auth.services import data_scope
from app.core.timefmt import SHANGHAI
from app.db import db, utcnow
from app.errors import InvalidTransition, NotFound, ValidationFailed
from app.notify import services as notify
from app.privileges.models import (
    OPEN_APPLICATION_STATUSES,
    ApplicationStatus,
    Grant,
    GrantStatus,
    PrivilegeApplication,
    PrivilegeApplicationItem,
    PrivilegeCategory,
    PrivilegeItem,
)

PROCESS_KEY = "privilege_grant"
# a holder may apply again for an item this many days before the grant runs out (再授权)
RENEWAL_WINDOW_DAYS = 90
EXPIRING_DAYS = 30
REASON_MAX = 2000

AUDIT_LABELS = {
    "privilege.application_created": "创建医疗权限申请",
    "privilege.application_submitted": "提交医疗权限申请",
    "privilege.application_revised": "修改医疗权限申请",
    "privilege.application_approved": "医疗权限申请批准",
    "privilege.application_rejected": "医疗权限申请未通过",
    "privilege.application_withdrawn": "医疗权限申请撤回",
    "privilege.grant_created": "授予医疗权限",
    "privilege.grant_expired": "医疗权限到期失效",
    "privilege.grant_revoked": "停止医疗权限",
}


def today() -> date:
    """The current date in Asia/Shanghai (validity dates are hospital-local days)."""
    return datetime.now(SHANGHAI).date()


# ---------------------------------------------------------------- catalogue


def catalogue_query(*, category: str | None = None, q: str | None = None, grade_level: int | None = None,
                    active_only: bool = True) -> Select:
    """Catalogue items filtered by category code, code/name search and grade, in catalogue order."""
    stmt = (select(PrivilegeItem).join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id)
            .order_by(PrivilegeCategory.sort_order, PrivilegeItem.sort_order, PrivilegeItem.id))
    if active_only:
        stmt = stmt.where(PrivilegeItem.is_active.is_(True), PrivilegeCategory.is_active.is_(True))
    if category:
        stmt = stmt.where(PrivilegeCategory.code == category)
    if q:
        like = f"%{q.strip()}%"
        stmt = stmt.where(or_(PrivilegeItem.code.ilike(like), PrivilegeItem.name.ilike(like),
                              PrivilegeItem.procedure_code.ilike(like)))
    if grade_level is not None:
        stmt = stmt.where(PrivilegeItem.grade_level == grade_level)
    return stmt


def categories(*, active_only: bool = True) -> list[PrivilegeCategory]:
    stmt = select(PrivilegeCategory).order_by(PrivilegeCategory.sort_order)
    if active_only:
        stmt = stmt.where(PrivilegeCategory.is_active.is_(True))
    return list(db.session.scalars(stmt))


def validity_until(category: PrivilegeCategory, start: date) -> date | None:
    """Last valid day of a grant starting on `start` (inclusive); None when the category sets no limit."""
    if category.validity_days:
        return start + timedelta(days=category.validity_days - 1)
    if not category.validity_years:
        return None
    year = start.year + category.validity_years
    try:
        end = start.replace(year=year)
    except ValueError:  # 29 February
        end = start.replace(year=year, day=28)
    return end - timedelta(days=1)


# ---------------------------------------------------------------- applications


def _effective_grants(user_id: int, item_ids: Sequence[int], on: date) -> dict[int, Grant]:
    rows = db.session.scalars(
        select(Grant).where(Grant.user_id == user_id, Grant.item_id.in_(item_ids),
                            Grant.status == GrantStatus.ACTIVE.value, Grant.valid_from <= on,
                            or_(Grant.valid_until.is_(None), Grant.valid_until >= on)))
    return {g.item_id: g for g in rows}


def _open_applications(user_id: int, item_ids: Sequence[int]) -> dict[int, PrivilegeApplication]:
    rows = db.session.execute(
        select(PrivilegeApplicationItem.item_id, PrivilegeApplication)
        .join(PrivilegeApplication, PrivilegeApplicationItem.application_id == PrivilegeApplication.id)
        .where(PrivilegeApplication.applicant_id == user_id, PrivilegeApplicationItem.item_id.in_(item_ids),
               PrivilegeApplication.status.in_(OPEN_APPLICATION_STATUSES)))
    return {item_id: application for item_id, application in rows}


def create_application(*, applicant: User, item_ids: Sequence[int | str], reason: str) -> PrivilegeApplication:
    """Create a draft application (audited). Raises ValidationFailed with per-field Chinese messages."""
    errors: dict[str, str] = {}
    if applicant.departed_at is not None or not applicant.is_active:
        errors["applicant"] = "离职或已停用人员不能申请医疗权限"
    reason = (reason or "").strip()
    if not reason:
        errors["reason"] = "请填写申请理由"
    elif len(reason) > REASON_MAX:
        errors["reason"] = f"申请理由不能超过 {REASON_MAX} 字"
    ids: list[int | None] = []
    for idx, raw in enumerate(item_ids or []):
        try:
            ids.append(int(raw))
        except (TypeError, ValueError):
            ids.append(None)
            errors[f"item_ids/{idx}"] = "授权项目编号无效"
    if not ids:
        errors["item_ids"] = "请至少选择一个授权项目"
    wanted = [i for i in ids if i is not None]
    items = {i.id: i for i in db.session.scalars(select(PrivilegeItem).where(PrivilegeItem.id.in_(wanted)))}
    on = today()
    held = _effective_grants(applicant.id, wanted, on)
    pending = _open_applications(applicant.id, wanted)
    seen: set[int] = set()
    for idx, item_id in enumerate(ids):
        if item_id is None:
            continue
        path = f"item_ids/{idx}"
        item = items.get(item_id)
        if item_id in seen:
            errors[path] = "重复选择了同一项目"
        elif item is None:
            errors[path] = "授权项目不存在"
        elif not item.is_active or not item.category.is_active:
            errors[path] = f"“{item.name}”已停用，不能申请"
        elif item_id in held and not _in_renewal_window(held[item_id], on):
            until = held[item_id].valid_until
            errors[path] = (f"已持有“{item.name}”的有效授权" + (f"（有效期至 {until}）" if until else "")
                            + f"，到期前 {RENEWAL_WINDOW_DAYS} 天内方可申请再授权")
        elif item_id in pending:
            errors[path] = f"“{item.name}”已有审核中的申请（{pending[item_id].number}）"
        seen.add(item_id)
    if errors:
        raise ValidationFailed(errors)
    application = PrivilegeApplication(applicant_id=applicant.id, dept_id=applicant.dept_id,
                                       campus_id=applicant.campus_id, reason=reason,
                                       status=ApplicationStatus.DRAFT)
    application.items = [PrivilegeApplicationItem(item_id=i) for i in wanted]
    db.session.add(application)
    db.session.flush()
    audit.record(applicant, "privilege.application_created", application,
                 after={"items": [items[i].code for i in wanted], "reason": reason})
    return application


def _in_renewal_window(grant: Grant, on: date) -> bool:
    return grant.valid_until is not None and (grant.valid_until - on).days <= RENEWAL_WINDOW_DAYS


def max_level(items: Iterable[PrivilegeItem], category: str, code_prefix: str | None = None) -> int:
    levels = [i.grade_level or 0 for i in items
              if i.category.code == category and (code_prefix is None or i.code.startswith(code_prefix))]
    return max(levels, default=0)


def flow_data(application: PrivilegeApplication, *, reminder_days: int) -> dict[str, Any]:
    """Task data the `privilege_grant` process starts with (the DMN `privilege_levels` reads the max_* keys)."""
    items = [ai.item for ai in application.items]
    return {
        "application_id": application.id,
        "application_no": application.number,
        "applicant_id": application.applicant_id,
        "applicant_name": application.applicant.name,
        "dept_name": application.dept.name if application.dept else "",
        "reason": application.reason,
        "items": [{"id": i.id, "code": i.code, "name": i.name, "category": i.category.code,
                   "category_name": i.category.name, "grade": i.grade, "grade_level": i.grade_level or 0,
                   "procedure_code": i.procedure_code} for i in items],
        "categories": sorted({i.category.code for i in items}),
        "max_surgery_grade": max_level(items, "surgery"),
        "max_anesthesia_grade": max_level(items, "anesthesia"),
        "max_endoscopy_grade": max_level(items, "endoscopy"),
        "max_antibacterial_level": max_level(items, "special", "SP-ABX-"),
        "reminder_duration": f"P{max(1, int(reminder_days))}D",
    }


def flow_title(application: PrivilegeApplication) -> str:
    names = [ai.item.name for ai in application.items]
    first = names[0] if names else ""
    more = f"等 {len(names)} 项" if len(names) > 1 else ""
    dept = f"（{application.dept.name}）" if application.dept else ""
    return f"{application.applicant.name}{dept}医疗权限申请：{first}{more}"[:200]


def submit_application(*, application: PrivilegeApplication, actor: User,
                       reminder_days: int | None = None) -> PrivilegeApplication:
    """Start the `privilege_grant` flow for a draft (audited). Raises InvalidTransition unless a draft."""
    if application.status != ApplicationStatus.DRAFT:
        raise InvalidTransition("只有草稿状态的申请可以提交", application_id=application.id)
    if reminder_days is None:
        from flask import current_app

        reminder_days = int(current_app.config.get("REVIEW_REMINDER_DAYS", 3))
    from app.workflow import services as wf

    instance = wf.start(key=PROCESS_KEY, business_key=application.number, title=flow_title(application),
                        actor=actor, dept_id=application.dept_id, campus_id=application.campus_id,
                        data=flow_data(application, reminder_days=reminder_days))
    application.instance_id = instance.id
    application.status = ApplicationStatus.IN_REVIEW
    application.submitted_at = utcnow()
    db.session.flush()
    audit.record(actor, "privilege.application_submitted", application,
                 after={"instance_id": instance.id, "status": application.status})
    return application


def apply(*, applicant: User, item_ids: Sequence[int | str], reason: str) -> PrivilegeApplication:
    """Create and submit in one step (the 申请权限 page). Raises ValidationFailed."""
    application = create_application(applicant=applicant, item_ids=item_ids, reason=reason)
    return submit_application(application=application, actor=applicant)


def _application_for(instance: Any, data: dict[str, Any]) -> PrivilegeApplication | None:
    app_id = data.get("application_id")
    if app_id is None:
        key = str(getattr(instance, "business_key", "") or "")
        app_id = key[2:] if key.startswith("QX") else key
    try:
        app_pk = int(app_id)
    except (TypeError, ValueError):
        return None
    # lock only the application row (the joined applicant/department rows are outer joins)
    return db.session.scalar(select(PrivilegeApplication).where(PrivilegeApplication.id == app_pk)
                             .with_for_update(of=PrivilegeApplication).execution_options(populate_existing=True))


def finalize_application(*, instance: Any, data: dict[str, Any], actor: User | None) -> PrivilegeApplication | None:
    """End-of-flow hook: grant on "approved", close on "rejected", mark withdrawn when the instance was
    withdrawn or terminated. Notifies the applicant and audits. Idempotent (a closed application is left alone)."""
    application = _application_for(instance, data)
    if application is None or application.status not in OPEN_APPLICATION_STATUSES:
        return application
    decision = data.get("final_decision")
    instance_status = str(getattr(instance, "status", "") or "")
    if decision not in ("approved", "rejected") and instance_status in ("withdrawn", "terminated"):
        decision = instance_status
    if decision not in ("approved", "rejected", "withdrawn", "terminated"):
        return application  # not an outcome (e.g. a reminder path ended): still under review
    application.decided_at = utcnow()
    link = f"/privileges/applications/{application.id}"
    if decision in ("withdrawn", "terminated"):
        # the engine passes the withdrawal reason as data["reason"]: it is not a revised application reason
        application.status = ApplicationStatus.WITHDRAWN
        application.final_comment = (data.get("reason") or "").strip() or None
        audit.record(actor, "privilege.application_withdrawn", application,
                     after={"instance_status": decision, "reason": application.final_comment})
        if getattr(actor, "id", None) != application.applicant_id:
            notify.notify(user_ids=[application.applicant_id], title=f"医疗权限申请 {application.number} 已终止",
                          body=application.final_comment, link=link, kind="result")
        db.session.flush()
        return application
    revised = (data.get("reason") or "").strip()  # the applicant may rewrite the reason in the revise task
    if revised and revised != application.reason:
        audit.record(actor, "privilege.application_revised", application,
                     before={"reason": application.reason}, after={"reason": revised})
        application.reason = revised
    application.final_comment = (data.get("comment") or "").strip() or None
    if decision == "approved":
        application.status = ApplicationStatus.APPROVED
        grants = _grant_items(application, actor)
        audit.record(actor, "privilege.application_approved", application,
                     after={"grants": [g.id for g in grants], "comment": application.final_comment})
        notify.notify(user_ids=[application.applicant_id], title=f"医疗权限申请 {application.number} 已批准",
                      body="已授予：" + "、".join(g.item.name for g in grants), link=link, kind="result")
    else:
        application.status = ApplicationStatus.REJECTED
        audit.record(actor, "privilege.application_rejected", application,
                     after={"comment": application.final_comment})
        notify.notify(user_ids=[application.applicant_id], title=f"医疗权限申请 {application.number} 未通过",
                      body=application.final_comment or "审批未通过", link=link, kind="result")
    db.session.flush()
    return application


def _grant_items(application: PrivilegeApplication, actor: User | None) -> list[Grant]:
    start = today()
    items = [ai.item for ai in application.items]
    held = _effective_grants(application.applicant_id, [i.id for i in items], start)
    grants = []
    for item in items:
        old = held.get(item.id)
        if old is not None:  # renewal: the new grant replaces the old one from today
            old.status = GrantStatus.EXPIRED
            old.revoked_at = utcnow()
            old.revoked_reason = f"由申请 {application.number} 的再授权替代"
            audit.record(actor, "privilege.grant_expired", old, after={"reason": old.revoked_reason})
        grant = Grant(user_id=application.applicant_id, item_id=item.id, application_id=application.id,
                      status=GrantStatus.ACTIVE, valid_from=start, valid_until=validity_until(item.category, start),
                      granted_by_id=getattr(actor, "id", None), granted_at=utcnow())
        grant.item = item
        db.session.add(grant)
        grants.append(grant)
    db.session.flush()
    for grant in grants:
        audit.record(actor, "privilege.grant_created", grant,
                     after={"user_id": grant.user_id, "item": grant.item.code, "valid_from": grant.valid_from,
                            "valid_until": grant.valid_until, "application": application.number})
    return grants


def my_applications(user: User) -> Select:
    return (select(PrivilegeApplication).where(PrivilegeApplication.applicant_id == user.id)
            .order_by(PrivilegeApplication.id.desc()))


@dataclass(frozen=True)
class InstanceProgress:
    status: str
    status_label: str
    steps: tuple[str, ...]  # names of the READY tasks (the current step)


def instance_progress(instance_ids: Sequence[int]) -> dict[int, InstanceProgress]:
    """Workflow instance id -> status and current step, read from the engine's projections (empty without it)."""
    ids = [i for i in instance_ids if i]
    if not ids:
        return {}
    try:
        from app.workflow import models as wf_models
    except ImportError:
        return {}
    instance: Any = getattr(wf_models, "ProcessInstance", None)
    task: Any = getattr(wf_models, "HumanTask", None)
    labels: dict[str, str] = getattr(wf_models, "INSTANCE_STATUS_LABELS", {})
    if instance is None:
        return {}
    steps: dict[int, list[str]] = {}
    if task is not None:
        for row in db.session.execute(select(task.instance_id, task.name)
                                      .where(task.instance_id.in_(ids), task.status == "ready").order_by(task.id)):
            steps.setdefault(int(row[0]), []).append(str(row[1]))
    out: dict[int, InstanceProgress] = {}
    for row in db.session.execute(select(instance.id, instance.status).where(instance.id.in_(ids))):
        iid, status = int(row[0]), str(row[1])
        out[iid] = InstanceProgress(status, labels.get(status, status), tuple(steps.get(iid, [])))
    return out


def grants_for_application(application: PrivilegeApplication) -> list[Grant]:
    return list(db.session.scalars(select(Grant).where(Grant.application_id == application.id).order_by(Grant.id)))


def get_application(*, application_id: int, viewer: User) -> PrivilegeApplication:
    """One application the viewer may see (own, or within the privileges.view scope). Raises NotFound."""
    application = db.session.get(PrivilegeApplication, application_id)
    if application is None:
        raise NotFound("申请不存在")
    if application.applicant_id == viewer.id:
        return application
    scope = data_scope(viewer, "privileges.view")
    if not scope.allows(user_id=application.applicant_id, dept_id=application.dept_id,
                        campus_id=application.campus_id):
        raise NotFound("申请不存在")
    return application


# ---------------------------------------------------------------- grants


@dataclass(frozen=True)
class GrantFilter:
    category: str | None = None
    dept_id: int | None = None
    status: str | None = None
    validity: str | None = None  # valid / expiring / expired
    q: str | None = None
    user_id: int | None = None


VALIDITY_LABELS = {"valid": "有效期内", "expiring": f"{EXPIRING_DAYS} 天内到期", "expired": "已过期"}


def grants_query(*, viewer: User, filters: GrantFilter | None = None, on: date | None = None) -> Select:
    """Grants the viewer may see (privileges.view data scope), filtered. Raises Forbidden without the permission."""
    f = filters or GrantFilter()
    on = on or today()
    scope = data_scope(viewer, "privileges.view")
    stmt = (select(Grant).join(User, Grant.user_id == User.id)
            .join(PrivilegeItem, Grant.item_id == PrivilegeItem.id)
            .join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id)
            .order_by(User.dept_id, User.name, PrivilegeCategory.sort_order, PrivilegeItem.sort_order, Grant.id))
    stmt = scope.filter(stmt, user_col=Grant.user_id, dept_col=User.dept_id)
    if f.category:
        stmt = stmt.where(PrivilegeCategory.code == f.category)
    if f.dept_id:
        stmt = stmt.where(User.dept_id == f.dept_id)
    if f.user_id:
        stmt = stmt.where(Grant.user_id == f.user_id)
    lapsed = and_(Grant.valid_until.is_not(None), Grant.valid_until < on)
    if f.status == GrantStatus.ACTIVE.value:
        stmt = stmt.where(Grant.status == GrantStatus.ACTIVE.value, ~lapsed)
    elif f.status == GrantStatus.EXPIRED.value:
        stmt = stmt.where(or_(Grant.status == GrantStatus.EXPIRED.value,
                              and_(Grant.status == GrantStatus.ACTIVE.value, lapsed)))
    elif f.status:
        stmt = stmt.where(Grant.status == f.status)
    if f.validity == "valid":
        stmt = stmt.where(Grant.status == GrantStatus.ACTIVE.value, Grant.valid_from <= on, ~lapsed)
    elif f.validity == "expiring":
        stmt = stmt.where(Grant.status == GrantStatus.ACTIVE.value, Grant.valid_until.is_not(None),
                          Grant.valid_until >= on, Grant.valid_until <= on + timedelta(days=EXPIRING_DAYS))
    elif f.validity == "expired":
        stmt = stmt.where(or_(Grant.status == GrantStatus.EXPIRED.value, lapsed))
    if f.q:
        like = f"%{f.q.strip()}%"
        stmt = stmt.where(or_(User.name.ilike(like), User.staff_no.ilike(like), PrivilegeItem.code.ilike(like),
                              PrivilegeItem.name.ilike(like), PrivilegeItem.procedure_code.ilike(like)))
    return stmt


def display_status(grant: Grant, on: date | None = None) -> str:
    """The status a reader should see: an active grant past its last day shows as expired."""
    on = on or today()
    if grant.status == GrantStatus.ACTIVE and grant.valid_until is not None and grant.valid_until < on:
        return GrantStatus.EXPIRED.value
    return str(grant.status)


def visible_departments(viewer: User) -> list[Department]:
    """Departments the viewer's privileges.view scope covers (for the filter list)."""
    scope = data_scope(viewer, "privileges.view")
    stmt = select(Department).where(Department.is_active.is_(True)).order_by(Department.code)
    if scope.level.value == "group":
        return list(db.session.scalars(stmt))
    if scope.level.value == "campus":
        return list(db.session.scalars(stmt.where(Department.campus_id == scope.campus_id)))
    return list(db.session.scalars(stmt.where(Department.id == scope.dept_id))) if scope.dept_id else []


def expire_grants(*, on: date | None = None, actor: User | str | None = "medloop-scheduler") -> int:
    """Mark active grants past their last day as expired (audited). Returns how many changed."""
    on = on or today()
    rows = list(db.session.scalars(select(Grant).where(Grant.status == GrantStatus.ACTIVE.value,
                                                       Grant.valid_until.is_not(None), Grant.valid_until < on)))
    for grant in rows:
        grant.status = GrantStatus.EXPIRED
        grant.revoked_at = utcnow()
        grant.revoked_reason = f"有效期至 {grant.valid_until} 已届满"
        audit.record(actor, "privilege.grant_expired", grant, after={"valid_until": grant.valid_until})
    db.session.flush()
    return len(rows)


def revoke_all_for_departure(*, user: User, actor: User | str | None, reason: str = "人员离职") -> int:
    """Stop every active or suspended grant of a departing user at once (audited). Returns the count."""
    rows = list(db.session.scalars(select(Grant).where(
        Grant.user_id == user.id, Grant.status.in_([GrantStatus.ACTIVE.value, GrantStatus.SUSPENDED.value]))))
    for grant in rows:
        grant.status = GrantStatus.REVOKED
        grant.revoked_at = utcnow()
        grant.revoked_by_id = getattr(actor, "id", None)
        grant.revoked_reason = reason
        audit.record(actor, "privilege.grant_revoked", grant, after={"reason": reason})
    db.session.flush()
    return len(rows)


GRANT_EXPORT_COLUMNS = ["姓名", "工号", "科室", "授权类别", "项目编码", "项目名称", "级别", "手术操作编码", "状态",
                        "生效日期", "有效期至", "批准人", "来源申请", "授予时间"]


def grants_workbook(grants: Iterable[Grant], *, on: date | None = None) -> bytes:
    """The grants as an .xlsx file (授权查询 export)."""
    from openpyxl import Workbook
    from openpyxl.utils import get_column_letter

    from app.core.timefmt import local
    from app.privileges.models import GRANT_STATUS_LABELS

    wb = Workbook()
    ws = wb.active
    ws.title = "医疗权限授权"
    ws.append(GRANT_EXPORT_COLUMNS)
    for g in grants:
        u = g.user
        ws.append([u.name, u.staff_no or "", u.dept.name if u.dept else "", g.item.category.name, g.item.code,
                   g.item.name, g.item.grade or "", g.item.procedure_code or "",
                   GRANT_STATUS_LABELS.get(display_status(g, on), str(g.status)), g.valid_from.isoformat(),
                   g.valid_until.isoformat() if g.valid_until else "长期", g.granted_by.name if g.granted_by else "",
                   g.application.number if g.application else "", local(g.granted_at)])
    for idx, width in enumerate([10, 10, 12, 26, 18, 40, 10, 14, 8, 12, 12, 10, 12, 18], start=1):
        ws.column_dimensions[get_column_letter(idx)].width = width
    ws.freeze_panes = "A2"
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


def grant_counts_by_category(*, viewer: User) -> list[tuple[str, int]]:
    """(category name, effective grant count) within the viewer's scope, for the page summary."""
    stmt = grants_query(viewer=viewer, filters=GrantFilter(validity="valid")).order_by(None)
    sub = stmt.with_only_columns(PrivilegeCategory.name, PrivilegeCategory.sort_order).subquery()
    rows = db.session.execute(select(sub.c.name, func.count()).group_by(sub.c.name, sub.c.sort_order)
                              .order_by(sub.c.sort_order))
    return [(str(row[0]), int(row[1])) for row in rows]
