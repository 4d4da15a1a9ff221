"""高风险诊疗技术 pages: catalogue (+ Excel), add/edit/retire, authorised staff, yearly evaluations."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user

from app.auth.access import require
from app.core.paging import paginate
from app.db import db
from app.errors import NotFound, ValidationFailed
from app.technology.models.high_risk import (
    EVALUATION_STATUS_LABELS,
    HIGH_RISK_CATEGORY_LABELS,
    ITEM_STATUS_LABELS,
    HighRiskAuthorization,
)
from app.technology.services import common
from app.technology.services import high_risk as services
from app.technology.views import bp
from app.technology.views._helpers import error_map, int_arg, text_arg, xlsx


def _filters() -> services.ItemFilter:
    return services.ItemFilter(dept_id=int_arg("dept"), category=text_arg("category"), status=text_arg("status"),
                               q=text_arg("q"), due=request.args.get("due") == "1")


@bp.get("/high-risk/")
@require("technology.view")
def high_risk_items():
    page = paginate(services.items_query(viewer=current_user, filters=_filters()))
    return render_template("technology/high_risk_list.html", page=page, categories=HIGH_RISK_CATEGORY_LABELS,
                           statuses=ITEM_STATUS_LABELS, results=EVALUATION_STATUS_LABELS,
                           departments=common.visible_departments(current_user, "technology.view"),
                           can_manage=common.may_manage(current_user), year=common.today().year, today=common.today())


@bp.get("/high-risk/export.xlsx")
@require("technology.view")
def export_high_risk():
    rows = list(db.session.scalars(services.items_query(viewer=current_user, filters=_filters()).limit(20000)).unique())
    return xlsx(services.export_workbook(rows), f"高风险诊疗技术目录_{common.today().isoformat()}.xlsx")


def _item_form(*, item=None, values: dict, errors: dict[str, str], status: int = 200):
    return render_template("technology/high_risk_form.html", item=item, values=values, errors=errors,
                           departments=services.departments(), categories=HIGH_RISK_CATEGORY_LABELS), status


@bp.get("/high-risk/new")
@require("technology.manage")
def new_high_risk():
    return _item_form(values={}, errors={})


@bp.post("/high-risk/new")
@require("technology.manage")
def create_high_risk():
    values = request.form.to_dict()
    try:
        item = services.create_item(data=values, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        return _item_form(values=values, errors=error_map(exc), status=400)
    db.session.commit()
    flash(f"已加入目录：{item.name}", "success")
    return redirect(url_for("technology.high_risk_item", item_id=item.id))


@bp.get("/high-risk/<int:item_id>/edit")
@require("technology.manage")
def edit_high_risk(item_id: int):
    item = services.get_item(item_id=item_id, viewer=current_user)
    values = {k: getattr(item, k) for k in services.EDITABLE}
    return _item_form(item=item, values=values, errors={})


@bp.post("/high-risk/<int:item_id>/edit")
@require("technology.manage")
def update_high_risk(item_id: int):
    item = services.get_item(item_id=item_id, viewer=current_user)
    values = request.form.to_dict()
    try:
        services.update_item(item=item, data=values, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        item = services.get_item(item_id=item_id, viewer=current_user)
        return _item_form(item=item, values=values, errors=error_map(exc), status=400)
    db.session.commit()
    flash("已保存", "success")
    return redirect(url_for("technology.high_risk_item", item_id=item_id))


@bp.post("/high-risk/<int:item_id>/retire")
@require("technology.manage")
def retire_high_risk(item_id: int):
    item = services.get_item(item_id=item_id, viewer=current_user)
    services.retire_item(item=item, actor=current_user, reason=request.form.get("reason", ""))
    db.session.commit()
    flash("已停用（评估与授权记录保留）", "success")
    return redirect(url_for("technology.high_risk_item", item_id=item_id))


def _item_page(item, *, errors: dict[str, str], values: dict | None = None, status: int = 200):
    evaluations = services.evaluations(item)
    today = common.today()
    return render_template("technology/high_risk_item.html", item=item, grants=services.linked_grants(item),
                           privilege_item=services.privilege_item(item),
                           auth_grants=services.authorisation_grants(item),
                           in_force={a.id for a in item.authorizations if services.authorisation_in_force(a, today)},
                           evaluations=evaluations, candidates=services.staff_candidates(item),
                           can_manage=common.may_manage(current_user), today=today, errors=errors,
                           values=values or {},
                           progress=common.instance_progress([e.instance_id for e in evaluations])), status


@bp.get("/high-risk/<int:item_id>")
@require("technology.view")
def high_risk_item(item_id: int):
    item = services.get_item(item_id=item_id, viewer=current_user)
    return _item_page(item, errors={})


@bp.post("/high-risk/<int:item_id>/staff")
@require("technology.manage")
def authorize_high_risk(item_id: int):
    item = services.get_item(item_id=item_id, viewer=current_user)
    values = request.form.to_dict()
    try:
        auth = services.authorize(item=item, data=values, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        item = services.get_item(item_id=item_id, viewer=current_user)
        return _item_page(item, errors=error_map(exc), values=values, status=400)
    db.session.commit()
    flash(f"已授权：{auth.user.name}" + ("（已同步医疗权限授权，HIS 可校验）" if auth.grant_id else ""), "success")
    return redirect(url_for("technology.high_risk_item", item_id=item_id))


@bp.post("/high-risk/<int:item_id>/staff/<int:auth_id>/revoke")
@require("technology.manage")
def revoke_high_risk(item_id: int, auth_id: int):
    item = services.get_item(item_id=item_id, viewer=current_user)
    auth = db.session.get(HighRiskAuthorization, auth_id)
    if auth is None or auth.item_id != item.id:
        raise NotFound("授权记录不存在")
    services.revoke_authorization(auth=auth, actor=current_user, reason=request.form.get("reason", ""))
    db.session.commit()
    flash("已取消授权", "success")
    return redirect(url_for("technology.high_risk_item", item_id=item_id))


@bp.post("/high-risk/<int:item_id>/evaluate")
@require("technology.manage")
def evaluate_high_risk(item_id: int):
    item = services.get_item(item_id=item_id, viewer=current_user)
    evaluation = services.start_evaluation(item=item, actor=current_user)
    db.session.commit()
    flash(f"已发起 {evaluation.year} 年度评估，待{item.dept.name}科主任自评", "success")
    return redirect(url_for("technology.high_risk_item", item_id=item_id))


@bp.post("/high-risk/evaluate-all")
@require("technology.manage")
def evaluate_all_high_risk():
    count = services.start_due_evaluations(actor=current_user)
    db.session.commit()
    flash(f"已为 {count} 项技术发起本年度评估" if count else "本年度评估均已发起", "success" if count else "info")
    return redirect(url_for("technology.high_risk_items"))
