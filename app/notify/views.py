"""Notification pages: the list, one's own notification accounts, and the admin pages for everyone's accounts
and the department group robots."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from app.auth.access import require
from app.auth.models import Department, User
from app.core.paging import paginate
from app.db import db
from app.errors import ValidationFailed
from app.notify import services
from app.notify.models import DeptRobot, Notification

bp = Blueprint("notify", __name__, url_prefix="/notifications")

ACCOUNTS_ADMIN = "users.manage"
ROBOTS_ADMIN = "integration.admin"


def _errors(exc: ValidationFailed) -> dict[str, str]:
    return {e["path"]: e["message"] for e in exc.errors}


@bp.get("/")
@require()
def index():
    stmt = select(Notification).where(Notification.user_id == current_user.id).order_by(Notification.id.desc())
    if request.args.get("unread"):
        stmt = stmt.where(Notification.read_at.is_(None))
    return render_template("notify/index.html", page=paginate(stmt))


@bp.post("/read")
@require()
def read():
    nid = request.form.get("id", type=int)
    services.mark_read(user_id=current_user.id, notification_id=nid)
    db.session.commit()
    target = request.form.get("next")
    if target and target.startswith("/") and not target.startswith("//"):
        return redirect(target)
    return redirect(url_for("notify.index"))


# ---------------------------------------------------------------- accounts


def _account_form(user: User, *, admin: bool, values: dict[str, str] | None = None,
                  errors: dict[str, str] | None = None, status: int = 200):
    return render_template("notify/account_form.html", target=user, admin=admin,
                           values=values if values is not None else services.accounts_of(user.id),
                           errors=errors or {}, channels=services.CHANNELS, active=services.push_channel()), status


def _save_accounts(user: User, *, admin: bool, done_url: str):
    values = {c: request.form.get(c, "") for c in services.CHANNELS}
    try:
        services.set_accounts(user=user, values=dict(values), actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        return _account_form(db.get_or_404(User, user.id), admin=admin, values=values, errors=_errors(exc),
                             status=400)
    db.session.commit()
    flash("通知账号已保存", "success")
    return redirect(done_url)


@bp.route("/settings", methods=["GET", "POST"])
@require()
def settings():
    user = db.get_or_404(User, current_user.id)
    if request.method == "GET":
        return _account_form(user, admin=False)
    return _save_accounts(user, admin=False, done_url=url_for("notify.settings"))


@bp.post("/settings/test")
@require()
def send_test():
    services.send_test(user=db.get_or_404(User, current_user.id))
    db.session.commit()
    if services.push_channel():
        flash("测试通知已发出：站内消息已生成，外部通知已加入发件箱（绑定了账号时）", "success")
    else:
        flash("测试通知已发出（当前未启用外部通知渠道，仅站内消息）", "success")
    return redirect(url_for("notify.settings"))


@bp.get("/accounts")
@require(ACCOUNTS_ADMIN)
def accounts():
    bound = request.args.get("bound", "")
    page = paginate(services.account_query(q=request.args.get("q", "").strip()[:64] or None,
                                           bound=bound if bound in ("yes", "no") else None))
    return render_template("notify/accounts.html", page=page, channels=services.CHANNELS,
                           accounts=services.accounts_for(u.id for u in page.items), mask=services.mask_account,
                           active=services.push_channel())


@bp.route("/accounts/<int:user_id>", methods=["GET", "POST"])
@require(ACCOUNTS_ADMIN)
def edit_account(user_id: int):
    user = db.get_or_404(User, user_id)
    if request.method == "GET":
        return _account_form(user, admin=True)
    return _save_accounts(user, admin=True, done_url=url_for("notify.accounts"))


# ---------------------------------------------------------------- department group robots


@bp.get("/robots")
@require(ROBOTS_ADMIN)
def robots():
    rows = list(db.session.scalars(services.robot_query()))
    return render_template("notify/robots.html", robots=rows, mask=services.mask_webhook,
                           depts={d.id: d for d in db.session.scalars(
                               select(Department).where(Department.id.in_([r.dept_id for r in rows])))})


def _robot_form(robot: DeptRobot | None, form: dict, errors: dict[str, str] | None = None, status: int = 200):
    departments = list(db.session.scalars(select(Department).where(Department.is_active.is_(True))
                                          .order_by(Department.code)))
    return render_template("notify/robot_form.html", robot=robot, form=form, errors=errors or {},
                           departments=departments, mask=services.mask_webhook), status


def _robot_input() -> dict:
    dept = (request.form.get("dept_id") or "").strip()
    return {"dept_id": int(dept) if dept.isdigit() else None, "webhook_url": request.form.get("webhook_url", ""),
            "secret": request.form.get("secret", ""), "clear_secret": bool(request.form.get("clear_secret")),
            "is_active": bool(request.form.get("is_active"))}


def _save_robot(robot: DeptRobot | None):
    form = _robot_input()
    try:
        saved = services.save_robot(robot=robot, actor=current_user, **form)
    except ValidationFailed as exc:
        db.session.rollback()
        again = db.session.get(DeptRobot, robot.id) if robot else None
        return _robot_form(again, {**form, "secret": ""}, _errors(exc), status=400)
    db.session.commit()
    dept = db.session.get(Department, saved.dept_id)
    flash(f"科室群机器人已保存：{dept.name if dept else saved.dept_id}", "success")
    return redirect(url_for("notify.robots"))


@bp.route("/robots/new", methods=["GET", "POST"])
@require(ROBOTS_ADMIN)
def new_robot():
    if request.method == "GET":
        return _robot_form(None, {"dept_id": None, "webhook_url": "", "secret": "", "is_active": True})
    return _save_robot(None)


@bp.route("/robots/<int:robot_id>", methods=["GET", "POST"])
@require(ROBOTS_ADMIN)
def edit_robot(robot_id: int):
    robot = db.get_or_404(DeptRobot, robot_id)
    if request.method == "GET":
        return _robot_form(robot, {"dept_id": robot.dept_id, "webhook_url": robot.webhook_url, "secret": "",
                                   "is_active": robot.is_active})
    return _save_robot(robot)


@bp.post("/robots/<int:robot_id>/test")
@require(ROBOTS_ADMIN)
def test_robot(robot_id: int):
    services.send_robot_test(robot=db.get_or_404(DeptRobot, robot_id))
    db.session.commit()
    flash("测试消息已加入发件箱，将由后台任务发送（可在接口发件箱查看结果）", "success")
    return redirect(url_for("notify.robots"))
