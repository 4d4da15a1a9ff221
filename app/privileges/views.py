"""Pages: 申请权限 (catalogue browser + selection, with each item's eligibility), 我的申请, 授权查询 (+ Excel),
权限目录, 科室技术目录 (+ Excel)."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, send_file, session, url_for
from flask_login import current_user
from sqlalchemy import select

from app.auth.access import require
from app.auth.services import has_permission
from app.core.paging import paginate
from app.db import db
from app.errors import ValidationFailed
from app.forms import start as start_forms
from app.privileges import dept_catalogue, eligibility, services
from app.privileges.models import GRANT_STATUS_LABELS, PrivilegeApplication, PrivilegeItem

bp = Blueprint("privileges", __name__, url_prefix="/privileges")

CART_KEY = "privilege_cart"
CART_MAX = 50
GRADE_OPTIONS = [(1, "一级 / 非限制使用级 / 普通使用级"), (2, "二级 / 限制使用级"), (3, "三级 / 特殊使用级"), (4, "四级")]


def _int_arg(name: str) -> int | None:
    value = request.args.get(name, "")
    return int(value) if value.isdigit() else None


def _catalogue_page(*, dept_id: int | None = None):
    stmt = services.catalogue_query(category=request.args.get("category") or None,
                                    q=(request.args.get("q") or "").strip() or None,
                                    grade_level=_int_arg("grade"), dept_id=dept_id)
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


def _apply_fields(data: dict[str, Any] | None, errors: dict[str, str]):
    """The `privilege_apply` template's fields except the item selection (the catalogue table draws it); the
    office-only override reason only for privileges.manage."""
    form = start_forms.start_form(PrivilegeApplication.FORM_KEY)
    hidden = ["item_ids"] if has_permission(current_user, "privileges.manage") else ["item_ids", "override_reason"]
    return form, start_forms.render(start_forms.without(form, hidden), data, errors)


def _render_apply(*, errors: list[dict[str, str]] | None = None, submitted: list[str] | None = None,
                  data: dict[str, Any] | None = None, status: int = 200):
    cart = _cart_ids()
    cart_items = {i.id: i for i in db.session.scalars(select(PrivilegeItem).where(PrivilegeItem.id.in_(cart)))}
    item_errors: dict[str, str] = {}
    field_errors: dict[str, str] = {}
    for err in errors or []:
        path = err["path"]
        head, _, index = path.partition("/")
        if head == "item_ids" and index.isdigit() and submitted is not None and int(index) < len(submitted):
            item_errors[submitted[int(index)]] = err["message"]
        field_errors[path] = err["message"]
    own_only = request.args.get("mine") == "1"
    page = _catalogue_page(dept_id=current_user.dept_id if own_only else None)
    shown = list({i.id: i for i in [*page.items, *cart_items.values()]}.values())
    names = eligibility.cert_type_names()
    form, fields = _apply_fields(data, field_errors)
    return render_template(
        "privileges/apply.html", page=page, categories=services.categories(),
        grade_options=GRADE_OPTIONS, cart=[cart_items[i] for i in cart if i in cart_items],
        item_errors=item_errors, errors=field_errors, form=form, fields=fields,
        checked=set(submitted or []), own_only=own_only,
        verdicts=eligibility.check_items(current_user, shown, on=services.today()),
        rule_texts={i.id: eligibility.requirements(i, cert_names=names) for i in shown},
        has_dept_catalogue=dept_catalogue.dept_item_ids(current_user.dept_id) is not None,
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
    # the form template's fields as posted, with the ticked and cart items once each
    item_ids = _unique_ids(request.form.getlist("item_ids"))
    data = request.form.copy()
    data.setlist("item_ids", item_ids)
    try:
        application = services.apply(applicant=current_user, data=data, actor=current_user)
    except ValidationFailed as exc:  # nothing was written: validation runs before any insert
        db.session.rollback()
        form = start_forms.start_form(PrivilegeApplication.FORM_KEY)
        return _render_apply(errors=exc.errors, submitted=item_ids, data=start_forms.coerce(form, data), status=400)
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


# ---------------------------------------------------------------- 科室技术目录 (seed 000 §三.9(1))


def _catalogue_dept():
    """The department being looked at: ?dept= when given, else the viewer's own (or the first in scope)."""
    chosen = _int_arg("dept") or request.form.get("dept_id", type=int)
    if chosen is None:
        own = [d for d in dept_catalogue.departments(current_user) if d.id == current_user.dept_id]
        listed = own or dept_catalogue.departments(current_user)
        chosen = listed[0].id if listed else None
    if chosen is None:
        return None
    return dept_catalogue.get_department(viewer=current_user, dept_id=chosen)


def _dept_entries(dept_id: int):
    return dept_catalogue.entries_query(dept_id=dept_id, q=(request.args.get("q") or "").strip() or None,
                                        category=request.args.get("category") or None,
                                        include_removed=request.args.get("removed") == "1")


@bp.get("/dept-catalogue")
@require(dept_catalogue.PERMISSION)
def dept_catalogue_page():
    dept = _catalogue_dept()
    page = paginate(_dept_entries(dept.id)) if dept else None
    return render_template("privileges/dept_catalogue.html", dept=dept, page=page, categories=services.categories(),
                           departments=dept_catalogue.departments(current_user))


@bp.get("/dept-catalogue/export.xlsx")
@require(dept_catalogue.PERMISSION)
def dept_catalogue_export():
    dept = _catalogue_dept()
    if dept is None:
        raise ValidationFailed({"dept": "请选择科室"})
    rows = db.session.scalars(_dept_entries(dept.id).limit(50000)).unique()
    return send_file(BytesIO(dept_catalogue.workbook(rows)), as_attachment=True,
                     download_name=f"科室技术目录_{dept.name}_{services.today().isoformat()}.xlsx",
                     mimetype="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")


def _render_dept_add(dept, *, errors: dict[str, str] | None = None, checked: list[str] | None = None,
                     status: int = 200):
    page = paginate(dept_catalogue.candidates_query(q=(request.args.get("q") or "").strip() or None,
                                                    category=request.args.get("category") or None))
    present = dept_catalogue.active_ids_among(dept.id, [i.id for i in page.items])
    return render_template("privileges/dept_catalogue_add.html", dept=dept, page=page, present=present,
                           categories=services.categories(), errors=errors or {}, checked=set(checked or []),
                           departments=dept_catalogue.departments(current_user)), status


@bp.get("/dept-catalogue/add")
@require(dept_catalogue.PERMISSION)
def dept_catalogue_add_page():
    dept = _catalogue_dept()
    if dept is None:
        raise ValidationFailed({"dept": "请选择科室"})
    return _render_dept_add(dept)


@bp.post("/dept-catalogue/add")
@require(dept_catalogue.PERMISSION)
def dept_catalogue_add():
    dept = _catalogue_dept()
    if dept is None:
        raise ValidationFailed({"dept_id": "请选择科室"})
    item_ids = _unique_ids(request.form.getlist("item_ids"))
    try:
        added = dept_catalogue.add_items(viewer=current_user, dept=dept, item_ids=item_ids)
    except ValidationFailed as exc:
        db.session.rollback()
        errors = {e["path"]: e["message"] for e in exc.errors}
        return _render_dept_add(dept, errors=errors, checked=item_ids, status=400)
    db.session.commit()
    flash(f"已将 {len(added)} 个项目加入{dept.name}的科室技术目录", "success")
    return redirect(url_for("privileges.dept_catalogue_page", dept=dept.id))


@bp.post("/dept-catalogue/<int:entry_id>/remove")
@require(dept_catalogue.PERMISSION)
def dept_catalogue_remove(entry_id: int):
    entry = dept_catalogue.get_entry(viewer=current_user, entry_id=entry_id)
    dept_catalogue.remove_item(viewer=current_user, entry=entry)
    db.session.commit()
    flash(f"已将“{entry.item.name}”移出{entry.dept.name}的科室技术目录", "success")
    return redirect(url_for("privileges.dept_catalogue_page", dept=entry.dept_id))
