"""Form template admin pages: list, versions, editor, preview (permission forms.admin)."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, or_, select

from app.auth.access import require
from app.core.paging import paginate
from app.db import db
from app.errors import Conflict, NotFound, ValidationFailed
from app.forms import editor, services
from app.forms.models import FormTemplate

bp = Blueprint("forms", __name__, url_prefix="/admin/forms")


def _key_or_404(key: str) -> str:
    if not services.KEY_RE.match(key):
        abort(404)
    return key


@bp.get("/")
@require("forms.admin")
def index():
    latest = (select(FormTemplate.key, func.max(FormTemplate.version).label("latest"),
                     func.count(FormTemplate.id).label("versions"))
              .group_by(FormTemplate.key).subquery())
    stmt = (select(FormTemplate, latest.c.versions)
            .join(latest, (FormTemplate.key == latest.c.key) & (FormTemplate.version == latest.c.latest))
            .order_by(FormTemplate.key))
    q = (request.args.get("q") or "").strip()
    if q:
        like = f"%{q}%"
        stmt = stmt.where(or_(FormTemplate.key.ilike(like), FormTemplate.schema["title"].as_string().ilike(like)))
    return render_template("forms/index.html", page=paginate(stmt, scalars=False), q=q)


@bp.get("/new")
@require("forms.admin")
def new():
    key = (request.args.get("key") or "").strip()
    if not services.KEY_RE.match(key):
        flash("表单编码只能用小写字母、数字和下划线，且以字母开头", "error")
        return redirect(url_for("forms.index"))
    return redirect(url_for("forms.edit", key=key))


@bp.post("/sync")
@require("forms.admin")
def sync():
    count = services.sync_files()
    db.session.commit()
    flash(f"已从 forms/ 目录同步 {count} 个新版本" if count else "forms/ 目录中的表单均已是最新", "success")
    return redirect(url_for("forms.index"))


@bp.get("/<key>/")
@require("forms.admin")
def detail(key: str):
    versions = services.list_versions(_key_or_404(key))
    if not versions:
        abort(404)
    return render_template("forms/detail.html", key=key, versions=versions, latest=versions[0])


@bp.route("/<key>/edit", methods=["GET", "POST"])
@require("forms.admin")
def edit(key: str):
    _key_or_404(key)
    errors: dict[str, str] = {}
    if request.method == "GET":
        try:
            form = services.get_form(key)
            state = editor.state_from_form(form.schema, form.ui, version=form.version)
        except NotFound:
            state = editor.EditorState(rows=[editor.FieldRow()])
        return render_template("forms/edit.html", key=key, state=state, errors=errors, editor=editor)
    state = editor.state_from_formdata(request.form)
    action = request.form.get("action") or "noop"
    if action != "save":
        try:
            editor.apply_action(state, action)
        except ValidationFailed as exc:
            errors = {e["path"]: e["message"] for e in exc.errors}
            flash(exc.message, "error")
            return render_template("forms/edit.html", key=key, state=state, errors=errors, editor=editor), 400
        return render_template("forms/edit.html", key=key, state=state, errors=errors, editor=editor)
    try:
        row, saved = editor.save(key=key, state=state, actor=current_user)
    except ValidationFailed as exc:
        errors = {e["path"]: e["message"] for e in exc.errors}
        flash(exc.message, "error")
        return render_template("forms/edit.html", key=key, state=state, errors=errors, editor=editor), 400
    except Conflict as exc:
        flash(exc.message, "error")
        return render_template("forms/edit.html", key=key, state=state, errors=errors, editor=editor), 409
    db.session.commit()
    flash(f"已保存为第 {row.version} 版" if saved else "内容没有变化，未生成新版本", "success")
    return redirect(url_for("forms.detail", key=key))


@bp.route("/<key>/v<int:version>", methods=["GET", "POST"])
@require("forms.admin")
def preview(key: str, version: int):
    form = services.get_form(_key_or_404(key), version)
    row = db.session.scalar(select(FormTemplate).where(FormTemplate.key == key, FormTemplate.version == version))
    data, errors, result = None, None, None
    if request.method == "POST":
        # a trial fill: parsed and validated like a real submission, never stored
        data = services.parse_submission(form, request.form)
        try:
            result = services.validate(form, data)
        except ValidationFailed as exc:
            errors = exc.errors
    fields = services.render(form, data=data, errors=errors)
    return render_template("forms/preview.html", key=key, form=form, row=row, fields=fields, errors=errors,
                           result=result, readonly_view=services.render(form, data=result, readonly=True)
                           if result is not None else None)
