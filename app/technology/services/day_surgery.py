"""日间手术 (seed 000 §二.4): catalogue, physician qualification through `tech_day_surgery_qualification`, recorded
cases (page form or JSON API) and the seed's quality indicators for a period and department.

Invariants:
- the catalogue's grades start as demo values; technology.manage / privileges.manage holders set each item's grade
  and in-use flag (按本院目录核定), audited with before/after; items are taken out of use, never deleted;
- a qualification is active, suspended or revoked; only an active one within its dates, held by someone neither
  departed nor disabled, qualifies (`is_qualified`); suspension, resumption and revocation carry a reason and are
  audited; a departure revokes them all (app.technology.services.departure);
- every case records whether its surgeon was qualified for the catalogue procedure when it was recorded, so
  「无资质开展例数」 stays what it was even after later changes of qualification.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, cast

from sqlalchemy import Select, and_, case, func, or_, select

from app.audit import services as audit
from app.auth.models import Department, User
from app.auth.services import data_scope, has_permission
from app.core.timefmt import local
from app.db import db, utcnow
from app.errors import Forbidden, InvalidTransition, NotFound, ValidationFailed
from app.forms import start as start_forms
from app.notify import services as notify
from app.technology.models.day_surgery import (
    GRADE_LABELS,
    DaySurgeryApplication,
    DaySurgeryCase,
    DaySurgeryProcedure,
    DaySurgeryQualification,
)
from app.technology.services.common import (
    Errors,
    active_user,
    mask_name,
    mask_number,
    today,
    workbook,
)

PROCESS_KEY = "tech_day_surgery_qualification"
FORM_KEY = DaySurgeryApplication.FORM_KEY
QUALIFICATION_YEARS = 2
OPEN_STATUSES = ("in_review", "returned")


def catalogue_query(*, q: str | None = None, specialty: str | None = None, active_only: bool = True) -> Select:
    stmt = select(DaySurgeryProcedure).order_by(DaySurgeryProcedure.code)
    if active_only:
        stmt = stmt.where(DaySurgeryProcedure.is_active.is_(True))
    if specialty:
        stmt = stmt.where(DaySurgeryProcedure.specialty == specialty)
    if q:
        like = f"%{q.strip()}%"
        stmt = stmt.where(or_(DaySurgeryProcedure.procedure_name.ilike(like), DaySurgeryProcedure.disease_name.ilike(like),
                              DaySurgeryProcedure.icd9_code.ilike(like), DaySurgeryProcedure.icd10_code.ilike(like),
                              DaySurgeryProcedure.code.ilike(like)))
    return stmt


def may_edit_catalogue(user: User) -> bool:
    """Whether the user may set catalogue grades and in-use flags (technology or privilege management)."""
    return has_permission(user, "technology.manage") or has_permission(user, "privileges.manage")


def get_procedure(procedure_id: int) -> DaySurgeryProcedure:
    row = db.session.get(DaySurgeryProcedure, procedure_id)
    if row is None:
        raise NotFound("日间手术目录中没有该术式")
    return row


def update_procedure(*, procedure: DaySurgeryProcedure, data: dict[str, Any], actor: User) -> DaySurgeryProcedure:
    """Set an item's grade (按本院手术分级目录核定) and in-use flag, audited with before/after.
    Raises Forbidden, ValidationFailed (per field, nothing changed)."""
    if not may_edit_catalogue(actor):
        raise Forbidden("只有医疗技术管理或医疗权限管理人员可以修改日间手术目录")
    errors = Errors()
    grade = errors.integer(data, "grade", "手术级别", minimum=1, maximum=4)
    is_active = errors.flag(data, "is_active", "是否在用")
    if errors:
        raise ValidationFailed(dict(errors))
    before = audit.snapshot(procedure)
    procedure.grade = grade
    procedure.is_active = is_active
    # saving the form is the office's confirmation of the grade, even when the demo value was right
    procedure.grade_confirmed_at = utcnow()
    procedure.grade_confirmed_by_id = actor.id
    db.session.flush()
    audit.record(actor, "technology.day_surgery_procedure_updated", procedure, before=before,
                 after=audit.snapshot(procedure))
    return procedure


def specialties() -> list[str]:
    return [str(s) for s in db.session.scalars(select(DaySurgeryProcedure.specialty).distinct()
                                               .order_by(DaySurgeryProcedure.specialty))]


# ---------------------------------------------------------------- qualification


def apply(*, applicant: User, data: Any = None, procedure_ids: list[Any] | None = None,
          reason: str | None = None) -> DaySurgeryApplication:
    """Apply for day-surgery qualification on catalogue procedures through the `tech_day_surgery_apply` form
    (`data`, a dict or form-encoded data; or procedure_ids + reason) and start the flow; the template version and
    extra fields are kept on the application. Raises ValidationFailed with every problem; nothing is written
    then."""
    if data is None:
        data = {"procedure_ids": list(procedure_ids or []), "reason": reason}
    form = start_forms.start_form(FORM_KEY)
    values, template_errors = start_forms.check(form, data)
    errors = Errors()
    if applicant.departed_at is not None or not applicant.is_active:
        errors["applicant"] = "离职或已停用人员不能申请"
    chosen = values.get("procedure_ids")
    chosen = chosen if isinstance(chosen, list) else []
    # positions are kept so each problem lands on its own procedure_ids/<n>; malformed entries the template names
    ids = [pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None for pid in chosen]
    wanted = [pid for pid in ids if pid is not None]
    procedures = {p.id: p for p in db.session.scalars(select(DaySurgeryProcedure)
                                                      .where(DaySurgeryProcedure.id.in_(wanted)))} if wanted else {}
    held = set(db.session.scalars(select(DaySurgeryQualification.procedure_id).where(
        DaySurgeryQualification.user_id == applicant.id, DaySurgeryQualification.status == "active",
        DaySurgeryQualification.procedure_id.in_(wanted)))) if wanted else set()
    pending: set[int] = set()
    for row in db.session.scalars(select(DaySurgeryApplication).where(
            DaySurgeryApplication.applicant_id == applicant.id, DaySurgeryApplication.status.in_(OPEN_STATUSES))):
        pending.update(int(i) for i in row.procedure_ids or [])
    seen: set[int] = set()
    for idx, pid in enumerate(ids):
        path = f"procedure_ids/{idx}"
        if pid is None:
            errors[path] = "术式编号无效"
            continue
        proc = procedures.get(pid)
        if pid in seen:
            errors[path] = "重复选择了同一术式"
        elif proc is None or not proc.is_active:
            errors[path] = "术式不在日间手术目录中"
        elif pid in held:
            errors[path] = f"已具备“{proc.procedure_name}”的日间手术资质"
        elif pid in pending:
            errors[path] = f"“{proc.procedure_name}”已有审核中的申请"
        seen.add(pid)
    problems = start_forms.merge_errors(template_errors, errors)
    if problems:
        raise ValidationFailed(problems, message=f"“{form.title}”填写有误，请按提示修改")
    ids_ok = [pid for pid in ids if pid is not None]
    reason = str(values["reason"])
    dept = db.session.get(Department, applicant.dept_id) if applicant.dept_id else None
    application = DaySurgeryApplication(applicant_id=applicant.id, dept_id=applicant.dept_id,
                                        campus_id=dept.campus_id if dept else None, procedure_ids=ids_ok,
                                        reason=reason, status="in_review", submitted_at=utcnow(),
                                        form_version=form.version,
                                        form_data=start_forms.extra(form, values, DaySurgeryApplication.FORM_COLUMNS))
    application.applicant = applicant
    db.session.add(application)
    db.session.flush()
    names = [procedures[i].procedure_name for i in ids_ok]
    from app.workflow import services as wf

    instance = wf.start(key=PROCESS_KEY, business_key=application.number,
                        title=f"日间手术资质：{applicant.name} {names[0]}" + (f"等 {len(names)} 项" if len(names) > 1 else ""),
                        actor=applicant, dept_id=applicant.dept_id, campus_id=application.campus_id,
                        data={"application_id": application.id, "application_no": application.number,
                              "applicant_name": applicant.name, "procedures": names, "reason": reason})
    application.instance_id = instance.id
    db.session.flush()
    audit.record(applicant, "technology.day_surgery_applied", application, after=audit.snapshot(application))
    return application


def application_for_instance(instance: Any) -> DaySurgeryApplication | None:
    application = db.session.scalar(select(DaySurgeryApplication).where(DaySurgeryApplication.instance_id == instance.id))
    if application is None:
        key = str(getattr(instance, "business_key", "") or "")
        if key.startswith("RJ") and key[2:].isdigit():
            application = db.session.get(DaySurgeryApplication, int(key[2:]))
    return application


def on_task_complete(*, instance: Any, task: Any, data: dict[str, Any], actor: User) -> None:
    application = application_for_instance(instance)
    if application is None:
        return
    if data.get("decision") == "return":
        application.status = "returned"
        audit.record(actor, "technology.day_surgery_returned", application, after={"comment": data.get("comment")})
    elif task.spec_name == "revise":
        revised = (data.get("revised_text") or "").strip()
        if revised and revised != application.reason:
            audit.record(actor, "technology.day_surgery_revised", application, before={"reason": application.reason},
                         after={"reason": revised})
            application.reason = revised
        application.status = "in_review"
    db.session.flush()


def finalize(*, instance: Any, data: dict[str, Any], actor: Any) -> DaySurgeryApplication | None:
    """End hook: grant the qualifications on approval; close the application otherwise. Idempotent."""
    application = application_for_instance(instance)
    if application is None or application.status not in OPEN_STATUSES:
        return application
    final = str(data.get("final_decision") or "")
    application.decided_at = utcnow()
    if final == "approved":
        application.status = "approved"
        application.final_comment = data.get("comment") or None
        start = today()
        until = start.replace(year=start.year + QUALIFICATION_YEARS) - timedelta(days=1) if not (
            start.month == 2 and start.day == 29) else date(start.year + QUALIFICATION_YEARS, 2, 28)
        granted = []
        for pid in application.procedure_ids or []:
            q = DaySurgeryQualification(user_id=application.applicant_id, dept_id=application.dept_id,
                                        procedure_id=int(pid), application_id=application.id, status="active",
                                        valid_from=start, valid_until=until, granted_by_id=getattr(actor, "id", None))
            db.session.add(q)
            granted.append(q)
        db.session.flush()
        for q in granted:
            audit.record(actor, "technology.day_surgery_qualified", q, after=audit.snapshot(q))
        notify.notify(user_ids=[application.applicant_id], title=f"日间手术资质申请 {application.number} 已批准",
                      body=f"授予 {len(granted)} 项，有效期至 {until}", link="/technology/day-surgery/qualifications",
                      kind="result")
    elif final in ("rejected", "withdrawn", "terminated"):
        application.status = "rejected" if final == "rejected" else "withdrawn"
        application.final_comment = (data.get("comment") if final == "rejected" else data.get("reason")) or None
        audit.record(actor, f"technology.day_surgery_{application.status}", application,
                     after={"comment": application.final_comment})
        if getattr(actor, "id", None) != application.applicant_id:
            notify.notify(user_ids=[application.applicant_id],
                          title=f"日间手术资质申请 {application.number}：{application.status_label}",
                          body=application.final_comment, link="/technology/day-surgery/qualifications", kind="result")
    db.session.flush()
    return application


def qualifications_query(*, viewer: User, dept_id: int | None = None, q: str | None = None) -> Select:
    scope = data_scope(viewer, "technology.view")
    stmt = (select(DaySurgeryQualification).join(User, DaySurgeryQualification.user_id == User.id)
            .join(DaySurgeryProcedure, DaySurgeryQualification.procedure_id == DaySurgeryProcedure.id)
            .order_by(DaySurgeryQualification.dept_id, User.name, DaySurgeryProcedure.code))
    stmt = scope.filter(stmt, user_col=DaySurgeryQualification.user_id, dept_col=DaySurgeryQualification.dept_id)
    if dept_id:
        stmt = stmt.where(DaySurgeryQualification.dept_id == dept_id)
    if q:
        like = f"%{q.strip()}%"
        stmt = stmt.where(or_(User.name.ilike(like), DaySurgeryProcedure.procedure_name.ilike(like)))
    return stmt


def applications_query(*, viewer: User) -> Select:
    scope = data_scope(viewer, "technology.view")
    stmt = select(DaySurgeryApplication).order_by(DaySurgeryApplication.id.desc())
    return scope.filter(stmt, user_col=DaySurgeryApplication.applicant_id, dept_col=DaySurgeryApplication.dept_id)


def procedure_label(p: DaySurgeryProcedure) -> str:
    """A catalogue item as a choice label: 专业｜病种｜术式（编码，级别）."""
    code = f"{p.icd9_code}，" if p.icd9_code else ""
    return f"{p.specialty}｜{p.disease_name}｜{p.procedure_name}（{code}{p.grade_label}）"


def get_application(*, application_id: int, viewer: User) -> DaySurgeryApplication:
    """A qualification application the viewer may see (own, or in the technology.view scope).
    Raises NotFound, Forbidden."""
    application = db.session.get(DaySurgeryApplication, application_id)
    if application is None:
        raise NotFound("日间手术资质申请不存在")
    if viewer.id != application.applicant_id and not (
            has_permission(viewer, "technology.view")
            and data_scope(viewer, "technology.view").allows(user_id=application.applicant_id,
                                                             dept_id=application.dept_id,
                                                             campus_id=application.campus_id)):
        raise Forbidden("您无权查看该申请")
    return application


def procedures_of(application: DaySurgeryApplication) -> list[DaySurgeryProcedure]:
    ids = [int(i) for i in application.procedure_ids or []]
    rows = {p.id: p for p in db.session.scalars(select(DaySurgeryProcedure).where(DaySurgeryProcedure.id.in_(ids)))}
    return [rows[i] for i in ids if i in rows]


def is_qualified(*, user_id: int, procedure_id: int, on: date | None = None) -> bool:
    """An active qualification in force on `on` (default today), held by someone neither departed nor disabled."""
    on = on or today()
    return bool(db.session.scalar(select(DaySurgeryQualification.id).join(
        User, DaySurgeryQualification.user_id == User.id).where(
        DaySurgeryQualification.user_id == user_id, DaySurgeryQualification.procedure_id == procedure_id,
        DaySurgeryQualification.status == "active", DaySurgeryQualification.valid_from <= on,
        or_(DaySurgeryQualification.valid_until.is_(None), DaySurgeryQualification.valid_until >= on),
        User.departed_at.is_(None), User.is_active.is_(True)).limit(1)))


def get_qualification(qualification_id: int, *, manager: User | None = None) -> DaySurgeryQualification:
    """A qualification; with `manager`, only within that user's technology.manage scope. Raises NotFound, Forbidden."""
    row = db.session.get(DaySurgeryQualification, qualification_id)
    if row is None:
        raise NotFound("日间手术资质不存在")
    if manager is not None and not (has_permission(manager, "technology.manage") and data_scope(
            manager, "technology.manage").allows(user_id=row.user_id, dept_id=row.dept_id)):
        raise Forbidden("您无权管理该日间手术资质")
    return row


def _reason(reason: str, label: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed({"reason": f"请填写{label}"})
    if len(reason) > 500:
        raise ValidationFailed({"reason": f"{label}不能超过 500 字"})
    return reason


def _tell_holder(q: DaySurgeryQualification, title: str, reason: str) -> None:
    notify.notify(user_ids=[q.user_id], title=title, body=f"{q.procedure.procedure_name}：{reason}",
                  link="/technology/day-surgery/qualifications", kind="result")


def suspend_qualification(*, qualification: DaySurgeryQualification, reason: str, actor: User,
                          notify_holder: bool = True) -> DaySurgeryQualification:
    """Suspend an active qualification at once (is_qualified answers False until resumed); audited, the holder is
    told. Raises ValidationFailed (no reason), InvalidTransition (not active)."""
    reason = _reason(reason, "暂停原因")
    if qualification.status != "active":
        raise InvalidTransition(f"该资质当前为“{qualification.status_label}”，只有有效的资质可以暂停",
                                qualification_id=qualification.id)
    qualification.status = "suspended"
    qualification.suspended_at = utcnow()
    qualification.suspend_reason = reason
    db.session.flush()
    audit.record(actor, "technology.day_surgery_qualification_suspended", qualification,
                 before={"status": "active"}, after={"status": "suspended", "reason": reason})
    if notify_holder:
        _tell_holder(qualification, "日间手术资质已暂停", reason)
    return qualification


def resume_qualification(*, qualification: DaySurgeryQualification, reason: str,
                         actor: User) -> DaySurgeryQualification:
    """Lift a suspension (audited, the holder is told). Raises ValidationFailed, InvalidTransition (not suspended,
    or the holder departed / disabled)."""
    reason = _reason(reason, "恢复理由")
    if qualification.status != "suspended":
        raise InvalidTransition(f"该资质当前为“{qualification.status_label}”，只有暂停的资质可以恢复",
                                qualification_id=qualification.id)
    holder = qualification.user
    if holder.departed_at is not None or not holder.is_active:
        raise InvalidTransition(f"{holder.name}已离职或账号已停用，不能恢复资质", qualification_id=qualification.id)
    before = {"status": "suspended", "suspend_reason": qualification.suspend_reason}
    qualification.status = "active"
    qualification.suspended_at = None
    qualification.suspend_reason = None
    db.session.flush()
    audit.record(actor, "technology.day_surgery_qualification_resumed", qualification, before=before,
                 after={"status": "active", "reason": reason})
    _tell_holder(qualification, "日间手术资质已恢复", reason)
    return qualification


def revoke_qualification(*, qualification: DaySurgeryQualification, reason: str, actor: User | str | None,
                         notify_holder: bool = True) -> DaySurgeryQualification:
    """Revoke an active or suspended qualification for good (kept on record with who/when/why; audited).
    Raises ValidationFailed (no reason), InvalidTransition (already revoked)."""
    reason = _reason(reason, "取消原因")
    if qualification.status == "revoked":
        raise InvalidTransition("该资质已取消", qualification_id=qualification.id)
    before = {"status": qualification.status}
    qualification.status = "revoked"
    qualification.revoked_at = utcnow()
    qualification.revoked_by_id = getattr(actor, "id", None)
    qualification.revoke_reason = reason
    db.session.flush()
    audit.record(actor, "technology.day_surgery_qualification_revoked", qualification, before=before,
                 after={"status": "revoked", "reason": reason})
    if notify_holder:
        _tell_holder(qualification, "日间手术资质已取消", reason)
    return qualification


# ---------------------------------------------------------------- cases


def case_form_choices(viewer: User) -> tuple[list[Department], list[User], list[DaySurgeryProcedure]]:
    """Departments the viewer records for, their surgeons, and the catalogue (for the case form)."""
    from app.technology.services.common import visible_departments

    departments = visible_departments(viewer, "technology.day_surgery")
    surgeons = list(db.session.scalars(select(User).where(User.dept_id.in_([d.id for d in departments]),
                                                          User.is_active.is_(True), User.departed_at.is_(None))
                                       .order_by(User.dept_id, User.name)))
    return departments, surgeons, list(db.session.scalars(catalogue_query()))

OUTCOME_FLAGS = {
    "cancelled_same_day": "当日手术取消", "unplanned_reoperation": "非计划再次手术", "complication": "术后并发症",
    "transferred": "转科", "delayed_discharge": "延迟出院", "unplanned_readmission": "非计划再入院",
}


def _resolve_dept(data: dict[str, Any], errors: Errors, prefix: str) -> Department | None:
    if data.get("dept_id") not in (None, ""):
        dept_id = errors.integer(data, "dept_id", "手术科室", minimum=1, path=f"{prefix}dept_id")
        dept = db.session.get(Department, dept_id) if dept_id else None
        if dept_id and dept is None:
            errors[f"{prefix}dept_id"] = "科室不存在"
        return dept
    code = str(data.get("dept_code") or "").strip()
    if not code:
        errors[f"{prefix}dept_code"] = "请填写手术科室（dept_code 为 HIS 科室编码或院内科室编码）"
        return None
    dept = db.session.scalar(select(Department).where(or_(Department.his_code == code, Department.code == code)))
    if dept is None:
        errors[f"{prefix}dept_code"] = f"未知科室编码：{code}"
    return dept


def _resolve_surgeon(data: dict[str, Any], errors: Errors, prefix: str) -> User | None:
    if data.get("surgeon_id") not in (None, ""):
        sid = errors.integer(data, "surgeon_id", "主刀医师", minimum=1, path=f"{prefix}surgeon_id")
        user = active_user(sid) if sid else None
        if sid and user is None:
            errors[f"{prefix}surgeon_id"] = "主刀医师不存在或已停用"
        return user
    staff_no = str(data.get("surgeon_staff_no") or "").strip()
    if not staff_no:
        return None
    user = db.session.scalar(select(User).where(User.staff_no == staff_no))
    if user is None:
        errors[f"{prefix}surgeon_staff_no"] = f"未知工号：{staff_no}"
    return user


def validate_case(data: dict[str, Any], *, prefix: str = "") -> dict[str, Any]:
    """Check one case; error paths carry `prefix` (e.g. "cases/3/"). Raises ValidationFailed."""
    errors = Errors()
    if not isinstance(data, dict):
        raise ValidationFailed({prefix.rstrip("/") or "case": "病例应为 JSON 对象"})

    def p(key: str) -> str:
        return f"{prefix}{key}"

    clean: dict[str, Any] = {
        "patient_name": errors.text(data, "patient_name", "患者姓名", max_len=64, path=p("patient_name")),
        "patient_no": errors.text(data, "patient_no", "病案号", max_len=32, path=p("patient_no")),
        "scheduled_date": errors.day(data, "scheduled_date", "预约手术日期", path=p("scheduled_date")),
        "admitted_on": errors.day(data, "admitted_on", "入院日期", required=False, path=p("admitted_on")),
        "surgery_date": errors.day(data, "surgery_date", "手术日期", required=False, path=p("surgery_date")),
        "discharged_on": errors.day(data, "discharged_on", "出院日期", required=False, path=p("discharged_on")),
        "cancel_reason": errors.text(data, "cancel_reason", "取消原因", required=False, max_len=200,
                                     path=p("cancel_reason")),
        "note": errors.text(data, "note", "备注", required=False, max_len=2000, path=p("note")),
    }
    before = dict(errors)
    for key, label in OUTCOME_FLAGS.items():
        clean[key] = errors.flag(data, key, label)
    for key in set(errors) - set(before):  # flag() reports without the prefix
        errors[p(key)] = errors.pop(key)
    clean["dept"] = _resolve_dept(data, errors, prefix)
    clean["surgeon"] = _resolve_surgeon(data, errors, prefix)
    procedure = None
    if data.get("procedure_id") not in (None, ""):
        pid = errors.integer(data, "procedure_id", "目录术式", minimum=1, path=p("procedure_id"))
        procedure = db.session.get(DaySurgeryProcedure, pid) if pid else None
        if pid and procedure is None:
            errors[p("procedure_id")] = "术式不在日间手术目录中"
    elif data.get("procedure_code"):
        code = str(data["procedure_code"]).strip()
        procedure = db.session.scalar(select(DaySurgeryProcedure).where(DaySurgeryProcedure.icd9_code == code)
                                      .order_by(DaySurgeryProcedure.code).limit(1))
    clean["procedure"] = procedure
    clean["procedure_code"] = (str(data.get("procedure_code") or "").strip() or (procedure.icd9_code if procedure else None))
    name = str(data.get("procedure_name") or "").strip() or (procedure.procedure_name if procedure else "")
    if not name:
        errors[p("procedure_name")] = "请填写术式名称或选择目录术式"
    elif len(name) > 200:
        errors[p("procedure_name")] = "术式名称不能超过 200 字"
    clean["procedure_name"] = name
    if data.get("grade") in (None, "") and procedure is not None and procedure.grade:
        clean["grade"] = procedure.grade
    else:
        clean["grade"] = errors.integer(data, "grade", "手术级别", minimum=1, maximum=4, path=p("grade"))
    if clean["cancelled_same_day"]:
        if clean["surgery_date"] is not None:
            errors[p("surgery_date")] = "当日取消的手术不应有手术日期"
        for key in ("unplanned_reoperation", "complication", "transferred", "delayed_discharge",
                    "unplanned_readmission"):
            if clean[key]:
                errors[p(key)] = f"当日取消的手术不应标记“{OUTCOME_FLAGS[key]}”"
    elif clean["surgery_date"] is None and p("surgery_date") not in errors:
        errors[p("surgery_date")] = "未取消的手术请填写手术日期"
    adm, op, dis = clean["admitted_on"], clean["surgery_date"], clean["discharged_on"]
    if adm and op and op < adm:
        errors[p("surgery_date")] = "手术日期不能早于入院日期"
    if op and dis and dis < op:
        errors[p("discharged_on")] = "出院日期不能早于手术日期"
    if errors:
        raise ValidationFailed(dict(errors))
    clean["patient_name"] = mask_name(clean["patient_name"])
    return clean


def _case_allowed(actor: User | None, dept: Department) -> None:
    if actor is None:
        return  # a hospital system's token: any department
    scope = data_scope(actor, "technology.day_surgery")
    if not scope.allows(user_id=actor.id, dept_id=dept.id, campus_id=dept.campus_id):
        raise Forbidden(f"您无权登记{dept.name}的日间手术病例")


def record_case(*, data: dict[str, Any], actor: User | None, source_system: str = "manual",
                prefix: str = "") -> tuple[DaySurgeryCase, bool]:
    """Record one case (idempotent on source system + external id). Returns (case, created).
    Raises ValidationFailed (paths under `prefix`), Forbidden outside the actor's scope."""
    external_id = str(data.get("external_id") or "").strip() if isinstance(data, dict) else ""
    if source_system != "manual" and not external_id:
        raise ValidationFailed({f"{prefix}external_id": "请提供来源系统中的病例标识 external_id"})
    if len(external_id) > 64:
        raise ValidationFailed({f"{prefix}external_id": "external_id 不能超过 64 个字符"})
    if external_id:
        existing = db.session.scalar(select(DaySurgeryCase).where(DaySurgeryCase.source_system == source_system,
                                                                  DaySurgeryCase.external_id == external_id))
        if existing is not None:
            return existing, False
    clean = validate_case(data, prefix=prefix)
    _case_allowed(actor, clean["dept"])
    surgeon, procedure = clean["surgeon"], clean["procedure"]
    qualified = None
    if surgeon is not None and procedure is not None:
        # judged once, when recorded, on the day of the operation (of the booking if cancelled that day)
        qualified = is_qualified(user_id=surgeon.id, procedure_id=procedure.id,
                                 on=clean["surgery_date"] or clean["scheduled_date"])
    row = DaySurgeryCase(
        source_system=source_system[:64], external_id=external_id or f"M{uuid.uuid4().hex[:16]}",
        patient_name=clean["patient_name"], patient_no=clean["patient_no"], dept_id=clean["dept"].id,
        surgeon_id=clean["surgeon"].id if clean["surgeon"] else None,
        procedure_id=clean["procedure"].id if clean["procedure"] else None, procedure_code=clean["procedure_code"],
        procedure_name=clean["procedure_name"], grade=clean["grade"], scheduled_date=clean["scheduled_date"],
        admitted_on=clean["admitted_on"], surgery_date=clean["surgery_date"], discharged_on=clean["discharged_on"],
        cancel_reason=clean["cancel_reason"], note=clean["note"], recorded_by_id=actor.id if actor else None,
        is_surgeon_qualified=qualified, **{k: clean[k] for k in OUTCOME_FLAGS})
    db.session.add(row)
    db.session.flush()
    audit.record(actor or source_system, "technology.day_surgery_case_recorded", row, after=audit.snapshot(row))
    return row, True


def record_cases(*, items: list[Any], source_system: str, actor: User | None) -> list[tuple[DaySurgeryCase, bool]]:
    """A batch from a hospital system: all or nothing; errors carry `cases/N/field` paths."""
    if not isinstance(items, list) or not items:
        raise ValidationFailed({"cases": "请提供至少一条病例（cases 数组）"})
    if len(items) > 500:
        raise ValidationFailed({"cases": "每批不超过 500 条"})
    out = []
    errors: list[dict[str, str]] = []
    for idx, item in enumerate(items):
        try:
            with db.session.begin_nested():
                out.append(record_case(data=item, actor=actor, source_system=source_system, prefix=f"cases/{idx}/"))
        except ValidationFailed as exc:
            errors.extend(exc.errors)
    if errors:
        raise ValidationFailed(errors)
    return out


def void_case(*, case_row: DaySurgeryCase, actor: User, reason: str) -> DaySurgeryCase:
    """Void a wrongly entered case (kept on record, excluded from indicators). Raises ValidationFailed, InvalidTransition."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed({"reason": "请填写作废原因"})
    if case_row.voided_at is not None:
        raise InvalidTransition("该病例已作废")
    _case_allowed(actor, case_row.dept)
    case_row.voided_at = utcnow()
    case_row.void_reason = reason[:200]
    audit.record(actor, "technology.day_surgery_case_voided", case_row, after={"reason": reason})
    db.session.flush()
    return case_row


@dataclass(frozen=True)
class CaseFilter:
    start: date | None = None
    end: date | None = None
    dept_id: int | None = None
    outcome: str | None = None
    q: str | None = None
    include_voided: bool = False
    unqualified: bool = False


def _viewer_scope(viewer: User):
    for perm in ("technology.view", "technology.day_surgery"):
        if has_permission(viewer, perm):
            return data_scope(viewer, perm)
    raise Forbidden("没有权限：查看日间手术")


def cases_query(*, viewer: User | None, filters: CaseFilter | None = None) -> Select:
    """Cases in the viewer's scope (technology.view, else technology.day_surgery); viewer None = a hospital
    system's token, which sees every department. Raises Forbidden."""
    f = filters or CaseFilter()
    stmt = select(DaySurgeryCase).order_by(DaySurgeryCase.scheduled_date.desc(), DaySurgeryCase.id.desc())
    if viewer is not None:
        stmt = _viewer_scope(viewer).filter(stmt, user_col=DaySurgeryCase.surgeon_id, dept_col=DaySurgeryCase.dept_id)
    if not f.include_voided:
        stmt = stmt.where(DaySurgeryCase.voided_at.is_(None))
    if f.start:
        stmt = stmt.where(DaySurgeryCase.scheduled_date >= f.start)
    if f.end:
        stmt = stmt.where(DaySurgeryCase.scheduled_date <= f.end)
    if f.dept_id:
        stmt = stmt.where(DaySurgeryCase.dept_id == f.dept_id)
    if f.outcome in OUTCOME_FLAGS:
        stmt = stmt.where(getattr(DaySurgeryCase, f.outcome).is_(True))
    if f.unqualified:
        stmt = stmt.where(DaySurgeryCase.is_surgeon_qualified.is_(False))
    if f.q:
        like = f"%{f.q.strip()}%"
        stmt = stmt.where(or_(DaySurgeryCase.procedure_name.ilike(like), DaySurgeryCase.procedure_code.ilike(like),
                              DaySurgeryCase.patient_no == f.q.strip()))
    return stmt


def get_case(*, case_id: int, viewer: User) -> DaySurgeryCase:
    row = db.session.get(DaySurgeryCase, case_id)
    if row is None:
        raise NotFound("病例不存在")
    scope = _viewer_scope(viewer)
    if not scope.allows(user_id=row.surgeon_id, dept_id=row.dept_id):
        raise Forbidden("您无权查看该病例")
    return row


# ---------------------------------------------------------------- indicators


def _rate(num: int, den: int) -> float | None:
    return round(num * 100.0 / den, 2) if den else None


def indicators(*, viewer: User | None, start: date, end: date, dept_id: int | None = None) -> dict[str, Any]:
    """The seed's day-surgery indicators for cases scheduled in [start, end] within the viewer's scope.

    Definitions (日间手术质量控制指标): 开展例数 = scheduled cases not cancelled on the day; 当日取消率 = cancelled on
    the day / scheduled; the other rates are over cases performed; 无资质开展例数 = performed cases whose surgeon
    held no qualification for the catalogue procedure when recorded. Voided records are excluded."""
    if end < start:
        raise ValidationFailed({"end": "结束日期不能早于开始日期"})
    base = cases_query(viewer=viewer, filters=CaseFilter(start=start, end=end, dept_id=dept_id)).order_by(None)
    sub = base.subquery()
    performed = sub.c.cancelled_same_day.is_(False)

    def count_if(cond) -> Any:
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    row = db.session.execute(select(
        func.count(), count_if(sub.c.cancelled_same_day.is_(True)), count_if(performed),
        count_if(and_(performed, sub.c.unplanned_reoperation.is_(True))),
        count_if(and_(performed, sub.c.complication.is_(True))),
        count_if(and_(performed, sub.c.transferred.is_(True))),
        count_if(and_(performed, sub.c.delayed_discharge.is_(True))),
        count_if(and_(performed, sub.c.unplanned_readmission.is_(True))),
        count_if(and_(performed, sub.c.is_surgeon_qualified.is_(False))),
    )).one()
    scheduled, cancelled, cases, reop, compl, transfers, delayed, readmit, unqualified = (int(x or 0) for x in row)
    distinct_key = func.coalesce(sub.c.procedure_code, sub.c.procedure_name)
    procedures = int(db.session.scalar(select(func.count(func.distinct(distinct_key))).where(performed)) or 0)
    per_grade = {g: 0 for g in GRADE_LABELS}
    for row in db.session.execute(select(sub.c.grade, func.count()).where(performed).group_by(sub.c.grade)).all():
        per_grade[int(cast(int, row[0]))] = int(cast(int, row[1]))
    return {
        "start": start, "end": end, "dept_id": dept_id, "scheduled": scheduled, "cases": cases,
        "procedures": procedures, "per_grade": per_grade, "cancelled_same_day": cancelled,
        "cancellation_rate": _rate(cancelled, scheduled), "unplanned_reoperations": reop,
        "unplanned_reoperation_rate": _rate(reop, cases), "complications": compl,
        "complication_rate": _rate(compl, cases), "transfers": transfers, "transfer_rate": _rate(transfers, cases),
        "delayed_discharges": delayed, "delayed_discharge_rate": _rate(delayed, cases),
        "unplanned_readmissions": readmit, "unplanned_readmission_rate": _rate(readmit, cases),
        "unqualified": unqualified,
    }


def indicators_by_dept(*, viewer: User | None, start: date, end: date) -> list[tuple[Department, dict[str, Any]]]:
    """The indicators per department that has cases in the period (for the comparison table)."""
    sub = cases_query(viewer=viewer, filters=CaseFilter(start=start, end=end)).order_by(None).subquery()
    dept_ids = [int(cast(int, row[0])) for row in db.session.execute(select(sub.c.dept_id).distinct()).all()]
    depts = {d.id: d for d in db.session.scalars(select(Department).where(Department.id.in_(dept_ids)))}
    return [(depts[d], indicators(viewer=viewer, start=start, end=end, dept_id=d))
            for d in sorted(dept_ids, key=lambda i: depts[i].code)]


INDICATOR_ROWS = [
    ("scheduled", None, "预约日间手术例数", "例"),
    ("cases", None, "日间手术开展例数", "例"),
    ("procedures", None, "日间手术术式数", "种"),
    ("cancelled_same_day", "cancellation_rate", "日间手术当日取消（例/率）", "%"),
    ("unplanned_reoperations", "unplanned_reoperation_rate", "日间手术非计划再手术（例/率）", "%"),
    ("complications", "complication_rate", "日间手术并发症（例/发生率）", "%"),
    ("transfers", "transfer_rate", "日间手术转科（例/率）", "%"),
    ("delayed_discharges", "delayed_discharge_rate", "日间手术延迟出院（例/率）", "%"),
    ("unplanned_readmissions", "unplanned_readmission_rate", "日间手术非计划再入院（例/率）", "%"),
    ("unqualified", None, "无资质开展例数", "例"),
]


def indicators_workbook(*, figures: dict[str, Any], by_dept: list[tuple[Department, dict[str, Any]]],
                        scope_label: str) -> bytes:
    from io import BytesIO

    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "日间手术质量指标"
    ws.append([f"统计期间：{figures['start']} 至 {figures['end']}（按预约手术日期）", scope_label])
    ws.append(["指标", "例数", "率（%）"])
    for count_key, rate_key, label, _unit in INDICATOR_ROWS:
        ws.append([label, figures[count_key], figures[rate_key] if rate_key else ""])
    for grade, label in GRADE_LABELS.items():
        ws.append([f"{label}日间手术例数", figures["per_grade"][grade], ""])
    ws.column_dimensions["A"].width = 34
    ws2 = wb.create_sheet("分科室")
    ws2.append(["科室", "预约例数", "开展例数", "术式数", "一级", "二级", "三级", "四级", "当日取消率%", "非计划再手术率%",
                "并发症发生率%", "转科例数", "延迟出院例数", "非计划再入院率%", "无资质开展例数"])
    for dept, f in by_dept:
        ws2.append([dept.name, f["scheduled"], f["cases"], f["procedures"], *[f["per_grade"][g] for g in GRADE_LABELS],
                    f["cancellation_rate"], f["unplanned_reoperation_rate"], f["complication_rate"], f["transfers"],
                    f["delayed_discharges"], f["unplanned_readmission_rate"], f["unqualified"]])
    ws2.freeze_panes = "B2"
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


CASE_COLUMNS = ["登记号", "来源", "患者", "病案号", "科室", "主刀医师", "术式", "手术操作编码", "级别", "预约日期", "入院日期",
                "手术日期", "出院日期", *OUTCOME_FLAGS.values(), "主刀资质（登记时）", "登记时间"]

QUALIFIED_LABELS = {True: "有资质", False: "无资质", None: "未核对"}


def cases_workbook(rows: list[DaySurgeryCase]) -> bytes:
    def yn(v: bool) -> str:
        return "是" if v else ""

    def d(v: date | None) -> str:
        return v.isoformat() if v else ""

    data = [[c.external_id, c.source_system, c.patient_name, mask_number(c.patient_no), c.dept.name,
             c.surgeon.name if c.surgeon else "", c.procedure_name, c.procedure_code or "", c.grade_label,
             d(c.scheduled_date), d(c.admitted_on), d(c.surgery_date), d(c.discharged_on),
             *[yn(getattr(c, k)) for k in OUTCOME_FLAGS], QUALIFIED_LABELS[c.is_surgeon_qualified],
             local(c.created_at)] for c in rows]
    return workbook("日间手术病例", CASE_COLUMNS, data, [18, 8, 8, 12, 10, 8, 30, 12, 6, 12, 12, 12, 12])
