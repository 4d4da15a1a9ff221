"""Workflow operations: the whole public surface of the engine.

Invariants:
- a process version is immutable once deployed; new instances use the key's active version and a
  running instance keeps the version it started with;
- every operation runs in the caller's transaction, locks the instance row, and saves the serialized
  workflow once; the projections (human_tasks, message_waits, next_timer_at, current/done nodes) are
  rewritten in the same flush, so pages never deserialize workflows;
- a task is completed at most once: a second completion gets Conflict, never a second engine step;
- deliver_message is idempotent by message id; a message nobody waits for is refused, not dropped
  silently (the caller keeps its own copy);
- every action leaves a task_log row and an audit row.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, false, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from app.audit import services as audit
from app.auth.models import Role, Scope, User, UserRole
from app.db import db, utcnow
from app.errors import Conflict, DomainError, Forbidden, InvalidTransition, NotFound, ValidationFailed
from app.notify import services as notify_service
from app.workflow import engine, hooks
from app.workflow.models import (
    HumanTask,
    InstanceStatus,
    MessageWait,
    ProcessDefinition,
    ProcessedMessage,
    ProcessInstance,
    ProcessVersion,
    TaskLog,
    TaskStatus,
)

on_end = hooks.on_end
on_task_complete = hooks.on_task_complete
context_renderer = hooks.context_renderer


class WorkflowFailed(DomainError):
    status, code = 422, "workflow_error"


# ---------------------------------------------------------------- definitions

# keyed by content, not row id: one process may serve several databases (tests, tenants)
_parsed_cache: dict[tuple[str, str], engine.ParsedVersion] = {}


def parsed(version: ProcessVersion) -> engine.ParsedVersion:
    """Parsed spec of a version, cached by its content checksum (versions never change)."""
    hit = _parsed_cache.get((version.key, version.checksum))
    if hit is None:
        hit = engine.parse_documents(version.bpmn_xml, version.dmn or {}, expected_key=version.key)
        _parsed_cache[(version.key, version.checksum)] = hit
    return hit


def _checksum(bpmn_xml: str, dmn: dict[str, str]) -> str:
    h = hashlib.sha256(bpmn_xml.encode())
    for name in sorted(dmn):
        h.update(name.encode())
        h.update(dmn[name].encode())
    return h.hexdigest()


def _dmn_for(bpmn_xml: str, available: dict[str, str]) -> dict[str, str]:
    try:
        wanted = engine.referenced_decisions(bpmn_xml)
    except Exception:  # noqa: BLE001 - unreadable XML is reported by parse_documents
        return {}
    chosen = {}
    for name, text in available.items():
        try:
            if engine.dmn_decision_ids(text) & wanted:
                chosen[name] = text
        except Exception:  # noqa: BLE001 - a broken DMN is reported by the parse below
            chosen[name] = text
    return chosen


def _add_version(*, key: str, bpmn_xml: str, dmn: dict[str, str], source: str, actor: User | None,
                 note: str | None, parsed_version: engine.ParsedVersion) -> ProcessVersion:
    latest = db.session.scalar(
        select(ProcessVersion).where(ProcessVersion.key == key).order_by(ProcessVersion.version.desc()).limit(1)
    )
    name = parsed_version.name
    version = ProcessVersion(
        key=key, version=(latest.version + 1) if latest else 1, name=name, bpmn_xml=bpmn_xml, dmn=dmn,
        checksum=_checksum(bpmn_xml, dmn), source=source, note=note, created_by_id=actor.id if actor else None,
    )
    db.session.add(version)
    definition = db.session.scalar(select(ProcessDefinition).where(ProcessDefinition.key == key))
    if definition is None:
        definition = ProcessDefinition(key=key, name=name)
        db.session.add(definition)
    db.session.flush()
    definition.name = name
    definition.active_version_id = version.id
    _parsed_cache[(version.key, version.checksum)] = parsed_version
    db.session.flush()
    audit.record(actor or "system", "process.version_deployed", version,
                 after={"key": key, "version": version.version, "source": source, "note": note})
    return version


def deploy_directory(directory: str | Path) -> list[ProcessVersion]:
    """Deploy every BPMN file under `directory` whose content (with its DMN) is new. Raises ValidationFailed on a broken file."""
    root = Path(directory)
    if not root.exists():
        return []
    dmn_all = {p.name: p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.dmn"))}
    created = []
    for path in sorted(root.rglob("*.bpmn")):
        xml = path.read_text(encoding="utf-8")
        dmn = _dmn_for(xml, dmn_all)
        try:
            p = engine.parse_documents(xml, dmn)
        except engine.BpmnInvalid as exc:
            raise ValidationFailed({str(path.relative_to(root)): exc.message}) from exc
        checksum = _checksum(xml, dmn)
        known = db.session.scalar(
            select(ProcessVersion.id).where(ProcessVersion.key == p.key, ProcessVersion.checksum == checksum)
        )
        if known:
            continue
        created.append(_add_version(key=p.key, bpmn_xml=xml, dmn=dmn, source="file", actor=None,
                                    note=f"随产品发布：{path.name}", parsed_version=p))
    return created


def upload_version(*, bpmn_xml: str, dmn: dict[str, str] | None = None, actor: User, note: str | None = None,
                   expected_key: str | None = None) -> ProcessVersion:
    """Deploy an admin's BPMN upload as the new active version. Raises ValidationFailed naming the broken element."""
    if not bpmn_xml or not bpmn_xml.strip():
        raise ValidationFailed({"bpmn": "请上传 BPMN 文件"})
    dmn = dict(dmn or {})
    if expected_key:
        current = active_version(expected_key, required=False)
        if current is not None:
            for name, text in (current.dmn or {}).items():
                dmn.setdefault(name, text)
    try:
        p = engine.parse_documents(bpmn_xml, _dmn_for(bpmn_xml, dmn) if dmn else {}, expected_key=expected_key)
    except engine.BpmnInvalid as exc:
        raise ValidationFailed({"bpmn": exc.message}, message=f"BPMN 校验失败：{exc.message}") from exc
    used = _dmn_for(bpmn_xml, dmn)
    return _add_version(key=p.key, bpmn_xml=bpmn_xml, dmn=used, source="upload", actor=actor, note=note, parsed_version=p)


def active_version(key: str, *, required: bool = True) -> ProcessVersion | None:
    definition = db.session.scalar(select(ProcessDefinition).where(ProcessDefinition.key == key))
    if definition is None or definition.active_version_id is None:
        if required:
            raise NotFound(f"流程「{key}」尚未部署")
        return None
    return db.session.get(ProcessVersion, definition.active_version_id)


def list_definitions() -> list[dict[str, Any]]:
    out = []
    for d in db.session.scalars(select(ProcessDefinition).order_by(ProcessDefinition.key)):
        versions = db.session.scalars(
            select(ProcessVersion).where(ProcessVersion.key == d.key).order_by(ProcessVersion.version)
        ).all()
        out.append({
            "key": d.key, "name": d.name,
            "active_version": next((v.version for v in versions if v.id == d.active_version_id), None),
            "versions": [{"version": v.version, "source": v.source, "created_at": v.created_at.isoformat(),
                          "checksum": v.checksum[:12], "note": v.note} for v in versions],
        })
    return out


# ---------------------------------------------------------------- people

_role_cache: dict[str, str | None] = {}


def role_for_lane(lane: str | None) -> str | None:
    """Map a BPMN lane name to a role code (lanes carry a role code or a role's Chinese name)."""
    if not lane:
        return None
    if lane in _role_cache:
        return _role_cache[lane]
    role = db.session.scalar(select(Role).where(or_(Role.code == lane, Role.name == lane)))
    code = role.code if role else None
    if code is not None:
        _role_cache[lane] = code
    return code


def _scope_condition(ur: UserRole, user: User):
    scope = Scope(ur.scope)
    if scope is Scope.GROUP:
        return HumanTask.role_code == ur.role.code
    if scope is Scope.CAMPUS:
        return and_(HumanTask.role_code == ur.role.code, HumanTask.campus_id == user.campus_id)
    if scope is Scope.DEPT:
        return and_(HumanTask.role_code == ur.role.code, HumanTask.dept_id == user.dept_id)
    return None  # a self-scoped role sees only tasks assigned to the user


def candidate_condition(user: User):
    """SQL condition: unassigned READY tasks this user may claim through their roles and scopes."""
    if user.departed_at is not None or not user.is_active:
        return None
    conds = [c for c in (_scope_condition(ur, user) for ur in user.roles) if c is not None]
    if not conds:
        return None
    return and_(HumanTask.assignee_id.is_(None), or_(*conds))


def is_candidate(task: HumanTask, user: User) -> bool:
    if user.departed_at is not None or not user.is_active:
        return False
    for ur in user.roles:
        if ur.role.code != task.role_code:
            continue
        scope = Scope(ur.scope)
        if scope is Scope.GROUP:
            return True
        if scope is Scope.CAMPUS and task.campus_id == user.campus_id:
            return True
        if scope is Scope.DEPT and task.dept_id == user.dept_id:
            return True
    return False


def candidates(task: HumanTask) -> list[User]:
    """Users who may act on a task (its assignee, or the role holders whose scope covers it)."""
    if task.assignee_id:
        user = db.session.get(User, task.assignee_id)
        return [user] if user else []
    if not task.role_code:
        return []
    users = db.session.scalars(
        select(User).join(UserRole, UserRole.user_id == User.id).join(Role, Role.id == UserRole.role_id)
        .where(Role.code == task.role_code, User.departed_at.is_(None), User.is_active.is_(True))
    ).unique().all()
    return [u for u in users if is_candidate(task, u)]


def can_act(task: HumanTask, user: User) -> bool:
    if task.assignee_id is not None:
        return task.assignee_id == user.id and user.departed_at is None and user.is_active
    return is_candidate(task, user)


def can_view_instance(instance: ProcessInstance, user: User) -> bool:
    from app.auth.services import has_permission, scope_of

    if instance.started_by_id == user.id:
        return True
    if has_permission(user, "workflow.view_all"):
        level = scope_of(user, "workflow.view_all")
        if level is Scope.GROUP:
            return True
        if level is Scope.CAMPUS and instance.campus_id == user.campus_id:
            return True
        if level is Scope.DEPT and instance.dept_id == user.dept_id:
            return True
    involved = db.session.scalar(
        select(TaskLog.id).where(TaskLog.instance_id == instance.id, TaskLog.actor_id == user.id).limit(1)
    )
    if involved:
        return True
    open_tasks = db.session.scalars(
        select(HumanTask).where(HumanTask.instance_id == instance.id, HumanTask.status == TaskStatus.READY)
    )
    return any(can_act(t, user) for t in open_tasks)


# ---------------------------------------------------------------- engine runs


@dataclass
class Origin:
    """Where an action came from (for task_log and audit)."""

    address: str | None = None
    terminal: str | None = None


def _log(instance: ProcessInstance, action: str, actor: User | str | None, *, task: HumanTask | None = None,
         data: dict | None = None, comment: str | None = None, origin: Origin | None = None,
         task_name: str | None = None) -> TaskLog:
    origin = origin or _request_origin()
    row = TaskLog(
        instance_id=instance.id, task_guid=task.task_guid if task else None, spec_name=task.spec_name if task else None,
        task_name=task.name if task else task_name, action=action,
        actor_id=actor.id if isinstance(actor, User) else None,
        actor_name=actor.name if isinstance(actor, User) else (actor or "系统"),
        address=origin.address, terminal=origin.terminal, data=audit._jsonable(data) if data else None, comment=comment,
    )
    db.session.add(row)
    return row


def _request_origin() -> Origin:
    addr, term, _system = audit._request_origin()
    return Origin(address=addr, terminal=term)


def _form_key(filename: str | None) -> str | None:
    if not filename:
        return None
    return filename[:-5] if filename.endswith(".json") else filename


def _form_version(form_key: str | None) -> int | None:
    if not form_key:
        return None
    try:
        from app.forms import services as forms

        return forms.get_form(form_key).version
    except Exception:  # noqa: BLE001 - a missing form is reported when the task is opened
        return None


def _project(instance: ProcessInstance, wf, p: engine.ParsedVersion, *, actor: User | str | None) -> None:
    """Rewrite the projections of one instance from its workflow (inbox, waits, timers, nodes)."""
    ready = engine.ready_user_tasks(wf, p)
    ready_guids = {t.guid for t in ready}
    existing = {
        t.task_guid: t for t in db.session.scalars(
            select(HumanTask).where(HumanTask.instance_id == instance.id, HumanTask.status == TaskStatus.READY)
        )
    }
    # delete before touching the instance: the query's autoflush would otherwise write the row twice
    db.session.query(MessageWait).filter(MessageWait.instance_id == instance.id).delete()
    for guid, row in existing.items():
        if guid not in ready_guids:
            row.status = TaskStatus.CANCELLED
            row.completed_at = utcnow()
    now = utcnow()
    for t in ready:
        if t.guid in existing:
            continue
        props = dict(t.extensions.get("properties") or {})
        assignee = instance.started_by_id if props.get("assignee") == "initiator" else None
        if props.get("assignee_var"):  # e.g. a multi-instance review: each instance names its own reviewer
            assignee = _user_from_task_data(t.data.get(props["assignee_var"])) or assignee
        due_at = None
        if props.get("due_days"):
            try:
                due_at = now + timedelta(days=float(props["due_days"]))
            except ValueError:
                due_at = None
        form_key = _form_key(t.extensions.get("formJsonSchemaFilename"))
        row = HumanTask(
            instance_id=instance.id, task_guid=t.guid, spec_name=t.spec_name, name=t.name, lane=t.lane,
            role_code=role_for_lane(t.lane), dept_id=instance.dept_id, campus_id=instance.campus_id,
            assignee_id=assignee, form_key=form_key, form_version=_form_version(form_key), properties=props,
            due_at=due_at, created_at=now,
        )
        db.session.add(row)
        db.session.flush()
        users = candidates(row)
        if users:
            notify_service.notify(
                user_ids=[u.id for u in users], title=f"新待办：{row.name}", body=instance.title,
                link=f"/tasks/{row.id}", kind="task",
            )
    instance.current_nodes = engine.current_spec_names(wf, p)
    instance.done_nodes = engine.completed_spec_names(wf, p)
    waits = engine.waiting(wf)
    instance.next_timer_at = min(waits.timers) if waits.timers else None
    data = engine.workflow_data(wf)
    corr = str(data.get("correlation_key") or instance.business_key)
    for name in sorted({m[0] for m in waits.messages}):
        db.session.add(MessageWait(instance_id=instance.id, message_name=name, correlation_key=corr))
    _apply_effects(instance, engine.reset_effects())
    if engine.is_completed(wf) and instance.status == InstanceStatus.RUNNING:
        end = engine.end_data(wf)
        instance.status = InstanceStatus.REJECTED if end.get("final_decision") == "rejected" else InstanceStatus.COMPLETED
        instance.ended_at = utcnow()
        instance.next_timer_at = None
        _log(instance, "end", actor, data={"final_decision": end.get("final_decision")},
             task_name=instance.status_label)
        for fn in hooks.END_HOOKS.get(instance.key, []):
            fn(instance=instance, data=end, actor=actor)
    instance.serialized = engine.dumps(wf)
    instance.error = None


def _user_from_task_data(value: Any) -> int | None:
    try:
        user = db.session.get(User, int(value))
    except (TypeError, ValueError):
        return None
    return user.id if user is not None and user.is_active and user.departed_at is None else None


def _apply_effects(instance: ProcessInstance, effects: engine.Effects) -> None:
    for n in effects.notifications:
        if n.get("initiator"):
            user_ids = [instance.started_by_id] if instance.started_by_id else []
        else:
            code = role_for_lane(n.get("role"))
            probe = HumanTask(role_code=code, dept_id=instance.dept_id, campus_id=instance.campus_id)
            user_ids = [u.id for u in candidates(probe)] if code else []
        if user_ids:
            notify_service.notify(user_ids=user_ids, title=str(n.get("title"))[:200], body=n.get("body"),
                                  link=n.get("link") or f"/workflow/instances/{instance.id}",
                                  kind="reminder" if "提醒" in str(n.get("title")) else "info")


def _lock(instance_id: int) -> ProcessInstance:
    stmt = select(ProcessInstance).where(ProcessInstance.id == instance_id).with_for_update().execution_options(
        populate_existing=True
    )
    instance = db.session.scalar(stmt)
    if instance is None:
        raise NotFound("流程实例不存在", instance_id=instance_id)
    return instance


def _load(instance: ProcessInstance):
    version = db.session.get(ProcessVersion, instance.version_id)
    assert version is not None
    p = parsed(version)
    return engine.loads(instance.serialized), p


def _save(instance: ProcessInstance) -> None:
    try:
        db.session.flush()
    except StaleDataError as exc:
        db.session.rollback()
        raise Conflict("该流程刚被其他人处理过，请刷新页面后重试") from exc


def _run(instance: ProcessInstance, wf, p, *, actor, refresh_timers: bool = False) -> None:
    engine.reset_effects()
    try:
        engine.run(wf, refresh_timers=refresh_timers)
    except engine.EngineError as exc:
        raise WorkflowFailed(exc.message, task=exc.task_name) from exc
    _project(instance, wf, p, actor=actor)


def start(*, key: str, business_key: str, title: str, actor: User, dept_id: int | None = None,
          campus_id: int | None = None, data: dict[str, Any] | None = None) -> ProcessInstance:
    """Start an instance of the key's active version and run it to its first wait. Raises NotFound, WorkflowFailed."""
    version = active_version(key)
    assert version is not None
    p = parsed(version)
    if dept_id is None:
        dept_id = actor.dept_id
    if campus_id is None and dept_id is not None:
        from app.auth.models import Department

        dept = db.session.get(Department, dept_id)
        campus_id = dept.campus_id if dept else None
    payload = dict(data or {})
    payload.setdefault("initiator_id", actor.id)
    payload.setdefault("business_key", business_key)
    wf = engine.new_workflow(p, payload)
    instance = ProcessInstance(
        key=key, version_id=version.id, business_key=str(business_key)[:64], title=title[:200],
        status=InstanceStatus.RUNNING, dept_id=dept_id, campus_id=campus_id, started_by_id=actor.id,
        serialized="{}",
    )
    db.session.add(instance)
    db.session.flush()
    _log(instance, "start", actor, data=payload, task_name="发起")
    _run(instance, wf, p, actor=actor)
    audit.record(actor, "workflow.started", instance, after={"key": key, "version": version.version,
                                                             "business_key": business_key})
    _save(instance)
    return instance


def _task_for_update(task_id: int) -> tuple[HumanTask, ProcessInstance]:
    task = db.session.get(HumanTask, task_id)
    if task is None:
        raise NotFound("任务不存在", task_id=task_id)
    instance = _lock(task.instance_id)
    task = db.session.scalar(
        select(HumanTask).where(HumanTask.id == task_id).execution_options(populate_existing=True)
    )
    assert task is not None
    if task.status != TaskStatus.READY:
        who = db.session.get(User, task.completed_by_id) if task.completed_by_id else None
        if task.status == TaskStatus.COMPLETED and who:
            when = task.completed_at.astimezone(_shanghai()).strftime("%m-%d %H:%M") if task.completed_at else ""
            raise Conflict(f"该任务已由{who.name}于{when}处理，无需重复提交", task_id=task_id)
        raise Conflict("该任务已不在待办状态（可能已被撤回、终止或处理）", task_id=task_id)
    return task, instance


def _shanghai():
    from app.core.timefmt import SHANGHAI

    return SHANGHAI


def claim(*, task_id: int, actor: User) -> HumanTask:
    """Take a group task for oneself. Raises Conflict when someone else holds it, Forbidden when not a candidate."""
    task, instance = _task_for_update(task_id)
    if task.assignee_id == actor.id:
        return task
    if task.assignee_id is not None:
        holder = db.session.get(User, task.assignee_id)
        raise Conflict(f"该任务已被{holder.name if holder else '他人'}认领", task_id=task_id)
    if not is_candidate(task, actor):
        raise Forbidden("您不是该任务的候选处理人", task_id=task_id)
    task.assignee_id = actor.id
    task.claimed_at = utcnow()
    _log(instance, "claim", actor, task=task)
    audit.record(actor, "task.claimed", task)
    db.session.flush()
    return task


def unclaim(*, task_id: int, actor: User) -> HumanTask:
    """Give a claimed task back to the group. Raises Forbidden unless the actor holds it."""
    task, instance = _task_for_update(task_id)
    if task.assignee_id != actor.id or task.claimed_at is None:
        raise Forbidden("只能退回自己认领的任务", task_id=task_id)
    task.assignee_id = None
    task.claimed_at = None
    _log(instance, "unclaim", actor, task=task)
    audit.record(actor, "task.unclaimed", task)
    db.session.flush()
    return task


def task_form(task: HumanTask):
    """The form a task is completed with, at the task's form version."""
    from app.forms import services as forms

    if not task.form_key:
        raise NotFound(f"任务「{task.name}」没有表单")
    return forms.get_form(task.form_key, version=task.form_version)


def complete(*, task_id: int, actor: User, data: dict[str, Any], origin: Origin | None = None) -> HumanTask:
    """Complete a task with form data (validated against its form) and advance the flow.
    Raises ValidationFailed (nothing changes), Forbidden, Conflict (already done), WorkflowFailed."""
    from app.forms import services as forms

    task, instance = _task_for_update(task_id)
    if not can_act(task, actor):
        raise Forbidden("您无权处理该任务（不是处理人或不在数据范围内）", task_id=task_id)
    form = task_form(task)
    clean = forms.validate(form, data)
    if clean.get("decision") == "return" and (task.properties or {}).get("can_send_back") != "true":
        raise ValidationFailed({"decision": "此步骤不支持退回"})
    # a comment or reason this form asks for but the user left empty is cleared in the flow's data: otherwise an
    # earlier step's text (a return reason, say) would still be there and be taken for this step's comment
    props = (form.schema.get("properties") or {}) if form is not None else {}
    clean = {**{name: None for name in CLEARED_WHEN_EMPTY if name in props and name not in clean}, **clean}
    return _complete_with(task, instance, actor, clean, origin=origin, action="complete")


CLEARED_WHEN_EMPTY = ("comment", "reason")


def _complete_with(task: HumanTask, instance: ProcessInstance, actor: User, clean: dict[str, Any], *,
                   origin: Origin | None, action: str, comment: str | None = None) -> HumanTask:
    wf, p = _load(instance)
    try:
        engine.complete_user_task(wf, task.task_guid, clean)
    except engine.EngineError as exc:
        raise WorkflowFailed(exc.message, task=task.name) from exc
    task.status = TaskStatus.COMPLETED
    task.completed_at = utcnow()
    task.completed_by_id = actor.id
    if task.assignee_id is None:
        task.assignee_id = actor.id
    _log(instance, action, actor, task=task, data=clean, comment=comment or clean.get("comment"), origin=origin)
    for fn in hooks.COMPLETE_HOOKS.get(instance.key, []):
        fn(instance=instance, task=task, data=clean, actor=actor)
    _run(instance, wf, p, actor=actor)
    audit.record(actor, f"task.{action}", task, after={"instance_id": instance.id, "data": clean})
    _save(instance)
    return task


def send_back(*, task_id: int, actor: User, reason: str, origin: Origin | None = None) -> HumanTask:
    """Return a task's work to the applicant for revision (decision=return). Raises ValidationFailed when not allowed."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed({"reason": "请填写退回原因"})
    task, instance = _task_for_update(task_id)
    if not can_act(task, actor):
        raise Forbidden("您无权处理该任务", task_id=task_id)
    if (task.properties or {}).get("can_send_back") != "true":
        raise InvalidTransition(f"「{task.name}」不支持退回修改", task_id=task_id)
    return _complete_with(task, instance, actor, {"decision": "return", "comment": reason}, origin=origin,
                          action="send_back", comment=reason)


def delegate(*, task_id: int, actor: User, to_user: User, comment: str | None = None) -> HumanTask:
    """Hand a task to another user who may hold it. Raises Forbidden."""
    task, instance = _task_for_update(task_id)
    if not can_act(task, actor):
        raise Forbidden("您无权转交该任务", task_id=task_id)
    if to_user.id == actor.id:
        raise ValidationFailed({"to_user_id": "不能转交给自己"})
    if to_user.departed_at is not None or not to_user.is_active:
        raise ValidationFailed({"to_user_id": "该用户已停用"})
    probe_ok = task.role_code is None or is_candidate(
        HumanTask(role_code=task.role_code, dept_id=task.dept_id, campus_id=task.campus_id), to_user)
    if not probe_ok:
        raise ValidationFailed({"to_user_id": f"{to_user.name}不具备该任务的角色或数据范围"})
    before = task.assignee_id
    task.assignee_id = to_user.id
    task.claimed_at = utcnow()
    _log(instance, "delegate", actor, task=task, data={"to_user_id": to_user.id, "to_user": to_user.name},
         comment=comment)
    audit.record(actor, "task.delegated", task, before={"assignee_id": before}, after={"assignee_id": to_user.id})
    notify_service.notify(user_ids=[to_user.id], title=f"转交待办：{task.name}", body=f"{actor.name} 转交：{instance.title}",
                          link=f"/tasks/{task.id}", kind="task")
    db.session.flush()
    return task


def _stop(instance_id: int, actor: User, reason: str, status: InstanceStatus, action: str) -> ProcessInstance:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed({"reason": "请填写原因"})
    instance = _lock(instance_id)
    if instance.status != InstanceStatus.RUNNING:
        raise InvalidTransition(f"流程已{instance.status_label}，不能再{'撤回' if action == 'withdraw' else '终止'}")
    wf, p = _load(instance)
    engine.cancel(wf)
    for t in db.session.scalars(select(HumanTask).where(HumanTask.instance_id == instance.id,
                                                        HumanTask.status == TaskStatus.READY)):
        t.status = TaskStatus.CANCELLED
        t.completed_at = utcnow()
    db.session.query(MessageWait).filter(MessageWait.instance_id == instance.id).delete()
    instance.status = status
    instance.ended_at = utcnow()
    instance.next_timer_at = None
    instance.current_nodes = []
    instance.serialized = engine.dumps(wf)
    _log(instance, action, actor, comment=reason, task_name="撤回" if action == "withdraw" else "终止")
    audit.record(actor, f"workflow.{action}", instance, after={"status": status.value, "reason": reason})
    for fn in hooks.END_HOOKS.get(instance.key, []):
        fn(instance=instance, data={"final_decision": status.value, "reason": reason}, actor=actor)
    _save(instance)
    return instance


def withdraw(*, instance_id: int, actor: User, reason: str) -> ProcessInstance:
    """The initiator takes back a running instance. Raises Forbidden, InvalidTransition."""
    instance = db.session.get(ProcessInstance, instance_id)
    if instance is None:
        raise NotFound("流程实例不存在")
    if instance.started_by_id != actor.id:
        raise Forbidden("只有发起人可以撤回")
    return _stop(instance_id, actor, reason, InstanceStatus.WITHDRAWN, "withdraw")


def terminate(*, instance_id: int, actor: User, reason: str) -> ProcessInstance:
    """A process admin stops a running instance. Raises Forbidden, InvalidTransition."""
    from app.auth.services import has_permission

    if not has_permission(actor, "workflow.admin"):
        raise Forbidden("只有流程管理员可以终止流程")
    return _stop(instance_id, actor, reason, InstanceStatus.TERMINATED, "terminate")


def deliver_message(*, name: str, correlation_key: str, payload: dict[str, Any] | None = None,
                    message_id: str | None = None, sender: User | str | None = None) -> dict[str, Any]:
    """Deliver a message to the instance waiting for it under a correlation key; idempotent by message_id.
    Returns {"status": "delivered"|"duplicate", "instance_id"}. Raises NotFound when nothing waits."""
    if message_id:
        done = db.session.scalar(select(ProcessedMessage).where(ProcessedMessage.message_id == message_id))
        if done is not None:
            return {"status": "duplicate", "instance_id": done.instance_id}
    wait = db.session.scalar(
        select(MessageWait).where(MessageWait.message_name == name, MessageWait.correlation_key == str(correlation_key))
        .order_by(MessageWait.id).limit(1)
    )
    if wait is None:
        raise NotFound(f"没有流程在等待消息「{name}」（关联键 {correlation_key}）", message_name=name,
                       correlation_key=correlation_key)
    instance = _lock(wait.instance_id)
    wf, p = _load(instance)
    engine.reset_effects()
    try:
        engine.send_message(wf, name, payload or {})
    except engine.EngineError as exc:
        raise Conflict(exc.message) from exc
    if message_id:
        try:
            with db.session.begin_nested():
                db.session.add(ProcessedMessage(message_id=message_id, message_name=name, instance_id=instance.id))
        except IntegrityError:
            return {"status": "duplicate", "instance_id": instance.id}
    _log(instance, "message", sender, data={"message": name, "payload": payload or {}, "message_id": message_id},
         task_name=f"消息：{name}")
    _run(instance, wf, p, actor=sender)
    _save(instance)
    return {"status": "delivered", "instance_id": instance.id}


def fire_due_timers(*, now: datetime | None = None, limit: int = 200) -> int:
    """Advance instances whose earliest timer is due; each in its own savepoint so one failure does not block
    the rest. Commits are the caller's (scheduler tick or Celery task). Returns how many were advanced."""
    now = now or utcnow()
    stmt = (select(ProcessInstance.id).where(ProcessInstance.status == InstanceStatus.RUNNING,
                                             ProcessInstance.next_timer_at <= now)
            .order_by(ProcessInstance.next_timer_at).limit(limit))
    if db.session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    ids = list(db.session.scalars(stmt))
    fired = 0
    for instance_id in ids:
        try:
            with db.session.begin_nested():
                instance = _lock(instance_id)
                wf, p = _load(instance)
                _log(instance, "timer", "定时器", task_name="定时器到期")
                _run(instance, wf, p, actor="定时器", refresh_timers=True)
                db.session.flush()
            fired += 1
        except (DomainError, StaleDataError) as exc:
            failed = db.session.get(ProcessInstance, instance_id)
            if failed is not None:
                failed.error = str(exc)
                failed.next_timer_at = None
    db.session.flush()
    return fired


def migrate_instance(*, instance_id: int, actor: User, to_version: ProcessVersion | None = None) -> ProcessInstance:
    """Move a running instance to another version of its process (default: the active one) where the
    SpiffWorkflow diff allows it; open tasks are re-created. Raises Forbidden, InvalidTransition."""
    from app.auth.services import has_permission

    if not has_permission(actor, "workflow.admin"):
        raise Forbidden("只有流程管理员可以迁移流程实例")
    instance = _lock(instance_id)
    if instance.started_by_id is None:
        # system-driven instances (closed loops) are advanced from their own node projection
        raise InvalidTransition("闭环等系统驱动的流程实例按其开始时的节点运行，不能迁移")
    if instance.status != InstanceStatus.RUNNING:
        raise InvalidTransition(f"流程已{instance.status_label}，无需迁移")
    target = to_version or active_version(instance.key)
    assert target is not None
    if target.key != instance.key:
        raise ValidationFailed({"to_version": "只能迁移到同一流程的其他版本"})
    if target.id == instance.version_id:
        raise InvalidTransition("实例已在该版本上运行")
    old_version = db.session.get(ProcessVersion, instance.version_id)
    wf, _p = _load(instance)
    new_parsed = parsed(target)
    try:
        changed = engine.migrate(wf, new_parsed)
    except engine.EngineError as exc:
        raise InvalidTransition(exc.message, instance_id=instance.id) from exc
    instance.version_id = target.id
    _log(instance, "migrate", actor, data={"from": old_version.version if old_version else None,
                                           "to": target.version, "changed": changed},
         task_name=f"迁移到第 {target.version} 版")
    _run(instance, wf, new_parsed, actor=actor)
    audit.record(actor, "workflow.migrated", instance,
                 before={"version": old_version.version if old_version else None},
                 after={"version": target.version, "changed_tasks": changed})
    _save(instance)
    return instance


# ---------------------------------------------------------------- headless instances (closed loops: the hot path)

# Hot workflows kept in memory by the worker process, keyed by the row's identity and optimistic-lock
# version: a version another process wrote is a miss, so a stale workflow is never used.
_HOT_MAX = 20000
_hot: OrderedDict[tuple[int, float], tuple[int, Any]] = OrderedDict()


def _hot_key(instance: ProcessInstance) -> tuple[int, float]:
    return (instance.id, instance.started_at.timestamp() if instance.started_at else 0.0)


def _hot_put(instance: ProcessInstance, wf) -> None:
    key = _hot_key(instance)
    _hot[key] = (instance.lock_version, wf)
    _hot.move_to_end(key)
    while len(_hot) > _HOT_MAX:
        _hot.popitem(last=False)


_version_meta: dict[tuple[str, int], tuple[str, str]] = {}
_active_meta: dict[tuple[str, str], tuple[float, int, str]] = {}
ACTIVE_TTL_SECONDS = 10.0


def _db_key() -> str:
    bind: Any = db.session.get_bind()
    return str(getattr(bind, "engine", bind).url)


def _parsed_for_version_id(version_id: int) -> engine.ParsedVersion:
    """Parsed spec of a version id without loading the row again (versions are immutable)."""
    meta = _version_meta.get((_db_key(), version_id))
    if meta is not None:
        hit = _parsed_cache.get(meta)
        if hit is not None:
            return hit
    version = db.session.get(ProcessVersion, version_id)
    assert version is not None
    _version_meta[(_db_key(), version_id)] = (version.key, version.checksum)
    return parsed(version)


def _active_parsed(key: str) -> tuple[int, engine.ParsedVersion]:
    """The active version id and parsed spec of a key, cached for a few seconds (uploads are rare)."""
    import time

    now = time.monotonic()
    hit = _active_meta.get((_db_key(), key))
    if hit is not None and now - hit[0] < ACTIVE_TTL_SECONDS:
        return hit[1], _parsed_for_version_id(hit[1])
    version = active_version(key)
    assert version is not None
    _version_meta[(_db_key(), version.id)] = (version.key, version.checksum)
    _active_meta[(_db_key(), key)] = (now, version.id, version.checksum)
    return version.id, parsed(version)


def version_messages(version_id: int) -> list[str]:
    """Names of the messages a version's diagram waits for (to check it matches its caller's definition)."""
    return list(_parsed_for_version_id(version_id).messages)


def forget_active(key: str) -> None:
    """Drop the cached active version of a key (after a deployment seen from another process)."""
    for cache_key in [k for k in _active_meta if k[1] == key]:
        _active_meta.pop(cache_key, None)


# a version's workflow run to its first wait with no data, kept serialized: a new headless instance is a copy of
# it (loading it costs about a third of building and running a new one)
_fresh: dict[tuple[str, int], str] = {}


def _fresh_headless(version_id: int, p: engine.ParsedVersion, data: dict[str, Any]):
    key = (_db_key(), version_id)
    text = _fresh.get(key)
    if text is None:
        first = engine.new_workflow(p, {})
        engine.run(first)
        text = _fresh[key] = engine.dumps_compact(first)
    wf = engine.loads_any(text, p)
    engine.set_data_everywhere(wf, data)
    return wf


def new_headless(*, key: str, business_key: str, title: str, data: dict[str, Any] | None = None,
                 dept_id: int | None = None, campus_id: int | None = None,
                 from_template: bool = True) -> tuple[ProcessInstance, Any]:
    """Create (not flush) a system-driven instance of the key's active version, run to its first wait.
    Returns the instance and its in-memory workflow for advance_headless().

    With `from_template` (for diagrams whose way to the first wait neither reads nor branches on the start
    data, such as the generated closed loops) the workflow is a copy of the version's cached fresh run with
    the data put on every task; every copy shares the template's task ids, which only need to be unique
    within one workflow."""
    version_id, p = _active_parsed(key)
    try:
        if from_template:
            wf = _fresh_headless(version_id, p, dict(data or {}))
        else:
            wf = engine.new_workflow(p, dict(data or {}))
            engine.run(wf)
    except engine.EngineError as exc:
        raise WorkflowFailed(exc.message, task=exc.task_name) from exc
    instance = ProcessInstance(
        key=key, version_id=version_id, business_key=str(business_key)[:64], title=title[:200],
        status=InstanceStatus.RUNNING, dept_id=dept_id, campus_id=campus_id, started_by_id=None,
        serialized="", started_at=utcnow(), current_nodes=[], done_nodes=[],
    )
    db.session.add(instance)
    return instance, wf


def start_headless(*, key: str, business_key: str, title: str, data: dict[str, Any] | None = None,
                   dept_id: int | None = None, campus_id: int | None = None) -> ProcessInstance:
    """Start and save a system-driven instance (no initiator, no human tasks)."""
    instance, wf = new_headless(key=key, business_key=business_key, title=title, data=data, dept_id=dept_id,
                                campus_id=campus_id)
    instance.serialized = engine.dumps_compact(wf)
    db.session.flush()
    _hot_put(instance, wf)
    return instance


def load_headless(instance: ProcessInstance):
    """The instance's workflow: from this process's hot cache when its version matches, else deserialized.
    A cached workflow is taken out of the cache: the batch changes it in place, and only remember_headless after
    the batch's flush puts it back (under the new version), so a batch that rolls back leaves nothing behind."""
    hit = _hot.pop(_hot_key(instance), None) if instance.id is not None else None
    if hit is not None and hit[0] == instance.lock_version:
        return hit[1]
    return engine.loads_any(instance.serialized, _parsed_for_version_id(instance.version_id))


@dataclass
class BatchResult:
    errors: list[str | None]
    completed: bool
    end_node: str | None


def advance_headless(*, instance: ProcessInstance, wf, messages: list[tuple[str, dict[str, Any]]],
                     project_nodes: bool = False) -> BatchResult:
    """Deliver messages in memory and serialize once; the caller flushes (then calls remember_headless).
    A message the instance is not waiting for is reported in `errors`, not raised."""
    p = _parsed_for_version_id(instance.version_id)
    errors: list[str | None] = []
    for name, payload in messages:
        try:
            engine.deliver_and_step(wf, name, payload)
            errors.append(None)
        except engine.EngineError as exc:
            errors.append(exc.message)
    completed = engine.is_completed(wf)
    end_node = None
    if project_nodes or completed:
        done = engine.completed_spec_names(wf, p)
        instance.done_nodes = done
        instance.current_nodes = engine.current_spec_names(wf, p)
        if completed:
            end_node = next((n for n in ("interrupted", "closed") if n in done), None)
    if completed and instance.status == InstanceStatus.RUNNING:
        instance.status = InstanceStatus.COMPLETED
        instance.ended_at = utcnow()
    instance.serialized = engine.dumps_compact(wf)
    return BatchResult(errors=errors, completed=completed, end_node=end_node)


def remember_headless(pairs: list[tuple[ProcessInstance, Any]]) -> None:
    """After the flush that saved them: keep these workflows hot for the next batch of their instances."""
    for instance, wf in pairs:
        _hot_put(instance, wf)


# ---------------------------------------------------------------- queries for pages


def my_tasks_query(user: User):
    return (select(HumanTask).join(ProcessInstance)
            .where(HumanTask.status == TaskStatus.READY, HumanTask.assignee_id == user.id))


def group_tasks_query(user: User):
    cond = candidate_condition(user)
    stmt = select(HumanTask).join(ProcessInstance).where(HumanTask.status == TaskStatus.READY)
    return stmt.where(cond) if cond is not None else stmt.where(false())


def history(instance_id: int) -> list[TaskLog]:
    return list(db.session.scalars(select(TaskLog).where(TaskLog.instance_id == instance_id).order_by(TaskLog.id)))


def instance_data(instance: ProcessInstance) -> dict[str, Any]:
    """Task data of an instance (deserializes: for detail pages only, never lists)."""
    wf = engine.loads_any(instance.serialized, _parsed_for_version_id(instance.version_id))
    return engine.workflow_data(wf)


def task_data(task: HumanTask) -> dict[str, Any]:
    from uuid import UUID

    wf = engine.loads(task.instance.serialized)
    t = wf.get_task_from_id(UUID(task.task_guid))
    return dict(t.data) if t is not None else {}
