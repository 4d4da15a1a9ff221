"""Pages: 申请权限 (catalogue browser + selection), 我的申请, 授权查询 (+ Excel), 权限目录."""

from __future__ import annotations

from io import BytesIO

from flask import Blueprint, flash, redirect, render_template, request, send_file, session, url_for
from flask_login import current_user
from sqlalchemy import select

from app.auth.access import require
from app.core.paging import paginate
from app.db import db
from app.errors import ValidationFailed
from app.privileges import services
from app.privileges.models import GRANT_STATUS_LABELS, PrivilegeItem

bp = Blueprint("privileges", __name__, url_prefix="/privileges")

CART_KEY = "privilege_cart"
CART_MAX = 50
GRADE_OPTIONS = [(1, "一级 / 非限制使用级 / 普通使用级"), (2, "二级 / 限制使用级"), (3, "三级 / 特殊使用级"), (4, "四级")]


def _int_arg(name: str) -> int | None:
    value = request.args.get(name, "")
    return int(value) if value.isdigit() else None


def _catalogue_page():
    stmt = services.catalogue_query(category=request.args.get("category") or None,
                                    q=(request.args.get("q") or "").strip() or None,
                                    grade_level=_int_arg("grade"))
    return paginate(stmt)


def _cart_ids() -> list[int]:
    return [int(i) for i in session.get(CART_KEY, []) if str(i).isdigit()]


def _unique_ids(values: list[str]) -> list[str]:
    seen: list[str] = []
    for v in values:
        v = v.strip()
        if v and v not in seen:
            seen.append(v)
    return seen


def _render_apply(*, errors: list[dict[str, str]] | None = None, submitted: list[str] | None = None,
                  reason: str = "", status: int = 200):
    cart = _cart_ids()
    cart_items = {i.id: i for i in db.session.scalars(select(PrivilegeItem).where(PrivilegeItem.id.in_(cart)))}
    item_errors: dict[str, str] = {}
    field_errors: dict[str, str] = {}
    for err in errors or []:
        path = err["path"]
        if path.startswith("item_ids/") and submitted is not None:
            idx = int(path.split("/", 1)[1])
            item_errors[submitted[idx] if idx < len(submitted) else path] = err["message"]
        else:
            field_errors[path] = err["message"]
    return render_template(
        "privileges/apply.html", page=_catalogue_page(), categories=services.categories(),
        grade_options=GRADE_OPTIONS, cart=[cart_items[i] for i in cart if i in cart_items],
        item_errors=item_errors, field_errors=field_errors, reason=reason,
        checked=set(submitted or []),
    ), status


@bp.get("/apply")
@require("privileges.apply")
def apply():
    return _render_apply()


@bp.post("/apply/cart")
@require("privileges.apply")
def cart():
    ids = _cart_ids()
    if request.form.get("remove"):
        ids = [i for i in ids if str(i) != request.form["remove"]]
    elif request.form.get("clear"):
        ids = []
    else:
        for raw in request.form.getlist("item_ids"):
            if raw.isdigit() and int(raw) not in ids and len(ids) < CART_MAX:
                ids.append(int(raw))
    session[CART_KEY] = ids
    target = request.form.get("next") or ""
    if not target.startswith("/privileges/") or target.startswith("//"):
        target = url_for("privileges.apply")
    return redirect(target)


@bp.post("/apply")
@require("privileges.apply")
def submit():
    item_ids = _unique_ids(request.form.getlist("item_ids"))
    reason = request.form.get("reason") or ""
    try:
        application = services.apply(applicant=current_user, item_ids=item_ids, reason=reason)
    except ValidationFailed as exc:  # nothing was written: validation runs before any insert
        return _render_apply(errors=exc.errors, submitted=item_ids, reason=reason, status=400)
    db.session.commit()
    session.pop(CART_KEY, None)
    flash(f"申请已提交（编号 {application.number}），可在“我的权限申请”中查看审批进度", "success")
    return redirect(url_for("privileges.my_applications"))


@bp.get("/applications")
@require("privileges.apply")
def my_applications():
    page = paginate(services.my_applications(current_user))
    progress = services.instance_progress([a.instance_id for a in page.items if a.instance_id])
    return render_template("privileges/applications.html", page=page, progress=progress)


@bp.get("/applications/<int:application_id>")
@require("privileges.apply", "privileges.view")
def application_detail(application_id: int):
    application = services.get_application(application_id=application_id, viewer=current_user)
    progress = services.instance_progress([application.instance_id] if application.instance_id else [])
    grants = services.grants_for_application(application)
    return render_template("privileges/application.html", application=application, grants=grants,
                           progress=progress.get(application.instance_id or 0))


def _grant_filter() -> services.GrantFilter:
    return services.GrantFilter(category=request.args.get("category") or None, dept_id=_int_arg("dept"),
                                status=request.args.get("status") or None,
                                validity=request.args.get("validity") or None,
                                q=(request.args.get("q") or "").strip() or None)


@bp.get("/grants")
@require("privileges.view")
def grants():
    today = services.today()
    page = paginate(services.grants_query(viewer=current_user, filters=_grant_filter(), on=today))
    return render_template(
        "privileges/grants.html", page=page, today=today, categories=services.categories(),
        departments=services.visible_departments(current_user), status_labels=GRANT_STATUS_LABELS,
        validity_labels=services.VALIDITY_LABELS, display_status=services.display_status,
        summary=services.grant_counts_by_category(viewer=current_user),
    )


@bp.get("/grants/export.xlsx")
@require("privileges.view")
def export_grants():
    today = services.today()
    rows = db.session.scalars(services.grants_query(viewer=current_user, filters=_grant_filter(), on=today)
                              .limit(50000)).unique()
    data = services.grants_workbook(rows, on=today)
    return send_file(BytesIO(data), as_attachment=True, download_name=f"医疗权限授权_{today.isoformat()}.xlsx",
                     mimetype="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")


@bp.get("/catalogue")
@require("privileges.view", "privileges.apply", "privileges.manage")
def catalogue():
    return render_template("privileges/catalogue.html", page=_catalogue_page(), categories=services.categories(),
                           grade_options=GRADE_OPTIONS)
