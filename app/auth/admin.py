"""People-and-access administration pages (用户管理、角色与权限、院区与科室) and the self-service password page."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, send_file, url_for
from flask_login import current_user
from werkzeug.datastructures import MultiDict

from app.auth import services
from app.auth.access import require, token_request
from app.auth.models import Campus, Department, Role, User
from app.auth.permissions import PERMISSIONS
from app.core.paging import paginate
from app.db import db
from app.errors import DomainError, Forbidden, ValidationFailed

bp = Blueprint("auth_admin", __name__, url_prefix="/admin")
account_bp = Blueprint("account", __name__, url_prefix="/account")

MANAGE = "users.manage"

# pages a user who must change their password may still reach
PASSWORD_CHANGE_EXEMPT = {"account.change_password", "auth.logout", "auth.login", "static", "home.vendor",
                          "home.healthz"}


def _errors(exc: ValidationFailed) -> dict[str, str]:
    return {e["path"]: e["message"] for e in exc.errors}


def _int(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdigit() else None


def _safe_next(target: str | None, default: str) -> str:
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return default


def _done(message: str, target: str):
    db.session.commit()
    flash(message, "success")
    return redirect(target)


def _failed(exc: DomainError, target: str):
    db.session.rollback()
    flash(exc.message, "error")
    return redirect(target)


# --- users -----------------------------------------------------------------------------------------


@bp.get("/")
@require(MANAGE)
def index():
    return redirect(url_for("auth_admin.users"))


def _user_filters() -> dict[str, Any]:
    return {"q": request.args.get("q", ""), "dept_id": _int(request.args.get("dept")),
            "role_code": request.args.get("role", ""), "status": request.args.get("status", "")}


@bp.get("/users")
@require(MANAGE)
def users():
    page = paginate(services.user_query(**_user_filters()))
    return render_template(
        "auth/admin/users.html", page=page, departments=services.assignable_departments(),
        roles=services.all_roles(), statuses=services.USER_STATUSES, status_of=services.user_status,
        scopes=services.SCOPE_LABELS,
    )


@bp.get("/users/export.xlsx")
@require(MANAGE)
def export_users():
    data = services.export_users(services.user_query(**_user_filters()))
    return send_file(BytesIO(data), as_attachment=True, download_name="users.xlsx",
                     mimetype="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")


def _user_input(form: MultiDict) -> services.UserInput:
    return services.UserInput(
        username=form.get("username", ""), name=form.get("name", ""), staff_no=form.get("staff_no"),
        dept_id=_int(form.get("dept_id")), title=form.get("title"), phone=form.get("phone"),
        role_scopes={code: form.get(f"scope-{code}", "") for code in form.getlist("roles")},
    )


def _render_user_form(user: User | None, data: services.UserInput, errors: dict[str, str] | None = None,
                      reset_errors: dict[str, str] | None = None, status: int = 200):
    return render_template(
        "auth/admin/user_form.html", user=user, form=data, errors=errors or {}, reset_errors=reset_errors or {},
        departments=services.assignable_departments(keep_id=user.dept_id if user else None),
        roles=services.all_roles(), scopes=services.SCOPE_LABELS, default_scope=services.default_scope,
        status_label=services.USER_STATUSES[services.user_status(user)] if user else None,
        mask_phone=services.mask_phone,
    ), status


@bp.route("/users/new", methods=["GET", "POST"])
@require(MANAGE)
def new_user():
    if request.method == "GET":
        return _render_user_form(None, services.UserInput())
    data = _user_input(request.form)
    try:
        user = services.add_user(data=data, password=request.form.get("password", ""),
                                 confirm_password=request.form.get("confirm_password", ""), actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        return _render_user_form(None, data, _errors(exc), status=400)
    return _done(f"已新建用户 {user.name}（{user.username}），首次登录须修改初始密码",
                 url_for("auth_admin.edit_user", user_id=user.id))


@bp.route("/users/<int:user_id>", methods=["GET", "POST"])
@require(MANAGE)
def edit_user(user_id: int):
    user = db.get_or_404(User, user_id)
    if request.method == "GET":
        return _render_user_form(user, services.UserInput.of(user))
    data = _user_input(request.form)
    try:
        services.update_user(user=user, data=data, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        return _render_user_form(db.get_or_404(User, user_id), data, _errors(exc), status=400)
    return _done("用户信息已保存", url_for("auth_admin.edit_user", user_id=user_id))


def _user_action(user_id: int, action, message: str):
    user = db.get_or_404(User, user_id)
    target = _safe_next(request.form.get("next"), url_for("auth_admin.edit_user", user_id=user_id))
    try:
        action(user=user, actor=current_user)
    except DomainError as exc:
        return _failed(exc, target)
    return _done(message.format(name=user.name), target)


@bp.post("/users/<int:user_id>/disable")
@require(MANAGE)
def disable_user(user_id: int):
    return _user_action(user_id, services.disable_user, "已停用 {name} 的账号")


@bp.post("/users/<int:user_id>/enable")
@require(MANAGE)
def enable_user(user_id: int):
    return _user_action(user_id, services.enable_user, "已启用 {name} 的账号")


@bp.post("/users/<int:user_id>/unlock")
@require(MANAGE)
def unlock_user(user_id: int):
    return _user_action(user_id, services.unlock_user, "已解除 {name} 的登录锁定")


@bp.post("/users/<int:user_id>/reset-password")
@require(MANAGE)
def reset_password(user_id: int):
    user = db.get_or_404(User, user_id)
    try:
        services.reset_password(user=user, password=request.form.get("new_password", ""),
                                confirm_password=request.form.get("confirm_password", ""), actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        user = db.get_or_404(User, user_id)
        return _render_user_form(user, services.UserInput.of(user), reset_errors=_errors(exc), status=400)
    return _done(f"已重置 {user.name} 的密码，其下次登录时须修改密码",
                 url_for("auth_admin.edit_user", user_id=user_id))


# --- roles -----------------------------------------------------------------------------------------


@bp.get("/roles")
@require(MANAGE)
def roles():
    return render_template("auth/admin/roles.html", roles=services.all_roles(), counts=services.role_user_counts(),
                           permissions=PERMISSIONS)


def _render_role_form(role: Role | None, form: dict, errors: dict[str, str] | None = None, status: int = 200):
    return render_template("auth/admin/role_form.html", role=role, form=form, errors=errors or {},
                           permissions=PERMISSIONS), status


def _role_form() -> dict[str, Any]:
    return {"code": request.form.get("code", ""), "name": request.form.get("name", ""),
            "description": request.form.get("description", ""), "permissions": request.form.getlist("permissions")}


@bp.route("/roles/new", methods=["GET", "POST"])
@require(MANAGE)
def new_role():
    if request.method == "GET":
        return _render_role_form(None, {"code": "", "name": "", "description": "", "permissions": ["tasks.work"]})
    form = _role_form()
    try:
        role = services.create_role(**form, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        return _render_role_form(None, form, _errors(exc), status=400)
    return _done(f"已新建角色 {role.name}", url_for("auth_admin.roles"))


@bp.route("/roles/<int:role_id>", methods=["GET", "POST"])
@require(MANAGE)
def edit_role(role_id: int):
    role = db.get_or_404(Role, role_id)
    if request.method == "GET":
        return _render_role_form(role, {"code": role.code, "name": role.name, "description": role.description or "",
                                        "permissions": [rp.permission for rp in role.permissions]})
    form = _role_form()
    form.pop("code")
    try:
        services.update_role(role=role, **form, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        return _render_role_form(db.get_or_404(Role, role_id), {**form, "code": role.code}, _errors(exc), status=400)
    return _done(f"角色 {role.name} 已保存，立即生效", url_for("auth_admin.roles"))


# --- campuses and departments ----------------------------------------------------------------------


@bp.get("/departments")
@require(MANAGE)
def departments():
    stmt = services.department_query(q=request.args.get("q", ""), campus_id=_int(request.args.get("campus")),
                                     kind=request.args.get("kind", ""),
                                     include_inactive=request.args.get("active") != "1")
    return render_template(
        "auth/admin/departments.html", departments=list(db.session.scalars(stmt)), campuses=services.all_campuses(),
        campus_counts=services.campus_department_counts(), user_counts=services.department_user_counts(),
        kinds=services.DEPT_KINDS,
    )


def _department_form() -> dict[str, Any]:
    return {"code": request.form.get("code", ""), "name": request.form.get("name", ""),
            "campus_id": _int(request.form.get("campus_id")), "his_code": request.form.get("his_code", ""),
            "kind": request.form.get("kind", "")}


def _render_department_form(dept: Department | None, form: dict, errors: dict[str, str] | None = None,
                            status: int = 200):
    return render_template("auth/admin/department_form.html", dept=dept, form=form, errors=errors or {},
                           campuses=services.all_campuses(), kinds=services.DEPT_KINDS), status


@bp.route("/departments/new", methods=["GET", "POST"])
@require(MANAGE)
def new_department():
    if request.method == "GET":
        return _render_department_form(None, {"code": "", "name": "", "campus_id": _int(request.args.get("campus")),
                                               "his_code": "", "kind": "clinical"})
    form = _department_form()
    try:
        dept = services.create_department(**form, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        return _render_department_form(None, form, _errors(exc), status=400)
    return _done(f"已新建科室 {dept.name}", url_for("auth_admin.departments"))


@bp.route("/departments/<int:dept_id>", methods=["GET", "POST"])
@require(MANAGE)
def edit_department(dept_id: int):
    dept = db.get_or_404(Department, dept_id)
    if request.method == "GET":
        return _render_department_form(dept, {"code": dept.code, "name": dept.name, "campus_id": dept.campus_id,
                                               "his_code": dept.his_code or "", "kind": dept.kind})
    form = _department_form()
    try:
        services.update_department(dept=dept, **form, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        return _render_department_form(db.get_or_404(Department, dept_id), form, _errors(exc), status=400)
    return _done(f"科室 {dept.name} 已保存", url_for("auth_admin.departments"))


@bp.post("/departments/<int:dept_id>/deactivate")
@require(MANAGE)
def deactivate_department(dept_id: int):
    dept = db.get_or_404(Department, dept_id)
    try:
        services.deactivate_department(dept=dept, actor=current_user)
    except DomainError as exc:
        return _failed(exc, url_for("auth_admin.departments"))
    return _done(f"已停用科室 {dept.name}（原有人员与记录保留）", url_for("auth_admin.departments"))


@bp.post("/departments/<int:dept_id>/activate")
@require(MANAGE)
def activate_department(dept_id: int):
    dept = db.get_or_404(Department, dept_id)
    try:
        services.activate_department(dept=dept, actor=current_user)
    except DomainError as exc:
        return _failed(exc, url_for("auth_admin.departments"))
    return _done(f"已启用科室 {dept.name}", url_for("auth_admin.departments"))


def _campus_form() -> dict[str, Any]:
    return {"code": request.form.get("code", ""), "name": request.form.get("name", "")}


def _render_campus_form(campus: Campus | None, form: dict, errors: dict[str, str] | None = None, status: int = 200):
    return render_template("auth/admin/campus_form.html", campus=campus, form=form, errors=errors or {}), status


@bp.route("/campuses/new", methods=["GET", "POST"])
@require(MANAGE)
def new_campus():
    if request.method == "GET":
        return _render_campus_form(None, {"code": "", "name": ""})
    form = _campus_form()
    try:
        campus = services.create_campus(**form, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        return _render_campus_form(None, form, _errors(exc), status=400)
    return _done(f"已新建院区 {campus.name}", url_for("auth_admin.departments"))


@bp.route("/campuses/<int:campus_id>", methods=["GET", "POST"])
@require(MANAGE)
def edit_campus(campus_id: int):
    campus = db.get_or_404(Campus, campus_id)
    if request.method == "GET":
        return _render_campus_form(campus, {"code": campus.code, "name": campus.name})
    form = _campus_form()
    try:
        services.update_campus(campus=campus, **form, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        return _render_campus_form(db.get_or_404(Campus, campus_id), form, _errors(exc), status=400)
    return _done(f"院区 {campus.name} 已保存", url_for("auth_admin.departments"))


@bp.post("/campuses/<int:campus_id>/deactivate")
@require(MANAGE)
def deactivate_campus(campus_id: int):
    campus = db.get_or_404(Campus, campus_id)
    try:
        services.deactivate_campus(campus=campus, actor=current_user)
    except DomainError as exc:
        return _failed(exc, url_for("auth_admin.departments"))
    return _done(f"已停用院区 {campus.name}", url_for("auth_admin.departments"))


@bp.post("/campuses/<int:campus_id>/activate")
@require(MANAGE)
def activate_campus(campus_id: int):
    campus = db.get_or_404(Campus, campus_id)
    try:
        services.activate_campus(campus=campus, actor=current_user)
    except DomainError as exc:
        return _failed(exc, url_for("auth_admin.departments"))
    return _done(f"已启用院区 {campus.name}", url_for("auth_admin.departments"))


# --- self service ----------------------------------------------------------------------------------


def _password_reason() -> str | None:
    return services.password_change_reason(current_user, max_age_days=current_app.config["PASSWORD_MAX_AGE_DAYS"])


@account_bp.route("/password", methods=["GET", "POST"])
@require()
def change_password():
    next_url = _safe_next(request.values.get("next"), url_for("home.index"))
    if request.method == "GET":
        return render_template("auth/admin/change_password.html", errors={}, reason=_password_reason(),
                               next_url=next_url)
    try:
        services.change_password(user=current_user, old_password=request.form.get("old_password", ""),
                                 new_password=request.form.get("new_password", ""),
                                 confirm_password=request.form.get("confirm_password", ""))
    except ValidationFailed as exc:
        db.session.rollback()
        return render_template("auth/admin/change_password.html", errors=_errors(exc), reason=_password_reason(),
                               next_url=next_url), 400
    return _done("密码已修改", next_url)


def enforce_password_change():
    """Before every request: a user whose password was set by an administrator or has expired goes to the
    change-password page first (等保 2.0 身份鉴别); API calls on such a session get 403."""
    if request.endpoint is None or request.endpoint in PASSWORD_CHANGE_EXEMPT or token_request():
        return None
    if not current_user.is_authenticated:
        return None
    reason = _password_reason()
    if reason is None:
        return None
    if request.path.startswith("/api/"):
        raise Forbidden(reason)
    target = request.full_path if request.method == "GET" else None
    return redirect(url_for("account.change_password", next=target))
