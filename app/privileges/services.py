"""Clinical privileges (seed 000 §三): applications through the `privilege_grant` flow, and grants.

Invariants:
- an application names at least one active catalogue item, and only items its applicant neither holds
  (an effective grant not yet inside the renewal window) nor has in another open application;
- an application or batch grant only holds items its physician fits (app.privileges.eligibility: minimum title,
  valid certificates, 定期考核, the new-tech project team for applications, the department's 科室技术目录 when
  it has one), unless 医务处 gives an override reason, which is kept and audited per item;
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
from app.auth.services import data_scope, has_permission
from app.core.timefmt import SHANGHAI
from app.db import db, utcnow
from app.errors import InvalidTransition, NotFound, ValidationFailed
from app.forms import start as start_forms
from app.notify import services as notify
from app.privileges import dept_catalogue, eligibility
from app.privileges.eligibility import Eligibility
from app.privileges.models import (
    OPEN_APPLICATION_STATUSES,
    ApplicationStatus,
    DeptCatalogueItem,
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
                    active_only: bool = True, dept_id: int | None = None) -> Select:
    """Catalogue items filtered by category code, code/name search and grade, in catalogue order; with dept_id,
    only what that department may apply for (its 科室技术目录 when it has one, plus the exempt categories)."""
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
    if dept_id is not None and dept_catalogue.dept_item_ids(dept_id) is not None:
        stmt = stmt.where(or_(PrivilegeCategory.code.in_(dept_catalogue.EXEMPT_CATEGORIES), PrivilegeItem.id.in_(
            select(DeptCatalogueItem.item_id).where(DeptCatalogueItem.dept_id == dept_id,
                                                    DeptCatalogueItem.is_active.is_(True)))))
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


def _application_data(item_ids: Sequence[int | str] | None, reason: str | None,
                      override_reason: str | None) -> dict[str, Any]:
    """The `privilege_apply` form data of a call that names the items and texts (tests, other domains)."""
    return {"item_ids": list(item_ids or []), "reason": reason, "override_reason": override_reason}


def create_application(*, applicant: User, item_ids: Sequence[int | str] | None = None, reason: str | None = None,
                       override_reason: str | None = None, actor: User | None = None,
                       data: Any = None) -> PrivilegeApplication:
    """Create a draft application (audited) from the latest `privilege_apply` form template: `data` (a dict or
    form-encoded data, with any fields the office added), or item_ids + reason (+ override_reason). Each item must
    fit the applicant (app.privileges.eligibility: title, certificates, 定期考核, new-tech team, department
    catalogue); 医务处 (`actor` with privileges.manage over the applicant) may let unfit items through with
    `override_reason`, audited item by item. The template version and the extra fields are kept on the
    application. Raises ValidationFailed with every problem by field path (Chinese); nothing is written then."""
    if data is None:
        data = _application_data(item_ids, reason, override_reason)
    form = start_forms.start_form(PrivilegeApplication.FORM_KEY)
    values, template_errors = start_forms.check(form, data)
    errors: dict[str, str] = {}
    if applicant.departed_at is not None or not applicant.is_active:
        errors["applicant"] = "离职或已停用人员不能申请医疗权限"
    chosen = values.get("item_ids")
    chosen = chosen if isinstance(chosen, list) else []
    # positions are kept so each problem lands on its own item_ids/<n>
    ids: list[int | None] = [v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None
                             for v in chosen]
    for idx, item_id in enumerate(ids):
        if item_id is None:
            errors[f"item_ids/{idx}"] = "授权项目编号无效"
    if not ids:
        errors["item_ids"] = "请至少选择一个授权项目"
    wanted = [i for i in ids if i is not None]
    items = {i.id: i for i in db.session.scalars(select(PrivilegeItem).where(PrivilegeItem.id.in_(wanted)))}
    on = today()
    held = _effective_grants(applicant.id, wanted, on)
    pending = _open_applications(applicant.id, wanted)
    seen: set[int] = set()
    to_check: dict[str, PrivilegeItem] = {}  # path -> item that passed the checks above: now its eligibility
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
        else:
            to_check[path] = item
        seen.add(item_id)
    override_text = values.get("override_reason")
    override = _override_reason(override_text if isinstance(override_text, str) else None, actor=actor,
                                holder=applicant, errors=errors)
    unfit: dict[str, Eligibility] = {}
    if to_check:
        verdicts = eligibility.check_items(applicant, list(to_check.values()), on=on)
        unfit = {path: verdicts[item.id] for path, item in to_check.items() if not verdicts[item.id].ok}
    if override is None:
        errors.update({path: verdict.message for path, verdict in unfit.items()})
    problems = start_forms.merge_errors(template_errors, errors)
    if problems:
        raise ValidationFailed(problems)
    text = str(values["reason"])
    extra = start_forms.extra(form, values, PrivilegeApplication.FORM_COLUMNS)
    application = PrivilegeApplication(applicant_id=applicant.id, dept_id=applicant.dept_id,
                                       campus_id=applicant.campus_id, reason=text,
                                       status=ApplicationStatus.DRAFT, form_version=form.version, form_data=extra)
    application.items = [PrivilegeApplicationItem(item_id=i) for i in wanted]
    if unfit and override is not None and actor is not None:
        application.override_reason, application.override_by_id = override, actor.id
    db.session.add(application)
    db.session.flush()
    created: dict[str, Any] = {"items": [items[i].code for i in wanted], "reason": text,
                               "form_version": form.version}
    if extra:
        created["form_data"] = extra
    audit.record(applicant, "privilege.application_created", application, after=created)
    if unfit and override is not None:
        audit.record(actor, "privilege.eligibility_overridden", application,
                     after={"reason": override, "applicant_id": applicant.id,
                            "items": [{"code": v.item.code, "name": v.item.name, "problems": v.problems}
                                      for v in unfit.values()]})
    return application


def _override_reason(text: str | None, *, actor: User | None, holder: User, errors: dict[str, str]) -> str | None:
    """The office's reason to let unfit items through, when given by someone who may (privileges.manage over the
    holder); otherwise None, with a message under `override_reason` when one was attempted."""
    reason = (text or "").strip()
    if not reason:
        return None
    if actor is None or not has_permission(actor, "privileges.manage") or not data_scope(
            actor, "privileges.manage").allows(user_id=holder.id, dept_id=holder.dept_id, campus_id=holder.campus_id):
        errors["override_reason"] = "只有医务处（医疗权限管理）可以特批资格不符的项目"
        return None
    if len(reason) > MANAGE_REASON_MAX:
        errors["override_reason"] = f"特批理由不能超过 {MANAGE_REASON_MAX} 字"
        return None
    return reason


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


def apply(*, applicant: User, item_ids: Sequence[int | str] | None = None, reason: str | None = None,
          override_reason: str | None = None, actor: User | None = None, data: Any = None) -> PrivilegeApplication:
    """Create and submit in one step (the 申请权限 page; `data` as for create_application). Raises
    ValidationFailed."""
    application = create_application(applicant=applicant, item_ids=item_ids, reason=reason,
                                     override_reason=override_reason, actor=actor, data=data)
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
            push_grant_change(grant=old, reason=old.revoked_reason)
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
        push_grant_change(grant=grant, reason=f"申请 {application.number} 审批通过")
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
    return data_scope(viewer, "privileges.view").departments()


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
        push_grant_change(grant=grant, reason=grant.revoked_reason)
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
        push_grant_change(grant=grant, reason=reason)
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


# ---------------------------------------------------------------- grant management (seed 000 §三.2, §三.4, §三.6)
# Every grant change below is pushed to HIS through the outbox (channel "his") in the same transaction, keyed per
# physician and item so HIS receives one item's changes in order; the HIS check index is invalidated by
# app.privileges.check's session events.

HIS_CHANNEL = "his"
HIS_EVENT = "privilege.changed"
MANAGE_REASON_MAX = 500
EMERGENCY_MAX_HOURS = 72
EMERGENCY_PROCESS_KEY = "privilege_emergency_review"
REMINDER_THRESHOLDS = (60, 30)
BATCH_MAX_USERS = 200
BATCH_MAX_ITEMS = 50

AUDIT_LABELS.update({
    "privilege.grant_suspended": "暂停医疗权限",
    "privilege.grant_resumed": "恢复医疗权限",
    "privilege.emergency_granted": "紧急授权",
    "privilege.emergency_expired": "紧急授权到期",
    "privilege.emergency_reviewed": "紧急授权事后审核",
    "privilege.batch_granted": "批量授予医疗权限",
})


def grant_key(grant: Grant) -> str:
    """Outbox ordering key: one physician's one item (a renewal's old and new grant share it)."""
    return f"privilege:{grant.user_id}:{grant.item.code}"


def grant_payload(grant: Grant, *, reason: str | None = None) -> dict[str, Any]:
    """What HIS receives for a grant change: who, which item, its state and validity, and why."""
    from app.privileges.models import EmergencyGrant

    user = grant.user if grant.user is not None else db.session.get(User, grant.user_id)
    item = grant.item
    emergency = db.session.scalar(select(EmergencyGrant).where(EmergencyGrant.grant_id == grant.id))
    return {
        "grant_id": grant.id,
        "staff_no": user.staff_no if user else None,
        "name": user.name if user else None,
        "dept_his_code": user.dept.his_code if user and user.dept else None,
        "code": item.code,
        "item_name": item.name,
        "procedure_code": item.procedure_code,
        "category": item.category.code,
        "grade": item.grade,
        "grade_level": item.grade_level,
        "status": str(grant.status),
        "valid_from": grant.valid_from,
        "valid_until": grant.valid_until,
        "expires_at": emergency.expires_at if emergency else None,
        "emergency": emergency is not None,
        "reason": reason if reason is not None else grant.revoked_reason,
        "changed_at": utcnow(),
    }


def push_grant_change(*, grant: Grant, reason: str | None = None) -> Any:
    """Queue the grant's current state for HIS in the caller's transaction. Returns the outbox message."""
    from app.outbox import services as outbox

    db.session.flush()
    return outbox.enqueue(channel=HIS_CHANNEL, event=HIS_EVENT, payload=grant_payload(grant, reason=reason),
                          key=grant_key(grant))


def _clean_reason(reason: str | None, *, field: str = "reason", label: str = "原因") -> str:
    text = (reason or "").strip()
    if not text:
        raise ValidationFailed({field: f"请填写{label}"})
    if len(text) > MANAGE_REASON_MAX:
        raise ValidationFailed({field: f"{label}不能超过 {MANAGE_REASON_MAX} 字"})
    return text


def get_managed_grant(*, grant_id: int, viewer: User) -> Grant:
    """A grant inside the viewer's privileges.manage scope. Raises Forbidden without it, NotFound outside it."""
    scope = data_scope(viewer, "privileges.manage")
    grant = db.session.get(Grant, grant_id)
    if grant is None or not scope.allows(user_id=grant.user_id, dept_id=grant.user.dept_id,
                                         campus_id=grant.user.campus_id):
        raise NotFound("授权记录不存在")
    return grant


def _lock_grant(grant: Grant) -> Grant:
    locked = db.session.scalar(select(Grant).where(Grant.id == grant.id).with_for_update(of=Grant)
                               .execution_options(populate_existing=True))
    if locked is None:
        raise NotFound("授权记录不存在")
    return locked


def suspend_grant(*, grant: Grant, reason: str, actor: User) -> Grant:
    """暂停: an active grant stops at once until resumed (audited, pushed to HIS). Raises ValidationFailed,
    InvalidTransition."""
    reason = _clean_reason(reason, label="暂停原因")
    grant = _lock_grant(grant)
    if grant.status != GrantStatus.ACTIVE:
        raise InvalidTransition("只有生效中的授权可以暂停", grant_id=grant.id)
    return _stop_grant(grant=grant, status=GrantStatus.SUSPENDED, reason=reason, actor=actor,
                       action="privilege.grant_suspended", verb="暂停")


def _stop_grant(*, grant: Grant, status: GrantStatus, reason: str, actor: User | str | None, action: str,
                verb: str) -> Grant:
    """Shared by suspension and revocation: record who/why, audit, push to HIS, tell the physician."""
    before = {"status": str(grant.status)}
    grant.status = status
    grant.revoked_at = utcnow()
    grant.revoked_by_id = getattr(actor, "id", None)
    grant.revoked_reason = reason
    audit.record(actor, action, grant, before=before, after={"status": str(grant.status), "reason": reason})
    push_grant_change(grant=grant, reason=reason)
    notify.notify(user_ids=[grant.user_id], title=f"您的医疗权限“{grant.item.name}”已{verb}", body=reason,
                  link="/privileges/grants", kind="result")
    db.session.flush()
    return grant


def resume_grant(*, grant: Grant, reason: str, actor: User, on: date | None = None) -> Grant:
    """恢复: a suspended grant still inside its validity becomes active again (audited, pushed to HIS).
    Raises ValidationFailed, InvalidTransition."""
    reason = _clean_reason(reason, label="恢复原因")
    grant = _lock_grant(grant)
    on = on or today()
    if grant.status != GrantStatus.SUSPENDED:
        raise InvalidTransition("只有已暂停的授权可以恢复", grant_id=grant.id)
    if grant.valid_until is not None and grant.valid_until < on:
        raise InvalidTransition(f"该授权已于 {grant.valid_until} 到期，不能恢复，请重新申请授权", grant_id=grant.id)
    before = {"status": str(grant.status), "reason": grant.revoked_reason}
    grant.status = GrantStatus.ACTIVE
    grant.revoked_at = None
    grant.revoked_by_id = None
    grant.revoked_reason = None
    audit.record(actor, "privilege.grant_resumed", grant, before=before,
                 after={"status": str(grant.status), "reason": reason})
    push_grant_change(grant=grant, reason=reason)
    notify.notify(user_ids=[grant.user_id], title=f"您的医疗权限“{grant.item.name}”已恢复", body=reason,
                  link="/privileges/grants", kind="result")
    db.session.flush()
    return grant


def revoke_grant(*, grant: Grant, reason: str, actor: User | str | None) -> Grant:
    """停止: an active or suspended grant ends for good (audited, pushed to HIS). Raises ValidationFailed,
    InvalidTransition."""
    reason = _clean_reason(reason, label="停止原因")
    grant = _lock_grant(grant)
    if grant.status not in (GrantStatus.ACTIVE, GrantStatus.SUSPENDED):
        raise InvalidTransition("只有生效中或已暂停的授权可以停止", grant_id=grant.id)
    return _stop_grant(grant=grant, status=GrantStatus.REVOKED, reason=reason, actor=actor,
                       action="privilege.grant_revoked", verb="停止")


def manage_grants_query(*, viewer: User, filters: GrantFilter | None = None, on: date | None = None) -> Select:
    """Grants for the management page: the viewer's privileges.view scope narrowed to privileges.manage."""
    stmt = grants_query(viewer=viewer, filters=filters, on=on)
    return data_scope(viewer, "privileges.manage").filter(stmt, user_col=Grant.user_id, dept_col=User.dept_id)


def grant_history(grant: Grant) -> list[Any]:
    """Audit rows of one grant, oldest first (shown on the management page)."""
    from app.audit.models import AuditLog

    return list(db.session.scalars(select(AuditLog).where(AuditLog.entity_type == Grant.__tablename__,
                                                          AuditLog.entity_id == str(grant.id))
                                   .order_by(AuditLog.id)))


# ---------------------------------------------------------------- 紧急授权


def _shanghai_date(ts: datetime) -> date:
    return ts.astimezone(SHANGHAI).date()


def emergency_max_hours() -> int:
    try:
        from flask import current_app, has_app_context

        if has_app_context():
            return int(current_app.config.get("PRIVILEGE_EMERGENCY_MAX_HOURS") or EMERGENCY_MAX_HOURS)
    except (TypeError, ValueError):
        pass
    return EMERGENCY_MAX_HOURS


def _holder_errors(holder: User | None, field: str) -> dict[str, str]:
    if holder is None:
        return {field: "医师不存在"}
    if holder.departed_at is not None or not holder.is_active:
        return {field: "离职或已停用人员不能授予医疗权限"}
    if not holder.staff_no:
        return {field: "该人员没有工号，HIS 无法识别，请先在用户管理中补充工号"}
    return {}


def find_staff(staff_no_or_username: str) -> User | None:
    key = (staff_no_or_username or "").strip()
    if not key:
        return None
    return db.session.scalar(select(User).where(or_(User.staff_no == key, User.username == key)))


def find_item(code: str) -> PrivilegeItem | None:
    key = (code or "").strip()
    if not key:
        return None
    return db.session.scalar(select(PrivilegeItem).where(or_(PrivilegeItem.code == key,
                                                             PrivilegeItem.procedure_code == key))
                             .order_by((PrivilegeItem.code == key).desc(), PrivilegeItem.id).limit(1))


def grant_emergency(*, data: Any, actor: User, now: datetime | None = None) -> Any:
    """紧急授权 from the latest `privilege_emergency` form template (a dict or form-encoded data: staff_no, item_code,
    hours, reason, patient_ref and any fields the office added), for a physician in the actor's privileges.manage
    scope; see create_emergency_grant. Raises ValidationFailed with every problem; nothing is written then."""
    from app.privileges.models import EmergencyGrant

    form = start_forms.start_form(EmergencyGrant.FORM_KEY)
    values, template_errors = start_forms.check(form, data)
    staff_no, code = values.get("staff_no"), values.get("item_code")
    holder = find_staff(staff_no) if isinstance(staff_no, str) else None
    item = find_item(code) if isinstance(code, str) else None
    return _grant_emergency(form=form, values=values, template_errors=template_errors, holder=holder, item=item,
                            item_named=isinstance(code, str), actor=actor, now=now)


def create_emergency_grant(*, holder: User | None, item: PrivilegeItem | None, hours: Any, reason: str | None,
                           actor: User, patient_ref: str | None = None, now: datetime | None = None) -> Any:
    """紧急授权: a grant of `item` effective at once for at most PRIVILEGE_EMERGENCY_MAX_HOURS hours, pushed to HIS,
    with the retrospective review flow `privilege_emergency_review` started for 医务处 (audited). The values are
    checked against the `privilege_emergency` template like the page's. Raises ValidationFailed with per-field
    messages."""
    from app.privileges.models import EmergencyGrant

    form = start_forms.start_form(EmergencyGrant.FORM_KEY)
    data = {"staff_no": (holder.staff_no or holder.username) if holder is not None else None,
            "item_code": item.code if item is not None else None, "hours": hours, "reason": reason,
            "patient_ref": patient_ref}
    values, template_errors = start_forms.check(form, data)
    # no physician or item object at all: the business check names it ("医师不存在"), not the template
    for name, obj in (("staff_no", holder), ("item_code", item)):
        if obj is None:
            template_errors.pop(name, None)
    return _grant_emergency(form=form, values=values, template_errors=template_errors, holder=holder, item=item,
                            item_named=True, actor=actor, now=now)


def _grant_emergency(*, form: Any, values: dict[str, Any], template_errors: dict[str, str], holder: User | None,
                     item: PrivilegeItem | None, item_named: bool, actor: User, now: datetime | None) -> Any:
    """The business checks of an emergency grant (physician in scope and active, item in use, hours within the
    configured maximum, no grant in force or suspended) on top of the template's, then the grant itself."""
    from app.privileges.models import EmergencyGrant

    max_hours = emergency_max_hours()
    errors: dict[str, str] = dict(_holder_errors(holder, "staff_no"))
    if holder is not None and holder.dept_id is not None and not errors and not data_scope(
            actor, "privileges.manage").allows(user_id=holder.id, dept_id=holder.dept_id, campus_id=holder.campus_id):
        errors["staff_no"] = "该医师不在您的管理范围内"
    if item is None:
        if item_named:
            errors["item_code"] = "授权项目不存在"
    elif not item.is_active or not item.category.is_active:
        errors["item_code"] = "该授权项目已停用"
    hours = values.get("hours")
    n_hours = hours if isinstance(hours, int) and not isinstance(hours, bool) else 0
    if "hours" not in template_errors and not 1 <= n_hours <= max_hours:
        errors["hours"] = f"紧急授权时长为 1–{max_hours} 小时"
    text = str(values.get("reason") or "")
    patient_ref = values.get("patient_ref") if isinstance(values.get("patient_ref"), str) else None
    now = now or utcnow()
    on = _shanghai_date(now)
    if not errors and not template_errors and holder is not None and item is not None:
        current = list(db.session.scalars(select(Grant).where(
            Grant.user_id == holder.id, Grant.item_id == item.id,
            Grant.status.in_([GrantStatus.ACTIVE.value, GrantStatus.SUSPENDED.value]))))
        for g in current:
            if g.status == GrantStatus.SUSPENDED:
                errors["item_code"] = "该医师此项授权已被暂停，不能以紧急授权绕过暂停"
            elif g.valid_from <= on and (g.valid_until is None or on <= g.valid_until):
                emergency = db.session.scalar(select(EmergencyGrant).where(EmergencyGrant.grant_id == g.id))
                if emergency is None:
                    errors["item_code"] = f"该医师已持有此项授权（有效期至 {g.valid_until or '长期'}），无需紧急授权"
                elif emergency.expires_at > now:
                    errors["item_code"] = f"该医师此项紧急授权仍有效（至 {emergency.expires_at.astimezone(SHANGHAI):%Y-%m-%d %H:%M}）"
    errors = start_forms.merge_errors(template_errors, errors)
    if errors:
        raise ValidationFailed(errors)
    assert holder is not None and item is not None
    expires_at = now + timedelta(hours=n_hours)
    grant = Grant(user_id=holder.id, item_id=item.id, status=GrantStatus.ACTIVE, valid_from=on,
                  valid_until=_shanghai_date(expires_at), granted_by_id=actor.id, granted_at=now)
    grant.item = item
    grant.user = holder
    db.session.add(grant)
    db.session.flush()
    extra = start_forms.extra(form, values, EmergencyGrant.FORM_COLUMNS)
    emergency = EmergencyGrant(grant_id=grant.id, starts_at=now, expires_at=expires_at, hours=n_hours, reason=text,
                               patient_ref=patient_ref, granted_by_id=actor.id, form_version=form.version,
                               form_data=extra)
    emergency.grant = grant
    db.session.add(emergency)
    db.session.flush()
    audit.record(actor, "privilege.grant_created", grant,
                 after={"user_id": grant.user_id, "item": item.code, "valid_from": grant.valid_from,
                        "valid_until": grant.valid_until, "emergency": emergency.number})
    audit.record(actor, "privilege.emergency_granted", emergency,
                 after={"grant_id": grant.id, "hours": n_hours, "expires_at": expires_at, "reason": text,
                        "patient_ref": patient_ref, "form_version": form.version,
                        **({"form_data": extra} if extra else {})})
    push_grant_change(grant=grant, reason=f"紧急授权：{text}")
    from app.workflow import services as wf

    instance = wf.start(key=EMERGENCY_PROCESS_KEY, business_key=emergency.number,
                        title=f"紧急授权事后审核：{holder.name} · {item.name}"[:200], actor=actor,
                        dept_id=holder.dept_id, campus_id=holder.campus_id,
                        data={"emergency_id": emergency.id, "emergency_no": emergency.number,
                              "holder_name": holder.name, "item_name": item.name, "hours": n_hours})
    emergency.review_instance_id = instance.id
    local_end = expires_at.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
    notify.notify(user_ids=[holder.id], title=f"您已获得紧急授权：{item.name}",
                  body=f"有效至 {local_end}（{n_hours} 小时）。理由：{text}", link="/privileges/grants", kind="result")
    db.session.flush()
    return emergency


def emergency_query(*, viewer: User, review_status: str | None = None, q: str | None = None) -> Select:
    """Emergency grants in the viewer's privileges.manage scope, newest first."""
    from app.privileges.models import EmergencyGrant

    stmt = (select(EmergencyGrant).join(Grant, EmergencyGrant.grant_id == Grant.id)
            .join(User, Grant.user_id == User.id).join(PrivilegeItem, Grant.item_id == PrivilegeItem.id)
            .order_by(EmergencyGrant.id.desc()))
    stmt = data_scope(viewer, "privileges.manage").filter(stmt, user_col=Grant.user_id, dept_col=User.dept_id)
    if review_status:
        stmt = stmt.where(EmergencyGrant.review_status == review_status)
    if q:
        like = f"%{q.strip()}%"
        stmt = stmt.where(or_(User.name.ilike(like), User.staff_no.ilike(like), PrivilegeItem.name.ilike(like),
                              PrivilegeItem.code.ilike(like)))
    return stmt


def expire_emergency_grants(*, now: datetime | None = None, actor: User | str | None = "medloop-scheduler") -> int:
    """End emergency grants whose hours are up (audited, pushed to HIS). Returns how many changed."""
    from app.privileges.models import EmergencyGrant

    now = now or utcnow()
    rows = list(db.session.scalars(
        select(Grant).join(EmergencyGrant, EmergencyGrant.grant_id == Grant.id)
        .where(Grant.status == GrantStatus.ACTIVE.value, EmergencyGrant.expires_at <= now)
        .with_for_update(of=Grant, skip_locked=True)))
    for grant in rows:
        grant.status = GrantStatus.EXPIRED
        grant.revoked_at = now
        grant.revoked_reason = "紧急授权时限届满"
        audit.record(actor, "privilege.emergency_expired", grant, after={"reason": grant.revoked_reason})
        push_grant_change(grant=grant, reason=grant.revoked_reason)
    db.session.flush()
    return len(rows)


def finalize_emergency_review(*, instance: Any, data: dict[str, Any], actor: User | None) -> Any:
    """End hook of `privilege_emergency_review`: "approve" keeps the grant until it runs out, "reject" stops it at
    once. Audited; idempotent (a reviewed emergency grant is left alone)."""
    from app.privileges.models import EmergencyGrant, EmergencyReviewStatus

    emergency_id = data.get("emergency_id")
    emergency = None
    if emergency_id is not None:
        emergency = db.session.scalar(select(EmergencyGrant).where(EmergencyGrant.id == int(emergency_id))
                                      .with_for_update(of=EmergencyGrant))
    if emergency is None:
        key = str(getattr(instance, "business_key", "") or "")
        if key.startswith("JJ") and key[2:].isdigit():
            emergency = db.session.get(EmergencyGrant, int(key[2:]))
    if emergency is None or emergency.review_status != EmergencyReviewStatus.PENDING:
        return emergency
    decision = data.get("decision")
    if decision not in ("approve", "reject"):
        return emergency  # withdrawn or terminated: still awaiting review
    comment = (data.get("comment") or "").strip() or None
    emergency.reviewed_at = utcnow()
    emergency.reviewed_by_id = getattr(actor, "id", None)
    emergency.review_comment = comment
    grant = emergency.grant
    if decision == "reject":
        emergency.review_status = EmergencyReviewStatus.REVOKED
        if grant.status in (GrantStatus.ACTIVE, GrantStatus.SUSPENDED):
            revoke_grant(grant=grant, reason=f"紧急授权事后审核未通过：{comment or '无意见'}"[:MANAGE_REASON_MAX],
                         actor=actor)
    else:
        emergency.review_status = EmergencyReviewStatus.KEPT
    audit.record(actor, "privilege.emergency_reviewed", emergency,
                 after={"review_status": str(emergency.review_status), "comment": comment,
                        "grant_status": str(grant.status)})
    db.session.flush()
    return emergency


# ---------------------------------------------------------------- 批量授权


@dataclass
class BatchRow:
    user: User | None
    item: PrivilegeItem | None
    label_user: str
    label_item: str
    status: str  # grant / renew / skip / error
    message: str
    grant: Grant | None = None
    overridden: list[str] | None = None  # eligibility problems let through by the office's override


@dataclass
class BatchPlan:
    rows: list[BatchRow]
    errors: dict[str, str]  # field path -> message (form-level problems)
    valid_from: date | None = None
    reason: str = ""
    override_reason: str | None = None  # 医务处特批理由: unfit rows are granted, each audited

    @property
    def has_errors(self) -> bool:
        return bool(self.errors) or any(r.status == "error" for r in self.rows)

    @property
    def counts(self) -> dict[str, int]:
        out = {"grant": 0, "renew": 0, "skip": 0, "error": 0}
        for r in self.rows:
            out[r.status] += 1
        return out


BATCH_ROW_LABELS = {"grant": "授予", "renew": "再授权（替代即将到期的授权）", "skip": "跳过", "error": "错误"}


class BatchRejected(ValidationFailed):
    """The batch has errors: nothing was granted; `plan` holds the per-row report."""

    def __init__(self, plan: BatchPlan) -> None:
        errors = dict(plan.errors)
        for idx, row in enumerate(plan.rows):
            if row.status == "error":
                errors[f"rows/{idx}"] = f"{row.label_user} · {row.label_item}：{row.message}"
        super().__init__(errors, message="批量授权有错误，未授予任何权限")
        self.plan = plan


def split_codes(text: str) -> list[str]:
    codes: list[str] = []
    for raw in (text or "").replace("，", ",").replace("、", ",").replace("\n", ",").split(","):
        code = raw.strip()
        if code and code not in codes:
            codes.append(code)
    return codes


def plan_batch_grant(*, viewer: User, dept_id: int | None, user_ids: Sequence[int | str], item_codes: Sequence[str],
                     reason: str, valid_from: date | str | None = None,
                     override_reason: str | None = None) -> BatchPlan:
    """Validate a batch grant row by row (physician × item) without writing anything. A row whose physician does
    not fit the item (app.privileges.eligibility: title, certificates, 定期考核, the department catalogue) is an
    error, unless the office gives `override_reason`: then it is granted and marked as overridden."""
    errors: dict[str, str] = {}
    scope = data_scope(viewer, "privileges.manage")
    dept = db.session.get(Department, dept_id) if dept_id else None
    if dept is None:
        errors["dept_id"] = "请选择科室"
    elif not scope.allows(dept_id=dept.id, campus_id=dept.campus_id):
        errors["dept_id"] = "该科室不在您的管理范围内"
    ids: list[int] = []
    for idx, raw in enumerate(user_ids or []):
        try:
            ids.append(int(raw))
        except (TypeError, ValueError):
            errors[f"user_ids/{idx}"] = "医师编号无效"
    ids = list(dict.fromkeys(ids))
    if not ids:
        errors["user_ids"] = "请至少选择一名医师"
    elif len(ids) > BATCH_MAX_USERS:
        errors["user_ids"] = f"一次最多 {BATCH_MAX_USERS} 名医师"
    codes = [c.strip() for c in item_codes if c and c.strip()]
    codes = list(dict.fromkeys(codes))
    if not codes:
        errors["item_codes"] = "请填写至少一个授权项目编码"
    elif len(codes) > BATCH_MAX_ITEMS:
        errors["item_codes"] = f"一次最多 {BATCH_MAX_ITEMS} 个项目"
    text = (reason or "").strip()
    if not text:
        errors["reason"] = "请填写授权依据（如 考核结果、会议纪要编号）"
    elif len(text) > MANAGE_REASON_MAX:
        errors["reason"] = f"授权依据不能超过 {MANAGE_REASON_MAX} 字"
    start: date | None
    if valid_from in (None, ""):
        start = today()
    elif isinstance(valid_from, date):
        start = valid_from
    else:
        try:
            start = date.fromisoformat(str(valid_from))
        except ValueError:
            start = None
            errors["valid_from"] = "生效日期格式应为 YYYY-MM-DD"
    if start is not None and start < today():
        errors["valid_from"] = "生效日期不能早于今天"
    override = (override_reason or "").strip() or None
    if override and len(override) > MANAGE_REASON_MAX:
        errors["override_reason"] = f"特批理由不能超过 {MANAGE_REASON_MAX} 字"
        override = None
    plan = BatchPlan(rows=[], errors=errors, valid_from=start, reason=text, override_reason=override)
    if "user_ids" in errors or "item_codes" in errors or dept is None:
        return plan
    users = {u.id: u for u in db.session.scalars(select(User).where(User.id.in_(ids)))}
    items: dict[str, PrivilegeItem | None] = {code: find_item(code) for code in codes}
    found = [i for i in items.values() if i is not None]
    on = start or today()
    held: dict[tuple[int, int], Grant] = {}
    suspended: set[tuple[int, int]] = set()
    if found:
        for g in db.session.scalars(select(Grant).where(
                Grant.user_id.in_(ids), Grant.item_id.in_([i.id for i in found]),
                Grant.status.in_([GrantStatus.ACTIVE.value, GrantStatus.SUSPENDED.value]))):
            if g.status == GrantStatus.SUSPENDED:
                suspended.add((g.user_id, g.item_id))
            elif g.valid_until is None or g.valid_until >= on:
                held[(g.user_id, g.item_id)] = g
    for uid in ids:
        user = users.get(uid)
        label_user = f"{user.name}（{user.staff_no or '无工号'}）" if user else f"编号 {uid}"
        for code in codes:
            item = items[code]
            label_item = f"{item.name}（{item.code}）" if item else code
            row = BatchRow(user, item, label_user, label_item, "grant", "")
            problem = _holder_errors(user, "u").get("u")
            if user is not None and problem is None and user.dept_id != dept.id:
                problem = f"不属于{dept.name}"
            if problem:
                row.status, row.message = "error", problem
            elif item is None:
                row.status, row.message = "error", "授权项目不存在"
            elif not item.is_active or not item.category.is_active:
                row.status, row.message = "error", "授权项目已停用"
            elif item.category.code == "emergency":
                row.status, row.message = "error", "紧急授权请在“紧急授权”页办理"
            elif (uid, item.id) in suspended:
                row.status, row.message = "error", "该项授权已被暂停，请先恢复或停止后再授予"
            elif (uid, item.id) in held:
                g = held[(uid, item.id)]
                if _in_renewal_window(g, on):
                    row.status, row.message = "renew", f"替代现有授权（有效期至 {g.valid_until}）"
                    row.grant = g
                else:
                    row.status = "skip"
                    row.message = f"已持有有效授权（有效期至 {g.valid_until or '长期'}），无需重复授予"
            else:
                row.message = f"{on} 起生效，有效期至 {validity_until(item.category, on) or '长期'}"
            plan.rows.append(row)
    _check_batch_eligibility(plan, dept_id=dept.id, on=on)
    return plan


def _check_batch_eligibility(plan: BatchPlan, *, dept_id: int, on: date) -> None:
    """Rows about to grant or renew: an unfit physician makes the row an error, or, with the office's override
    reason, a grant marked as overridden. (The new-tech team rule is for applications: granting a project item to
    people the office names is how a team is authorised.)"""
    rows = [r for r in plan.rows if r.status in ("grant", "renew") and r.user is not None and r.item is not None]
    if not rows:
        return
    users = list({r.user.id: r.user for r in rows if r.user is not None}.values())
    items = list({r.item.id: r.item for r in rows if r.item is not None}.values())
    verdicts = eligibility.check_matrix(users, items, on=on, dept_id=dept_id)
    for row in rows:
        assert row.user is not None and row.item is not None
        verdict = verdicts[(row.user.id, row.item.id)]
        problems = [c.message for c in verdict.checks if not c.met and c.kind != "team"]
        if not problems:
            continue
        if plan.override_reason:
            row.overridden = problems
            row.message = f"资格不符，医务处特批（{plan.override_reason}）：{'；'.join(problems)}；{row.message}"
        else:
            row.status, row.message = "error", "；".join(problems)


def batch_grant(*, viewer: User, dept_id: int | None, user_ids: Sequence[int | str], item_codes: Sequence[str],
                reason: str, valid_from: date | str | None = None, override_reason: str | None = None) -> BatchPlan:
    """Grant items to several physicians of a department at once (audited, pushed to HIS, physicians notified).
    All or nothing: any row error raises BatchRejected (a ValidationFailed) with the report; skipped rows (already
    held) are reported, not errors. Unfit rows need `override_reason` (each such grant is audited as an override).
    Returns the plan with the created grants on its rows."""
    plan = plan_batch_grant(viewer=viewer, dept_id=dept_id, user_ids=user_ids, item_codes=item_codes, reason=reason,
                            valid_from=valid_from, override_reason=override_reason)
    if plan.has_errors:
        raise BatchRejected(plan)
    start = plan.valid_from or today()
    granted: dict[int, list[str]] = {}
    for row in plan.rows:
        if row.status not in ("grant", "renew"):
            continue
        assert row.user is not None and row.item is not None
        old = row.grant
        if old is not None:
            old.status = GrantStatus.EXPIRED
            old.revoked_at = utcnow()
            old.revoked_reason = "由批量授权的再授权替代"
            audit.record(viewer, "privilege.grant_expired", old, after={"reason": old.revoked_reason})
            push_grant_change(grant=old, reason=old.revoked_reason)
        grant = Grant(user_id=row.user.id, item_id=row.item.id, status=GrantStatus.ACTIVE, valid_from=start,
                      valid_until=validity_until(row.item.category, start), granted_by_id=viewer.id,
                      granted_at=utcnow())
        grant.item = row.item
        grant.user = row.user
        db.session.add(grant)
        db.session.flush()
        audit.record(viewer, "privilege.grant_created", grant,
                     after={"user_id": grant.user_id, "item": row.item.code, "valid_from": grant.valid_from,
                            "valid_until": grant.valid_until, "batch_reason": plan.reason})
        push_grant_change(grant=grant, reason=f"批量授权：{plan.reason}")
        if row.overridden:
            audit.record(viewer, "privilege.eligibility_overridden", grant,
                         after={"reason": plan.override_reason, "user_id": row.user.id, "item": row.item.code,
                                "problems": row.overridden, "batch_reason": plan.reason})
        row.grant = grant
        granted.setdefault(row.user.id, []).append(row.item.name)
    audit.record(viewer, "privilege.batch_granted", None, entity_type="privilege_grants",
                 after={"dept_id": dept_id, "reason": plan.reason, "counts": plan.counts,
                        "grants": [r.grant.id for r in plan.rows if r.status in ("grant", "renew") and r.grant],
                        "override_reason": plan.override_reason,
                        "overridden": [r.grant.id for r in plan.rows if r.overridden and r.grant]})
    for uid, names in granted.items():
        notify.notify(user_ids=[uid], title="您已获得医疗权限授权", body="授予：" + "、".join(names),
                      link="/privileges/grants", kind="result")
    db.session.flush()
    return plan


def department_physicians(*, viewer: User, dept_id: int | None) -> list[User]:
    """Active, not departed staff of a department who may hold privileges (a role with privileges.apply), inside
    the viewer's privileges.manage scope."""
    from app.auth.models import RolePermission, UserRole

    if not dept_id:
        return []
    dept = db.session.get(Department, dept_id)
    scope = data_scope(viewer, "privileges.manage")
    if dept is None or not scope.allows(dept_id=dept.id, campus_id=dept.campus_id):
        return []
    holders = (select(UserRole.user_id).join(RolePermission, RolePermission.role_id == UserRole.role_id)
               .where(RolePermission.permission == "privileges.apply"))
    return list(db.session.scalars(select(User).where(User.dept_id == dept.id, User.is_active.is_(True),
                                                      User.departed_at.is_(None), User.id.in_(holders))
                                   .order_by(User.staff_no, User.name)))


def manageable_departments(viewer: User) -> list[Department]:
    return data_scope(viewer, "privileges.manage").departments()


# ---------------------------------------------------------------- 到期与再授权提醒


def _mao_user_ids() -> list[int]:
    from app.auth.models import Role, UserRole

    return list(db.session.scalars(
        select(User.id).join(UserRole, UserRole.user_id == User.id).join(Role, UserRole.role_id == Role.id)
        .where(Role.code == "mao", User.is_active.is_(True), User.departed_at.is_(None)).distinct()))


def remind_expiring(*, on: date | None = None) -> dict[str, int]:
    """Remind holders (and 医务处, one digest) of grants ending within 60 and within 30 days. Idempotent: each
    grant gets each threshold's reminder at most once (a unique row per grant and threshold); a grant first seen
    inside 30 days gets only the 30-day one. Emergency grants are not reminded. Returns counts per threshold."""
    from app.privileges.models import EmergencyGrant, GrantReminder

    on = on or today()
    horizon = on + timedelta(days=max(REMINDER_THRESHOLDS))
    rows = list(db.session.scalars(
        select(Grant).outerjoin(EmergencyGrant, EmergencyGrant.grant_id == Grant.id)
        .where(Grant.status == GrantStatus.ACTIVE.value, Grant.valid_until.is_not(None), Grant.valid_until >= on,
               Grant.valid_until <= horizon, EmergencyGrant.id.is_(None))
        .order_by(Grant.valid_until, Grant.id)))
    if not rows:
        return {str(t): 0 for t in REMINDER_THRESHOLDS}
    done = {(int(r[0]), int(r[1])) for r in db.session.execute(
        select(GrantReminder.grant_id, GrantReminder.days_before)
        .where(GrantReminder.grant_id.in_([g.id for g in rows])))}
    counts = {t: 0 for t in REMINDER_THRESHOLDS}
    digest: list[str] = []
    for grant in rows:
        assert grant.valid_until is not None
        days_left = (grant.valid_until - on).days
        threshold = min(t for t in REMINDER_THRESHOLDS if days_left <= t)
        if any((grant.id, t) in done for t in REMINDER_THRESHOLDS if t <= threshold):
            continue
        db.session.add(GrantReminder(grant_id=grant.id, days_before=threshold, valid_until=grant.valid_until,
                                     sent_at=utcnow()))
        counts[threshold] += 1
        notify.notify(user_ids=[grant.user_id], title=f"医疗权限“{grant.item.name}”将于 {grant.valid_until} 到期",
                      body=f"距到期还有 {days_left} 天，如需继续开展请及时申请再授权（到期前 {RENEWAL_WINDOW_DAYS} 天内可申请）。",
                      link="/privileges/apply", kind="reminder")
        digest.append(f"{grant.user.name} · {grant.item.name}（{grant.valid_until}）")
    db.session.flush()
    if digest:
        body = "；".join(digest[:20]) + (f" 等 {len(digest)} 项" if len(digest) > 20 else "")
        notify.notify(user_ids=_mao_user_ids(), title=f"{len(digest)} 项医疗权限将在 {max(REMINDER_THRESHOLDS)} 天内到期",
                      body=body, link="/privileges/grants?validity=expiring", kind="reminder")
    return {str(t): n for t, n in counts.items()}


def expire_and_remind(*, on: date | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The daily job: expire lapsed grants and emergency grants (pushed to HIS), then send expiry reminders."""
    expired = expire_grants(on=on)
    emergency = expire_emergency_grants(now=now)
    reminded = remind_expiring(on=on)
    return {"expired": expired, "emergency_expired": emergency, "reminded": reminded}


# ---------------------------------------------------------------- 统计分析 (seed 000 §三.8)


STAT_DIMENSIONS = (("category", "授权类别"), ("kind", "工作量类别"), ("dept", "科室"), ("title", "职称"),
                   ("surgery_grade", "手术级别"), ("item", "授权项目"))
STAT_NONE_KEY = "-"  # the key of 无科室 / 未填职称 rows
STAT_NO_DEPT, STAT_NO_TITLE = "（无科室）", "（未填职称）"
SURGERY_GRADE_LABELS = {1: "一级手术", 2: "二级手术", 3: "三级手术", 4: "四级手术"}
EMERGENCY_CATEGORY = "emergency"


@dataclass
class StatRow:
    label: str
    grants: tuple[int, int, int]  # this month, previous month, same month last year
    applications: tuple[int, int, int]
    key: str = ""  # the dimension value, for the drill-down to the grants (statistics_drill)

    @staticmethod
    def _rate(cur: int, base: int) -> float | None:
        return None if base == 0 else round((cur - base) * 100.0 / base, 1)

    @property
    def grants_mom(self) -> float | None:
        return self._rate(self.grants[0], self.grants[1])

    @property
    def grants_yoy(self) -> float | None:
        return self._rate(self.grants[0], self.grants[2])

    @property
    def applications_mom(self) -> float | None:
        return self._rate(self.applications[0], self.applications[1])

    @property
    def applications_yoy(self) -> float | None:
        return self._rate(self.applications[0], self.applications[2])


@dataclass
class PrivilegeStatistics:
    year: int
    month: int
    months: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    tables: dict[str, list[StatRow]]
    totals: StatRow

    @property
    def label(self) -> str:
        return f"{self.year} 年 {self.month} 月"


def _month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    start = datetime(year, month, 1, tzinfo=SHANGHAI)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=SHANGHAI)
    return start, end


def _shift_month(year: int, month: int, delta: int) -> tuple[int, int]:
    idx = year * 12 + (month - 1) + delta
    return idx // 12, idx % 12 + 1


def _check_month(year: int, month: int) -> None:
    if not (2000 <= year <= 2100 and 1 <= month <= 12):
        raise ValidationFailed({"month": "统计月份无效"})


def _emergency_category() -> tuple[str, int]:
    row = db.session.execute(select(PrivilegeCategory.name, PrivilegeCategory.sort_order)
                             .where(PrivilegeCategory.code == EMERGENCY_CATEGORY)).first()
    return (str(row[0]), int(row[1])) if row else ("紧急授权", 999)


@dataclass(frozen=True)
class _StatSource:
    """What one grant (or one item of an application) is counted by."""

    category: tuple[str, str, int]  # code, name, sort order
    item: tuple[int, str, str, int]  # id, code, name, sort order
    grade: int | None
    dept: tuple[int | None, str | None, str | None]  # id, name, code
    title: str | None
    emergency: bool  # an emergency grant (counted under 紧急授权 whatever its item)


def _stat_values(src: _StatSource, emergency: tuple[str, int]) -> list[tuple[str, str, str, tuple[Any, ...]]]:
    """(dimension, key, label, sort key) of every dimension value the source counts under."""
    from app.privileges import catalogue

    cat_code, cat_name, cat_sort = src.category
    item_id, item_code, item_name, item_sort = src.item
    dept_id, dept_name, dept_code = src.dept
    if src.emergency or cat_code == EMERGENCY_CATEGORY:
        category = (EMERGENCY_CATEGORY, emergency[0], (emergency[1],))
        kind = "emergency"
    else:
        category = (cat_code, cat_name, (cat_sort,))
        kind = catalogue.workload_kind(item_code, cat_code)
    values: list[tuple[str, str, str, tuple[Any, ...]]] = [
        ("category", *category),
        ("kind", kind, catalogue.WORKLOAD_KIND_NAMES.get(kind, kind), (catalogue.WORKLOAD_KIND_ORDER.get(kind, 99),)),
        ("dept", str(dept_id) if dept_id else STAT_NONE_KEY, dept_name or STAT_NO_DEPT, (dept_code or "~",)),
        ("title", src.title or STAT_NONE_KEY, src.title or STAT_NO_TITLE, (not src.title, src.title or "")),
        ("item", str(item_id), f"{item_name}（{item_code}）", (cat_sort, item_sort, item_id)),
    ]
    if cat_code == "surgery" and src.grade:
        grade = int(src.grade)
        values.append(("surgery_grade", str(grade), SURGERY_GRADE_LABELS.get(grade, f"{grade}级手术"), (grade,)))
    return values


def privilege_statistics(*, viewer: User, year: int, month: int) -> PrivilegeStatistics:
    """Grants made and applications submitted in a month (Asia/Shanghai), by category, §三.8 workload kind
    (catalogue.WORKLOAD_KINDS), department, title, surgery grade and item, with the previous month (环比) and the
    same month a year earlier (同比); within the viewer's privileges.view scope. Emergency grants count under
    紧急授权 (category and kind) whatever their item. Raises ValidationFailed."""
    from app.privileges.models import EmergencyGrant

    _check_month(year, month)
    scope = data_scope(viewer, "privileges.view")
    months = ((year, month), _shift_month(year, month, -1), (year - 1, month))
    emergency = _emergency_category()
    dims = [d for d, _ in STAT_DIMENSIONS]
    counters: dict[str, dict[str, list[list[int]]]] = {d: {} for d in dims}
    labels: dict[str, dict[str, str]] = {d: {} for d in dims}
    order: dict[str, dict[str, tuple[Any, ...]]] = {d: {} for d in dims}
    totals = [[0, 0, 0], [0, 0, 0]]

    def bump(dim: str, key: str, label: str, sort: tuple[Any, ...], kind: int, slot: int) -> None:
        counters[dim].setdefault(key, [[0, 0, 0], [0, 0, 0]])[kind][slot] += 1
        labels[dim].setdefault(key, label)
        order[dim].setdefault(key, sort)

    columns = (PrivilegeCategory.code, PrivilegeCategory.name, PrivilegeCategory.sort_order, PrivilegeItem.id,
               PrivilegeItem.code, PrivilegeItem.name, PrivilegeItem.sort_order, PrivilegeItem.grade_level,
               Department.id, Department.name, Department.code, User.title)

    def source(row: Any, emergency_grant: bool) -> _StatSource:
        return _StatSource(category=(row[0], row[1], row[2]), item=(row[3], row[4], row[5], row[6]), grade=row[7],
                           dept=(row[8], row[9], row[10]), title=row[11], emergency=emergency_grant)

    for slot, (y, m) in enumerate(months):
        start, end = _month_bounds(y, m)
        grant_stmt = (select(*columns, EmergencyGrant.id)
                      .select_from(Grant).join(User, Grant.user_id == User.id)
                      .join(PrivilegeItem, Grant.item_id == PrivilegeItem.id)
                      .join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id)
                      .outerjoin(Department, User.dept_id == Department.id)
                      .outerjoin(EmergencyGrant, EmergencyGrant.grant_id == Grant.id)
                      .where(Grant.granted_at >= start, Grant.granted_at < end))
        grant_stmt = scope.filter(grant_stmt, user_col=Grant.user_id, dept_col=User.dept_id)
        for grant_row in db.session.execute(grant_stmt):
            totals[0][slot] += 1
            for dim, key, label, sort in _stat_values(source(grant_row, grant_row[-1] is not None), emergency):
                bump(dim, key, label, sort, 0, slot)
        # an application counts once per dimension value it touches (an application of 3 surgery items of two
        # grades counts once under 手术 and once under each grade)
        app_stmt = (select(*columns, PrivilegeApplication.id)
                    .select_from(PrivilegeApplication)
                    .join(User, PrivilegeApplication.applicant_id == User.id)
                    .join(PrivilegeApplicationItem, PrivilegeApplicationItem.application_id == PrivilegeApplication.id)
                    .join(PrivilegeItem, PrivilegeApplicationItem.item_id == PrivilegeItem.id)
                    .join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id)
                    .outerjoin(Department, PrivilegeApplication.dept_id == Department.id)
                    .where(PrivilegeApplication.submitted_at >= start, PrivilegeApplication.submitted_at < end))
        app_stmt = scope.filter(app_stmt, user_col=PrivilegeApplication.applicant_id,
                                dept_col=PrivilegeApplication.dept_id)
        seen: set[tuple[int, str, str]] = set()
        apps: set[int] = set()
        for app_row in db.session.execute(app_stmt):
            app_id = int(app_row[-1])
            apps.add(app_id)
            for dim, key, label, sort in _stat_values(source(app_row, False), emergency):
                if (app_id, dim, key) not in seen:
                    seen.add((app_id, dim, key))
                    bump(dim, key, label, sort, 1, slot)
        totals[1][slot] += len(apps)

    def trio(values: list[int]) -> tuple[int, int, int]:
        return values[0], values[1], values[2]

    tables: dict[str, list[StatRow]] = {}
    for dim in dims:
        keys = sorted(counters[dim], key=order[dim].__getitem__)
        tables[dim] = [StatRow(labels[dim][k], trio(counters[dim][k][0]), trio(counters[dim][k][1]), key=k)
                       for k in keys]
    total = StatRow("合计", trio(totals[0]), trio(totals[1]), key="")
    return PrivilegeStatistics(year=year, month=month, months=months, tables=tables, totals=total)


@dataclass
class StatDrill:
    """The grants behind one statistics row in one month."""

    year: int
    month: int
    dimension: str  # a STAT_DIMENSIONS code, or "all"
    dimension_title: str
    key: str
    label: str
    query: Select

    @property
    def month_label(self) -> str:
        return f"{self.year}-{self.month:02d}"


def statistics_drill(*, viewer: User, year: int, month: int, dimension: str, key: str) -> StatDrill:
    """The grants counted in one cell of privilege_statistics: made in the month (Asia/Shanghai) with the
    dimension's value `key` (StatRow.key; dimension "all" for the month's total), within the viewer's
    privileges.view scope, newest first. Raises ValidationFailed for an unknown dimension or value."""
    from app.privileges import catalogue
    from app.privileges.models import EmergencyGrant

    _check_month(year, month)
    scope = data_scope(viewer, "privileges.view")
    titles = dict(STAT_DIMENSIONS) | {"all": "全部"}
    if dimension not in titles:
        raise ValidationFailed({"dimension": f"统计维度无效：{dimension}"})
    key = (key or "").strip()
    start, end = _month_bounds(year, month)
    stmt = (select(Grant).join(User, Grant.user_id == User.id)
            .join(PrivilegeItem, Grant.item_id == PrivilegeItem.id)
            .join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id)
            .outerjoin(EmergencyGrant, EmergencyGrant.grant_id == Grant.id)
            .where(Grant.granted_at >= start, Grant.granted_at < end)
            .order_by(Grant.granted_at.desc(), Grant.id.desc()))
    stmt = scope.filter(stmt, user_col=Grant.user_id, dept_col=User.dept_id)
    is_emergency = or_(EmergencyGrant.id.is_not(None), PrivilegeCategory.code == EMERGENCY_CATEGORY)
    bad = ValidationFailed({"key": f"统计项目无效：{key or '（空）'}"})
    label = "合计"
    if dimension == "category":
        name = db.session.scalar(select(PrivilegeCategory.name).where(PrivilegeCategory.code == key))
        if name is None:
            raise bad
        label = name
        stmt = stmt.where(is_emergency if key == EMERGENCY_CATEGORY
                          else and_(PrivilegeCategory.code == key, EmergencyGrant.id.is_(None)))
    elif dimension == "kind":
        if key not in catalogue.WORKLOAD_KIND_NAMES:
            raise bad
        label = catalogue.WORKLOAD_KIND_NAMES[key]
        if key == "emergency":
            stmt = stmt.where(is_emergency)
        else:
            ids = [int(row[0]) for row in db.session.execute(
                select(PrivilegeItem.id, PrivilegeItem.code, PrivilegeCategory.code)
                .join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id))
                if catalogue.workload_kind(str(row[1]), str(row[2])) == key]
            stmt = stmt.where(Grant.item_id.in_(ids), ~is_emergency)
    elif dimension == "item":
        found = db.session.get(PrivilegeItem, int(key)) if key.isdigit() else None
        if found is None:
            raise bad
        label = f"{found.name}（{found.code}）"
        stmt = stmt.where(Grant.item_id == found.id)
    elif dimension == "dept":
        if key == STAT_NONE_KEY:
            label = STAT_NO_DEPT
            stmt = stmt.where(User.dept_id.is_(None))
        else:
            dept = db.session.get(Department, int(key)) if key.isdigit() else None
            if dept is None:
                raise bad
            label = dept.name
            stmt = stmt.where(User.dept_id == dept.id)
    elif dimension == "title":
        if not key:
            raise bad
        label = STAT_NO_TITLE if key == STAT_NONE_KEY else key
        stmt = stmt.where(or_(User.title.is_(None), User.title == "") if key == STAT_NONE_KEY else User.title == key)
    elif dimension == "surgery_grade":
        if key not in {str(g) for g in SURGERY_GRADE_LABELS}:
            raise bad
        label = SURGERY_GRADE_LABELS[int(key)]
        stmt = stmt.where(PrivilegeCategory.code == "surgery", PrivilegeItem.grade_level == int(key))
    return StatDrill(year=year, month=month, dimension=dimension, dimension_title=titles[dimension], key=key,
                     label=label, query=stmt)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}%"


def statistics_workbook(stats: PrivilegeStatistics) -> bytes:
    """The statistics as .xlsx: one sheet per dimension, with 环比 and 同比."""
    from openpyxl import Workbook
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    first = True
    (y0, m0), (y1, m1), (y2, m2) = stats.months
    header = ["项目", f"授权数 {y0}-{m0:02d}", f"上月 {y1}-{m1:02d}", "环比", f"去年同月 {y2}-{m2:02d}", "同比",
              f"申请数 {y0}-{m0:02d}", f"上月 {y1}-{m1:02d}", "环比", f"去年同月 {y2}-{m2:02d}", "同比"]
    for dim, title in STAT_DIMENSIONS:
        ws = wb.active if first else wb.create_sheet()
        first = False
        ws.title = f"按{title}"
        ws.append([f"医疗权限授权统计（{stats.label}，按{title}）"])
        ws.append(header)
        for row in [*stats.tables[dim], stats.totals]:
            ws.append([row.label, row.grants[0], row.grants[1], _pct(row.grants_mom), row.grants[2],
                       _pct(row.grants_yoy), row.applications[0], row.applications[1], _pct(row.applications_mom),
                       row.applications[2], _pct(row.applications_yoy)])
        for idx, width in enumerate([30, 14, 14, 10, 16, 10, 14, 14, 10, 16, 10], start=1):
            ws.column_dimensions[get_column_letter(idx)].width = width
        ws.freeze_panes = "B3"
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


def sync_new_tech_item(*, number: str, name: str, active: bool, note: str, actor: User | str | None) -> PrivilegeItem:
    """Keep the 新技术新项目授权 catalogue item of an approved project in step with it (seed 000 §三.1/§三.9):
    created when the project is approved so its team can be authorised, retired when it turns routine or
    ends (routine practice is then authorised under its ordinary category). Audited; never deleted."""
    code = f"NT-{number}"
    item = db.session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == code))
    before = audit.snapshot(item) if item is not None else None
    if item is None:
        category = db.session.scalar(select(PrivilegeCategory).where(PrivilegeCategory.code == "new_tech"))
        if category is None:
            raise NotFound("权限目录中没有“新技术新项目授权”类别")
        item = PrivilegeItem(category_id=category.id, code=code, sort_order=900)
        db.session.add(item)
    item.name = f"{name}（新技术新项目）"[:200]
    item.requirements = "项目负责人及团队成员，经医院新技术新项目立项与伦理审查"
    item.source = f"新技术新项目 {number}"
    item.note = note[:500]
    item.is_active = active
    db.session.flush()
    audit.record(actor, "privilege.catalogue_item_synced", item, before=before, after=audit.snapshot(item))
    return item


# ---------------------------------------------------------------- 新技术新项目转常规 (seed 000 §二.1, §三.1, §三.9)
# A project that turns routine leaves the 新技术新项目授权 category: the office names the ordinary category (and
# grade) it is practised under from then on, the technology gets an item of that category, and whoever held the
# project's grant is re-granted that item before the project grant ends.

# not 新技术新项目 (what it leaves), 限制类医疗技术 (the national list, with its own filing flow) or 紧急授权
ROUTINE_CATEGORY_CODES = ("basic", "special", "invasive", "surgery", "anesthesia", "endoscopy")
GRADED_CATEGORY_CODES = ("surgery", "anesthesia", "endoscopy")  # 手术（介入）分级、麻醉分级、内镜操作分级: 一至四级
PROCEDURE_CATEGORY_CODES = ("surgery", "invasive")  # the check API also answers these by ICD-9-CM-3 code
ROUTINE_CODE_PREFIXES = {"basic": "BASIC", "special": "SP", "invasive": "INV", "surgery": "SUR", "anesthesia": "ANES",
                         "endoscopy": "ENDO"}
NEW_TECH_ROUTINE_REASON = "已转为常规技术"
PROCEDURE_CODE_MAX = 32

AUDIT_LABELS.update({
    "privilege.catalogue_item_synced": "同步权限目录项目",
    "privilege.new_tech_routine": "新技术新项目转常规重新授权",
})


@dataclass
class RoutineConversion:
    item: PrivilegeItem  # the ordinary item the technology is authorised under now
    reused: bool  # an existing catalogue item (same procedure code, or this project's own from before)
    granted: list[Grant]
    ended: list[Grant]


def _routine_category(code: str | None) -> PrivilegeCategory | None:
    if not code:
        return None
    return db.session.scalar(select(PrivilegeCategory).where(PrivilegeCategory.code == code))


def _procedure_item(category: PrivilegeCategory, procedure_code: str) -> PrivilegeItem | None:
    """The catalogue item of a category with this ICD-9-CM-3 code (active ones first), if any."""
    return db.session.scalar(select(PrivilegeItem).where(PrivilegeItem.category_id == category.id,
                                                         PrivilegeItem.procedure_code == procedure_code)
                             .order_by(PrivilegeItem.is_active.desc(), PrivilegeItem.id).limit(1))


def routine_target_errors(*, category_code: str | None, grade_level: int | None,
                          procedure_code: str | None) -> dict[str, str]:
    """Problems with the ordinary category chosen for a technology turning routine, keyed `category`,
    `grade_level`, `procedure_code` (callers map them to their own field paths). Empty when acceptable."""
    from app.privileges.catalogue import GRADE_NAMES

    errors: dict[str, str] = {}
    labels = "、".join(c.name for c in categories() if c.code in ROUTINE_CATEGORY_CODES)
    if not category_code:
        errors["category"] = "转为常规技术须选择常规授权类别"
        return errors
    category = _routine_category(category_code)
    if category is None or category_code not in ROUTINE_CATEGORY_CODES:
        errors["category"] = f"常规授权类别应为：{labels}"
        return errors
    if not category.is_active:
        errors["category"] = f"“{category.name}”已停用，请选择其他类别"
        return errors
    graded = category_code in GRADED_CATEGORY_CODES
    if graded and grade_level is None:
        errors["grade_level"] = f"“{category.name}”须选择级别（一级至四级）"
    elif graded and grade_level not in GRADE_NAMES:
        errors["grade_level"] = "级别应为一级至四级"
    if procedure_code:
        if category_code not in PROCEDURE_CATEGORY_CODES:
            errors["procedure_code"] = "只有手术、有创操作类别按手术操作编码授权，其他类别请留空"
        elif len(procedure_code) > PROCEDURE_CODE_MAX or not all(ch.isascii() and (ch.isalnum() or ch in ".-")
                                                                  for ch in procedure_code):
            errors["procedure_code"] = "手术操作编码格式不正确（ICD-9-CM-3，如 43.1101）"
        else:
            existing = _procedure_item(category, procedure_code)
            if existing is not None and not existing.is_active:
                errors["procedure_code"] = f"目录中编码 {procedure_code} 的“{existing.name}”已停用，请先在权限目录中启用"
            elif (existing is not None and graded and "grade_level" not in errors
                  and existing.grade_level != grade_level):
                errors["grade_level"] = (f"目录中编码 {procedure_code} 的“{existing.name}”为{existing.grade or '未分级'}，"
                                         "请选择一致的级别")
    return errors


def _routine_item(*, number: str, name: str, category: PrivilegeCategory, grade_level: int | None,
                  procedure_code: str | None, actor: User | str | None) -> tuple[PrivilegeItem, bool]:
    """The ordinary item for the technology: the catalogue's item of the same procedure code when there is one,
    else this project's own item of the category (created, or updated and re-activated). Audited."""
    from app.privileges.catalogue import GRADE_NAMES, SURGERY_REQUIREMENTS

    if procedure_code:
        existing = _procedure_item(category, procedure_code)
        if existing is not None and existing.is_active:
            return existing, True
    graded = category.code in GRADED_CATEGORY_CODES
    level = grade_level if graded else None
    code = f"{ROUTINE_CODE_PREFIXES[category.code]}-{number}"
    item = db.session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == code))
    reused = item is not None
    before = audit.snapshot(item) if item is not None else None
    if item is None:
        item = PrivilegeItem(code=code, sort_order=100000)
        db.session.add(item)
    item.category_id = category.id
    item.category = category
    item.name = name[:200]
    item.grade = GRADE_NAMES[level] if level else None
    item.grade_level = level
    item.procedure_code = procedure_code
    item.procedure_category = "手术" if procedure_code and category.code == "surgery" else (
        "治疗性操作" if procedure_code else None)
    if category.code == "surgery" and level:
        item.requirements = f"{SURGERY_REQUIREMENTS[level]}；经科室授权考核小组考核合格"
    else:
        item.requirements = "经科室授权考核小组考核合格（原新技术新项目团队成员按原授权转入）"
    item.source = f"新技术新项目 {number} 转常规"
    item.note = f"由新技术新项目 {number} 于 {today()} 转为常规技术"
    item.is_active = True
    db.session.flush()
    audit.record(actor, "privilege.catalogue_item_synced", item, before=before, after=audit.snapshot(item))
    return item, reused


def _move_new_tech_grants(*, number: str, old_item: PrivilegeItem, new_item: PrivilegeItem,
                          actor: User | str | None) -> tuple[list[Grant], list[Grant]]:
    """Grant `new_item` to every holder of an effective (or not yet started) grant of `old_item`, for the new
    category's default period, then end every active or suspended `old_item` grant (revoke_grant). A suspended
    holder is not re-granted; one already holding `new_item` keeps that grant. Returns (created, ended)."""
    on = today()
    old_grants = list(db.session.scalars(
        select(Grant).where(Grant.item_id == old_item.id,
                            Grant.status.in_([GrantStatus.ACTIVE.value, GrantStatus.SUSPENDED.value]))
        .order_by(Grant.id)))
    holding = set(db.session.scalars(select(Grant.user_id).where(
        Grant.item_id == new_item.id, Grant.status.in_([GrantStatus.ACTIVE.value, GrantStatus.SUSPENDED.value]),
        or_(Grant.valid_until.is_(None), Grant.valid_until >= on))))
    created: list[tuple[Grant, Grant]] = []
    for old in old_grants:
        holder = old.user
        if (old.status != GrantStatus.ACTIVE or (old.valid_until is not None and old.valid_until < on)
                or old.user_id in holding or holder.departed_at is not None or not holder.is_active):
            continue
        start = max(on, old.valid_from)
        grant = Grant(user_id=old.user_id, item_id=new_item.id, status=GrantStatus.ACTIVE, valid_from=start,
                      valid_until=validity_until(new_item.category, start),
                      granted_by_id=getattr(actor, "id", None), granted_at=utcnow())
        grant.item = new_item
        grant.user = holder
        db.session.add(grant)
        created.append((old, grant))
        holding.add(old.user_id)
    db.session.flush()
    why = f"新技术新项目 {number} 转为常规技术，按{new_item.category.name}重新授权"
    for old, grant in created:
        audit.record(actor, "privilege.grant_created", grant,
                     after={"user_id": grant.user_id, "item": new_item.code, "valid_from": grant.valid_from,
                            "valid_until": grant.valid_until, "replaces_grant": old.id, "new_tech": number})
        push_grant_change(grant=grant, reason=why)
    ended = [revoke_grant(grant=old, reason=NEW_TECH_ROUTINE_REASON, actor=actor) for old in old_grants]
    for _old, grant in created:
        until = grant.valid_until.isoformat() if grant.valid_until else "长期"
        notify.notify(user_ids=[grant.user_id], title=f"您已获得医疗权限授权：{new_item.name}",
                      body=f"{why}，{grant.valid_from} 起生效，有效期至 {until}。", link="/privileges/grants",
                      kind="result")
    return [g for _o, g in created], ended


def convert_new_tech_to_routine(*, number: str, name: str, category_code: str | None, grade_level: int | None,
                                procedure_code: str | None = None,
                                actor: User | str | None) -> RoutineConversion:
    """转常规 (seed 000 §二.1, §三.9): authorise a new technology under an ordinary category from now on — its item
    of that category (created or reused), the project's grant holders re-granted it, their 新技术新项目 grants ended
    with "已转为常规技术" and the project's item retired. Every change audited and pushed to HIS (the check index
    follows through its session events). Raises ValidationFailed keyed category / grade_level / procedure_code."""
    procedure_code = (procedure_code or "").strip() or None
    errors = routine_target_errors(category_code=category_code, grade_level=grade_level,
                                   procedure_code=procedure_code)
    if errors:
        raise ValidationFailed(errors)
    category = _routine_category(category_code)
    assert category is not None
    item, reused = _routine_item(number=number, name=name, category=category, grade_level=grade_level,
                                 procedure_code=procedure_code, actor=actor)
    old_item = sync_new_tech_item(number=number, name=name, active=False, actor=actor,
                                  note=f"已转为常规技术，按{category.name}重新授权（{item.code}）")
    granted, ended = _move_new_tech_grants(number=number, old_item=old_item, new_item=item, actor=actor)
    audit.record(actor, "privilege.new_tech_routine", old_item,
                 after={"new_tech": number, "routine_item": item.code, "category": category.code,
                        "grade": item.grade, "reused": reused, "granted": [g.id for g in granted],
                        "ended": [g.id for g in ended]})
    db.session.flush()
    return RoutineConversion(item=item, reused=reused, granted=granted, ended=ended)
