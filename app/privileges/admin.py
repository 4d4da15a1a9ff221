"""Privilege management pages for 医务处 (privileges.manage): suspend / resume / stop a grant, emergency grants,
batch grants, statistics (seed 000 §三.2, §三.4, §三.8); plus the engine hooks of `privilege_emergency_review`."""

from __future__ import annotations

from datetime import date
from io import BytesIO
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, send_file, url_for
from flask_login import current_user
from markupsafe import Markup
from sqlalchemy import select

from app.audit.services import ACTION_LABELS
from app.auth.access import require
from app.core.paging import paginate
from app.db import db
from app.errors import InvalidTransition, ValidationFailed
from app.forms import start as start_forms
from app.outbox import services as outbox
from app.privileges import services
from app.privileges.models import EMERGENCY_REVIEW_LABELS, GRANT_STATUS_LABELS, EmergencyGrant

bp = Blueprint("privilege_admin", __name__, url_prefix="/privileges/manage")

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _int_arg(name: str) -> int | None:
    value = request.args.get(name, "")
    return int(value) if value.isdigit() else None


def _errors(exc: ValidationFailed) -> dict[str, str]:
    return {e["path"]: e["message"] for e in exc.errors}


# ---------------------------------------------------------------- grants: suspend / resume / stop


def _grant_filter() -> services.GrantFilter:
    return services.GrantFilter(category=request.args.get("category") or None, dept_id=_int_arg("dept"),
                                status=request.args.get("status") or None,
                                validity=request.args.get("validity") or None,
                                q=(request.args.get("q") or "").strip() or None)


@bp.get("/")
@require("privileges.manage")
def index():
    return redirect(url_for("privilege_admin.grants"))


@bp.get("/grants")
@require("privileges.manage")
def grants():
    today = services.today()
    page = paginate(services.manage_grants_query(viewer=current_user, filters=_grant_filter(), on=today))
    return render_template("privileges/admin/grants.html", page=page, today=today, categories=services.categories(),
                           departments=services.manageable_departments(current_user),
                           status_labels=GRANT_STATUS_LABELS, validity_labels=services.VALIDITY_LABELS,
                           display_status=services.display_status)


@bp.get("/grants/export.xlsx")
@require("privileges.manage")
def export_grants():
    today = services.today()
    rows = db.session.scalars(services.manage_grants_query(viewer=current_user, filters=_grant_filter(), on=today)
                              .limit(50000)).unique()
    return send_file(BytesIO(services.grants_workbook(rows, on=today)), as_attachment=True,
                     download_name=f"医疗权限管理_{today.isoformat()}.xlsx", mimetype=XLSX)


def _render_grant(grant, *, errors: dict[str, str] | None = None, action: str = "", reason: str = "",
                  message: str | None = None, status: int = 200):
    emergency = db.session.scalar(select(EmergencyGrant).where(EmergencyGrant.grant_id == grant.id))
    return render_template(
        "privileges/admin/grant.html", grant=grant, today=services.today(), emergency=emergency,
        display_status=services.display_status, status_labels=GRANT_STATUS_LABELS, errors=errors or {},
        action=action, reason=reason, message=message, history=services.grant_history(grant),
        his_messages=outbox.messages_for_key(services.grant_key(grant), limit=10), action_labels=ACTION_LABELS,
    ), status


@bp.get("/grants/<int:grant_id>")
@require("privileges.manage")
def grant_detail(grant_id: int):
    return _render_grant(services.get_managed_grant(grant_id=grant_id, viewer=current_user))


ACTIONS = {"suspend": (services.suspend_grant, "已暂停"), "resume": (services.resume_grant, "已恢复"),
           "revoke": (services.revoke_grant, "已停止")}


@bp.post("/grants/<int:grant_id>/<any(suspend, resume, revoke):action>")
@require("privileges.manage")
def grant_action(grant_id: int, action: str):
    grant = services.get_managed_grant(grant_id=grant_id, viewer=current_user)
    fn, done = ACTIONS[action]
    reason = request.form.get("reason", "")
    try:
        fn(grant=grant, reason=reason, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        return _render_grant(grant, errors=_errors(exc), action=action, reason=reason, status=400)
    except InvalidTransition as exc:
        db.session.rollback()
        return _render_grant(grant, message=exc.message, action=action, reason=reason, status=409)
    db.session.commit()
    flash(f"{grant.user.name}的“{grant.item.name}”{done}，变更已排队同步 HIS", "success")
    return redirect(url_for("privilege_admin.grant_detail", grant_id=grant.id))


# ---------------------------------------------------------------- emergency grants


@bp.get("/emergency")
@require("privileges.manage")
def emergency():
    review = request.args.get("review", "")
    page = paginate(services.emergency_query(viewer=current_user, review_status=review or None,
                                             q=(request.args.get("q") or "").strip() or None))
    return render_template("privileges/admin/emergency.html", page=page, review_labels=EMERGENCY_REVIEW_LABELS,
                           review=review, now=services.utcnow(), status_labels=GRANT_STATUS_LABELS)


def _render_emergency_form(data: dict[str, Any] | None, errors: dict[str, str] | None = None, status: int = 200):
    form = start_forms.start_form(EmergencyGrant.FORM_KEY)
    errors = errors or {}
    return render_template("privileges/admin/emergency_form.html", form=form, errors=errors,
                           fields=start_forms.render(form, data, errors),
                           max_hours=services.emergency_max_hours()), status


@bp.route("/emergency/new", methods=["GET", "POST"])
@require("privileges.manage")
def new_emergency():
    form = start_forms.start_form(EmergencyGrant.FORM_KEY)
    if request.method == "GET":
        # the query string may prefill fields (?staff_no=…&item_code=…), as before
        return _render_emergency_form(start_forms.initial(form, start_forms.coerce(form, request.args)))
    try:
        emergency_grant = services.grant_emergency(data=request.form, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        return _render_emergency_form(start_forms.coerce(form, request.form), _errors(exc), status=400)
    db.session.commit()
    flash(f"紧急授权 {emergency_grant.number} 已生效并同步 HIS，事后审核任务已发给医务处", "success")
    return redirect(url_for("privilege_admin.emergency"))


# ---------------------------------------------------------------- batch grants


def _render_batch(*, dept_id: int | None, form: dict[str, Any], plan: services.BatchPlan | None = None,
                  errors: dict[str, str] | None = None, done: bool = False, status: int = 200):
    return render_template(
        "privileges/admin/batch.html", departments=services.manageable_departments(current_user), dept_id=dept_id,
        physicians=services.department_physicians(viewer=current_user, dept_id=dept_id), form=form, plan=plan,
        errors=errors or {}, done=done, row_labels=services.BATCH_ROW_LABELS,
    ), status


@bp.get("/batch")
@require("privileges.manage")
def batch():
    return _render_batch(dept_id=_int_arg("dept"), form={"user_ids": [], "item_codes": "", "reason": "",
                                                          "valid_from": "", "override_reason": ""})


@bp.post("/batch")
@require("privileges.manage")
def batch_submit():
    raw_dept = request.form.get("dept_id", "")
    dept_id = int(raw_dept) if raw_dept.isdigit() else None
    form = {"user_ids": request.form.getlist("user_ids"), "item_codes": request.form.get("item_codes", ""),
            "reason": request.form.get("reason", ""), "valid_from": request.form.get("valid_from", ""),
            "override_reason": request.form.get("override_reason", "")}
    kwargs = {"viewer": current_user, "dept_id": dept_id, "user_ids": form["user_ids"],
              "item_codes": services.split_codes(form["item_codes"]), "reason": form["reason"],
              "valid_from": form["valid_from"] or None, "override_reason": form["override_reason"] or None}
    if request.form.get("action") != "confirm":
        plan = services.plan_batch_grant(**kwargs)
        return _render_batch(dept_id=dept_id, form=form, plan=plan, errors=plan.errors,
                             status=400 if plan.has_errors else 200)
    try:
        plan = services.batch_grant(**kwargs)
    except services.BatchRejected as exc:
        db.session.rollback()
        return _render_batch(dept_id=dept_id, form=form, plan=exc.plan, errors=exc.plan.errors, status=400)
    db.session.commit()
    counts = plan.counts
    flash(f"批量授权完成：新授予 {counts['grant']} 项，再授权 {counts['renew']} 项，跳过 {counts['skip']} 项；"
          "已排队同步 HIS", "success")
    return _render_batch(dept_id=dept_id, form=form, plan=plan, done=True)


# ---------------------------------------------------------------- statistics


def _month_arg() -> tuple[int, int, str | None]:
    raw = (request.args.get("month") or "").strip()
    today = services.today()
    if not raw:
        return today.year, today.month, None
    try:
        year, month = (int(x) for x in raw.split("-", 1))
        date(year, month, 1)
    except ValueError:
        return today.year, today.month, "统计月份格式应为 YYYY-MM"
    return year, month, None


@bp.get("/stats")
@require("privileges.manage")
def stats():
    year, month, error = _month_arg()
    result = services.privilege_statistics(viewer=current_user, year=year, month=month)
    return render_template("privileges/admin/stats.html", stats=result, month=f"{year}-{month:02d}",
                           error=error, dimensions=services.STAT_DIMENSIONS), 400 if error else 200


@bp.get("/stats/export.xlsx")
@require("privileges.manage")
def export_stats():
    year, month, error = _month_arg()
    if error:
        raise ValidationFailed({"month": error})
    result = services.privilege_statistics(viewer=current_user, year=year, month=month)
    return send_file(BytesIO(services.statistics_workbook(result)), as_attachment=True,
                     download_name=f"医疗权限授权统计_{year}-{month:02d}.xlsx", mimetype=XLSX)


def _stats_drill() -> services.StatDrill:
    year, month, error = _month_arg()
    if error:
        raise ValidationFailed({"month": error})
    return services.statistics_drill(viewer=current_user, year=year, month=month,
                                     dimension=request.args.get("dimension", ""), key=request.args.get("key", ""))


@bp.get("/stats/grants")
@require("privileges.manage")
def stats_grants():
    """The grants behind one statistics cell (drill-down)."""
    drill = _stats_drill()
    return render_template("privileges/admin/stats_grants.html", drill=drill, page=paginate(drill.query),
                           today=services.today(), display_status=services.display_status,
                           status_labels=GRANT_STATUS_LABELS)


@bp.get("/stats/grants/export.xlsx")
@require("privileges.manage")
def export_stats_grants():
    drill = _stats_drill()
    today = services.today()
    rows = db.session.scalars(drill.query.limit(50000)).unique()
    return send_file(BytesIO(services.grants_workbook(rows, on=today)), as_attachment=True,
                     download_name=f"医疗权限授权统计明细_{drill.month_label}_{drill.dimension_title}.xlsx",
                     mimetype=XLSX)


# ---------------------------------------------------------------- engine hooks of privilege_emergency_review


def on_emergency_review_end(*, instance: Any, data: dict[str, Any], actor: Any) -> None:
    services.finalize_emergency_review(instance=instance, data=data, actor=actor)


def render_emergency_context(instance: Any) -> Markup:
    """The emergency grant (physician, item, hours, reason, state) above the review form."""
    emergency = db.session.scalar(select(EmergencyGrant).where(EmergencyGrant.review_instance_id == instance.id))
    if emergency is None:
        return Markup('<p class="muted">未找到对应的紧急授权</p>')
    return Markup(render_template("privileges/admin/_emergency_context.html", emergency=emergency,
                                  status_labels=GRANT_STATUS_LABELS))


def install_hooks() -> list[str]:
    try:
        from app.workflow import services as wf
    except ImportError:
        return []
    wf.on_end(services.EMERGENCY_PROCESS_KEY)(on_emergency_review_end)
    wf.context_renderer(services.EMERGENCY_PROCESS_KEY)(render_emergency_context)
    return ["on_end", "context_renderer"]
