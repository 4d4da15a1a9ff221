"""Departure (医师离职, seed 000 §一.3) and reinstatement.

Invariants:
- registering a departure cuts access at once, in one transaction: the account stops logging in (departed_at,
  is_active False), every clinical-privilege grant ends with the reason (privileges.revoke_all_for_departure,
  which queues the change for HIS), so do the day-surgery qualifications and high-risk technology authorisations
  (technology end_for_departure), the person's running flows are withdrawn and group tasks they held go back
  to their group; what was done to which task is kept on the departure for 医务处;
- nothing is deleted: the archive stays, read-only for everyone without archives.manage;
- a departed person comes back only through `archive_reinstatement` (医务处 → credentials committee); approval
  restores login, never the grants (they must be applied for again);
- every step is audited; services flush, the caller commits.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select

from app.audit import services as audit
from app.auth.models import User
from app.db import db, utcnow
from app.errors import Forbidden, InvalidTransition, NotFound, ValidationFailed
from app.forms import start as start_forms
from app.notify import services as notify

from . import services as archives
from .models import DEPARTURE_KIND_LABELS, Departure, DepartureKind, DepartureStatus

REINSTATEMENT_KEY = "archive_reinstatement"


def register_departure(*, staff: User, actor: User, kind: str | None = None, departure_date: Any = None,
                       reason: str | None = None, data: Any = None) -> Departure:
    """Register a resignation, retirement or dismissal from the latest `archive_departure` form template (`data`,
    a dict or form-encoded data with any fields the office added; or kind + departure_date + reason) and cut
    access at once (see the module invariants). The template version and extra fields are kept on the
    departure. Raises Forbidden (not archives.manage for the person), ValidationFailed (every problem by field
    path; nothing changed), InvalidTransition (already departed, or one's own account)."""
    if not archives.is_manager(actor, staff):
        raise Forbidden("只有医务处可以登记离职")
    if data is None:
        data = {"kind": kind, "departure_date": departure_date, "reason": reason}
    form = start_forms.start_form(Departure.FORM_KEY)
    values, template_errors = start_forms.check(form, data)
    errors: dict[str, str] = {}
    kind = values.get("kind")
    # the engine, lists and labels know these kinds only, whatever options the template offers
    if isinstance(kind, str) and kind not in DEPARTURE_KIND_LABELS:
        errors["kind"] = "请选择离职类型"
    day = None
    if "departure_date" not in template_errors and isinstance(values.get("departure_date"), str):
        try:
            day = date.fromisoformat(values["departure_date"])
        except ValueError:
            errors["departure_date"] = "请填写有效的离职日期（如 2024-05-01）"
    if day is not None and day > archives.today():
        errors["departure_date"] = "离职日期不能晚于今天（预计离职请在离职当日登记）"
    problems = start_forms.merge_errors(template_errors, errors)
    if problems:
        raise ValidationFailed(problems)
    if staff.departed_at is not None:
        raise InvalidTransition("该人员已登记离职", user_id=staff.id)
    if staff.id == actor.id:
        raise InvalidTransition("不能为自己登记离职", user_id=staff.id)
    assert day is not None and isinstance(kind, str)
    reason = str(values["reason"])
    label = DEPARTURE_KIND_LABELS[kind]
    before = audit.snapshot(staff)
    extra = start_forms.extra(form, values, Departure.FORM_COLUMNS)
    departure = Departure(user_id=staff.id, kind=DepartureKind(kind), departure_date=day, reason=reason,
                          status=DepartureStatus.DEPARTED, registered_by_id=actor.id, registered_at=utcnow(),
                          affected_tasks=[], form_version=form.version, form_data=extra)
    db.session.add(departure)
    staff.departed_at = utcnow()
    staff.is_active = False
    staff.__dict__.pop("_perm_cache", None)
    db.session.flush()
    archives.ensure_profile(user=staff, actor=actor)
    from app.privileges import services as privileges

    grant_reason = f"人员离职（{label}，{day.isoformat()}）：{reason}"[:500]
    departure.grants_revoked = privileges.revoke_all_for_departure(user=staff, actor=actor, reason=grant_reason)
    from app.technology.services.departure import end_for_departure

    ended = end_for_departure(user=staff, reason=grant_reason, actor=actor)
    departure.technology_revoked = ended.count
    departure.affected_tasks = _stop_open_work(staff, actor, f"{staff.name}已离职（{label}），由{actor.name}登记")
    db.session.flush()
    audit.record(actor, "archive.departure_registered", departure, before={"user": before},
                 after={"user": audit.snapshot(staff), "kind": kind, "departure_date": day, "reason": reason,
                        "form_version": form.version, **({"form_data": extra} if extra else {}),
                        "grants_revoked": departure.grants_revoked,
                        "day_surgery_qualifications_revoked": list(ended.day_surgery_qualifications),
                        "high_risk_authorizations_revoked": list(ended.high_risk_authorizations),
                        "affected_tasks": departure.affected_tasks})
    archives.refresh_completeness(user_ids=[staff.id])
    return departure


def _stop_open_work(staff: User, actor: User, note: str) -> list[dict[str, Any]]:
    """Withdraw the flows the person started and give back the tasks they held. Returns what was done."""
    from app.workflow import services as wf
    from app.workflow.models import HumanTask, InstanceStatus, ProcessInstance, TaskLog, TaskStatus

    done: list[dict[str, Any]] = []
    running = list(db.session.scalars(select(ProcessInstance).where(
        ProcessInstance.started_by_id == staff.id, ProcessInstance.status == InstanceStatus.RUNNING.value)
        .order_by(ProcessInstance.id)))
    for inst in running:
        steps = [t.name for t in db.session.scalars(select(HumanTask).where(
            HumanTask.instance_id == inst.id, HumanTask.status == TaskStatus.READY.value))]
        # the engine lets only the initiator withdraw; the reason names the office's registration
        wf.withdraw(instance_id=inst.id, actor=staff, reason=note)
        done.append({"kind": "instance", "instance_id": inst.id, "title": inst.title, "business_key": inst.business_key,
                     "steps": steps, "action": "withdrawn", "action_label": "发起的流程已撤回"})
    held = list(db.session.scalars(select(HumanTask).where(HumanTask.assignee_id == staff.id,
                                                           HumanTask.status == TaskStatus.READY.value)
                                   .order_by(HumanTask.id)))
    for task in held:
        owner = db.session.get(ProcessInstance, task.instance_id)
        assert owner is not None
        inst = owner
        initiator_step = (task.properties or {}).get("assignee") == "initiator"
        if initiator_step and inst.started_by_id and inst.started_by_id != staff.id:
            task.assignee_id, action, label = inst.started_by_id, "returned_to_initiator", "交回流程发起人"
        else:
            task.assignee_id, action, label = None, "released", "放回任务组，由同角色人员处理"
        task.claimed_at = None
        db.session.add(TaskLog(instance_id=inst.id, task_guid=task.task_guid, spec_name=task.spec_name,
                               task_name=task.name, action="unclaim", actor_id=actor.id, actor_name=actor.name,
                               comment=f"{note}：{label}"))
        audit.record(actor, "archive.departure_task_released", task, before={"assignee_id": staff.id},
                     after={"assignee_id": task.assignee_id, "action": action})
        db.session.flush()
        users = [u.id for u in wf.candidates(task) if u.id != staff.id]
        if users:
            notify.notify(user_ids=users, title=f"待办转交：{task.name}", body=f"{note}。{inst.title}",
                          link=f"/tasks/{task.id}", kind="task")
        done.append({"kind": "task", "task_id": task.id, "instance_id": inst.id, "title": inst.title,
                     "name": task.name, "action": action, "action_label": label})
    db.session.flush()
    return done


def get_departure(departure_id: int) -> Departure:
    row = db.session.get(Departure, departure_id)
    if row is None:
        raise NotFound("离职登记不存在")
    return row


def departures_of(staff: User) -> list[Departure]:
    return list(db.session.scalars(select(Departure).where(Departure.user_id == staff.id)
                                   .order_by(Departure.id.desc())))


def departures_query(*, viewer: User, q: str | None = None, status: str | None = None, kind: str | None = None):
    """Departures of people whose archives the viewer may see, newest first."""
    stmt = select(Departure).join(User, Departure.user_id == User.id).order_by(Departure.id.desc())
    stmt = archives.viewable_query(viewer, stmt, user_col=User.id, dept_col=User.dept_id)
    if q:
        like = f"%{q.strip()}%"
        stmt = stmt.where((User.name.ilike(like)) | (User.staff_no.ilike(like)))
    if status:
        stmt = stmt.where(Departure.status == status)
    if kind:
        stmt = stmt.where(Departure.kind == kind)
    return stmt


def request_reinstatement(*, departure: Departure, reason: str, actor: User) -> Departure:
    """医务处 submits a reinstatement to the credentials committee (`archive_reinstatement`). Raises Forbidden,
    ValidationFailed, InvalidTransition (not departed, or already under review)."""
    staff = departure.user
    if not archives.is_manager(actor, staff):
        raise Forbidden("只有医务处可以报送复职申请")
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed({"reason": "请填写复职理由"})
    if len(reason) > 2000:
        raise ValidationFailed({"reason": "复职理由不超过 2000 个字符"})
    if departure.status != DepartureStatus.DEPARTED or staff.departed_at is None:
        raise InvalidTransition(f"该离职登记当前为“{departure.status_label}”，不能报送复职")
    from app.workflow import services as wf

    dept = staff.dept.name if staff.dept else ""
    instance = wf.start(
        key=REINSTATEMENT_KEY, business_key=f"FZ{departure.id:06d}", actor=actor, dept_id=staff.dept_id,
        campus_id=staff.campus_id, title=f"{staff.name}（{dept}）复职申请"[:200],
        data={"departure_id": departure.id, "staff_id": staff.id, "staff_name": staff.name,
              "staff_no": staff.staff_no or "", "dept_name": dept, "departure_kind": departure.kind_label,
              "departure_date": departure.departure_date.isoformat(), "departure_reason": departure.reason,
              "reason": reason})
    departure.status = DepartureStatus.REINSTATING
    departure.reinstatement_instance_id = instance.id
    departure.reinstatement_reason = reason
    db.session.flush()
    audit.record(actor, "archive.reinstatement_requested", departure,
                 after={"instance_id": instance.id, "reason": reason})
    return departure


def departure_for_instance(instance_id: int, *, lock: bool = False) -> Departure | None:
    stmt = select(Departure).where(Departure.reinstatement_instance_id == instance_id)
    if lock:
        stmt = stmt.with_for_update(of=Departure).execution_options(populate_existing=True)
    return db.session.scalar(stmt)


def finalize_reinstatement(*, instance: Any, data: dict[str, Any], actor: Any) -> Departure | None:
    """Engine end hook of `archive_reinstatement`: approved → login restored (grants stay revoked); otherwise
    the person stays departed. Audited, notifies; idempotent."""
    departure = departure_for_instance(instance.id, lock=True)
    if departure is None or departure.status != DepartureStatus.REINSTATING:
        return departure
    decision = data.get("final_decision")
    status = str(getattr(instance, "status", "") or "")
    if decision not in ("approved", "rejected") and status in ("withdrawn", "terminated"):
        decision = status
    if decision not in ("approved", "rejected", "withdrawn", "terminated"):
        return departure
    staff = db.session.get(User, departure.user_id)
    assert staff is not None
    revised = (data.get("reason") or "").strip()
    if revised and decision in ("approved", "rejected"):
        departure.reinstatement_reason = revised
    comment = (data.get("comment") or "").strip() or None
    if decision == "approved":
        before = audit.snapshot(staff)
        staff.departed_at = None
        staff.is_active = True
        staff.failed_logins = 0
        staff.locked_until = None
        staff.__dict__.pop("_perm_cache", None)
        departure.status = DepartureStatus.REINSTATED
        departure.reinstated_at = utcnow()
        departure.reinstated_by_id = actor.id if isinstance(actor, User) else None
        db.session.flush()
        audit.record(actor, "archive.reinstated", departure, before={"user": before},
                     after={"user": audit.snapshot(staff), "comment": comment,
                            "note": "医疗授权不随复职恢复，须重新申请"})
        notify.notify(user_ids=[staff.id], title="复职已批准，账号已恢复",
                      body="离职时停止的医疗授权不会自动恢复，请按需重新申请。", link="/privileges/apply", kind="result")
        title = f"{staff.name}复职已批准"
    else:
        departure.status = DepartureStatus.DEPARTED
        if decision != "rejected":  # withdrawn or terminated: the engine passes why as data["reason"]
            comment = (data.get("reason") or "").strip() or comment
        action = {"rejected": "archive.reinstatement_rejected", "withdrawn": "archive.reinstatement_withdrawn",
                  "terminated": "archive.reinstatement_terminated"}[str(decision)]
        audit.record(actor, action, departure, after={"decision": decision, "comment": comment})
        title = f"{staff.name}复职{ {'rejected': '未获批准', 'withdrawn': '申请已撤回', 'terminated': '流程已被终止'}[str(decision)]}"
    starter = getattr(instance, "started_by_id", None)
    if starter and starter != getattr(actor, "id", None):
        notify.notify(user_ids=[starter], title=title, body=comment, link=f"/archives/departures/{departure.id}",
                      kind="result")
    db.session.flush()
    archives.refresh_completeness(user_ids=[staff.id])
    return departure
