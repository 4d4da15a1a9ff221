"""Task inbox, task forms, my applications, instance pages and process administration."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from markupsafe import Markup
from sqlalchemy import or_, select

from app.auth.access import client_address, client_terminal, require
from app.auth.models import User
from app.core.paging import paginate
from app.db import db, utcnow
from app.errors import ValidationFailed
from app.workflow import hooks, services
from app.workflow.models import (
    INSTANCE_STATUS_LABELS,
    HumanTask,
    ProcessDefinition,
    ProcessInstance,
    ProcessVersion,
    TaskStatus,
)

tasks_bp = Blueprint("tasks", __name__, url_prefix="/tasks")
bp = Blueprint("workflow", __name__, url_prefix="/workflow")

SORTS = {
    "due": (HumanTask.due_at.asc().nulls_last(), HumanTask.id),
    "new": (HumanTask.created_at.desc(), HumanTask.id.desc()),
    "old": (HumanTask.created_at.asc(), HumanTask.id),
}


def _filtered(stmt):
    q = (request.args.get("q") or "").strip()
    if q:
        like = f"%{q}%"
        stmt = stmt.where(or_(ProcessInstance.title.like(like), ProcessInstance.business_key.like(like),
                              HumanTask.name.like(like)))
    key = request.args.get("process")
    if key:
        stmt = stmt.where(ProcessInstance.key == key)
    if request.args.get("overdue"):
        stmt = stmt.where(HumanTask.due_at < utcnow())
    return stmt.order_by(*SORTS.get(request.args.get("sort", "due"), SORTS["due"]))


def _task_list(stmt, template_title: str, mode: str):
    page = paginate(_filtered(stmt))
    processes = db.session.scalars(select(ProcessDefinition).order_by(ProcessDefinition.key)).all()
    return render_template("workflow/tasks.html", page=page, title=template_title, mode=mode, processes=processes,
                           now=utcnow(), soon=utcnow() + timedelta(days=1))


@tasks_bp.get("/")
@require()
def inbox():
    return _task_list(services.my_tasks_query(current_user), "我的待办", "mine")


@tasks_bp.get("/group")
@require()
def group():
    return _task_list(services.group_tasks_query(current_user), "可认领任务", "group")


def _task_or_404(task_id: int) -> HumanTask:
    task = db.session.get(HumanTask, task_id)
    if task is None:
        abort(404)
    return task


def _context_html(instance: ProcessInstance) -> Markup | None:
    fn = hooks.CONTEXT_RENDERERS.get(instance.key)
    return fn(instance) if fn else None


@tasks_bp.get("/<int:task_id>")
@require()
def show(task_id: int):
    task = _task_or_404(task_id)
    instance = task.instance
    may_act = task.status == TaskStatus.READY and services.can_act(task, current_user)
    if not may_act and not services.can_view_instance(instance, current_user):
        raise _forbidden()
    return _render_task(task, data=None, errors=None, may_act=may_act)


def _forbidden():
    from app.errors import Forbidden

    return Forbidden("您无权查看该任务")


def _render_task(task: HumanTask, *, data, errors, may_act: bool, status: int = 200):
    from app.forms import services as forms

    instance = task.instance
    form = services.task_form(task) if task.form_key else None
    if data is None and form is not None:
        prior = services.task_data(task) if task.status == TaskStatus.READY else {}
        data = {k: v for k, v in prior.items() if k in (form.schema.get("properties") or {})}
        if task.spec_name and any(k in ("decision", "comment") for k in data):
            data.pop("decision", None)
            data.pop("comment", None)
    form_html = forms.render(form, data=data or None, errors=errors, readonly=not may_act) if form else None
    delegates = []
    if may_act and task.role_code:
        delegates = [u for u in services.candidates(HumanTask(role_code=task.role_code, dept_id=task.dept_id,
                                                              campus_id=task.campus_id)) if u.id != current_user.id]
    assignee = db.session.get(User, task.assignee_id) if task.assignee_id else None
    return render_template(
        "workflow/task.html", task=task, instance=instance, form_html=form_html, may_act=may_act,
        context_html=_context_html(instance), history=services.history(instance.id), delegates=delegates,
        assignee=assignee, errors=errors,
    ), status


def _origin() -> services.Origin:
    return services.Origin(address=client_address(), terminal=client_terminal())


@tasks_bp.post("/<int:task_id>")
@require()
def submit(task_id: int):
    from app.forms import services as forms

    task = _task_or_404(task_id)
    form = services.task_form(task)
    try:
        data = forms.parse_submission(form, request.form)
        services.complete(task_id=task.id, actor=current_user, data=data, origin=_origin())
    except ValidationFailed as exc:
        db.session.rollback()
        task = _task_or_404(task_id)
        flash("提交的数据有误，请按提示修改", "error")
        return _render_task(task, data=forms.parse_submission(form, request.form), errors=exc.errors, may_act=True,
                            status=400)
    db.session.commit()
    flash(f"「{task.name}」已提交", "success")
    return redirect(url_for("tasks.inbox"))


@tasks_bp.post("/<int:task_id>/claim")
@require()
def claim(task_id: int):
    services.claim(task_id=task_id, actor=current_user)
    db.session.commit()
    flash("已认领，任务已进入您的待办", "success")
    return redirect(url_for("tasks.show", task_id=task_id))


@tasks_bp.post("/<int:task_id>/unclaim")
@require()
def unclaim(task_id: int):
    services.unclaim(task_id=task_id, actor=current_user)
    db.session.commit()
    flash("已退回任务组，其他候选人可认领", "info")
    return redirect(url_for("tasks.group"))


@tasks_bp.post("/<int:task_id>/send-back")
@require()
def send_back(task_id: int):
    services.send_back(task_id=task_id, actor=current_user, reason=request.form.get("reason", ""), origin=_origin())
    db.session.commit()
    flash("已退回申请人修改", "success")
    return redirect(url_for("tasks.inbox"))


@tasks_bp.post("/<int:task_id>/delegate")
@require()
def delegate(task_id: int):
    to_id = request.form.get("to_user_id", type=int)
    to_user = db.session.get(User, to_id) if to_id else None
    if to_user is None:
        raise ValidationFailed({"to_user_id": "请选择转交对象"})
    services.delegate(task_id=task_id, actor=current_user, to_user=to_user, comment=request.form.get("comment"))
    db.session.commit()
    flash(f"已转交给{to_user.name}", "success")
    return redirect(url_for("tasks.inbox"))


# ---------------------------------------------------------------- instances


@bp.get("/mine")
@require()
def mine():
    stmt = select(ProcessInstance).where(ProcessInstance.started_by_id == current_user.id)
    status = request.args.get("status")
    if status:
        stmt = stmt.where(ProcessInstance.status == status)
    q = (request.args.get("q") or "").strip()
    if q:
        stmt = stmt.where(or_(ProcessInstance.title.like(f"%{q}%"), ProcessInstance.business_key == q))
    page = paginate(stmt.order_by(ProcessInstance.id.desc()))
    waiting = {}
    ids = [i.id for i in page.items]
    if ids:
        for t in db.session.scalars(select(HumanTask).where(HumanTask.instance_id.in_(ids),
                                                            HumanTask.status == TaskStatus.READY)):
            waiting.setdefault(t.instance_id, []).append(t.name)
    return render_template("workflow/mine.html", page=page, waiting=waiting, statuses=INSTANCE_STATUS_LABELS)


def _instance_or_403(instance_id: int) -> ProcessInstance:
    instance = db.session.get(ProcessInstance, instance_id)
    if instance is None:
        abort(404)
    if not services.can_view_instance(instance, current_user):
        raise _forbidden()
    return instance


@bp.get("/instances/<int:instance_id>")
@require()
def instance(instance_id: int):
    inst = _instance_or_403(instance_id)
    tasks = db.session.scalars(select(HumanTask).where(HumanTask.instance_id == inst.id).order_by(HumanTask.id)).all()
    starter = db.session.get(User, inst.started_by_id) if inst.started_by_id else None
    return render_template("workflow/instance.html", instance=inst, tasks=tasks, history=services.history(inst.id),
                           context_html=_context_html(inst), starter=starter,
                           version=db.session.get(ProcessVersion, inst.version_id))


@bp.get("/instances/<int:instance_id>/diagram.bpmn")
@require()
def instance_diagram(instance_id: int):
    inst = _instance_or_403(instance_id)
    version = db.session.get(ProcessVersion, inst.version_id)
    assert version is not None
    return Response(version.bpmn_xml, mimetype="application/xml")


@bp.post("/instances/<int:instance_id>/withdraw")
@require()
def withdraw(instance_id: int):
    services.withdraw(instance_id=instance_id, actor=current_user, reason=request.form.get("reason", ""))
    db.session.commit()
    flash("已撤回", "success")
    return redirect(url_for("workflow.instance", instance_id=instance_id))


@bp.post("/instances/<int:instance_id>/terminate")
@require("workflow.admin")
def terminate(instance_id: int):
    services.terminate(instance_id=instance_id, actor=current_user, reason=request.form.get("reason", ""))
    db.session.commit()
    flash("流程已终止", "success")
    return redirect(url_for("workflow.instance", instance_id=instance_id))


# ---------------------------------------------------------------- process administration


@bp.get("/processes")
@require("workflow.admin")
def processes():
    return render_template("workflow/processes.html", definitions=services.list_definitions())


@bp.get("/processes/<key>")
@require("workflow.admin")
def process(key: str):
    definition = db.session.scalar(select(ProcessDefinition).where(ProcessDefinition.key == key))
    if definition is None:
        abort(404)
    versions = db.session.scalars(select(ProcessVersion).where(ProcessVersion.key == key)
                                  .order_by(ProcessVersion.version.desc())).all()
    running = db.session.scalars(select(ProcessInstance).where(ProcessInstance.key == key,
                                                               ProcessInstance.status == "running")
                                 .order_by(ProcessInstance.id.desc()).limit(50)).all()
    return render_template("workflow/process.html", definition=definition, versions=versions, running=running,
                           errors=None)


@bp.post("/processes/<key>/migrate")
@require("workflow.admin")
def migrate(key: str):
    """Move the selected running instances to the active version; report each one's outcome."""
    from app.errors import DomainError

    ids = [int(i) for i in request.form.getlist("instance_id") if i.isdigit()]
    if not ids:
        raise ValidationFailed({"instance_id": "请选择要迁移的实例"})
    moved, refused = 0, []
    for instance_id in ids:
        try:
            with db.session.begin_nested():
                services.migrate_instance(instance_id=instance_id, actor=current_user)
            moved += 1
        except DomainError as exc:
            refused.append(f"#{instance_id}：{exc.message}")
    db.session.commit()
    flash(f"已迁移 {moved} 个实例到当前生效版本", "success" if moved else "info")
    for line in refused:
        flash(line, "warning")
    return redirect(url_for("workflow.process", key=key))


@bp.get("/processes/<key>/versions/<int:version>.bpmn")
@require("workflow.admin")
def version_xml(key: str, version: int):
    row = db.session.scalar(select(ProcessVersion).where(ProcessVersion.key == key, ProcessVersion.version == version))
    if row is None:
        abort(404)
    return Response(row.bpmn_xml, mimetype="application/xml",
                    headers={"Content-Disposition": f"attachment; filename={key}-v{version}.bpmn"})


@bp.route("/processes/upload", methods=["GET", "POST"])
@require("workflow.admin")
def upload():
    errors = None
    key = request.values.get("key") or None
    if request.method == "POST":
        file = request.files.get("bpmn")
        xml = file.read().decode("utf-8", errors="replace") if file else ""
        dmn = {}
        for f in request.files.getlist("dmn"):
            if f and f.filename:
                dmn[f.filename] = f.read().decode("utf-8", errors="replace")
        try:
            version = services.upload_version(bpmn_xml=xml, dmn=dmn, actor=current_user,
                                              note=request.form.get("note") or None, expected_key=key)
        except ValidationFailed as exc:
            db.session.rollback()
            errors = exc.errors
        else:
            db.session.commit()
            flash(f"已部署「{version.name}」第 {version.version} 版，新发起的流程将使用此版本", "success")
            return redirect(url_for("workflow.process", key=version.key))
    return render_template("workflow/upload.html", errors=errors, key=key), (400 if errors else 200)
