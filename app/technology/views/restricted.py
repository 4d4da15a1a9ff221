"""限制类技术 pages: catalogue, apply, list (+ Excel), detail, 提交科学性与伦理审查."""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask_login import current_user

from app.auth.access import require
from app.core.paging import paginate
from app.db import db
from app.errors import ValidationFailed
from app.forms import start as start_forms
from app.technology.models.ethics import REVIEW_ITEMS
from app.technology.models.restricted import RESTRICTED_STATUS_LABELS
from app.technology.services import common, ethics
from app.technology.services import restricted as services
from app.technology.views import bp
from app.technology.views._helpers import error_map, int_arg, submit_application, text_arg, xlsx
from app.technology.views.new_tech import ethics_setup_page, ethics_values


@bp.get("/restricted/catalogue")
@require("technology.view", "technology.apply", "technology.manage")
def restricted_catalogue():
    items = services.catalogue(active_only=False)
    return render_template("technology/restricted_catalogue.html", items=items,
                           privilege_items={t.id: services.privilege_item(t) for t in items})


def _filters() -> services.RestrictedFilter:
    return services.RestrictedFilter(status=text_arg("status"), dept_id=int_arg("dept"),
                                     technology_id=int_arg("technology"), q=text_arg("q"))


@bp.get("/restricted/")
@require("technology.view")
def restricted_list():
    page = paginate(services.applications_query(viewer=current_user, filters=_filters()))
    return render_template("technology/restricted_list.html", page=page, statuses=RESTRICTED_STATUS_LABELS,
                           technologies=services.catalogue(),
                           departments=common.visible_departments(current_user, "technology.view"),
                           progress=common.instance_progress([a.instance_id for a in page.items]))


@bp.get("/restricted/export.xlsx")
@require("technology.view")
def export_restricted():
    rows = list(db.session.scalars(services.applications_query(viewer=current_user, filters=_filters())
                                   .limit(20000)).unique())
    return xlsx(services.export_workbook(rows), f"限制类技术_{common.today().isoformat()}.xlsx")


def _apply_page(*, data: dict | None, errors: dict[str, str], status: int = 200):
    form = start_forms.start_form(services.FORM_KEY)
    choices = {"technology_id": [(t.id, f"{t.seq}. {t.name}") for t in services.catalogue()]}
    return render_template("technology/restricted_apply.html", form=form, errors=errors,
                           fields=start_forms.render(form, data, errors, choices=choices)), status


@bp.get("/restricted/apply")
@require("technology.apply")
def restricted_apply_form():
    form = start_forms.start_form(services.FORM_KEY)
    return _apply_page(data=start_forms.initial(form, {"technology_id": int_arg("technology")}), errors={})


@bp.post("/restricted/apply")
@require("technology.apply")
def restricted_apply():
    return submit_application(apply=services.apply, form_key=services.FORM_KEY, page=_apply_page,
                              done=lambda row: (f"申请已提交（编号 {row.number}），进入专家审查",
                                                url_for("technology.restricted_detail", application_id=row.id)))


@bp.get("/restricted/<int:application_id>")
@require()
def restricted_detail(application_id: int):
    application = services.get_application(application_id=application_id, viewer=current_user)
    return render_template("technology/restricted_detail.html", application=application,
                           progress=common.instance_progress([application.instance_id]).get(application.instance_id or 0),
                           open_steps=common.ready_tasks(application.instance_id),
                           ethics_reviews=ethics.reviews_for_source(source_kind="restricted", source_id=application.id),
                           privilege_item=services.privilege_item(application.technology),
                           dept_grants=services.department_grants(application),
                           can_manage=common.may_manage(current_user))


def _setup_page(application, *, errors, values, status=200):
    return ethics_setup_page(title=f"科学性与伦理审查（会议审查）：{application.technology.name}",
                             back_url=url_for("technology.restricted_detail", application_id=application.id),
                             action=url_for("technology.restricted_ethics", application_id=application.id),
                             errors=errors, values=values, forced_mode="meeting", status=status)


@bp.get("/restricted/<int:application_id>/ethics")
@require("technology.manage")
def restricted_ethics_form(application_id: int):
    application = services.get_application(application_id=application_id, viewer=current_user)
    common.ready_task(application.instance_id, "ethics_submit", what="提交科学性与伦理审查")
    return _setup_page(application, errors={}, values={"mode": "meeting", "review_items": list(REVIEW_ITEMS)})


@bp.post("/restricted/<int:application_id>/ethics")
@require("technology.manage")
def restricted_ethics(application_id: int):
    application = services.get_application(application_id=application_id, viewer=current_user)
    values = ethics_values()
    try:
        services.submit_ethics(application=application, actor=current_user, data=values)
    except ValidationFailed as exc:
        db.session.rollback()
        return _setup_page(application, errors=error_map(exc), values=values, status=400)
    db.session.commit()
    flash(f"已提交科学性与伦理审查（会议审查，至少 {ethics.MIN_MEETING_MEMBERS} 位委员）", "success")
    return redirect(url_for("technology.restricted_detail", application_id=application_id))
