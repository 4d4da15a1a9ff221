"""Pages: 医师档案 list (+ Excel), one person's archive with section tabs, record add/edit/delete/history,
completeness, statistics, section settings, certificates (single, batch, due, types), HR import and
differences, departure and reinstatement."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, send_file, url_for
from flask_login import current_user
from sqlalchemy import select

from app.auth.access import require
from app.auth.models import User
from app.core.paging import paginate
from app.db import db
from app.errors import Forbidden, ValidationFailed
from app.forms import services as forms
from app.forms import start as start_forms

from . import certificates as certs
from . import departure as departures
from . import hr, services
from .models import (
    DEPARTURE_KIND_LABELS,
    DEPARTURE_STATUS_LABELS,
    HR_DIFF_STATUS_LABELS,
    Certificate,
    Departure,
    HrImportBatch,
)

bp = Blueprint("archives", __name__, url_prefix="/archives")

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _int_arg(name: str) -> int | None:
    value = request.args.get(name, "")
    return int(value) if value.isdigit() else None


def _staff(user_id: int) -> User:
    staff = db.session.get(User, user_id)
    if staff is None:
        abort(404)
    services.ensure_can_view(current_user, staff)
    return staff


def _uploads(name: str = "files") -> list[certs.Upload]:
    return [certs.Upload(filename=f.filename or "", content=f.read()) for f in request.files.getlist(name)
            if f and (f.filename or "")]


def _errors_dict(errors: list[dict[str, str]]) -> dict[str, str]:
    return {e["path"]: e["message"] for e in errors}


# ---------------------------------------------------------------- list, export


def _filters() -> services.ArchiveFilter:
    return services.ArchiveFilter(q=(request.args.get("q") or "").strip() or None, dept_id=_int_arg("dept"),
                                  title=request.args.get("title") or None, degree=request.args.get("degree") or None,
                                  bucket=request.args.get("bucket") or None, status=request.args.get("status") or None)


@bp.get("/")
@require()
def index():
    if not services.may_list(current_user):
        return redirect(url_for("archives.mine"))
    page = paginate(services.archive_query(viewer=current_user, filters=_filters()))
    return render_template("archives/index.html", page=page, options=services.filter_options(current_user),
                           buckets=services.COMPLETENESS_BUCKETS, statuses=services.STATUS_FILTERS,
                           archive_status=services.archive_status)


@bp.get("/export.xlsx")
@require("archives.view", "archives.manage", "archives.edit")
def export():
    rows = db.session.scalars(services.archive_query(viewer=current_user, filters=_filters()).limit(50000)).unique()
    data = services.archives_workbook(rows, viewer=current_user)
    return send_file(BytesIO(data), as_attachment=True, mimetype=XLSX,
                     download_name=f"医师档案_{services.today().isoformat()}.xlsx")


@bp.get("/me")
@require()
def mine():
    if services.get_profile(current_user) is None:
        return render_template("archives/none.html"), 200
    return redirect(url_for("archives.show", user_id=current_user.id))


# ---------------------------------------------------------------- one archive


def _tabs(staff: User) -> list[tuple[str, str, int | None]]:
    counts = services.section_counts(staff)
    tabs: list[tuple[str, str, int | None]] = [(services.PROFILE, "基本信息", None)]
    for s in services.sections():
        if s.kind == "records":
            tabs.append((s.key, s.title, counts.get(s.key, 0)))
    tabs.append(("certificates", "证件资料", len(certs.certificates_of(staff))))
    tabs.append(("privileges", "技术授权", None))
    tabs.append(("departure", "离职登记", None))
    return tabs


@bp.get("/<int:user_id>")
@require()
def show(user_id: int):
    staff = _staff(user_id)
    profile = services.get_profile(staff)
    tab = request.args.get("tab") or services.PROFILE
    tabs = _tabs(staff)
    if tab not in {t[0] for t in tabs}:
        abort(404)
    ctx: dict[str, Any] = {}
    if tab == services.PROFILE or tab in services.RECORD_SECTIONS:
        form = services.section_form(tab)
        ctx["form"] = form
        ctx["columns"] = services.list_columns(form)
        ctx["props"] = form.schema.get("properties") or {}
        ctx["mode"] = services.edit_mode(current_user, staff, tab)
        ctx["section"] = services.section(tab)
        if tab == services.PROFILE:
            from app.forms.schema import ordered, properties

            ctx["field_order"] = ordered(properties(form.schema), form.ui)
            ctx["data"] = services.profile_data(staff)
            entry = services.profile_entry(staff)
            ctx["profile_entry"] = entry
            ctx["profile_open"] = services.open_version(entry.id) if entry else None
        else:
            ctx["entries"] = services.section_entries(staff=staff, section_key=tab)
    elif tab == "certificates":
        ctx["certificates"] = certs.certificates_of(staff)
        ctx["can_edit_certs"] = certs.can_edit_certificates(current_user, staff)
        ctx["required_types"] = services.required_certificate_types(title=staff.title, roles=staff.role_codes)
    elif tab == "privileges":
        ctx["grants"] = services.privilege_grants(staff)
        ctx["high_risk"] = services.high_risk_authorizations(staff)
        ctx["day_surgery"] = services.day_surgery_qualifications(staff)
        ctx["projects"] = services.new_tech_projects(staff)
    elif tab == "departure":
        ctx["departures"] = departures.departures_of(staff)
    return render_template(
        "archives/archive.html", staff=staff, profile=profile, tab=tab, tabs=tabs,
        open_changes=services.open_changes(staff), is_manager=services.is_manager(current_user, staff),
        display=services.display_value, shown_id=lambda v: services.shown_id_number(current_user, staff, v),
        today=services.today(), section_titles={s.key: s.title for s in services.SECTIONS}, **ctx)


@bp.post("/create")
@require("archives.manage")
def create_by_staff_no():
    """医务处 opens an archive for an existing account by its staff number."""
    staff_no = (request.form.get("staff_no") or "").strip()
    staff = db.session.scalar(select(User).where(User.staff_no == staff_no)) if staff_no else None
    if staff is None:
        flash(f"工号 {staff_no or '（空）'} 不存在", "error")
        return redirect(url_for("archives.index")), 303
    return create(staff.id)


@bp.post("/<int:user_id>/create")
@require("archives.manage")
def create(user_id: int):
    staff = _staff(user_id)
    if not services.is_manager(current_user, staff):
        abort(403)
    services.ensure_profile(user=staff, actor=current_user)
    db.session.commit()
    flash(f"已为{staff.name}建立档案", "success")
    return redirect(url_for("archives.show", user_id=staff.id))


def _render_record_form(staff: User, section_key: str, *, data: dict[str, Any] | None, errors: Any,
                        entry_id: int | None = None, reason: str = "", status: int = 200):
    form = services.form_for_viewer(services.section_form(section_key), viewer=current_user, staff=staff,
                                    section_key=section_key)
    mode = services.edit_mode(current_user, staff, section_key)
    return render_template("archives/record_form.html", staff=staff, section=services.section(section_key),
                           form_html=forms.render(form, data=data, errors=errors), form=form, mode=mode,
                           entry_id=entry_id, errors=errors or [], reason=reason), status


def _writable(staff: User, section_key: str) -> None:
    """Refuse the form page itself (403) when the viewer may not change the section."""
    if services.edit_mode(current_user, staff, section_key) is None:
        if staff.departed_at is not None:
            raise Forbidden("该人员已离职，档案只读（仅医务处可维护）")
        raise Forbidden(f"没有权限修改该人员的“{services.section(section_key).title}”")


def _submit(staff: User, section_key: str, *, entry_id: int | None):
    form = services.form_for_viewer(services.section_form(section_key), viewer=current_user, staff=staff,
                                    section_key=section_key)
    data = forms.parse_submission(form, request.form)
    reason = request.form.get("reason") or ""
    try:
        row = services.submit_change(staff=staff, section_key=section_key, actor=current_user, data=data,
                                     entry_id=entry_id, reason=reason)
    except ValidationFailed as exc:
        db.session.rollback()
        return _render_record_form(staff, section_key, data=data, errors=exc.errors, entry_id=entry_id,
                                   reason=reason, status=400)
    db.session.commit()
    if row.status == "effective":
        flash("已保存并生效", "success")
    else:
        flash("已提交医务处审核，审核通过后生效", "success")
    return redirect(url_for("archives.show", user_id=staff.id, tab=section_key))


@bp.route("/<int:user_id>/profile/edit", methods=["GET", "POST"])
@require()
def edit_profile(user_id: int):
    staff = _staff(user_id)
    _writable(staff, services.PROFILE)
    if request.method == "POST":
        return _submit(staff, services.PROFILE, entry_id=None)
    entry = services.profile_entry(staff)
    pending = services.open_version(entry.id) if entry else None
    data = dict(pending.data) if pending is not None else services.profile_data(staff)
    return _render_record_form(staff, services.PROFILE, data=data, errors=None)


@bp.route("/<int:user_id>/<section_key>/new", methods=["GET", "POST"])
@require()
def new_record(user_id: int, section_key: str):
    staff = _staff(user_id)
    if section_key not in services.RECORD_SECTIONS:
        abort(404)
    _writable(staff, section_key)
    if request.method == "POST":
        return _submit(staff, section_key, entry_id=None)
    return _render_record_form(staff, section_key, data=None, errors=None)


@bp.route("/<int:user_id>/entries/<int:entry_id>/edit", methods=["GET", "POST"])
@require()
def edit_record(user_id: int, entry_id: int):
    staff = _staff(user_id)
    entry = services.get_entry(entry_id=entry_id, staff=staff)
    _writable(staff, entry.section)
    if request.method == "POST":
        return _submit(staff, entry.section, entry_id=entry.id)
    current = services.open_version(entry.id) or services.effective_version(entry.id)
    return _render_record_form(staff, entry.section, data=dict(current.data) if current else None, errors=None,
                               entry_id=entry.id)


@bp.post("/<int:user_id>/entries/<int:entry_id>/delete")
@require()
def delete_record(user_id: int, entry_id: int):
    staff = _staff(user_id)
    entry = services.get_entry(entry_id=entry_id, staff=staff)
    try:
        row = services.submit_change(staff=staff, section_key=entry.section, actor=current_user, entry_id=entry.id,
                                     delete=True, reason=request.form.get("reason") or "")
    except ValidationFailed as exc:
        db.session.rollback()
        flash("；".join(e["message"] for e in exc.errors), "error")
        return redirect(url_for("archives.show", user_id=staff.id, tab=entry.section)), 303
    db.session.commit()
    flash("已删除" if row.status == "effective" else "删除申请已提交医务处审核", "success")
    return redirect(url_for("archives.show", user_id=staff.id, tab=entry.section))


@bp.get("/<int:user_id>/entries/<int:entry_id>/history")
@require()
def history(user_id: int, entry_id: int):
    staff = _staff(user_id)
    entry = services.get_entry(entry_id=entry_id, staff=staff)
    versions = services.entry_history(entry=entry, viewer=current_user)
    return render_template("archives/history.html", staff=staff, entry=entry, versions=versions,
                           section=services.section(entry.section))


# ---------------------------------------------------------------- completeness, statistics, settings


@bp.get("/completeness")
@require("archives.view", "archives.manage", "archives.edit")
def completeness():
    rows = services.department_completeness(viewer=current_user)
    bucket = request.args.get("bucket") or ""
    f = services.ArchiveFilter(dept_id=_int_arg("dept"), bucket=bucket or None, status="active",
                               q=(request.args.get("q") or "").strip() or None)
    stmt = services.archive_query(viewer=current_user, filters=f)
    if not bucket:
        from .models import ArchiveProfile

        stmt = stmt.where(ArchiveProfile.completeness < 100)
    page = paginate(stmt)
    return render_template("archives/completeness.html", rows=rows, page=page, buckets=services.COMPLETENESS_BUCKETS,
                           options=services.filter_options(current_user))


@bp.get("/stats")
@require("archives.view", "archives.manage", "archives.edit")
def stats():
    include = request.args.get("departed") == "1"
    data = services.statistics(viewer=current_user, include_departed=include)
    return render_template("archives/stats.html", stats=data, include_departed=include)


@bp.get("/stats.xlsx")
@require("archives.view", "archives.manage", "archives.edit")
def stats_export():
    data = services.statistics(viewer=current_user, include_departed=request.args.get("departed") == "1")
    return send_file(BytesIO(services.statistics_workbook(data)), as_attachment=True, mimetype=XLSX,
                     download_name=f"医师档案统计_{services.today().isoformat()}.xlsx")


@bp.route("/settings", methods=["GET", "POST"])
@require("archives.manage")
def settings():
    editable = [s for s in services.sections() if s.editable]
    if request.method == "POST":
        rules = {s.key: {"requires_review": request.form.get(f"{s.key}.requires_review") == "1",
                         "is_required": request.form.get(f"{s.key}.is_required") == "1",
                         "staff_editable": request.form.get(f"{s.key}.staff_editable") == "1"} for s in editable}
        services.save_settings(rules=rules, actor=current_user)
        db.session.commit()
        flash("档案栏目设置已保存，完整度已重新计算", "success")
        return redirect(url_for("archives.settings"))
    return render_template("archives/settings.html", sections=editable)


# ---------------------------------------------------------------- certificates


def _render_cert_form(staff: User, *, cert: Certificate | None, data: dict[str, Any] | None,
                      errors: dict[str, str], status: int = 200):
    form = start_forms.start_form(Certificate.FORM_KEY)
    types = certs.certificate_types()
    choices = {"type_id": [(t.id, f"{t.name}（有有效期）" if t.has_expiry else t.name) for t in types]}
    return render_template("archives/certificate_form.html", staff=staff, cert=cert, form=form, errors=errors,
                           fields=start_forms.render(form, data, errors, choices=choices),
                           max_mb=certs.max_file_bytes() // (1024 * 1024)), status


@bp.route("/<int:user_id>/certificates/new", methods=["GET", "POST"])
@require()
def new_certificate(user_id: int):
    staff = _staff(user_id)
    if not certs.can_edit_certificates(current_user, staff):
        abort(403)
    form = start_forms.start_form(Certificate.FORM_KEY)
    if request.method == "POST":
        try:
            certs.add_certificate(staff=staff, actor=current_user, data=request.form, files=_uploads())
        except ValidationFailed as exc:
            db.session.rollback()
            return _render_cert_form(staff, cert=None, data=start_forms.coerce(form, request.form),
                                     errors=_errors_dict(exc.errors), status=400)
        db.session.commit()
        flash("证件已登记", "success")
        return redirect(url_for("archives.show", user_id=staff.id, tab="certificates"))
    return _render_cert_form(staff, cert=None, data=start_forms.initial(form, start_forms.coerce(form, request.args)),
                             errors={})


@bp.route("/certificates/<int:cert_id>/edit", methods=["GET", "POST"])
@require()
def edit_certificate(cert_id: int):
    cert = certs.get_certificate(cert_id)
    staff = _staff(cert.user_id)
    if not certs.can_edit_certificates(current_user, staff):
        abort(403)
    form = start_forms.start_form(Certificate.FORM_KEY)
    if request.method == "POST":
        try:
            certs.update_certificate(cert=cert, actor=current_user, data=request.form, files=_uploads())
        except ValidationFailed as exc:
            db.session.rollback()
            cert = certs.get_certificate(cert_id)
            return _render_cert_form(staff, cert=cert, data=start_forms.coerce(form, request.form),
                                     errors=_errors_dict(exc.errors), status=400)
        db.session.commit()
        flash("证件已保存", "success")
        return redirect(url_for("archives.show", user_id=staff.id, tab="certificates"))
    data = {**(cert.form_data or {}), "type_id": cert.type_id, "number": cert.number, "issuer": cert.issuer,
            "issue_date": cert.issue_date, "expiry_date": cert.expiry_date, "note": cert.note}
    return _render_cert_form(staff, cert=cert, data=start_forms.coerce(form, data), errors={})


@bp.post("/certificates/<int:cert_id>/delete")
@require("archives.manage")
def delete_certificate(cert_id: int):
    cert = certs.get_certificate(cert_id)
    staff = _staff(cert.user_id)
    try:
        certs.delete_certificate(cert=cert, actor=current_user, reason=request.form.get("reason") or "")
    except ValidationFailed as exc:
        db.session.rollback()
        flash("；".join(e["message"] for e in exc.errors), "error")
        return redirect(url_for("archives.show", user_id=staff.id, tab="certificates")), 303
    db.session.commit()
    flash("证件已删除（记录保留在审计日志中）", "success")
    return redirect(url_for("archives.show", user_id=staff.id, tab="certificates"))


@bp.post("/certificate-files/<int:file_id>/delete")
@require()
def delete_certificate_file(file_id: int):
    row, _path = certs.get_file(file_id=file_id, viewer=current_user)
    cert = db.session.get(Certificate, row.certificate_id)
    assert cert is not None
    certs.delete_file(file=row, actor=current_user)
    db.session.commit()
    flash("扫描件已删除", "success")
    return redirect(url_for("archives.edit_certificate", cert_id=cert.id))


@bp.get("/certificate-files/<int:file_id>")
@require()
def certificate_file(file_id: int):
    row, path = certs.get_file(file_id=file_id, viewer=current_user)
    cert = db.session.get(Certificate, row.certificate_id)
    assert cert is not None
    ext = certs.EXT_FOR.get(row.content_type, "bin")
    name = f"{cert.user.staff_no or cert.user_id}_{cert.type.name}_{row.id}.{ext}"
    resp = send_file(path, mimetype=row.content_type, as_attachment=request.args.get("download") == "1",
                     download_name=name, max_age=0)
    resp.headers["Cache-Control"] = "private, no-store"
    return resp


@bp.route("/certificates/batch", methods=["GET", "POST"])
@require("archives.manage")
def batch_upload():
    result = None
    if request.method == "POST":
        uploads = _uploads()
        if not uploads:
            return render_template("archives/certificate_batch.html", result=None, error="请选择要上传的文件",
                                   types=certs.certificate_types()), 400
        result = certs.batch_upload(uploads=uploads, actor=current_user)
        db.session.commit()
    return render_template("archives/certificate_batch.html", result=result, error=None,
                           types=certs.certificate_types())


@bp.get("/certificates/due")
@require("archives.view", "archives.manage", "archives.edit")
def certificates_due():
    days = _int_arg("days") or 90
    kind = request.args.get("kind") or ""
    items = certs.due_items(viewer=current_user, within_days=min(days, 3650))
    if kind:
        items = [i for i in items if i.kind == kind]
    return render_template("archives/certificates_due.html", items=items, days=days, kind=kind)


@bp.route("/certificate-types", methods=["GET", "POST"])
@require("archives.manage")
def certificate_types() -> Any:
    errors: dict[str, str] = {}
    status = 200
    if request.method == "POST":
        action = request.form.get("action")
        try:
            if action == "add_requirement":
                type_id = request.form.get("type_id", "")
                certs.add_requirement(actor=current_user, type_id=int(type_id) if type_id.isdigit() else None,
                                      title=request.form.get("title"), role_code=request.form.get("role_code"))
            elif action == "remove_requirement":
                certs.remove_requirement(actor=current_user, requirement_id=int(request.form.get("requirement_id", "0")
                                                                                or 0))
            else:
                type_id = request.form.get("type_id", "")
                sort = request.form.get("sort_order", "")
                certs.save_type(actor=current_user, type_id=int(type_id) if type_id.isdigit() else None,
                                code=request.form.get("code", ""), name=request.form.get("name", ""),
                                aliases=request.form.get("aliases"), has_expiry=request.form.get("has_expiry") == "1",
                                remind_days=request.form.get("remind_days"),
                                sort_order=int(sort) if sort.lstrip("-").isdigit() else None,
                                is_active=request.form.get("is_active") == "1")
        except ValidationFailed as exc:
            db.session.rollback()
            errors, status = _errors_dict(exc.errors), 400
        else:
            db.session.commit()
            flash("已保存", "success")
            return redirect(url_for("archives.certificate_types"))
    from app.auth.services import all_roles

    return render_template("archives/certificate_types.html", types=certs.certificate_types(active_only=False),
                           requirements=certs.requirements(), roles=all_roles(), errors=errors,
                           form=request.form if status == 400 else {}), status


# ---------------------------------------------------------------- HR import


@bp.get("/hr")
@require("archives.manage")
def hr_index():
    field = request.args.get("field") or None
    batch_id = _int_arg("batch")
    page = paginate(hr.open_diffs_query(q=request.args.get("q"), field=field, batch_id=batch_id))
    return render_template("archives/hr.html", page=page, batches=hr.recent_batches(), pending=hr.pending_staff(),
                           labels=hr.DIFF_LABELS, roles=hr.role_choices(), field=field, batch_id=batch_id,
                           status_labels=HR_DIFF_STATUS_LABELS, reported=hr.reported_departures(),
                           prefill=hr.departure_prefill, our_status=hr.our_status, today=services.today())


@bp.post("/hr/import")
@require("archives.manage")
def hr_import():
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        flash("请选择要导入的 Excel 或 CSV 文件", "error")
        return redirect(url_for("archives.hr_index")), 303
    try:
        rows = hr.read_rows(upload.filename, upload.read())
        batch = hr.import_rows(rows=rows, actor=current_user, source="file", filename=certs.display_name(upload.filename))
    except ValidationFailed as exc:
        db.session.rollback()
        flash("；".join(e["message"] for e in exc.errors), "error")
        return redirect(url_for("archives.hr_index")), 303
    db.session.commit()
    flash(f"导入完成：共 {batch.total} 行，新增待确认 {batch.created_count}，差异 {batch.diff_count} 项，"
          f"拒绝 {batch.rejected_count} 行", "success")
    return redirect(url_for("archives.hr_batch", batch_id=batch.id))


@bp.get("/hr/batches/<int:batch_id>")
@require("archives.manage")
def hr_batch(batch_id: int):
    batch = db.session.get(HrImportBatch, batch_id)
    if batch is None:
        abort(404)
    return render_template("archives/hr_batch.html", batch=batch, labels=hr.FIELD_LABELS)


@bp.post("/hr/diffs/<int:diff_id>/<action>")
@require("archives.manage")
def hr_diff(diff_id: int, action: str):
    diff = hr.get_diff(diff_id)
    if action == "accept":
        hr.accept_diff(diff=diff, actor=current_user)
    elif action == "ignore":
        hr.ignore_diff(diff=diff, actor=current_user)
    else:
        abort(404)
    db.session.commit()
    flash(f"{diff.user.name}的{hr.diff_label(diff.field)}已{'采纳人事数据' if action == 'accept' else '忽略'}",
          "success")
    target = request.form.get("next") or ""
    if not target.startswith("/archives/") or target.startswith("//"):
        target = url_for("archives.hr_index")
    return redirect(target)


@bp.post("/hr/staff/<int:user_id>/confirm")
@require("archives.manage")
def hr_confirm(user_id: int):
    staff = _staff(user_id)
    hr.confirm_staff(user=staff, role_code=request.form.get("role_code", ""), actor=current_user)
    db.session.commit()
    flash(f"已确认{staff.name}并启用账号", "success")
    return redirect(url_for("archives.hr_index"))


# ---------------------------------------------------------------- departure


@bp.route("/<int:user_id>/departure", methods=["GET", "POST"])
@require("archives.manage")
def register_departure(user_id: int):
    staff = _staff(user_id)
    form = start_forms.start_form(Departure.FORM_KEY)
    errors: dict[str, str] = {}
    if request.method == "POST":
        try:
            row = departures.register_departure(staff=staff, data=request.form, actor=current_user)
            # an HR report of this departure is settled by the registration
            hr.close_departure_reports(user=staff, departure=row, actor=current_user)
        except ValidationFailed as exc:
            db.session.rollback()
            errors = _errors_dict(exc.errors)
        else:
            db.session.commit()
            flash(f"已登记{staff.name}离职：账号已停用，停止授权 {row.grants_revoked} 项，处理待办/流程 "
                  f"{len(row.affected_tasks)} 项", "success")
            return redirect(url_for("archives.departure_detail", departure_id=row.id))
        data = start_forms.coerce(form, request.form)
    else:
        if request.args.get("hr_diff"):
            # opened from "人事系统报告离职" on the HR page: kind, reason and HR's date prefilled from the query string
            if request.args.get("departure_date"):
                flash("人事系统报告该人员离职：已预填离职类型、人事系统的离职日期和原因，请核实后确认登记", "info")
            else:
                flash("人事系统报告该人员离职：已预填离职类型和原因，请核实离职日期与原因后确认登记", "info")
        data = start_forms.initial(form, {"departure_date": services.today().isoformat(),
                                          **start_forms.coerce(form, request.args)})
    return render_template("archives/departure_form.html", staff=staff, errors=errors, form=form,
                           fields=start_forms.render(form, data, errors),
                           open_work=_open_work_preview(staff)), 400 if errors else 200


def _open_work_preview(staff: User) -> list[dict[str, str]]:
    """What registering the departure will do to the person's open work (shown before confirming)."""
    from app.workflow.models import HumanTask, InstanceStatus, ProcessInstance, TaskStatus

    out = [{"label": t.name, "detail": f"认领的待办：{t.instance.title}"} for t in db.session.scalars(
        select(HumanTask).where(HumanTask.assignee_id == staff.id, HumanTask.status == TaskStatus.READY.value))]
    out += [{"label": i.title, "detail": "发起的流程（将撤回）"} for i in db.session.scalars(
        select(ProcessInstance).where(ProcessInstance.started_by_id == staff.id,
                                      ProcessInstance.status == InstanceStatus.RUNNING.value))]
    return out


@bp.get("/departures")
@require("archives.view", "archives.manage")
def departures_list():
    stmt = departures.departures_query(viewer=current_user, q=request.args.get("q"),
                                       status=request.args.get("status") or None, kind=request.args.get("kind") or None)
    return render_template("archives/departures.html", page=paginate(stmt), kinds=DEPARTURE_KIND_LABELS,
                           statuses=DEPARTURE_STATUS_LABELS)


@bp.get("/departures/<int:departure_id>")
@require("archives.view", "archives.manage")
def departure_detail(departure_id: int):
    row = departures.get_departure(departure_id)
    _staff(row.user_id)
    from app.privileges.models import Grant

    grants = list(db.session.scalars(select(Grant).where(Grant.user_id == row.user_id, Grant.status == "revoked")
                                     .order_by(Grant.id)))
    return render_template("archives/departure.html", departure=row, grants=grants,
                           can_manage=services.is_manager(current_user, row.user))


@bp.post("/departures/<int:departure_id>/reinstate")
@require("archives.manage")
def reinstate(departure_id: int):
    row = departures.get_departure(departure_id)
    try:
        departures.request_reinstatement(departure=row, reason=request.form.get("reason", ""), actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        flash("；".join(e["message"] for e in exc.errors), "error")
        return redirect(url_for("archives.departure_detail", departure_id=departure_id)), 303
    db.session.commit()
    flash("复职申请已报送医师资格和授权管理小组审批", "success")
    return redirect(url_for("archives.departure_detail", departure_id=departure_id))
