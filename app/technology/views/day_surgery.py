"""日间手术 pages: catalogue (+ grade / in-use edit), qualification apply/list/suspend/resume/revoke, cases (form,
list, Excel, void), quality indicators."""

from __future__ import annotations

from datetime import date, timedelta

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user

from app.auth.access import require
from app.auth.services import has_permission
from app.core.paging import paginate
from app.db import db
from app.errors import NotFound, ValidationFailed
from app.forms import start as start_forms
from app.technology.models.day_surgery import GRADE_LABELS
from app.technology.services import common
from app.technology.services import day_surgery as services
from app.technology.views import bp
from app.technology.views._helpers import date_arg, error_map, int_arg, submit_application, text_arg, xlsx

VIEW_OR_RECORD = ("technology.view", "technology.day_surgery")


CATALOGUE_EDITORS = ("technology.manage", "privileges.manage")


@bp.get("/day-surgery/catalogue")
@require("technology.view", "technology.apply", "technology.day_surgery", *CATALOGUE_EDITORS)
def day_surgery_catalogue():
    can_edit = services.may_edit_catalogue(current_user)
    # editors also see the items out of use (to put them back)
    page = paginate(services.catalogue_query(q=text_arg("q"), specialty=text_arg("specialty"),
                                             active_only=not can_edit), per_page=50)
    return render_template("technology/day_surgery_catalogue.html", page=page, specialties=services.specialties(),
                           can_edit=can_edit)


def _procedure_form(*, procedure, values: dict, errors: dict[str, str], status: int = 200):
    return render_template("technology/day_surgery_procedure_form.html", procedure=procedure, values=values,
                           errors=errors, grades=GRADE_LABELS), status


@bp.get("/day-surgery/catalogue/<int:procedure_id>/edit")
@require(*CATALOGUE_EDITORS)
def edit_day_surgery_procedure(procedure_id: int):
    procedure = services.get_procedure(procedure_id)
    return _procedure_form(procedure=procedure, values={"grade": procedure.grade, "is_active": procedure.is_active},
                           errors={})


@bp.post("/day-surgery/catalogue/<int:procedure_id>/edit")
@require(*CATALOGUE_EDITORS)
def update_day_surgery_procedure(procedure_id: int):
    procedure = services.get_procedure(procedure_id)
    values = {"grade": request.form.get("grade", ""), "is_active": request.form.get("is_active") == "1"}
    try:
        services.update_procedure(procedure=procedure, data=values, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        return _procedure_form(procedure=services.get_procedure(procedure_id), values=values,
                               errors=error_map(exc), status=400)
    db.session.commit()
    flash(f"已核定：{procedure.procedure_name}（{procedure.grade_label}，{'在用' if procedure.is_active else '停用'}）",
          "success")
    return redirect(url_for("technology.day_surgery_catalogue", q=procedure.code))


def _apply_page(*, data: dict | None, errors: dict[str, str], status: int = 200):
    form = start_forms.start_form(services.FORM_KEY)
    procedures = list(db.session.scalars(services.catalogue_query()))
    choices = {"procedure_ids": [(p.id, services.procedure_label(p)) for p in procedures]}
    return render_template("technology/day_surgery_apply.html", form=form, errors=errors, procedures=procedures,
                           fields=start_forms.render(form, data, errors, choices=choices)), status


@bp.get("/day-surgery/apply")
@require("technology.apply")
def day_surgery_apply_form():
    form = start_forms.start_form(services.FORM_KEY)
    chosen = [int(v) for v in request.args.getlist("procedure") if v.isdigit()]
    return _apply_page(data=start_forms.initial(form, {"procedure_ids": chosen or None}), errors={})


@bp.post("/day-surgery/apply")
@require("technology.apply")
def day_surgery_apply():
    return submit_application(apply=services.apply, form_key=services.FORM_KEY, page=_apply_page,
                              done=lambda row: (f"日间手术资质申请已提交（编号 {row.number}），进入科室审核",
                                                url_for("technology.day_surgery_application", application_id=row.id)))


@bp.get("/day-surgery/applications/<int:application_id>")
@require()
def day_surgery_application(application_id: int):
    application = services.get_application(application_id=application_id, viewer=current_user)
    return render_template("technology/day_surgery_application.html", application=application,
                           procedures=services.procedures_of(application),
                           progress=common.instance_progress([application.instance_id]).get(
                               application.instance_id or 0),
                           open_steps=common.ready_tasks(application.instance_id))


@bp.get("/day-surgery/qualifications")
@require("technology.view")
def day_surgery_qualifications():
    page = paginate(services.qualifications_query(viewer=current_user, dept_id=int_arg("dept"), q=text_arg("q")))
    applications = list(db.session.scalars(services.applications_query(viewer=current_user).limit(50)))
    return render_template("technology/day_surgery_qualifications.html", page=page, applications=applications,
                           procedures_of=services.procedures_of,
                           departments=common.visible_departments(current_user, "technology.view"),
                           progress=common.instance_progress([a.instance_id for a in applications]),
                           can_manage=common.may_manage(current_user))


QUALIFICATION_ACTIONS = {
    "suspend": (services.suspend_qualification, "已暂停"),
    "resume": (services.resume_qualification, "已恢复"),
    "revoke": (services.revoke_qualification, "已取消"),
}


@bp.post("/day-surgery/qualifications/<int:qualification_id>/<action>")
@require("technology.manage")
def change_day_surgery_qualification(qualification_id: int, action: str):
    if action not in QUALIFICATION_ACTIONS:
        raise NotFound("没有该操作")
    qualification = services.get_qualification(qualification_id, manager=current_user)
    change, done = QUALIFICATION_ACTIONS[action]
    change(qualification=qualification, reason=request.form.get("reason", ""), actor=current_user)
    db.session.commit()
    flash(f"{qualification.user.name}的日间手术资质（{qualification.procedure.procedure_name}）{done}", "success")
    return redirect(url_for("technology.day_surgery_qualifications"))


def _case_filters() -> services.CaseFilter:
    return services.CaseFilter(start=date_arg("start", None), end=date_arg("end", None), dept_id=int_arg("dept"),
                               outcome=text_arg("outcome"), q=text_arg("q"),
                               unqualified=request.args.get("unqualified") == "1")


def _case_departments():
    perm = "technology.view" if has_permission(current_user, "technology.view") else "technology.day_surgery"
    return common.visible_departments(current_user, perm)


@bp.get("/day-surgery/cases")
@require(*VIEW_OR_RECORD)
def day_surgery_cases():
    page = paginate(services.cases_query(viewer=current_user, filters=_case_filters()))
    return render_template("technology/day_surgery_cases.html", page=page, outcomes=services.OUTCOME_FLAGS,
                           departments=_case_departments(), mask_number=common.mask_number,
                           can_record=has_permission(current_user, "technology.day_surgery"))


@bp.get("/day-surgery/cases/export.xlsx")
@require(*VIEW_OR_RECORD)
def export_day_surgery_cases():
    rows = list(db.session.scalars(services.cases_query(viewer=current_user, filters=_case_filters()).limit(50000)))
    return xlsx(services.cases_workbook(rows), f"日间手术病例_{common.today().isoformat()}.xlsx")


def _case_form(*, values: dict, errors: dict[str, str], status: int = 200):
    departments, surgeons, procedures = services.case_form_choices(current_user)
    return render_template("technology/day_surgery_case_form.html", values=values, errors=errors,
                           departments=departments, surgeons=surgeons, procedures=procedures, grades=GRADE_LABELS,
                           outcomes=services.OUTCOME_FLAGS), status


@bp.get("/day-surgery/cases/new")
@require("technology.day_surgery")
def new_day_surgery_case():
    today = common.today().isoformat()
    return _case_form(values={"dept_id": current_user.dept_id, "scheduled_date": today, "admitted_on": today,
                              "surgery_date": today}, errors={})


@bp.post("/day-surgery/cases/new")
@require("technology.day_surgery")
def create_day_surgery_case():
    values = request.form.to_dict()
    for key in services.OUTCOME_FLAGS:
        values[key] = request.form.get(key) == "1"
    try:
        row, _created = services.record_case(data=values, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        return _case_form(values=values, errors=error_map(exc), status=400)
    db.session.commit()
    flash(f"已登记日间手术病例（{row.procedure_name}）", "success")
    return redirect(url_for("technology.day_surgery_cases"))


@bp.post("/day-surgery/cases/<int:case_id>/void")
@require("technology.day_surgery")
def void_day_surgery_case(case_id: int):
    row = services.get_case(case_id=case_id, viewer=current_user)
    services.void_case(case_row=row, actor=current_user, reason=request.form.get("reason", ""))
    db.session.commit()
    flash("病例已作废（保留记录，不计入指标）", "success")
    return redirect(url_for("technology.day_surgery_cases"))


def _period() -> tuple[date, date]:
    end = date_arg("end", None) or common.today()
    start = date_arg("start", None) or end - timedelta(days=89)
    return start, end


@bp.get("/day-surgery/indicators")
@require("technology.view")
def day_surgery_indicators():
    start, end = _period()
    dept_id = int_arg("dept")
    figures = services.indicators(viewer=current_user, start=start, end=end, dept_id=dept_id)
    by_dept = services.indicators_by_dept(viewer=current_user, start=start, end=end) if not dept_id else []
    return render_template("technology/day_surgery_indicators.html", f=figures, by_dept=by_dept, grades=GRADE_LABELS,
                           rows=services.INDICATOR_ROWS,
                           departments=common.visible_departments(current_user, "technology.view"))


@bp.get("/day-surgery/indicators/export.xlsx")
@require("technology.view")
def export_day_surgery_indicators():
    start, end = _period()
    dept_id = int_arg("dept")
    figures = services.indicators(viewer=current_user, start=start, end=end, dept_id=dept_id)
    by_dept = services.indicators_by_dept(viewer=current_user, start=start, end=end) if not dept_id else []
    label = "全部科室（数据范围内）"
    if dept_id:
        dept = next((d for d in common.visible_departments(current_user, "technology.view") if d.id == dept_id), None)
        label = dept.name if dept else f"科室 {dept_id}"
    data = services.indicators_workbook(figures=figures, by_dept=by_dept, scope_label=label)
    return xlsx(data, f"日间手术质量指标_{start.isoformat()}_{end.isoformat()}.xlsx")
