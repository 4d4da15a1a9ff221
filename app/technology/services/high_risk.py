"""高风险诊疗技术 (seed 000 §二.3): an editable catalogue with departments, the staff authorised for each item,
and one evaluation a year per item through `tech_high_risk_eval`.

Invariants:
- only an active, not departed person is authorised, once per item while the authorisation is in force;
- an item linked to a clinical-privilege item (privilege_item_id) is authorised through it, so HIS sees it
  (seed 000 §三.6): the person must fit that item's eligibility rules (app.privileges.eligibility: title,
  certificates, 定期考核, department catalogue) unless 医务处 overrides with a reason (audited), and the
  authorisation holds an active grant of the item (created or reused; app.privileges.technology_link); revoking the
  authorisation stops that grant unless another authorisation in force stands on it (an authorisation of a retired
  item stands on nothing); retiring the item stops, on the same terms, the grants of its authorisations, and linking
  it to another privilege item moves them (stopped on the old item, created or reused on the new one);
- who may perform an item (is_authorised) is an authorisation in force — whose grant, when it has one, is in force
  too — or an effective grant of the linked item (linked_grants);
- a yearly evaluation that suspends an item suspends the linked grants (kept on the evaluation); a later evaluation
  that lets the item continue resumes those nobody changed since;
- every change is audited; services flush, the caller commits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.exc import IntegrityError

from app.audit import services as audit
from app.auth.models import Department, User
from app.auth.services import data_scope
from app.core.timefmt import SHANGHAI
from app.db import db, utcnow
from app.errors import DomainError, Forbidden, InvalidTransition, NotFound, ValidationFailed
from app.notify import services as notify
from app.privileges import technology_link
from app.technology.models.high_risk import (
    EVALUATION_STATUS_LABELS,
    HIGH_RISK_CATEGORY_LABELS,
    ITEM_STATUS_LABELS,
    HighRiskAuthorization,
    HighRiskEvaluation,
    HighRiskItem,
)
from app.technology.services.common import Errors, today, workbook

log = logging.getLogger(__name__)
PROCESS_KEY = "tech_high_risk_eval"
EDITABLE = ("code", "name", "category", "dept_id", "procedure_code", "requirements", "privilege_item_id", "note")


def _clean_item(data: dict[str, Any], *, item: HighRiskItem | None) -> dict[str, Any]:
    errors = Errors()
    code = errors.text(data, "code", "目录编码", max_len=32)
    if code:
        clash = db.session.scalar(select(HighRiskItem.id).where(HighRiskItem.code == code))
        if clash and (item is None or clash != item.id):
            errors["code"] = "目录编码已存在"
    clean: dict[str, Any] = {
        "code": code,
        "name": errors.text(data, "name", "技术名称", max_len=200),
        "category": errors.choice(data, "category", "类别", HIGH_RISK_CATEGORY_LABELS),
        "procedure_code": errors.text(data, "procedure_code", "手术操作编码", required=False, max_len=32),
        "requirements": errors.text(data, "requirements", "准入条件", required=False, max_len=4000),
        "note": errors.text(data, "note", "备注", required=False, max_len=500),
    }
    dept_id = errors.integer(data, "dept_id", "开展科室", minimum=1)
    if dept_id is not None:
        dept = db.session.get(Department, dept_id)
        if dept is None or not dept.is_active:
            errors["dept_id"] = "科室不存在或已停用"
    clean["dept_id"] = dept_id
    pid = errors.integer(data, "privilege_item_id", "对应医疗权限项目", required=False, minimum=1)
    if pid is not None:
        from app.privileges.models import PrivilegeItem

        if db.session.get(PrivilegeItem, pid) is None:
            errors["privilege_item_id"] = "医疗权限目录中没有该项目"
    clean["privilege_item_id"] = pid
    if errors:
        raise ValidationFailed(dict(errors))
    return clean


def create_item(*, data: dict[str, Any], actor: User) -> HighRiskItem:
    """Add a catalogue item (audited). Raises ValidationFailed."""
    clean = _clean_item(data, item=None)
    item = HighRiskItem(status="active", **clean)
    db.session.add(item)
    db.session.flush()
    audit.record(actor, "technology.high_risk_created", item, after=audit.snapshot(item))
    return item


def update_item(*, item: HighRiskItem, data: dict[str, Any], actor: User) -> HighRiskItem:
    """Edit a catalogue item (audited with before/after). Linking it to another privilege item (or none) moves the
    grants of its authorisations: those on the old item are stopped unless another authorisation in force stands on
    them, and each authorisation still in force gets one of the new item (created or reused; the existing
    authorisation is not re-checked against the new item's rules) — audited as technology.high_risk_relinked.
    Raises ValidationFailed (privilege_item_id too when the authorisations cannot move: the new item is switched
    off, the technology is suspended, or a person's grant of it is suspended); nothing is written then."""
    clean = _clean_item(data, item=item)
    old_id, new_id = item.privilege_item_id, clean["privilege_item_id"]
    moving = _authorisations_to_move(item) if new_id != old_id else []
    if moving and new_id is not None:
        _check_relink(item=item, target_id=new_id, auths=moving)
    before = audit.snapshot(item)
    for key in EDITABLE:
        setattr(item, key, clean[key])
    db.session.flush()
    audit.record(actor, "technology.high_risk_updated", item, before=before, after=audit.snapshot(item))
    if new_id != old_id:
        _relink_grants(item=item, old_id=old_id, auths=moving, actor=actor)
    return item


def retire_item(*, item: HighRiskItem, actor: User, reason: str) -> HighRiskItem:
    """Take an item out of use (never deleted: evaluations and authorisations stay on record). The privilege grants
    its authorisations hold are stopped (audited, pushed to HIS) unless another authorisation in force stands on
    them; grants the people hold otherwise are left alone."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed({"reason": "请填写停用原因"})
    before = item.status
    item.status = "retired"
    item.note = (f"{item.note}；" if item.note else "") + f"停用：{reason}"[:200]
    ended = _end_authorisation_grants(item=item, auths=_active_authorisations(item), actor=actor,
                                      reason=f"高风险诊疗技术「{item.name}」已停用：{reason}")
    audit.record(actor, "technology.high_risk_retired", item, before={"status": before},
                 after={"status": "retired", "reason": reason} | ended)
    db.session.flush()
    return item


def _active_authorisations(item: HighRiskItem) -> list[HighRiskAuthorization]:
    return list(db.session.scalars(select(HighRiskAuthorization).where(
        HighRiskAuthorization.item_id == item.id, HighRiskAuthorization.status == "active")
        .order_by(HighRiskAuthorization.id)))


def _other_authorisation_on(grant_id: int, *, besides: list[int]) -> int | None:
    """Another active authorisation (not in `besides`) of an item not retired that stands on the grant, if any."""
    return db.session.scalar(
        select(HighRiskAuthorization.id).join(HighRiskItem, HighRiskItem.id == HighRiskAuthorization.item_id)
        .where(HighRiskAuthorization.grant_id == grant_id, HighRiskAuthorization.id.not_in(besides),
               HighRiskAuthorization.status == "active", HighRiskItem.status != "retired")
        .order_by(HighRiskAuthorization.id).limit(1))


def _end_authorisation_grants(*, item: HighRiskItem, auths: list[HighRiskAuthorization], actor: Any,
                              reason: str) -> dict[str, Any]:
    """Stop the grants the given authorisations of the item hold unless an authorisation outside them stands on
    the grant too (end_grant: audited, pushed to HIS, holder notified). Returns what to audit:
    grants_stopped [ids], grants_kept {grant id: the authorisation keeping it}."""
    besides = [a.id for a in auths]
    stopped: list[int] = []
    kept: dict[str, int] = {}
    for grant_id in dict.fromkeys(a.grant_id for a in auths if a.grant_id is not None):
        assert grant_id is not None
        shared = _other_authorisation_on(grant_id, besides=besides)
        if shared is not None:
            kept[str(grant_id)] = shared
            continue
        ended = technology_link.end_grant(grant_id=grant_id, actor=actor, reason=reason)
        if ended is not None:
            stopped.append(ended.id)
    return {"grants_stopped": stopped, "grants_kept": kept}


def _authorisations_to_move(item: HighRiskItem) -> list[HighRiskAuthorization]:
    """The authorisations whose grants follow the item's link: the active ones, unless the item is retired (its
    grants were stopped then)."""
    return [] if item.status == "retired" else _active_authorisations(item)


def _wants_grant(auth: HighRiskAuthorization, on: date) -> bool:
    """Whether an authorisation moving to another privilege item gets a grant of it: not expired, held by an
    active, not departed person."""
    person = auth.user
    return ((auth.valid_until is None or auth.valid_until >= on) and person.is_active
            and person.departed_at is None)


def _check_relink(*, item: HighRiskItem, target_id: int, auths: list[HighRiskAuthorization]) -> None:
    """Refuse a new link the authorisations cannot follow (ValidationFailed under privilege_item_id)."""
    from app.privileges.models import PrivilegeItem

    target = db.session.get(PrivilegeItem, target_id)
    on = today()
    takers = [a for a in auths if _wants_grant(a, on)]
    if target is None or not takers:
        return
    problems: list[str] = []
    if item.status == "suspended":
        problems.append("该技术已暂停开展，暂停期间不能更改有授权人员的对应医疗权限项目")
    if not target.is_active or not target.category.is_active:
        problems.append(f"医疗权限项目“{target.name}”已停用，现有授权无法转入（请先在权限目录中启用）")
    held = [a.user.name for a in takers
            if technology_link.suspended_grant(holder_id=a.user_id, item_id=target.id) is not None]
    if held:
        problems.append(f"{'、'.join(held)}的医疗权限“{target.name}”已暂停，请先在医疗权限管理中恢复或停止后再更改")
    if problems:
        raise ValidationFailed({"privilege_item_id": "；".join(problems)})


def _relink_grants(*, item: HighRiskItem, old_id: int | None, auths: list[HighRiskAuthorization],
                   actor: Any) -> None:
    """The item now links to item.privilege_item_id instead of old_id: stop the old grants of its authorisations
    (unless another authorisation stands on them) and give each authorisation still in force a grant of the new item
    (grant_for_authorisation: created or reused, audited, pushed to HIS). Audited as technology.high_risk_relinked."""
    from app.privileges.models import PrivilegeItem

    old = db.session.get(PrivilegeItem, old_id) if old_id else None
    new = privilege_item(item)
    label = f"{new.code} {new.name}" if new is not None else "无"
    ended = _end_authorisation_grants(item=item, auths=auths, actor=actor,
                                      reason=f"高风险诊疗技术「{item.name}」对应的医疗权限项目已改为：{label}")
    for auth in auths:
        auth.grant_id = None
    moved: dict[str, dict[str, Any]] = {}
    on = today()
    if new is not None:
        for auth in auths:
            if not _wants_grant(auth, on):
                continue
            grant, reused = technology_link.grant_for_authorisation(
                holder=auth.user, item=new, valid_from=max(auth.valid_from, on), valid_until=auth.valid_until,
                actor=actor, why=f"高风险诊疗技术「{item.name}」授权（对应医疗权限项目变更）")
            auth.grant_id = grant.id
            if auth.valid_until is None and not reused:
                auth.valid_until = grant.valid_until  # one validity for both, as when authorised
            moved[str(auth.id)] = {"user_id": auth.user_id, "grant_id": grant.id, "grant_reused": reused,
                                   "valid_until": auth.valid_until}
    db.session.flush()
    if auths:
        audit.record(actor, "technology.high_risk_relinked", item,
                     before={"privilege_item": old.code if old is not None else None},
                     after={"privilege_item": new.code if new is not None else None, "authorisations": moved}
                     | ended)


def _person(uid: int | None, errors: Errors) -> User | None:
    """The person to authorise: known, active and not departed (a per-reason message under user_id otherwise)."""
    person = db.session.get(User, uid) if uid else None
    if uid and person is None:
        errors["user_id"] = "人员不存在"
    elif person is not None and person.departed_at is not None:
        errors["user_id"] = f"{person.name}已离职，不能授权"
    elif person is not None and not person.is_active:
        errors["user_id"] = f"{person.name}的账号已停用，不能授权"
    else:
        return person
    return None


def privilege_item(item: HighRiskItem) -> Any:
    """The clinical-privilege item the technology is authorised through (None when not linked)."""
    if not item.privilege_item_id:
        return None
    from app.privileges.models import PrivilegeItem

    return db.session.get(PrivilegeItem, item.privilege_item_id)


def authorize(*, item: HighRiskItem, data: dict[str, Any], actor: User) -> HighRiskAuthorization:
    """Authorise a staff member for an item (audited). For an item linked to a privilege item the person must fit its
    eligibility rules — or `override_reason` from 医务处 (privileges.manage over the person) lets them through,
    audited with every problem — and the authorisation holds an active grant of it (created or reused: audited,
    pushed to HIS, person notified). Raises ValidationFailed (per field: user_id, valid_from, valid_until, item,
    eligibility/<kind>, override_reason); nothing is written then."""
    errors = Errors()
    uid = errors.integer(data, "user_id", "被授权人员", minimum=1)
    user = _person(uid, errors)
    valid_from = errors.day(data, "valid_from", "生效日期", required=False) or today()
    valid_until = errors.day(data, "valid_until", "有效期至", required=False)
    if valid_until and valid_until < valid_from:
        errors["valid_until"] = "有效期至不能早于生效日期"
    role = errors.text(data, "role_in_team", "授权角色", required=False, max_len=32)
    override = errors.text(data, "override_reason", "特批理由", required=False, max_len=technology_link.REASON_MAX)
    if item.status in ("retired", "suspended"):
        errors["item"] = f"该技术{item.status_label}，不能新增授权"
    linked = privilege_item(item)
    if linked is not None and (not linked.is_active or not linked.category.is_active):
        errors["item"] = f"对应的医疗权限项目“{linked.name}”已停用，不能授权（请先在权限目录中启用）"
    problems: dict[str, str] = {}
    if user is not None:
        dup = db.session.scalar(select(HighRiskAuthorization.id).where(
            HighRiskAuthorization.item_id == item.id, HighRiskAuthorization.user_id == user.id,
            HighRiskAuthorization.status == "active"))
        if dup:
            errors["user_id"] = f"{user.name}已有该技术的有效授权"
        elif linked is not None and "item" not in errors:
            held = technology_link.suspended_grant(holder_id=user.id, item_id=linked.id)
            if held is not None:
                errors["user_id"] = (f"{user.name}的医疗权限“{linked.name}”已暂停（{held.revoked_reason or '未注明原因'}），"
                                     "请先在医疗权限管理中恢复或停止后再授权")
            else:
                problems = technology_link.eligibility_errors(holder=user, item=linked, on=valid_from)
    if problems:
        if override is None:
            errors.update(problems)
        elif user is not None and not technology_link.may_override(actor, user):
            errors["override_reason"] = "只有医务处（医疗权限管理）可以特批资格不符的人员"
            errors.update(problems)
    elif override is not None:
        override = None  # nothing to override: the reason is not kept
    if errors:
        raise ValidationFailed(dict(errors))
    assert user is not None
    auth = HighRiskAuthorization(item_id=item.id, user_id=user.id, role_in_team=role, valid_from=valid_from,
                                 valid_until=valid_until, status="active", granted_by_id=actor.id,
                                 override_reason=override)
    auth.user = user
    db.session.add(auth)
    db.session.flush()
    after = audit.snapshot(auth)
    if linked is not None:
        grant, reused = technology_link.grant_for_authorisation(
            holder=user, item=linked, valid_from=valid_from, valid_until=valid_until, actor=actor,
            why=f"高风险诊疗技术「{item.name}」授权", override_reason=override, problems=list(problems.values()))
        auth.grant_id = grant.id
        if auth.valid_until is None and not reused:
            auth.valid_until = grant.valid_until  # one validity for both (seed 000 §三.2 效期)
        after |= {"grant_id": grant.id, "grant_reused": reused, "privilege_item": linked.code,
                  "valid_until": auth.valid_until}
    if override is not None:
        after |= {"override_reason": override, "eligibility_problems": problems}
        audit.record(actor, "technology.high_risk_eligibility_overridden", auth,
                     after={"reason": override, "user_id": user.id, "problems": problems})
    db.session.flush()
    audit.record(actor, "technology.high_risk_authorized", auth, after=after)
    return auth


def revoke_authorization(*, auth: HighRiskAuthorization, actor: User, reason: str) -> HighRiskAuthorization:
    """Cancel an authorisation (audited); the privilege grant it holds is stopped (audited, pushed to HIS) unless
    another authorisation in force stands on it. Raises ValidationFailed, InvalidTransition."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed({"reason": "请填写取消原因"})
    if auth.status != "active":
        raise InvalidTransition("该授权已取消")
    auth.status = "revoked"
    auth.revoked_at = utcnow()
    auth.revoked_by_id = actor.id
    auth.revoke_reason = reason[:500]
    after: dict[str, Any] = {"reason": reason}
    if auth.grant_id is not None:
        shared = _other_authorisation_on(auth.grant_id, besides=[auth.id])
        if shared is None:
            ended = technology_link.end_grant(grant_id=auth.grant_id, actor=actor,
                                              reason=f"高风险诊疗技术「{auth.item.name}」授权已取消：{reason}")
            after["grant_stopped"] = ended.id if ended is not None else None
        else:
            after["grant_kept_for"] = shared
    audit.record(actor, "technology.high_risk_revoked", auth, after=after)
    db.session.flush()
    return auth


def staff_candidates(item: HighRiskItem) -> list[User]:
    """Active staff of the item's department (who may be authorised for it)."""
    return list(db.session.scalars(select(User).where(User.dept_id == item.dept_id, User.is_active.is_(True),
                                                      User.departed_at.is_(None)).order_by(User.name)))


def authorisation_grants(item: HighRiskItem) -> dict[int, Any]:
    """Authorisation id -> the privilege grant it holds (for the item page)."""
    ids = {a.grant_id for a in item.authorizations if a.grant_id is not None}
    if not ids:
        return {}
    from app.privileges.models import Grant

    grants = {g.id: g for g in db.session.scalars(select(Grant).where(Grant.id.in_(ids)))}
    return {a.id: grants[a.grant_id] for a in item.authorizations if a.grant_id in grants}


def departments() -> list[Department]:
    return list(db.session.scalars(select(Department).where(Department.is_active.is_(True)).order_by(Department.code)))


def linked_grants(item: HighRiskItem, on: date | None = None) -> list[Any]:
    """Effective clinical-privilege grants of the linked privilege item (who may perform it through app.privileges),
    including those held for this item's own authorisations."""
    if not item.privilege_item_id:
        return []
    from app.privileges.models import Grant, GrantStatus

    on = on or today()
    return list(db.session.scalars(select(Grant).where(
        Grant.item_id == item.privilege_item_id, Grant.status == GrantStatus.ACTIVE.value, Grant.valid_from <= on,
        or_(Grant.valid_until.is_(None), Grant.valid_until >= on)).order_by(Grant.id)))


# ---------------------------------------------------------------- yearly evaluation


SYSTEM_ACTOR = "medloop-scheduler"  # how the scheduler signs audit rows (as the privilege expiry job does)
OPEN_EVALUATION_STATUSES = ("in_progress", "rectify")


def evaluation_initiator(item: HighRiskItem) -> User | None:
    """The 医务处 member a scheduled evaluation of an item is started in the name of: the first (by id) active
    holder of the `mao` role whose technology.manage scope covers the item's department — the people the
    evaluation's 发起 and 医务处评估 steps belong to in `tech_high_risk_eval`. None when nobody qualifies."""
    from app.auth.models import Role, UserRole
    from app.auth.services import has_permission

    users = db.session.scalars(
        select(User).join(UserRole, UserRole.user_id == User.id).join(Role, Role.id == UserRole.role_id)
        .where(Role.code == "mao", User.is_active.is_(True), User.departed_at.is_(None))
        .order_by(User.id)).unique()
    for user in users:
        if has_permission(user, "technology.manage") and data_scope(user, "technology.manage").allows(
                dept_id=item.dept_id, campus_id=item.dept.campus_id):
            return user
    return None


def start_evaluation(*, item: HighRiskItem, actor: User | str, year: int | None = None) -> HighRiskEvaluation:
    """Start this year's evaluation of an item (one per item and year); the department heads get the self-evaluation
    task (notified by the workflow). `actor` is the user pressing the button, or SYSTEM_ACTOR for the yearly job:
    the flow is then started in the name of evaluation_initiator(item) and the audit row names both.
    Raises InvalidTransition (also when a system start finds no office member for the department)."""
    year = year or today().year
    if item.status == "retired":
        raise InvalidTransition("已停用的技术无需评估")
    initiator = evaluation_initiator(item) if isinstance(actor, str) else actor
    if initiator is None:
        raise InvalidTransition(f"没有负责{item.dept.name}的医务处人员，无法自动发起{item.name}的年度评估")
    existing = db.session.scalar(select(HighRiskEvaluation).where(HighRiskEvaluation.item_id == item.id,
                                                                  HighRiskEvaluation.year == year))
    if existing is not None and existing.status != "withdrawn":
        raise InvalidTransition(f"{item.name} {year} 年度评估已发起（{existing.status_label}）")
    evaluation = existing or HighRiskEvaluation(item_id=item.id, year=year)
    evaluation.status = "in_progress"
    evaluation.started_by_id = initiator.id
    evaluation.item = item
    db.session.add(evaluation)
    db.session.flush()
    from app.workflow import services as wf

    instance = wf.start(key=PROCESS_KEY, business_key=evaluation.number, title=f"高风险技术年度评估：{item.name}（{year}）",
                        actor=initiator, dept_id=item.dept_id, campus_id=item.dept.campus_id,
                        data={"evaluation_id": evaluation.id, "item_code": item.code, "item_name": item.name,
                              "dept_name": item.dept.name, "year": year})
    evaluation.instance_id = instance.id
    db.session.flush()
    after: dict[str, Any] = {"item": item.code, "year": year, "instance_id": instance.id}
    if isinstance(actor, str):
        after |= {"started_by": "定期任务", "initiator": initiator.name}
    audit.record(actor, "technology.high_risk_evaluation_started", evaluation, after=after)
    return evaluation


def _year_before(on: date) -> date:
    try:
        return on.replace(year=on.year - 1)
    except ValueError:  # 29 February
        return on.replace(year=on.year - 1, day=28)


def due_for_yearly_evaluation(*, on: date | None = None) -> Select:
    """Items in use (status active) whose last evaluation — or, never evaluated, their listing in the catalogue —
    is at least a year before `on`, with no evaluation open (any year) and none recorded for `on`'s year."""
    on = on or today()
    cutoff = _year_before(on)
    listed_before = datetime.combine(cutoff + timedelta(days=1), time.min, tzinfo=SHANGHAI)
    taken = select(HighRiskEvaluation.item_id).where(or_(HighRiskEvaluation.status.in_(OPEN_EVALUATION_STATUSES),
                                                         HighRiskEvaluation.year == on.year))
    return (select(HighRiskItem)
            .where(HighRiskItem.status == "active", HighRiskItem.id.not_in(taken),
                   or_(HighRiskItem.last_evaluated_on <= cutoff,
                       and_(HighRiskItem.last_evaluated_on.is_(None), HighRiskItem.created_at < listed_before)))
            .order_by(HighRiskItem.id))


def start_yearly_evaluations(*, on: date | None = None, actor: str = SYSTEM_ACTOR) -> dict[str, int]:
    """每年评估一次 without a button (seed 000 §二.3): start the evaluation of every item due_for_yearly_evaluation,
    each in its own savepoint, in the name of the office member responsible for its department; tell each such
    member in one notice what was started. Running it again starts nothing more (an open or this year's evaluation
    excludes an item; concurrent runs skip rows another run holds, and one per item and year is unique).
    Returns counts: started, no_initiator, failed."""
    on = on or today()
    stmt = due_for_yearly_evaluation(on=on)
    if db.session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(of=HighRiskItem, skip_locked=True)
    counts = {"started": 0, "no_initiator": 0, "failed": 0}
    started: dict[int, list[str]] = {}
    for item in list(db.session.scalars(stmt).unique()):
        if evaluation_initiator(item) is None:
            counts["no_initiator"] += 1
            log.warning("high-risk item %s is due for its yearly evaluation but no 医务处 member covers dept %s",
                        item.code, item.dept_id)
            continue
        try:
            with db.session.begin_nested():
                evaluation = start_evaluation(item=item, actor=actor, year=on.year)
        except (DomainError, IntegrityError):
            counts["failed"] += 1
            log.exception("could not start the yearly evaluation of high-risk item %s", item.code)
            continue
        counts["started"] += 1
        if evaluation.started_by_id is not None:
            started.setdefault(evaluation.started_by_id, []).append(f"{item.name}（{item.dept.name}）")
    for user_id, names in started.items():
        notify.notify(user_ids=[user_id], title=f"已自动发起 {len(names)} 项高风险诊疗技术{on.year}年度评估",
                      body="距上次评估已满一年：" + "、".join(names[:20]) + (f" 等 {len(names)} 项" if len(names) > 20 else "")
                      + "。已通知各科主任自评。", link="/technology/high-risk/", kind="info")
    db.session.flush()
    return counts


def start_due_evaluations(*, actor: User, year: int | None = None) -> int:
    """Start the year's evaluation for every item in use that has none yet (每年评估一次). Returns the count."""
    year = year or today().year
    done = select(HighRiskEvaluation.item_id).where(HighRiskEvaluation.year == year,
                                                    HighRiskEvaluation.status != "withdrawn")
    items = list(db.session.scalars(select(HighRiskItem).where(HighRiskItem.status != "retired",
                                                               HighRiskItem.id.not_in(done)).order_by(HighRiskItem.id)))
    for item in items:
        start_evaluation(item=item, actor=actor, year=year)
    return len(items)


def evaluation_for_instance(instance: Any) -> HighRiskEvaluation | None:
    evaluation = db.session.scalar(select(HighRiskEvaluation).where(HighRiskEvaluation.instance_id == instance.id))
    if evaluation is None:
        key = str(getattr(instance, "business_key", "") or "")
        if key.startswith("GF") and key[2:].isdigit():
            evaluation = db.session.get(HighRiskEvaluation, int(key[2:]))
    return evaluation


def on_task_complete(*, instance: Any, task: Any, data: dict[str, Any], actor: User) -> None:
    evaluation = evaluation_for_instance(instance)
    if evaluation is None:
        return
    spec = task.spec_name
    if spec == "self_evaluation":
        evaluation.self_evaluation = dict(data) | {"by": actor.name}
        audit.record(actor, "technology.high_risk_self_evaluated", evaluation, after=evaluation.self_evaluation)
    elif spec == "mao_evaluation":
        evaluation.mao_comment = data.get("comment")
        if data.get("decision") == "rectify":
            evaluation.status = "rectify"
            evaluation.item.status = "rectifying"
        audit.record(actor, "technology.high_risk_evaluated", evaluation,
                     after={"decision": data.get("decision"), "comment": data.get("comment")})
    elif spec == "rectification":
        evaluation.rectification = dict(data) | {"by": actor.name}
        audit.record(actor, "technology.high_risk_rectified", evaluation, after=evaluation.rectification)
    db.session.flush()


def finalize(*, instance: Any, data: dict[str, Any], actor: Any) -> HighRiskEvaluation | None:
    """End hook: continue keeps (or restores) the item in use; suspend stops it until re-evaluated."""
    evaluation = evaluation_for_instance(instance)
    if evaluation is None or evaluation.status in ("continue", "suspend", "withdrawn"):
        return evaluation
    final = str(data.get("final_decision") or "")
    item = evaluation.item
    before = {"status": item.status, "last_result": item.last_result}
    if final in ("continue", "suspend"):
        evaluation.status = final
        evaluation.decided_at = utcnow()
        item.status = "active" if final == "continue" else "suspended"
        item.last_result = final
        item.last_evaluated_on = today()
        audit.record(actor, "technology.high_risk_evaluation_closed", item, before=before,
                     after={"status": item.status, "last_result": final, "year": evaluation.year})
        if final == "suspend":
            # 动态管理: a suspended technology is suspended in HIS too, through the linked privilege grants
            evaluation.suspended_grants = technology_link.suspend_grants(
                grants=linked_grants(item), actor=actor,
                reason=f"高风险诊疗技术「{item.name}」{evaluation.year}年度评估决定暂停开展")
        elif before["status"] == "suspended":
            _resume_linked_grants(item=item, evaluation=evaluation, actor=actor)
    elif final in ("withdrawn", "terminated"):
        evaluation.status = "withdrawn"
        if item.status == "rectifying":
            item.status = "active"
        audit.record(actor, "technology.high_risk_evaluation_withdrawn", evaluation, after={"reason": data.get("reason")})
    db.session.flush()
    return evaluation


def _resume_linked_grants(*, item: HighRiskItem, evaluation: HighRiskEvaluation, actor: Any) -> list[int]:
    """A suspended item continues: resume the grants its suspending evaluations suspended that nobody changed
    since (still valid, holder still active). Returns the grant ids resumed."""
    earlier = db.session.scalars(select(HighRiskEvaluation).where(
        HighRiskEvaluation.item_id == item.id, HighRiskEvaluation.id != evaluation.id,
        HighRiskEvaluation.status == "suspend").order_by(HighRiskEvaluation.id))
    why = f"高风险诊疗技术「{item.name}」{evaluation.year}年度评估决定继续开展"
    resumed = [g.id for e in earlier if e.suspended_grants
               for g in technology_link.resume_suspended(record=e.suspended_grants, reason=why, actor=actor)]
    if resumed:
        audit.record(actor, "technology.high_risk_grants_resumed", item,
                     after={"year": evaluation.year, "grant_ids": resumed})
    return resumed


# ---------------------------------------------------------------- queries


@dataclass(frozen=True)
class ItemFilter:
    dept_id: int | None = None
    category: str | None = None
    status: str | None = None
    q: str | None = None
    due: bool = False


def items_query(*, viewer: User, filters: ItemFilter | None = None) -> Select:
    f = filters or ItemFilter()
    scope = data_scope(viewer, "technology.view")
    stmt = select(HighRiskItem).order_by(HighRiskItem.dept_id, HighRiskItem.code)
    if scope.level.value == "self":
        authorised = select(HighRiskAuthorization.item_id).where(HighRiskAuthorization.user_id == viewer.id)
        stmt = stmt.where(or_(HighRiskItem.dept_id == viewer.dept_id, HighRiskItem.id.in_(authorised)))
    else:
        stmt = scope.filter(stmt, dept_col=HighRiskItem.dept_id)
    if f.dept_id:
        stmt = stmt.where(HighRiskItem.dept_id == f.dept_id)
    if f.category:
        stmt = stmt.where(HighRiskItem.category == f.category)
    if f.status:
        stmt = stmt.where(HighRiskItem.status == f.status)
    if f.due:
        done = select(HighRiskEvaluation.item_id).where(HighRiskEvaluation.year == today().year)
        stmt = stmt.where(HighRiskItem.status != "retired", HighRiskItem.id.not_in(done))
    if f.q:
        like = f"%{f.q.strip()}%"
        stmt = stmt.where(or_(HighRiskItem.name.ilike(like), HighRiskItem.code.ilike(like),
                              HighRiskItem.procedure_code.ilike(like)))
    return stmt


def get_item(*, item_id: int, viewer: User) -> HighRiskItem:
    item = db.session.get(HighRiskItem, item_id)
    if item is None:
        raise NotFound("高风险诊疗技术不存在")
    scope = data_scope(viewer, "technology.view")
    if scope.level.value == "self":
        ok = item.dept_id == viewer.dept_id or any(a.user_id == viewer.id for a in item.authorizations)
    else:
        ok = scope.allows(dept_id=item.dept_id)
    if not ok:
        raise Forbidden("您无权查看该技术")
    return item


def evaluations(item: HighRiskItem) -> list[HighRiskEvaluation]:
    return list(db.session.scalars(select(HighRiskEvaluation).where(HighRiskEvaluation.item_id == item.id)
                                   .order_by(HighRiskEvaluation.year.desc())))


EXPORT_COLUMNS = ["目录编码", "技术名称", "类别", "科室", "手术操作编码", "状态", "有效授权人数", "最近评估日期", "最近评估结论",
                  "准入条件"]


def export_workbook(items: list[HighRiskItem]) -> bytes:
    on = today()

    def active(item: HighRiskItem) -> int:
        return sum(1 for a in item.authorizations if authorisation_in_force(a, on))

    rows = [[i.code, i.name, i.category_label, i.dept.name, i.procedure_code or "",
             ITEM_STATUS_LABELS.get(i.status, i.status), active(i),
             i.last_evaluated_on.isoformat() if i.last_evaluated_on else "",
             EVALUATION_STATUS_LABELS.get(i.last_result or "", ""), i.requirements or ""] for i in items]
    return workbook("高风险诊疗技术", EXPORT_COLUMNS, rows, [12, 30, 10, 10, 14, 8, 10, 12, 10, 40])


def authorisation_in_force(auth: HighRiskAuthorization, on: date | None = None) -> bool:
    """An active authorisation inside its dates whose privilege grant, when it holds one, is in force too (what HIS
    answers): a grant suspended or stopped in the privilege system suspends the authorisation with it."""
    on = on or today()
    if auth.status != "active" or auth.valid_from > on or (auth.valid_until is not None and auth.valid_until < on):
        return False
    if auth.grant_id is None:
        return True
    from app.privileges.models import Grant

    grant = db.session.get(Grant, auth.grant_id)
    return grant is not None and grant.is_effective(on)


def is_authorised(*, user_id: int, item: HighRiskItem, on: date | None = None) -> bool:
    """Whether a person may perform an item today: an own authorisation in force or an effective linked privilege
    grant."""
    on = on or today()
    if item.status != "active":
        return False
    person = db.session.get(User, user_id)
    if person is None or not person.is_active or person.departed_at is not None:
        return False  # a departed or disabled person performs nothing, whatever rows remain
    if any(a.user_id == user_id and authorisation_in_force(a, on) for a in item.authorizations):
        return True
    return any(g.user_id == user_id for g in linked_grants(item, on=on))
