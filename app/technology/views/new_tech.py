"""新技术新项目 pages: apply, list (+ Excel), detail, 组织专家评审, 提交伦理审查."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user

from app.auth.access import require
from app.core.paging import paginate
from app.db import db
from app.errors import ValidationFailed
from app.forms import start as start_forms
from app.technology.models.ethics import MODE_LABELS, REVIEW_ITEMS
from app.technology.models.new_tech import CATEGORY_LABELS, PROJECT_STATUS_LABELS, RISK_LABELS
from app.technology.services import common, ethics
from app.technology.services import new_tech as services
from app.technology.views import bp
from app.technology.views._helpers import error_map, int_arg, submit_application, text_arg, xlsx


def _filters() -> services.ProjectFilter:
    return services.ProjectFilter(status=text_arg("status"), dept_id=int_arg("dept"), category=text_arg("category"),
                                  risk_level=text_arg("risk"), q=text_arg("q"))


@bp.get("/new-tech/")
@require("technology.view")
def projects():
    page = paginate(services.projects_query(viewer=current_user, filters=_filters()))
    return render_template("technology/projects.html", page=page, statuses=PROJECT_STATUS_LABELS,
                           categories=CATEGORY_LABELS, risks=RISK_LABELS,
                           departments=common.visible_departments(current_user, "technology.view"),
                           counts=services.status_counts(viewer=current_user),
                           progress=common.instance_progress([p.instance_id for p in page.items]))


@bp.get("/new-tech/export.xlsx")
@require("technology.view")
def export_projects():
    rows = list(db.session.scalars(services.projects_query(viewer=current_user, filters=_filters()).limit(20000)).unique())
    return xlsx(services.export_workbook(rows), f"新技术新项目_{common.today().isoformat()}.xlsx")


def _apply_form(*, data: dict, errors: dict[str, str], status: int = 200):
    departments, leads = services.apply_choices(current_user)
    form = start_forms.start_form(services.FORM_KEY)
    choices = {"dept_id": [(d.id, d.name) for d in departments],
               "lead_id": [(u.id, common.person_label(u)) for u in leads]}
    return render_template("technology/project_apply.html", form=form, errors=errors,
                           fields=start_forms.render(form, data, errors, choices=choices)), status


@bp.get("/new-tech/apply")
@require("technology.apply")
def apply_project():
    form = start_forms.start_form(services.FORM_KEY)
    return _apply_form(data=start_forms.initial(form, {"dept_id": current_user.dept_id, "lead_id": current_user.id}),
                       errors={})


@bp.post("/new-tech/apply")
@require("technology.apply")
def submit_project():
    return submit_application(apply=services.apply, form_key=services.FORM_KEY, page=_apply_form,
                              done=lambda row: (f"申请已提交（编号 {row.number}），进入科室审核",
                                                url_for("technology.project", project_id=row.id)))


@bp.get("/new-tech/<int:project_id>")
@require()
def project(project_id: int):
    item = services.get_project(project_id=project_id, viewer=current_user)
    progress = common.instance_progress([item.instance_id])
    reviews = ethics.reviews_for_source(source_kind="new_tech", source_id=item.id)
    return render_template("technology/project.html", project=item, progress=progress.get(item.instance_id or 0),
                           reviews_by_round=services.reviews_by_round(item), ethics_reviews=reviews,
                           open_steps=common.ready_tasks(item.instance_id), can_manage=common.may_manage(current_user),
                           routine_item=services.routine_item(item))


def _experts_page(item, *, errors: dict[str, str], chosen: list[str], comment: str = "", status: int = 200):
    return render_template("technology/assign_experts.html", project=item, experts=common.users_with_role("expert"),
                           errors=errors, chosen=set(chosen), comment=comment, minimum=services.MIN_EXPERTS), status


@bp.get("/new-tech/<int:project_id>/experts")
@require("technology.manage")
def assign_experts_form(project_id: int):
    item = services.get_project(project_id=project_id, viewer=current_user)
    common.ready_task(item.instance_id, "assign_experts", what="组织专家评审")
    return _experts_page(item, errors={}, chosen=[])


@bp.post("/new-tech/<int:project_id>/experts")
@require("technology.manage")
def assign_experts(project_id: int):
    item = services.get_project(project_id=project_id, viewer=current_user)
    chosen = request.form.getlist("expert_ids")
    comment = request.form.get("comment", "")
    try:
        services.assign_experts(project=item, actor=current_user, expert_ids=chosen, comment=comment)
    except ValidationFailed as exc:
        db.session.rollback()
        item = services.get_project(project_id=project_id, viewer=current_user)
        return _experts_page(item, errors=error_map(exc), chosen=chosen, comment=comment, status=400)
    db.session.commit()
    flash("已发出专家评审任务，每位专家各收到一个评审任务", "success")
    return redirect(url_for("technology.project", project_id=project_id))


def ethics_setup_page(*, title: str, back_url: str, action: str, errors: dict[str, str], values: dict,
                      forced_mode: str | None, status: int = 200):
    return render_template("technology/ethics_setup.html", title=title, back_url=back_url, action=action,
                           errors=errors, values=values, members=common.users_with_role("ethics_member"),
                           modes=MODE_LABELS, items=REVIEW_ITEMS, forced_mode=forced_mode,
                           minimum=ethics.MIN_MEETING_MEMBERS), status


def ethics_values() -> dict:
    return {"mode": request.form.get("mode") or None, "member_ids": request.form.getlist("member_ids"),
            "review_items": request.form.getlist("review_items"), "meeting_date": request.form.get("meeting_date"),
            "comment": request.form.get("comment")}


@bp.get("/new-tech/<int:project_id>/ethics")
@require("technology.manage")
def project_ethics_form(project_id: int):
    item = services.get_project(project_id=project_id, viewer=current_user)
    common.ready_task(item.instance_id, "ethics_submit", what="提交伦理审查")
    return ethics_setup_page(title=f"提交伦理审查：{item.name}", back_url=url_for("technology.project", project_id=item.id),
                             action=url_for("technology.project_ethics", project_id=item.id), errors={},
                             values={"review_items": list(REVIEW_ITEMS)}, forced_mode=None)


@bp.post("/new-tech/<int:project_id>/ethics")
@require("technology.manage")
def project_ethics(project_id: int):
    item = services.get_project(project_id=project_id, viewer=current_user)
    values = ethics_values()
    try:
        ethics.submit_for_source(instance_id=item.instance_id, actor=current_user, data=values, forced_mode=None,
                                 applicant_id=item.applicant_id)
    except ValidationFailed as exc:
        db.session.rollback()
        return ethics_setup_page(title=f"提交伦理审查：{item.name}",
                                 back_url=url_for("technology.project", project_id=project_id),
                                 action=url_for("technology.project_ethics", project_id=project_id),
                                 errors=error_map(exc), values=values, forced_mode=None, status=400)
    db.session.commit()
    flash("已提交伦理审查，每位委员各收到一个审查任务", "success")
    return redirect(url_for("technology.project", project_id=project_id))
