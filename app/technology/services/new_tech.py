"""新技术新项目 (seed 000 §二.1(1)): application, expert review, approval and follow-up through `tech_new_project`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Select, func, or_, select

from app.audit import services as audit
from app.auth.models import Department, User
from app.auth.services import data_scope, has_permission
from app.core.timefmt import local
from app.db import db, utcnow
from app.errors import Forbidden, ValidationFailed
from app.forms import start as start_forms
from app.notify import services as notify
from app.privileges import services as privileges
from app.technology.models.new_tech import (
    CATEGORY_LABELS,
    PROJECT_STATUS_LABELS,
    RISK_LABELS,
    ExpertReview,
    NewTechProject,
    ProgressReport,
    ProjectStatus,
)
from app.technology.services.common import (
    Errors,
    active_user,
    acts_for_designated,
    pick_reviewers,
    workbook,
)

PROCESS_KEY = "tech_new_project"
FORM_KEY = NewTechProject.FORM_KEY
MIN_EXPERTS = 2
MAX_EXPERTS = 9
TEAM_MAX = 20


def _team(raw: Any, errors: Errors) -> list[str]:
    if raw is None or raw == "":
        return []
    lines = raw if isinstance(raw, list) else str(raw).splitlines()
    team = [str(x).strip() for x in lines if str(x).strip()]
    if len(team) > TEAM_MAX:
        errors["team"] = f"团队成员不超过 {TEAM_MAX} 人"
    for idx, member in enumerate(team):
        if len(member) > 100:
            errors[f"team/{idx}"] = "每位成员的说明不超过 100 字"
    return team


def validate_application(*, applicant: User, data: Any) -> dict[str, Any]:
    """Check an application against the latest `tech_new_apply` template and the business rules (department,
    lead, ethics for high risk, team lines); returns the clean values, the template (`form`) and the fields
    without an own column (`form_data`). Raises ValidationFailed (field paths, Chinese) with every problem."""
    form = start_forms.start_form(FORM_KEY)
    values, template_errors = start_forms.check(form, data,
                                                defaults={"dept_id": applicant.dept_id, "lead_id": applicant.id})
    errors = Errors()
    if applicant.departed_at is not None or not applicant.is_active:
        errors["applicant"] = "离职或已停用人员不能申请"
    category, risk = values.get("category"), values.get("risk_level")
    # the flow (DMN tech_risk_rules) and the lists know these codes only, whatever options the template offers
    if isinstance(category, str) and category not in CATEGORY_LABELS:
        errors["category"] = f"项目类别不在可选范围内（{'、'.join(CATEGORY_LABELS.values())}）"
    if isinstance(risk, str) and risk not in RISK_LABELS:
        errors["risk_level"] = f"风险等级不在可选范围内（{'、'.join(RISK_LABELS.values())}）"
    ethics_required = values.get("ethics_required") is True
    clean: dict[str, Any] = {
        "name": values.get("name"), "category": category, "risk_level": risk,
        "description": values.get("description"), "expected_cases": values.get("expected_cases"),
        "ethics_required": ethics_required, "team": _team(values.get("team"), errors),
    }
    dept_id = values.get("dept_id")
    dept = db.session.get(Department, dept_id) if isinstance(dept_id, int) and dept_id > 0 else None
    if dept is None or not dept.is_active:
        errors["dept_id"] = "请选择开展科室"
    elif dept.id != applicant.dept_id and not has_permission(applicant, "technology.manage"):
        errors["dept_id"] = "只能为本科室申请新技术新项目"
    clean["dept"] = dept
    lead_id = values.get("lead_id")
    lead = active_user(lead_id) if isinstance(lead_id, int) else None
    if lead is None:
        errors["lead_id"] = "项目负责人不存在或已停用"
    elif dept is not None and lead.dept_id != dept.id:
        errors["lead_id"] = "项目负责人应为开展科室的医师"
    clean["lead"] = lead
    if risk == "high" and not ethics_required:
        errors["ethics_required"] = "高风险项目须经伦理审查"
    problems = start_forms.merge_errors(template_errors, errors)
    if problems:
        raise ValidationFailed(problems, message=f"“{form.title}”填写有误，请按提示修改")
    clean["form"] = form
    clean["form_data"] = start_forms.extra(form, values, NewTechProject.FORM_COLUMNS)
    return clean


def flow_data(project: NewTechProject, *, report_interval_override: str | None = None) -> dict[str, Any]:
    """Task data `tech_new_project` starts with (the DMN tech_risk_rules reads risk_level)."""
    return {
        "project_id": project.id, "project_no": project.number, "project_name": project.name,
        "dept_name": project.dept.name, "applicant_name": project.applicant.name, "lead_id": project.lead_id,
        "lead_name": project.lead.name, "risk_level": project.risk_level, "ethics_required": project.ethics_required,
        "expected_cases": project.expected_cases, "expert_ids": [], "review_round": 0, "extension_count": 0,
        "report_interval_override": report_interval_override,
    }


def apply(*, applicant: User, data: Any, report_interval_override: str | None = None) -> NewTechProject:
    """Create a project from the application form (a dict or form-encoded data) and start `tech_new_project`
    (audited); the template version and the office's extra fields are kept on the project. Raises
    ValidationFailed; nothing is written then."""
    clean = validate_application(applicant=applicant, data=data)
    dept: Department = clean["dept"]
    project = NewTechProject(
        name=clean["name"], category=clean["category"], dept_id=dept.id, campus_id=dept.campus_id,
        applicant_id=applicant.id, lead_id=clean["lead"].id, team=clean["team"], description=clean["description"],
        risk_level=clean["risk_level"], ethics_required=clean["ethics_required"],
        expected_cases=clean["expected_cases"], status=ProjectStatus.DEPT_REVIEW, submitted_at=utcnow(),
        form_version=clean["form"].version, form_data=clean["form_data"])
    project.dept, project.applicant, project.lead = dept, applicant, clean["lead"]
    db.session.add(project)
    db.session.flush()
    from app.workflow import services as wf

    instance = wf.start(key=PROCESS_KEY, business_key=project.number, title=f"新技术新项目：{project.name}（{dept.name}）",
                        actor=applicant, dept_id=dept.id, campus_id=dept.campus_id,
                        data=flow_data(project, report_interval_override=report_interval_override))
    project.instance_id = instance.id
    db.session.flush()
    audit.record(applicant, "technology.project_submitted", project, after=audit.snapshot(project))
    return project


def apply_choices(applicant: User) -> tuple[list[Department], list[User]]:
    """Departments an applicant may apply for (own; any clinical one for the office) and their possible leads."""
    stmt = select(Department).where(Department.is_active.is_(True)).order_by(Department.code)
    if has_permission(applicant, "technology.manage"):
        departments = list(db.session.scalars(stmt.where(Department.kind == "clinical")))
    else:
        departments = list(db.session.scalars(stmt.where(Department.id == applicant.dept_id)))
    leads = list(db.session.scalars(select(User).where(User.dept_id.in_([d.id for d in departments]),
                                                       User.is_active.is_(True), User.departed_at.is_(None))
                                    .order_by(User.dept_id, User.name)))
    return departments, leads


# ---------------------------------------------------------------- steps done on the project page


def validate_experts(raw_ids: Any, project: NewTechProject) -> list[User]:
    """The experts named for a review: active holders of the `expert` role, not on the project team's side.
    Raises ValidationFailed with `expert_ids/N` paths."""
    errors = Errors()
    _ids, users = pick_reviewers(raw_ids, "expert_ids", errors, role="expert", noun="专家", role_label="技术评审专家",
                                 excluded=(project.applicant_id, project.lead_id), conflict="是本项目申请人或负责人")
    if not errors and not (MIN_EXPERTS <= len(users) <= MAX_EXPERTS):
        errors["expert_ids"] = f"请选择 {MIN_EXPERTS}–{MAX_EXPERTS} 位评审专家"
    if errors:
        raise ValidationFailed(dict(errors))
    return users


def assign_experts(*, project: NewTechProject, actor: User, expert_ids: list[Any], comment: str | None = None) -> NewTechProject:
    """Complete the 组织专家评审 step: each chosen expert gets an own review task. Raises ValidationFailed,
    NotFound (the flow is not at that step), Forbidden."""
    from app.technology.services.common import ready_task
    from app.workflow import services as wf

    users = validate_experts(expert_ids, project)
    task = ready_task(project.instance_id, "assign_experts", what="组织专家评审")
    data: dict[str, Any] = {"expert_ids": [u.id for u in users]}
    if comment:
        data["comment"] = comment.strip()[:1000]
    wf.complete(task_id=task.id, actor=actor, data=data)
    return project


# ---------------------------------------------------------------- engine hooks (called from technology.flow)


def project_for_instance(instance: Any) -> NewTechProject | None:
    project = db.session.scalar(select(NewTechProject).where(NewTechProject.instance_id == instance.id)
                                .with_for_update(of=NewTechProject))
    if project is None:
        key = str(getattr(instance, "business_key", "") or "")
        if key.startswith("XJS") and key[3:].isdigit():
            project = db.session.get(NewTechProject, int(key[3:]))
    return project


def _set_status(project: NewTechProject, status: ProjectStatus, actor: Any, **extra: Any) -> None:
    before = str(project.status)
    project.status = status
    audit.record(actor, "technology.project_status", project, before={"status": before},
                 after={"status": status.value, **extra})


def on_task_complete(*, instance: Any, task: Any, data: dict[str, Any], actor: User) -> None:
    """Keep the project row in step with the flow as each user task is completed (same transaction)."""
    project = project_for_instance(instance)
    if project is None:
        return
    spec = task.spec_name
    decision = data.get("decision")
    if spec == "dept_review":
        if decision == "approve":
            _set_status(project, ProjectStatus.EXPERT_ASSIGN, actor, step="科室审核")
        elif decision == "return":
            _set_status(project, ProjectStatus.RETURNED, actor, step="科室审核", comment=data.get("comment"))
    elif spec == "revise":
        revised = (data.get("revised_text") or "").strip()
        if revised and revised != project.description:
            audit.record(actor, "technology.project_revised", project, before={"description": project.description},
                         after={"description": revised})
            project.description = revised
        _set_status(project, ProjectStatus.DEPT_REVIEW, actor, step="修改申请", note=data.get("revision_note"))
    elif spec == "assign_experts":
        experts = validate_experts(data.get("expert_ids"), project)
        project.expert_ids = [u.id for u in experts]
        _set_status(project, ProjectStatus.EXPERT_REVIEW, actor, experts=[u.name for u in experts])
    elif spec == "expert_review [child]":
        _record_expert_review(project, task, data, actor)
    elif spec == "ethics_submit":
        from app.technology.services import ethics

        ethics.start_for_source(source_kind="new_tech", source_id=project.id, title=project.name,
                                description=project.description, applicant=project.applicant,
                                dept_id=project.dept_id, campus_id=project.campus_id, data=data, actor=actor)
        _set_status(project, ProjectStatus.ETHICS_REVIEW, actor, step="提交伦理审查")
    elif spec == "mao_approval":
        if decision == "approve":
            project.approved_at = utcnow()
            _set_status(project, ProjectStatus.TRACKING, actor, step="医务处审批", comment=data.get("comment"))
            privileges.sync_new_tech_item(number=project.number, name=project.name, active=True,
                                          note="新技术新项目开展期间按项目授权", actor=actor)
            notify.notify(user_ids={project.applicant_id, project.lead_id}, title=f"新技术新项目 {project.number} 已批准开展",
                          body=f"{project.name}：请按追踪周期提交进展报告", link=f"/technology/new-tech/{project.id}",
                          kind="result")
        elif decision == "return":
            _set_status(project, ProjectStatus.RETURNED, actor, step="医务处审批", comment=data.get("comment"))
    elif spec == "progress_report":
        seq = (db.session.scalar(select(func.count()).select_from(ProgressReport)
                                 .where(ProgressReport.project_id == project.id)) or 0) + 1
        report = ProgressReport(
            project_id=project.id, seq=seq, period_label=str(data.get("period_label") or "")[:64],
            cases_done=int(data.get("cases_done") or 0), effective_cases=int(data.get("effective_cases") or 0),
            complications=int(data.get("complications") or 0), adverse_events=int(data.get("adverse_events") or 0),
            summary=str(data.get("summary") or ""), problems=data.get("problems"), submitted_by_id=actor.id)
        db.session.add(report)
        db.session.flush()
        audit.record(actor, "technology.progress_reported", report, after=audit.snapshot(report))
    elif spec == "progress_review":
        if decision == "routine":  # checked before anything is written: the end hook acts on the same choice
            routine_choice(data)
        reason = suspend_reason(data) if decision == "suspend" else None
        latest = db.session.scalar(select(ProgressReport).where(ProgressReport.project_id == project.id)
                                   .order_by(ProgressReport.id.desc()).limit(1))
        if latest is not None:
            latest.review_decision = str(decision)
            latest.review_comment = data.get("comment") or reason
            latest.reviewed_by_id = actor.id
            latest.reviewed_at = utcnow()
            audit.record(actor, "technology.progress_reviewed", latest,
                         after={"decision": decision, "comment": latest.review_comment})
        if decision == "continue":
            _set_status(project, ProjectStatus.TRACKING, actor, step="进展审核")
        elif decision == "extend":
            project.extension_count += 1
            _set_status(project, ProjectStatus.EXTENDED, actor, step="进展审核", comment=data.get("comment"))
        elif decision == "suspend" and reason is not None:
            suspend(project=project, reason=reason, actor=actor)
    elif spec == "suspension_review":
        if decision == "resume":
            resume(project=project, comment=suspension_comment(data), actor=actor)
        # 终止开展 ends the flow: finalize closes the project and retires its catalogue item
    db.session.flush()


def _record_expert_review(project: NewTechProject, task: Any, data: dict[str, Any], actor: User) -> None:
    from app.workflow import services as wf

    task_data = wf.task_data(task)
    designated = task_data.get("expert_id")
    if not acts_for_designated(task, actor, designated):
        expert = db.session.get(User, int(designated or 0))
        raise Forbidden(f"该评审任务指定由{expert.name if expert else '其他专家'}评审，您不能代为提交")
    review_round = int(task_data.get("review_round") or 1)
    review = ExpertReview(project_id=project.id, expert_id=actor.id, round=review_round,
                          score=int(data["score"]), recommendation=str(data["recommendation"]),
                          comment=str(data.get("comment") or ""))
    db.session.add(review)
    db.session.flush()
    audit.record(actor, "technology.expert_reviewed", review, after=audit.snapshot(review))
    reviews = list(db.session.scalars(select(ExpertReview).where(ExpertReview.project_id == project.id,
                                                                 ExpertReview.round == review_round)))
    if len(reviews) >= len(project.expert_ids or []):
        project.expert_count = len(reviews)
        project.expert_avg = round(sum(r.score for r in reviews) / len(reviews), 1)
        nxt = ProjectStatus.ETHICS_REVIEW if project.ethics_required else ProjectStatus.MAO_APPROVAL
        _set_status(project, nxt, actor, expert_count=project.expert_count, expert_avg=project.expert_avg)


# 转常规 (seed 000 §二.1, §三.9): the 医务处审核进展 form's fields naming the ordinary privilege category
ROUTINE_FIELDS = {"category": "privilege_category", "grade_level": "privilege_grade",
                  "procedure_code": "procedure_code"}


def routine_choice(data: dict[str, Any]) -> dict[str, Any]:
    """The ordinary privilege category (grade where it has grades, optional ICD-9-CM-3 code) chosen for a project
    turning routine. Raises ValidationFailed with the form's field paths (privilege_category, privilege_grade,
    procedure_code) and Chinese messages."""
    errors = Errors()
    category = str(data.get("privilege_category") or "").strip() or None
    grade = errors.integer(data, "privilege_grade", "授权级别", required=False, minimum=1, maximum=4)
    procedure_code = errors.text(data, "procedure_code", "手术操作编码", required=False, max_len=32)
    for key, message in privileges.routine_target_errors(category_code=category, grade_level=grade,
                                                         procedure_code=procedure_code).items():
        errors.setdefault(ROUTINE_FIELDS[key], message)
    if errors:
        raise ValidationFailed(dict(errors))
    return {"category_code": category, "grade_level": grade, "procedure_code": procedure_code}


def _routine_submission(instance: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The data of the 医务处审核进展 submission that decided 转常规 (the flow's own data may still carry fields
    an earlier review round filled in)."""
    from app.workflow import services as wf

    for log in reversed(wf.history(instance.id)):
        if log.spec_name == "progress_review" and log.action in ("complete", "send_back"):
            if isinstance(log.data, dict) and log.data.get("decision") == "routine":
                return log.data
            break
    return data


def finalize(*, instance: Any, data: dict[str, Any], actor: Any) -> NewTechProject | None:
    """End hook: routine / stopped / rejected / withdrawn. Notifies the applicant and audits. Idempotent.
    转常规 authorises the technology under the ordinary category chosen in the last review (its item created or
    reused, the project's grant holders re-granted, their project grants ended); raises ValidationFailed when
    that choice is missing or wrong, which undoes the whole completion."""
    project = project_for_instance(instance)
    if project is None or str(project.status) in ("routine", "terminated", "rejected", "withdrawn"):
        return project
    outcome = {"routine": ProjectStatus.ROUTINE, "stopped": ProjectStatus.TERMINATED,
               "rejected": ProjectStatus.REJECTED, "withdrawn": ProjectStatus.WITHDRAWN,
               "terminated": ProjectStatus.WITHDRAWN}.get(str(data.get("final_decision")))
    if outcome is None:
        return project
    choice = routine_choice(_routine_submission(instance, data)) if outcome is ProjectStatus.ROUTINE else None
    comment = (data.get("reason") if outcome is ProjectStatus.WITHDRAWN else data.get("comment")) or None
    project.final_comment = comment
    project.decided_at = utcnow()
    _set_status(project, outcome, actor, comment=comment)
    body = comment or project.name
    if choice is not None:
        conversion = privileges.convert_new_tech_to_routine(number=project.number, name=project.name,
                                                            actor=actor, **choice)
        item = conversion.item
        project.routine_item_id = item.id
        audit.record(actor, "technology.project_routine_item", project,
                     after={"routine_item": item.code, "category": item.category.code, "grade": item.grade,
                            "reused": conversion.reused, "granted": len(conversion.granted),
                            "ended": len(conversion.ended)})
        body = (f"{body}。已按“{item.category.name}”授权（{item.code}{'，' + item.grade if item.grade else ''}），"
                f"原项目授权 {len(conversion.ended)} 人转授 {len(conversion.granted)} 人")
    elif project.approved_at is not None:  # its catalogue item exists: retire it with the reason
        privileges.sync_new_tech_item(number=project.number, name=project.name, active=False, actor=actor,
                                      note=f"项目{project.status_label}")
    # the applicant and the project lead learn the outcome, as they learn of an approval (not whoever decided)
    told = [uid for uid in dict.fromkeys((project.applicant_id, project.lead_id))
            if uid is not None and uid != getattr(actor, "id", None)]
    if told:
        notify.notify(user_ids=told, title=f"新技术新项目 {project.number}：{project.status_label}",
                      body=body, link=f"/technology/new-tech/{project.id}", kind="result")
    db.session.flush()
    return project


# ---------------------------------------------------------------- 中止 (seed 000 §二.1 追踪管理：进展、中止、终止)
# A project halted at a progress review (a serious adverse event under investigation, say) stops at once: every
# grant in force of its 新技术新项目授权 item is suspended with the reason (audited, pushed to HIS, whose check then
# answers 授权已暂停：…), and the flow waits for the office's 中止项目处理: 恢复开展 resumes those same grants and
# goes back to tracking, 终止开展 ends the project (finalize retires the item; the grants are kept, as on any
# retirement, and the check answers 该授权项目已停用).

SUSPEND_REASON_MAX = 400


def suspend_reason(data: dict[str, Any]) -> str:
    """The reason a 中止 decision must give. Raises ValidationFailed (path reason)."""
    errors = Errors()
    reason = errors.text(data, "reason", "中止原因", max_len=SUSPEND_REASON_MAX)
    if errors or reason is None:
        raise ValidationFailed(dict(errors) or {"reason": "请填写中止原因"})
    return reason


def suspension_comment(data: dict[str, Any]) -> str:
    """The office's opinion on a suspended project (the grants' resumption reason). Raises ValidationFailed."""
    errors = Errors()
    comment = errors.text(data, "comment", "处理意见", max_len=SUSPEND_REASON_MAX)
    if errors or comment is None:
        raise ValidationFailed(dict(errors) or {"comment": "请填写处理意见"})
    return comment


def _grant_suspend_text(project: NewTechProject, reason: str) -> str:
    return f"新技术新项目「{project.name}」已中止：{reason}"[:privileges.MANAGE_REASON_MAX]


def project_grants(project: NewTechProject, *, status: str) -> list[Any]:
    """Grants of the project's 新技术新项目授权 item (NT-XJS…) in a status, not expired, oldest first."""
    from app.privileges.models import Grant, PrivilegeItem

    on = privileges.today()
    return list(db.session.scalars(
        select(Grant).join(PrivilegeItem, Grant.item_id == PrivilegeItem.id)
        .where(PrivilegeItem.code == f"NT-{project.number}", Grant.status == status,
               or_(Grant.valid_until.is_(None), Grant.valid_until >= on)).order_by(Grant.id)))


def _tell_team(project: NewTechProject, title: str, body: str) -> None:
    notify.notify(user_ids={project.applicant_id, project.lead_id}, title=f"新技术新项目 {project.number} {title}",
                  body=body, link=f"/technology/new-tech/{project.id}", kind="result")


def suspend(*, project: NewTechProject, reason: str, actor: User) -> NewTechProject:
    """中止: the project halts pending the office's decision. Every grant in force of its catalogue item is
    suspended with the reason (privilege services: audited, pushed to HIS, holders told); status audited; the
    applicant and lead notified. Raises InvalidTransition when the project is not being practised."""
    from app.errors import InvalidTransition
    from app.privileges.models import GrantStatus

    if str(project.status) not in (ProjectStatus.TRACKING, ProjectStatus.EXTENDED):
        raise InvalidTransition(f"项目{project.status_label}，不能中止", project_id=project.id)
    grant_reason = _grant_suspend_text(project, reason)
    grants = [privileges.suspend_grant(grant=g, reason=grant_reason, actor=actor)
              for g in project_grants(project, status=GrantStatus.ACTIVE.value)]
    project.suspended_at = utcnow()
    project.suspend_reason = reason
    project.suspended_grant_ids = [g.id for g in grants]
    _set_status(project, ProjectStatus.SUSPENDED, actor, step="进展审核", reason=reason,
                suspended_grants=project.suspended_grant_ids)
    _tell_team(project, "已中止", f"{project.name}：{reason}。项目暂停开展，{len(grants)} 人的项目授权已暂停，"
                                 "待医务处决定恢复开展或终止")
    db.session.flush()
    return project


def resume(*, project: NewTechProject, comment: str, actor: User) -> NewTechProject:
    """恢复开展: a suspended project goes back to tracking; the grants its suspension stopped are resumed (audited,
    pushed to HIS) unless they have expired meanwhile or were since suspended again for another reason. The
    applicant and lead notified. Raises InvalidTransition when the project is not suspended."""
    from app.errors import InvalidTransition
    from app.privileges.models import Grant, GrantStatus

    if str(project.status) != ProjectStatus.SUSPENDED:
        raise InvalidTransition(f"项目{project.status_label}，不是中止状态，无需恢复", project_id=project.id)
    ours = _grant_suspend_text(project, project.suspend_reason or "")
    on = privileges.today()
    resumed, kept = [], []
    for gid in project.suspended_grant_ids or []:
        grant = db.session.get(Grant, int(gid))
        if (grant is None or grant.status != GrantStatus.SUSPENDED.value or grant.revoked_reason != ours
                or (grant.valid_until is not None and grant.valid_until < on)):
            kept.append(gid)
            continue
        resumed.append(privileges.resume_grant(grant=grant, actor=actor, on=on,
                                               reason=f"新技术新项目「{project.name}」恢复开展：{comment}"[
                                                   :privileges.MANAGE_REASON_MAX]).id)
    before_reason = project.suspend_reason
    project.suspended_at = None
    project.suspend_reason = None
    project.suspended_grant_ids = []
    _set_status(project, ProjectStatus.TRACKING, actor, step="中止项目处理", comment=comment,
                suspend_reason=before_reason, resumed_grants=resumed, not_resumed=kept)
    _tell_team(project, "已恢复开展", f"{project.name}：{comment}。{len(resumed)} 人的项目授权已恢复，请按追踪周期提交进展报告")
    db.session.flush()
    return project


def routine_item(project: NewTechProject) -> Any:
    """The ordinary privilege item a routine project is authorised under (None before it turned routine)."""
    if project.routine_item_id is None:
        return None
    from app.privileges.models import PrivilegeItem

    return db.session.get(PrivilegeItem, project.routine_item_id)


# ---------------------------------------------------------------- queries


@dataclass(frozen=True)
class ProjectFilter:
    status: str | None = None
    dept_id: int | None = None
    category: str | None = None
    risk_level: str | None = None
    q: str | None = None


def projects_query(*, viewer: User, filters: ProjectFilter | None = None) -> Select:
    """Projects in the viewer's technology.view scope (own projects for a self scope). Raises Forbidden."""
    f = filters or ProjectFilter()
    scope = data_scope(viewer, "technology.view")
    stmt = select(NewTechProject).order_by(NewTechProject.id.desc())
    if scope.level.value == "self":
        stmt = stmt.where(or_(NewTechProject.applicant_id == viewer.id, NewTechProject.lead_id == viewer.id))
    else:
        stmt = scope.filter(stmt, dept_col=NewTechProject.dept_id, campus_col=NewTechProject.campus_id)
    if f.status == "open":
        stmt = stmt.where(NewTechProject.status.in_(("dept_review", "returned", "expert_assign", "expert_review",
                                                      "ethics_review", "mao_approval")))
    elif f.status:
        stmt = stmt.where(NewTechProject.status == f.status)
    if f.dept_id:
        stmt = stmt.where(NewTechProject.dept_id == f.dept_id)
    if f.category:
        stmt = stmt.where(NewTechProject.category == f.category)
    if f.risk_level:
        stmt = stmt.where(NewTechProject.risk_level == f.risk_level)
    if f.q:
        like = f"%{f.q.strip()}%"
        stmt = stmt.where(or_(NewTechProject.name.ilike(like), NewTechProject.description.ilike(like)))
    return stmt


def status_counts(*, viewer: User) -> dict[str, int]:
    sub = projects_query(viewer=viewer).order_by(None).subquery()
    rows = db.session.execute(select(sub.c.status, func.count()).group_by(sub.c.status)).all()
    return {str(row[0]): int(cast(int, row[1])) for row in rows}


def may_view(project: NewTechProject, viewer: User) -> bool:
    if viewer.id in (project.applicant_id, project.lead_id) or viewer.id in (project.expert_ids or []):
        return True
    if not has_permission(viewer, "technology.view"):
        return False
    scope = data_scope(viewer, "technology.view")
    if scope.level.value == "self":
        return False
    return scope.allows(dept_id=project.dept_id, campus_id=project.campus_id)


def get_project(*, project_id: int, viewer: User) -> NewTechProject:
    """A project the viewer may see. Raises NotFound, Forbidden."""
    from app.errors import NotFound

    project = db.session.get(NewTechProject, project_id)
    if project is None:
        raise NotFound("新技术新项目不存在")
    if not may_view(project, viewer):
        raise Forbidden("您无权查看该项目（不在数据范围内）")
    return project


def reviews_by_round(project: NewTechProject) -> dict[int, list[ExpertReview]]:
    out: dict[int, list[ExpertReview]] = {}
    for r in project.reviews:
        out.setdefault(r.round, []).append(r)
    return out


EXPORT_COLUMNS = ["项目编号", "项目名称", "类别", "科室", "申请人", "负责人", "风险等级", "需伦理审查", "预计例数",
                  "专家人数", "专家均分", "状态", "提交时间", "批准时间", "办结时间", "延期次数"]


def export_workbook(projects: list[NewTechProject]) -> bytes:
    rows = [[p.number, p.name, p.category_label, p.dept.name, p.applicant.name, p.lead.name, p.risk_label,
             "是" if p.ethics_required else "否", p.expected_cases, p.expert_count or "", p.expert_avg or "",
             PROJECT_STATUS_LABELS.get(str(p.status), str(p.status)), local(p.submitted_at), local(p.approved_at),
             local(p.decided_at), p.extension_count] for p in projects]
    return workbook("新技术新项目", EXPORT_COLUMNS, rows, [12, 30, 12, 10, 8, 8, 8, 8, 8, 8, 8, 12, 16, 16, 16, 8])
