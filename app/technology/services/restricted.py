"""限制类技术 (seed 000 §二.2): the national catalogue; application → expert review → scientific and ethics
(meeting) review → approval → filing → quarterly case reports and annual summaries, through `tech_restricted`.

Who may perform it is a 限制类医疗技术授权 grant (seed 000 §三.1), which HIS checks (§三.6); the link is kept through
app.privileges.technology_link:
- approval makes sure the technology's privilege item (RT-NN) exists and is active, links it on the technology and
  puts it into the department's 科室技术目录 when the department keeps one; physicians then apply for it as usual;
- stopping the technology at the annual review (or ending the flow after approval) suspends the grants of that
  item held by the department's physicians, with the reason, and keeps which on the application;
- filing the technology again for the department resumes those grants still suspended for that reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import Select, or_, select

from app.audit import services as audit
from app.auth.models import Department, User
from app.auth.services import data_scope, has_permission
from app.core.timefmt import local
from app.db import db, utcnow
from app.errors import Forbidden, NotFound, ValidationFailed
from app.forms import start as start_forms
from app.notify import services as notify
from app.privileges import technology_link
from app.technology.models.restricted import (
    RESTRICTED_STATUS_LABELS,
    RestrictedAnnualSummary,
    RestrictedApplication,
    RestrictedCaseReport,
    RestrictedStatus,
    RestrictedTechnology,
)
from app.technology.services.common import Errors, workbook

PROCESS_KEY = "tech_restricted"
FORM_KEY = RestrictedApplication.FORM_KEY
OPEN_STATUSES = ("expert_review", "returned", "ethics_review", "approval", "filing", "tracking")
DEFAULT_REPORT_INTERVAL = "P3M"
DEFAULT_ANNUAL_INTERVAL = "P1Y"


def catalogue(*, active_only: bool = True) -> list[RestrictedTechnology]:
    stmt = select(RestrictedTechnology).order_by(RestrictedTechnology.seq)
    if active_only:
        stmt = stmt.where(RestrictedTechnology.is_active.is_(True))
    return list(db.session.scalars(stmt))


def apply(*, applicant: User, data: Any, report_interval: str = DEFAULT_REPORT_INTERVAL,
          annual_interval: str = DEFAULT_ANNUAL_INTERVAL) -> RestrictedApplication:
    """Apply, through the `tech_restricted_apply` form (a dict or form-encoded data), to perform a nationally
    restricted technology in the applicant's department and start the flow; the template version and extra
    fields are kept on the application. Raises ValidationFailed with every problem (the technology must be in the
    catalogue; one open application per technology and department); nothing is written then."""
    form = start_forms.start_form(FORM_KEY)
    values, template_errors = start_forms.check(form, data)
    errors = Errors()
    if applicant.departed_at is not None or not applicant.is_active:
        errors["applicant"] = "离职或已停用人员不能申请"
    tech_id = values.get("technology_id")
    tech = db.session.get(RestrictedTechnology, tech_id) if isinstance(tech_id, int) and tech_id > 0 else None
    if tech is None or not tech.is_active:
        errors["technology_id"] = "限制类技术不在目录中"
    raw_team = values.get("team") or []
    team = [str(x).strip() for x in (raw_team if isinstance(raw_team, list) else str(raw_team).splitlines())
            if str(x).strip()]
    if len(team) > 30:
        errors["team"] = "团队成员不超过 30 人"
    dept = db.session.get(Department, applicant.dept_id) if applicant.dept_id else None
    if dept is None:
        errors["dept_id"] = "申请人未归属科室"
    if tech is not None and dept is not None:
        dup = db.session.scalar(select(RestrictedApplication).where(
            RestrictedApplication.technology_id == tech.id, RestrictedApplication.dept_id == dept.id,
            RestrictedApplication.status.in_(OPEN_STATUSES)).limit(1))
        if dup is not None:
            errors["technology_id"] = f"本科室已有该技术的申请或备案（{dup.number}，{dup.status_label}）"
    problems = start_forms.merge_errors(template_errors, errors)
    if problems:
        raise ValidationFailed(problems, message=f"“{form.title}”填写有误，请按提示修改")
    assert tech is not None and dept is not None
    conditions = str(values["conditions"])
    application = RestrictedApplication(technology_id=tech.id, dept_id=dept.id, campus_id=dept.campus_id,
                                        applicant_id=applicant.id, team=team, conditions=conditions,
                                        status=RestrictedStatus.EXPERT_REVIEW, submitted_at=utcnow(),
                                        form_version=form.version,
                                        form_data=start_forms.extra(form, values, RestrictedApplication.FORM_COLUMNS))
    application.technology, application.dept, application.applicant = tech, dept, applicant
    db.session.add(application)
    db.session.flush()
    from app.workflow import services as wf

    instance = wf.start(key=PROCESS_KEY, business_key=application.number,
                        title=f"限制类技术：{tech.name}（{dept.name}）", actor=applicant, dept_id=dept.id,
                        campus_id=dept.campus_id,
                        data={"application_id": application.id, "application_no": application.number,
                              "technology_name": tech.name, "dept_name": dept.name, "applicant_name": applicant.name,
                              "report_interval": report_interval, "annual_interval": annual_interval,
                              "quarterly_reports": True})
    application.instance_id = instance.id
    db.session.flush()
    audit.record(applicant, "technology.restricted_applied", application, after=audit.snapshot(application))
    return application


def submit_ethics(*, application: RestrictedApplication, actor: User, data: dict[str, Any]) -> RestrictedApplication:
    """Send the application to the scientific and ethics review (always 会议审查). Raises ValidationFailed, NotFound."""
    from app.technology.services import ethics

    ethics.submit_for_source(instance_id=application.instance_id, actor=actor, data=data, forced_mode="meeting",
                             applicant_id=application.applicant_id)
    return application


# ---------------------------------------------------------------- engine hooks


def application_for_instance(instance: Any) -> RestrictedApplication | None:
    application = db.session.scalar(select(RestrictedApplication).where(RestrictedApplication.instance_id == instance.id)
                                    .with_for_update(of=RestrictedApplication))
    if application is None:
        key = str(getattr(instance, "business_key", "") or "")
        if key.startswith("XZ") and key[2:].isdigit():
            application = db.session.get(RestrictedApplication, int(key[2:]))
    return application


def _status(application: RestrictedApplication, status: RestrictedStatus, actor: Any, **extra: Any) -> None:
    before = str(application.status)
    application.status = status
    audit.record(actor, "technology.restricted_status", application, before={"status": before},
                 after={"status": status.value, **extra})


def on_task_complete(*, instance: Any, task: Any, data: dict[str, Any], actor: User) -> None:
    application = application_for_instance(instance)
    if application is None:
        return
    spec, decision = task.spec_name, data.get("decision")
    if spec == "expert_review":
        if decision == "approve":
            _status(application, RestrictedStatus.ETHICS_REVIEW, actor, step="专家审查", score=data.get("score"))
        elif decision == "return":
            _status(application, RestrictedStatus.RETURNED, actor, step="专家审查", comment=data.get("comment"))
    elif spec == "revise":
        revised = (data.get("revised_text") or "").strip()
        if revised and revised != application.conditions:
            audit.record(actor, "technology.restricted_revised", application,
                         before={"conditions": application.conditions}, after={"conditions": revised})
            application.conditions = revised
        _status(application, RestrictedStatus.EXPERT_REVIEW, actor, step="修改申请")
    elif spec == "ethics_submit":
        from app.technology.services import ethics

        ethics.start_for_source(source_kind="restricted", source_id=application.id,
                                title=f"{application.technology.name}（{application.dept.name}）",
                                description=application.conditions, applicant=application.applicant,
                                dept_id=application.dept_id, campus_id=application.campus_id, data=data, actor=actor)
    elif spec == "approval":
        if decision == "approve":
            _status(application, RestrictedStatus.FILING, actor, step="审批", comment=data.get("comment"))
            open_privilege(application=application, actor=actor)
        elif decision == "return":
            _status(application, RestrictedStatus.RETURNED, actor, step="审批", comment=data.get("comment"))
    elif spec == "filing":
        application.filing_no = str(data.get("filing_no") or "")[:64]
        application.filed_on = date.fromisoformat(str(data["filed_on"])[:10])
        application.filing_authority = str(data.get("authority") or "")[:100]
        _status(application, RestrictedStatus.TRACKING, actor, filing_no=application.filing_no,
                filed_on=application.filed_on.isoformat())
        resume_privileges(application=application, actor=actor)
        notify.notify(user_ids=[application.applicant_id], title=f"限制类技术 {application.number} 已备案",
                      body=f"备案号 {application.filing_no}；请每季度提交病例报告、每年提交年度总结",
                      link=f"/technology/restricted/{application.id}", kind="result")
    elif spec == "case_report":
        report = RestrictedCaseReport(
            application_id=application.id, period_label=str(data.get("period_label") or "")[:64],
            cases=int(data.get("cases") or 0), success_cases=int(data.get("success_cases") or 0),
            complications=int(data.get("complications") or 0), deaths=int(data.get("deaths") or 0),
            adverse_events=int(data.get("adverse_events") or 0), note=data.get("note"), submitted_by_id=actor.id)
        db.session.add(report)
        db.session.flush()
        audit.record(actor, "technology.restricted_case_report", report, after=audit.snapshot(report))
    elif spec == "annual_summary":
        summary = RestrictedAnnualSummary(
            application_id=application.id, year=int(data["year"]), total_cases=int(data.get("total_cases") or 0),
            qc_summary=str(data.get("qc_summary") or ""), problems=data.get("problems"), plan=data.get("plan"),
            submitted_by_id=actor.id)
        db.session.add(summary)
        db.session.flush()
        audit.record(actor, "technology.restricted_annual_summary", summary, after=audit.snapshot(summary))
    elif spec == "annual_review":
        latest = db.session.scalar(select(RestrictedAnnualSummary)
                                   .where(RestrictedAnnualSummary.application_id == application.id)
                                   .order_by(RestrictedAnnualSummary.id.desc()).limit(1))
        if latest is not None:
            latest.review_decision = str(decision)
            latest.review_comment = data.get("comment")
            latest.reviewed_by_id = actor.id
            latest.reviewed_at = utcnow()
            audit.record(actor, "technology.restricted_annual_reviewed", latest,
                         after={"decision": decision, "comment": latest.review_comment})
    db.session.flush()


def finalize(*, instance: Any, data: dict[str, Any], actor: Any) -> RestrictedApplication | None:
    application = application_for_instance(instance)
    if application is None or str(application.status) in ("stopped", "rejected", "withdrawn"):
        return application
    outcome = {"stopped": RestrictedStatus.STOPPED, "rejected": RestrictedStatus.REJECTED,
               "withdrawn": RestrictedStatus.WITHDRAWN, "terminated": RestrictedStatus.WITHDRAWN
               }.get(str(data.get("final_decision")))
    if outcome is None:
        return application
    comment = (data.get("reason") if outcome is RestrictedStatus.WITHDRAWN else data.get("comment")) or None
    was_approved = str(application.status) in (RestrictedStatus.FILING, RestrictedStatus.TRACKING)
    application.final_comment = comment
    application.decided_at = utcnow()
    _status(application, outcome, actor, comment=comment)
    if outcome is RestrictedStatus.STOPPED or (outcome is RestrictedStatus.WITHDRAWN and was_approved):
        suspend_privileges(application=application, actor=actor)
    if getattr(actor, "id", None) != application.applicant_id:
        notify.notify(user_ids=[application.applicant_id],
                      title=f"限制类技术 {application.number}：{application.status_label}", body=comment,
                      link=f"/technology/restricted/{application.id}", kind="result")
    db.session.flush()
    return application


# ---------------------------------------------------------------- the 限制类医疗技术授权 grants (seed 000 §三.1, §三.6)


def privilege_item(technology: RestrictedTechnology) -> Any:
    """The technology's privilege item: the linked one, else the catalogue's RT-NN item (None when neither)."""
    return technology_link.find_restricted_item(item_id=technology.privilege_item_id, seq=technology.seq)


def open_privilege(*, application: RestrictedApplication, actor: Any) -> Any:
    """On approval: the technology's 限制类医疗技术授权 item exists and is active, is linked on the technology
    (audited) and is in the department's 科室技术目录 when the department keeps one. Returns the item."""
    tech = application.technology
    item = technology_link.ensure_restricted_item(
        item_id=tech.privilege_item_id, seq=tech.seq, name=tech.name, spec_title=tech.spec_title, actor=actor,
        cause=f"限制类技术 {application.number}（{application.dept.name}）批准开展")
    if tech.privilege_item_id != item.id:
        before = tech.privilege_item_id
        tech.privilege_item_id = item.id
        audit.record(actor, "technology.restricted_item_linked", tech, before={"privilege_item_id": before},
                     after={"privilege_item_id": item.id, "item": item.code, "application": application.number})
    technology_link.add_to_dept_catalogue(dept=application.dept, item=item, actor=actor)
    db.session.flush()
    return item


def stop_reason(application: RestrictedApplication) -> str:
    """Why the department's grants are suspended: shown to HIS users by the check API and to the holders."""
    tech = application.technology
    if application.status == RestrictedStatus.STOPPED:
        head = f"限制类技术「{tech.name}」经年度审核停止开展（{application.number}）"
    else:
        head = f"限制类技术「{tech.name}」备案追踪已终止（{application.number}）"
    return f"{head}：{application.final_comment}" if application.final_comment else head


def suspend_privileges(*, application: RestrictedApplication, actor: Any) -> list[int]:
    """The department stops the technology: suspend the grants of its privilege item held by the department's
    physicians (audited, pushed to HIS) and keep which on the application. Returns the grant ids."""
    item = privilege_item(application.technology)
    if item is None:
        return []
    record = technology_link.suspend_dept_grants(item_id=item.id, dept_id=application.dept_id,
                                                 reason=stop_reason(application), actor=actor)
    if record["grant_ids"]:
        application.suspended_grants = record
        audit.record(actor, "technology.restricted_grants_suspended", application,
                     after={"item": item.code, **record})
    db.session.flush()
    return list(record["grant_ids"])


def resume_privileges(*, application: RestrictedApplication, actor: Any) -> list[int]:
    """The technology is filed again for a department that had stopped it: resume the grants suspended then that
    nobody changed since (still valid, holder still an active member). Returns the grant ids resumed."""
    earlier = db.session.scalars(select(RestrictedApplication).where(
        RestrictedApplication.technology_id == application.technology_id,
        RestrictedApplication.dept_id == application.dept_id, RestrictedApplication.id != application.id,
        RestrictedApplication.status.in_((RestrictedStatus.STOPPED, RestrictedStatus.WITHDRAWN)))
        .order_by(RestrictedApplication.id))
    reason = f"限制类技术「{application.technology.name}」已重新备案（{application.number}，备案号 {application.filing_no}）"
    resumed: list[int] = []
    for previous in earlier:
        if not previous.suspended_grants:
            continue
        resumed += [g.id for g in technology_link.resume_suspended(record=previous.suspended_grants, reason=reason,
                                                                   actor=actor, dept_id=application.dept_id)]
    if resumed:
        audit.record(actor, "technology.restricted_grants_resumed", application, after={"grant_ids": resumed})
    db.session.flush()
    return resumed


def department_grants(application: RestrictedApplication) -> list[Any]:
    """Grants of the technology's privilege item held by the department's members (the detail page)."""
    item = privilege_item(application.technology)
    return technology_link.dept_grants(item_id=item.id, dept_id=application.dept_id) if item is not None else []


# ---------------------------------------------------------------- queries


@dataclass(frozen=True)
class RestrictedFilter:
    status: str | None = None
    dept_id: int | None = None
    technology_id: int | None = None
    q: str | None = None


def applications_query(*, viewer: User, filters: RestrictedFilter | None = None) -> Select:
    f = filters or RestrictedFilter()
    scope = data_scope(viewer, "technology.view")
    stmt = (select(RestrictedApplication).join(RestrictedTechnology)
            .order_by(RestrictedApplication.id.desc()))
    if scope.level.value == "self":
        stmt = stmt.where(RestrictedApplication.applicant_id == viewer.id)
    else:
        stmt = scope.filter(stmt, dept_col=RestrictedApplication.dept_id, campus_col=RestrictedApplication.campus_id)
    if f.status:
        stmt = stmt.where(RestrictedApplication.status == f.status)
    if f.dept_id:
        stmt = stmt.where(RestrictedApplication.dept_id == f.dept_id)
    if f.technology_id:
        stmt = stmt.where(RestrictedApplication.technology_id == f.technology_id)
    if f.q:
        like = f"%{f.q.strip()}%"
        stmt = stmt.where(or_(RestrictedTechnology.name.ilike(like), RestrictedApplication.filing_no.ilike(like)))
    return stmt


def get_application(*, application_id: int, viewer: User) -> RestrictedApplication:
    application = db.session.get(RestrictedApplication, application_id)
    if application is None:
        raise NotFound("限制类技术申请不存在")
    if viewer.id != application.applicant_id:
        ok = has_permission(viewer, "technology.view") and (
            (scope := data_scope(viewer, "technology.view")).level.value != "self"
            and scope.allows(dept_id=application.dept_id, campus_id=application.campus_id))
        if not ok:
            raise Forbidden("您无权查看该申请")
    return application


EXPORT_COLUMNS = ["申请编号", "限制类技术", "科室", "申请人", "状态", "备案号", "备案日期", "季度报告数", "累计例数",
                  "年度总结数", "提交时间", "办结时间"]


def export_workbook(applications: list[RestrictedApplication]) -> bytes:
    rows = [[a.number, a.technology.name, a.dept.name, a.applicant.name,
             RESTRICTED_STATUS_LABELS.get(str(a.status), str(a.status)), a.filing_no or "",
             a.filed_on.isoformat() if a.filed_on else "", len(a.case_reports), sum(r.cases for r in a.case_reports),
             len(a.annual_summaries), local(a.submitted_at), local(a.decided_at)] for a in applications]
    return workbook("限制类技术", EXPORT_COLUMNS, rows, [12, 30, 10, 8, 14, 14, 12, 10, 10, 10, 16, 16])
