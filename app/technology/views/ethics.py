"""伦理审查 pages: apply, list (+ Excel), detail, 确定审查方式与委员, decision letter (.docx)."""

from __future__ import annotations

from io import BytesIO

from flask import flash, redirect, render_template, send_file, url_for
from flask_login import current_user

from app.auth.access import require
from app.core.paging import paginate
from app.db import db
from app.errors import ValidationFailed
from app.forms import start as start_forms
from app.technology.models.ethics import (
    DECISION_LABELS,
    ETHICS_STATUS_LABELS,
    MODE_LABELS,
    OPINION_LABELS,
    REVIEW_ITEMS,
    SOURCE_LABELS,
)
from app.technology.services import common
from app.technology.services import ethics as services
from app.technology.views import bp
from app.technology.views._helpers import error_map, submit_application, text_arg, xlsx
from app.technology.views.new_tech import ethics_setup_page, ethics_values

LIST_PERMISSIONS = ("technology.view", "technology.manage", "technology.apply", "ethics.review")


def _filters() -> services.EthicsFilter:
    return services.EthicsFilter(status=text_arg("status"), mode=text_arg("mode"), source_kind=text_arg("source"),
                                 q=text_arg("q"))


@bp.get("/ethics/")
@require(*LIST_PERMISSIONS)
def ethics_reviews():
    page = paginate(services.reviews_query(viewer=current_user, filters=_filters()))
    return render_template("technology/ethics_list.html", page=page, statuses=ETHICS_STATUS_LABELS, modes=MODE_LABELS,
                           sources=SOURCE_LABELS, decisions=DECISION_LABELS,
                           progress=common.instance_progress([r.instance_id for r in page.items]))


@bp.get("/ethics/export.xlsx")
@require(*LIST_PERMISSIONS)
def export_ethics():
    rows = list(db.session.scalars(services.reviews_query(viewer=current_user, filters=_filters()).limit(20000)).unique())
    return xlsx(services.export_workbook(rows), f"伦理审查_{common.today().isoformat()}.xlsx")


def _apply_page(*, data: dict | None, errors: dict[str, str], status: int = 200):
    form = start_forms.start_form(services.FORM_KEY)
    return render_template("technology/ethics_apply.html", form=form, errors=errors,
                           fields=start_forms.render(form, data, errors)), status


@bp.get("/ethics/apply")
@require("technology.apply")
def apply_ethics_form():
    return _apply_page(data=None, errors={})


@bp.post("/ethics/apply")
@require("technology.apply")
def apply_ethics():
    return submit_application(apply=services.apply, form_key=services.FORM_KEY, page=_apply_page,
                              done=lambda row: (f"伦理审查申请已提交（编号 {row.number}），等待伦理委员会办公室确定审查方式与委员",
                                                url_for("technology.ethics_review", review_id=row.id)))


@bp.get("/ethics/<int:review_id>")
@require()
def ethics_review(review_id: int):
    review = services.get_review(review_id=review_id, viewer=current_user)
    return render_template("technology/ethics_review.html", review=review, summary=services.summary(review),
                           members=services.members(review), items=REVIEW_ITEMS, opinions=OPINION_LABELS,
                           progress=common.instance_progress([review.instance_id]).get(review.instance_id or 0),
                           open_steps=common.ready_tasks(review.instance_id), can_manage=common.may_manage(current_user))


@bp.get("/ethics/<int:review_id>/setup")
@require("technology.manage")
def ethics_setup_form(review_id: int):
    review = services.get_review(review_id=review_id, viewer=current_user)
    common.ready_task(review.instance_id, "ethics_setup", what="确定审查方式与委员")
    return ethics_setup_page(title=f"确定审查方式与委员：{review.title}",
                             back_url=url_for("technology.ethics_review", review_id=review.id),
                             action=url_for("technology.ethics_setup", review_id=review.id), errors={},
                             values={"review_items": list(REVIEW_ITEMS)}, forced_mode=None)


@bp.post("/ethics/<int:review_id>/setup")
@require("technology.manage")
def ethics_setup(review_id: int):
    review = services.get_review(review_id=review_id, viewer=current_user)
    values = ethics_values()
    try:
        services.setup_review(review=review, actor=current_user, data=values)
    except ValidationFailed as exc:
        db.session.rollback()
        return ethics_setup_page(title=f"确定审查方式与委员：{review.title}",
                                 back_url=url_for("technology.ethics_review", review_id=review_id),
                                 action=url_for("technology.ethics_setup", review_id=review_id),
                                 errors=error_map(exc), values=values, forced_mode=None, status=400)
    db.session.commit()
    flash("已确定审查方式与委员，每位委员各收到一个审查任务", "success")
    return redirect(url_for("technology.ethics_review", review_id=review_id))


@bp.get("/ethics/<int:review_id>/letter.docx")
@require()
def ethics_letter(review_id: int):
    review = services.get_review(review_id=review_id, viewer=current_user)
    data = services.letter_docx(review=review)
    return send_file(BytesIO(data), as_attachment=True, download_name=f"伦理审查决定书_{review.number}.docx",
                     mimetype="application/vnd.openxmlformats-officedocument.wordprocessingml.document")
