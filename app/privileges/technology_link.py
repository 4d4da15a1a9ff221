"""Clinical privileges that follow technology management (seed 000 §二.2–3 with §三.1 and §三.6).

限制类技术 and 高风险诊疗技术 are managed in app.technology; what HIS lets a physician do is read from privilege grants
(the check API). This module is the bridge the technology services call.

Invariants:
- a nationally restricted technology is authorised under one 限制类医疗技术授权 item (RT-NN, NN = its number in the
  national list). Approving a department's application makes sure that item exists and is active, and puts it into
  the department's 科室技术目录 when the department keeps one (so its physicians can apply for it);
- stopping a department's restricted technology suspends the effective grants of that item held by the
  department's physicians (no one else's), with the reason; a later filing of the same technology for the department
  resumes those still suspended for that reason, inside their validity and held by an active member of it;
- a high-risk authorisation on an item linked to a privilege item is held as an active grant of that item: the person
  must fit the item's eligibility rules (app.privileges.eligibility) unless 医务处 overrides with a reason
  (privileges.manage over the holder), an effective grant the person already holds is reused, and ending the
  authorisation ends the grant;
- grants change only through app.privileges.services (audited, pushed to HIS through the outbox, holder notified) or,
  for a new grant, the way those services write one (audit + push_grant_change); the check index follows through its
  session events. Nothing here commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

from sqlalchemy import or_, select

from app.audit import services as audit
from app.auth.models import Department, User
from app.auth.services import data_scope, has_permission
from app.db import db, utcnow
from app.errors import NotFound
from app.notify import services as notify
from app.privileges import dept_catalogue, eligibility
from app.privileges import services as privileges
from app.privileges.models import Grant, GrantStatus, PrivilegeCategory, PrivilegeItem

RESTRICTED_CATEGORY = "restricted_tech"
ELIGIBILITY_PATH = "eligibility"
REASON_MAX = privileges.MANAGE_REASON_MAX


def clip(reason: str) -> str:
    """A grant reason as the privilege services keep it (trimmed, at most MANAGE_REASON_MAX characters)."""
    return reason.strip()[:REASON_MAX]


# ---------------------------------------------------------------- 限制类医疗技术授权 items


def restricted_item_code(seq: int) -> str:
    """The catalogue code of a restricted technology's item (RT-09 for number 9 of the national list)."""
    return f"RT-{seq:02d}"


def find_restricted_item(*, item_id: int | None, seq: int) -> PrivilegeItem | None:
    """The linked item, else the catalogue's RT-NN item; None when neither exists."""
    item = db.session.get(PrivilegeItem, item_id) if item_id else None
    if item is None:
        item = db.session.scalar(select(PrivilegeItem).where(PrivilegeItem.code == restricted_item_code(seq)))
    return item


def ensure_restricted_item(*, item_id: int | None, seq: int, name: str, spec_title: str | None, cause: str,
                           actor: Any) -> PrivilegeItem:
    """The restricted technology's 限制类医疗技术授权 item, active: the linked one, else RT-NN, else a new one.
    Creating or re-activating it is audited with `cause`. Raises NotFound when the category is missing."""
    item = find_restricted_item(item_id=item_id, seq=seq)
    if item is not None and item.is_active:
        return item
    before = audit.snapshot(item) if item is not None else None
    if item is None:
        category = db.session.scalar(select(PrivilegeCategory).where(PrivilegeCategory.code == RESTRICTED_CATEGORY))
        if category is None:
            raise NotFound("权限目录中没有“限制类医疗技术授权”类别")
        spec = (spec_title or "").strip("《》")
        item = PrivilegeItem(category_id=category.id, code=restricted_item_code(seq), name=name[:200], sort_order=800,
                             requirements=(f"符合《{spec}》的人员、设备与技术要求" if spec
                                           else "符合国家限制类技术临床应用管理规范的人员、设备与技术要求"),
                             source="国家限制类技术目录（2022年版）")
        item.category = category
        db.session.add(item)
    item.is_active = True
    db.session.flush()
    audit.record(actor, "privilege.catalogue_item_synced", item, before=before,
                 after=audit.snapshot(item) | {"cause": cause})
    return item


def add_to_dept_catalogue(*, dept: Department, item: PrivilegeItem, actor: Any) -> bool:
    """Put the item into the department's 科室技术目录 when the department keeps one without it (audited by
    dept_catalogue.add_items). Returns whether it was added."""
    ids = dept_catalogue.dept_item_ids(dept.id)
    if ids is None or item.id in ids or not dept_catalogue.restricts(item):
        return False
    dept_catalogue.add_items(viewer=actor if isinstance(actor, User | str) else None, dept=dept, item_ids=[item.id])
    return True


def dept_grants(*, item_id: int, dept_id: int) -> list[Grant]:
    """Grants of the item (any status) held by the department's current members, newest first (for display)."""
    return list(db.session.scalars(select(Grant).join(User, Grant.user_id == User.id)
                                   .where(Grant.item_id == item_id, User.dept_id == dept_id)
                                   .order_by(Grant.id.desc())))


def suspend_dept_grants(*, item_id: int, dept_id: int, reason: str, actor: Any) -> dict[str, Any]:
    """Suspend every active, not yet expired grant of the item held by a member of the department (suspend_grant:
    audited, pushed to HIS, holder notified). Returns the record to keep for a later resume_suspended:
    {"reason": the reason as stored on the grants, "grant_ids": [...]}."""
    text = clip(reason)
    on = privileges.today()
    rows = list(db.session.scalars(select(Grant).join(User, Grant.user_id == User.id).where(
        Grant.item_id == item_id, User.dept_id == dept_id, Grant.status == GrantStatus.ACTIVE.value,
        or_(Grant.valid_until.is_(None), Grant.valid_until >= on)).order_by(Grant.id)))
    done = [privileges.suspend_grant(grant=g, reason=text, actor=actor) for g in rows]
    return {"reason": text, "grant_ids": [g.id for g in done]}


def suspend_grants(*, grants: Iterable[Grant], reason: str, actor: Any) -> dict[str, Any]:
    """Suspend the given active grants (suspend_grant each). Returns the record for resume_suspended."""
    text = clip(reason)
    done = [privileges.suspend_grant(grant=g, reason=text, actor=actor) for g in grants]
    return {"reason": text, "grant_ids": [g.id for g in done]}


def resume_suspended(*, record: dict[str, Any] | None, reason: str, actor: Any,
                     dept_id: int | None = None) -> list[Grant]:
    """Resume the grants of a suspend_* record that are still suspended for that record's reason (nobody changed
    them since), inside their validity and held by an active, not departed person — of `dept_id` when given
    (resume_grant: audited, pushed to HIS, holder notified). The rest stay as they are. Returns those resumed."""
    if not record or not record.get("grant_ids"):
        return []
    on = privileges.today()
    resumed: list[Grant] = []
    for grant_id in sorted({int(i) for i in record["grant_ids"]}):
        grant = db.session.get(Grant, grant_id)
        if (grant is None or grant.status != GrantStatus.SUSPENDED or grant.revoked_reason != record.get("reason")
                or (grant.valid_until is not None and grant.valid_until < on)):
            continue
        holder = grant.user
        if not holder.is_active or holder.departed_at is not None or (dept_id is not None
                                                                        and holder.dept_id != dept_id):
            continue
        resumed.append(privileges.resume_grant(grant=grant, reason=clip(reason), actor=actor, on=on))
    return resumed


# ---------------------------------------------------------------- 高风险诊疗技术 authorisations


def eligibility_errors(*, holder: User, item: PrivilegeItem, on: date) -> dict[str, str]:
    """Why a person does not fit an item's rules (title, certificates, 定期考核, the department catalogue), one Chinese
    message per kind under `eligibility/<kind>`; empty when they fit. The new-tech team rule is for applications:
    naming people is how the office authorises a team (as in batch grants)."""
    verdict = eligibility.check_items(holder, [item], on=on)[item.id]
    found: dict[str, list[str]] = {}
    for check in verdict.checks:
        if not check.met and check.kind != "team":
            found.setdefault(f"{ELIGIBILITY_PATH}/{check.kind}", []).append(check.message)
    return {path: "；".join(messages) for path, messages in found.items()}


def may_override(actor: Any, holder: User) -> bool:
    """Whether the actor may let an unfit person through: privileges.manage with the holder inside its scope."""
    return isinstance(actor, User) and has_permission(actor, "privileges.manage") and data_scope(
        actor, "privileges.manage").allows(user_id=holder.id, dept_id=holder.dept_id, campus_id=holder.campus_id)


def held_grant(*, holder_id: int, item_id: int, on: date) -> Grant | None:
    """The person's active grant of the item not yet expired on `on` (the latest), if any."""
    return db.session.scalar(select(Grant).where(
        Grant.user_id == holder_id, Grant.item_id == item_id, Grant.status == GrantStatus.ACTIVE.value,
        or_(Grant.valid_until.is_(None), Grant.valid_until >= on)).order_by(Grant.id.desc()).limit(1))


def suspended_grant(*, holder_id: int, item_id: int) -> Grant | None:
    return db.session.scalar(select(Grant).where(
        Grant.user_id == holder_id, Grant.item_id == item_id, Grant.status == GrantStatus.SUSPENDED.value)
        .order_by(Grant.id.desc()).limit(1))


def grant_for_authorisation(*, holder: User, item: PrivilegeItem, valid_from: date, valid_until: date | None,
                            why: str, actor: Any, override_reason: str | None = None,
                            problems: Iterable[str] = ()) -> tuple[Grant, bool]:
    """An active grant of `item` standing for an authorisation: the one the holder already has in force (reused),
    else a new grant from valid_from to valid_until (the category's period when None) — audited, pushed to HIS,
    holder notified. An override of unfit rules is audited on the grant with the problems it let through.
    Returns (grant, reused)."""
    grant = held_grant(holder_id=holder.id, item_id=item.id, on=valid_from)
    reused = grant is not None
    if grant is None:
        until = valid_until if valid_until is not None else privileges.validity_until(item.category, valid_from)
        grant = Grant(user_id=holder.id, item_id=item.id, status=GrantStatus.ACTIVE, valid_from=valid_from,
                      valid_until=until, granted_by_id=getattr(actor, "id", None), granted_at=utcnow())
        grant.item, grant.user = item, holder
        db.session.add(grant)
        db.session.flush()
        audit.record(actor, "privilege.grant_created", grant,
                     after={"user_id": holder.id, "item": item.code, "valid_from": grant.valid_from,
                            "valid_until": grant.valid_until, "cause": why})
        privileges.push_grant_change(grant=grant, reason=clip(why))
        shown = grant.valid_until.isoformat() if grant.valid_until else "长期"
        notify.notify(user_ids=[holder.id], title=f"您已获得医疗权限授权：{item.name}",
                      body=f"{why}，{grant.valid_from} 起生效，有效期至 {shown}。", link="/privileges/grants",
                      kind="result")
    listed = list(problems)
    if override_reason and listed:
        audit.record(actor, "privilege.eligibility_overridden", grant,
                     after={"reason": override_reason, "user_id": holder.id, "item": item.code, "problems": listed,
                            "cause": why, "reused": reused})
    db.session.flush()
    return grant, reused


def end_grant(*, grant_id: int | None, reason: str, actor: Any) -> Grant | None:
    """Stop (revoke_grant: audited, pushed to HIS, holder notified) a grant still active or suspended; a grant
    already ended is left alone. Returns the grant stopped, else None."""
    grant = db.session.get(Grant, grant_id) if grant_id else None
    if grant is None or grant.status not in (GrantStatus.ACTIVE, GrantStatus.SUSPENDED):
        return None
    return privileges.revoke_grant(grant=grant, reason=clip(reason), actor=actor)
