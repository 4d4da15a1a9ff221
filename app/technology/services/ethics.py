"""伦理审查 (seed 000 §二.1(2)): application, mode and members, members' opinions, summary, decision, letter."""

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
from app.errors import DomainError, Forbidden, NotFound, ValidationFailed
from app.forms import start as start_forms
from app.notify import services as notify
from app.technology.models.ethics import (
    DECISION_LABELS,
    ETHICS_STATUS_LABELS,
    MODE_LABELS,
    OPINION_LABELS,
    REVIEW_ITEMS,
    EthicsOpinion,
    EthicsReview,
    EthicsStatus,
)
from app.technology.services.common import (
    Errors,
    acts_for_designated,
    pick_reviewers,
    workbook,
)

PROCESS_KEY = "tech_ethics_review"
FORM_KEY = EthicsReview.FORM_KEY
DONE_MESSAGE = "tech_ethics_done"
# 会议审查 needs a quorum; 快速审查 is done by one or two designated members (涉及人的生命科学和医学研究伦理审查办法)
MIN_MEETING_MEMBERS = 3
EXPEDITED_MEMBERS = (1, 2)


@dataclass(frozen=True)
class Setup:
    mode: str
    members: list[User]
    review_items: list[str]
    meeting_date: date | None
    comment: str | None


def validate_setup(data: dict[str, Any], *, forced_mode: str | None = None, exclude_ids: tuple[int, ...] = ()) -> Setup:
    """Mode, members (holders of ethics_member) and review items. Raises ValidationFailed with field paths."""
    errors = Errors()
    mode = errors.choice(data, "mode", "审查方式", MODE_LABELS)
    if forced_mode and mode and mode != forced_mode:
        errors["mode"] = f"此类申请须采用{MODE_LABELS[forced_mode]}"
    ids, members = pick_reviewers(data.get("member_ids"), "member_ids", errors, role="ethics_member", noun="委员",
                                  role_label="伦理委员会委员", excluded=exclude_ids, conflict="与审查项目存在利益关系")
    if not ids and "member_ids" not in errors:
        errors["member_ids"] = "请选择审查委员"
    elif mode == "meeting" and len(members) < MIN_MEETING_MEMBERS and not any(k.startswith("member_ids") for k in errors):
        errors["member_ids"] = f"会议审查须至少 {MIN_MEETING_MEMBERS} 位委员参加"
    elif mode == "expedited" and len(members) not in EXPEDITED_MEMBERS and not any(
            k.startswith("member_ids") for k in errors):
        errors["member_ids"] = "快速审查由 1–2 位委员进行"
    raw_items = data.get("review_items") or []
    if not isinstance(raw_items, list):
        raw_items = [raw_items]
    items: list[str] = []
    for idx, item in enumerate(raw_items):
        if item not in REVIEW_ITEMS:
            errors[f"review_items/{idx}"] = "审查内容不在可选范围内"
        elif item not in items:
            items.append(item)
    if not raw_items:
        errors["review_items"] = "请选择审查内容"
    meeting = errors.day(data, "meeting_date", "会议日期", required=mode == "meeting")
    comment = errors.text(data, "comment", "说明", required=False, max_len=1000)
    if errors:
        raise ValidationFailed(dict(errors))
    assert mode is not None
    return Setup(mode=mode, members=members, review_items=items, meeting_date=meeting, comment=comment)


def _setup_payload(setup: Setup) -> dict[str, Any]:
    data: dict[str, Any] = {"mode": setup.mode, "member_ids": [u.id for u in setup.members],
                            "review_items": setup.review_items}
    if setup.meeting_date:
        data["meeting_date"] = setup.meeting_date.isoformat()
    if setup.comment:
        data["comment"] = setup.comment
    return data


def _flow_data(review: EthicsReview) -> dict[str, Any]:
    return {"review_id": review.id, "review_no": review.number, "title": review.title,
            "applicant_name": review.applicant.name, "source_kind": review.source_kind, "mode": review.mode,
            "member_ids": list(review.member_ids or []), "review_items": list(review.review_items or []),
            "review_round": 0}


def _start(review: EthicsReview, actor: User) -> None:
    from app.workflow import services as wf

    instance = wf.start(key=PROCESS_KEY, business_key=review.number, title=f"伦理审查：{review.title}",
                        actor=review.applicant, dept_id=review.dept_id, campus_id=review.campus_id,
                        data=_flow_data(review))
    review.instance_id = instance.id
    db.session.flush()


def apply(*, applicant: User, data: Any) -> EthicsReview:
    """A standalone ethics application from the `tech_ethics_apply` form (a dict or form-encoded data); the
    ethics office then chooses mode and members. The template version and extra fields are kept on the review.
    Raises ValidationFailed with every problem; nothing is written then."""
    form = start_forms.start_form(FORM_KEY)
    values, template_errors = start_forms.check(form, data)
    errors = Errors()
    if applicant.departed_at is not None or not applicant.is_active:
        errors["applicant"] = "离职或已停用人员不能申请"
    if applicant.dept_id is None:
        errors["dept_id"] = "申请人未归属科室，请先完善科室信息"
    problems = start_forms.merge_errors(template_errors, errors)
    if problems:
        raise ValidationFailed(problems, message=f"“{form.title}”填写有误，请按提示修改")
    title, description = str(values["title"]), str(values["description"])
    dept = db.session.get(Department, applicant.dept_id)
    review = EthicsReview(title=title, source_kind="standalone", applicant_id=applicant.id, dept_id=applicant.dept_id,
                          campus_id=dept.campus_id if dept else None, description=description,
                          status=EthicsStatus.PENDING_SETUP, form_version=form.version,
                          form_data=start_forms.extra(form, values, EthicsReview.FORM_COLUMNS))
    review.applicant = applicant
    db.session.add(review)
    db.session.flush()
    _start(review, applicant)
    audit.record(applicant, "technology.ethics_applied", review, after=audit.snapshot(review))
    return review


def start_for_source(*, source_kind: str, source_id: int, title: str, description: str, applicant: User,
                     dept_id: int | None, campus_id: int | None, data: dict[str, Any], actor: User) -> EthicsReview:
    """Open an ethics review for a new-technology or restricted-technology application with the mode and members
    the office chose, and start its flow (each member gets an own task). Raises ValidationFailed."""
    forced = "meeting" if source_kind == "restricted" else None
    setup = validate_setup(data, forced_mode=forced, exclude_ids=(applicant.id,))
    review = EthicsReview(title=title, source_kind=source_kind, source_id=source_id, applicant_id=applicant.id,
                          dept_id=dept_id, campus_id=campus_id, description=description, mode=setup.mode,
                          member_ids=[u.id for u in setup.members], review_items=setup.review_items,
                          meeting_date=setup.meeting_date, status=EthicsStatus.IN_REVIEW)
    review.applicant = applicant
    db.session.add(review)
    db.session.flush()
    _start(review, actor)
    audit.record(actor, "technology.ethics_opened", review, after=audit.snapshot(review))
    return review


def setup_review(*, review: EthicsReview, actor: User, data: dict[str, Any]) -> EthicsReview:
    """Complete the 确定审查方式与委员 step of a standalone review. Raises ValidationFailed, NotFound, Forbidden."""
    from app.technology.services.common import ready_task
    from app.workflow import services as wf

    setup = validate_setup(data, exclude_ids=(review.applicant_id,))
    task = ready_task(review.instance_id, "ethics_setup", what="确定审查方式与委员")
    wf.complete(task_id=task.id, actor=actor, data=_setup_payload(setup))
    return review


def submit_for_source(*, instance_id: int | None, actor: User, data: dict[str, Any], forced_mode: str | None,
                      applicant_id: int) -> None:
    """Complete a technology flow's 提交伦理审查 step (its hook opens the review). Raises ValidationFailed, NotFound."""
    from app.technology.services.common import ready_task
    from app.workflow import services as wf

    setup = validate_setup(data, forced_mode=forced_mode, exclude_ids=(applicant_id,))
    task = ready_task(instance_id, "ethics_submit", what="提交伦理审查")
    wf.complete(task_id=task.id, actor=actor, data=_setup_payload(setup))


# ---------------------------------------------------------------- engine hooks


def review_for_instance(instance: Any) -> EthicsReview | None:
    review = db.session.scalar(select(EthicsReview).where(EthicsReview.instance_id == instance.id)
                               .with_for_update(of=EthicsReview))
    if review is None:
        key = str(getattr(instance, "business_key", "") or "")
        if key.startswith("LL") and key[2:].isdigit():
            review = db.session.get(EthicsReview, int(key[2:]))
    return review


def on_task_complete(*, instance: Any, task: Any, data: dict[str, Any], actor: User) -> None:
    review = review_for_instance(instance)
    if review is None:
        return
    spec = task.spec_name
    if spec == "ethics_setup":
        setup = validate_setup(data, exclude_ids=(review.applicant_id,))
        before = {"mode": review.mode, "member_ids": review.member_ids}
        review.mode = setup.mode
        review.member_ids = [u.id for u in setup.members]
        review.review_items = setup.review_items
        review.meeting_date = setup.meeting_date
        review.status = EthicsStatus.IN_REVIEW
        audit.record(actor, "technology.ethics_setup", review, before=before,
                     after={"mode": review.mode, "member_ids": review.member_ids, "review_items": review.review_items})
    elif spec == "member_opinion [child]":
        from app.workflow import services as wf

        task_data = wf.task_data(task)
        designated = task_data.get("member_id")
        if not acts_for_designated(task, actor, designated):
            member = db.session.get(User, int(designated or 0))
            raise Forbidden(f"该审查任务指定由{member.name if member else '其他委员'}审查，您不能代为提交")
        opinion = EthicsOpinion(review_id=review.id, member_id=actor.id, round=int(task_data.get("review_round") or 1),
                                opinion=str(data["opinion"]), items_ok=list(data.get("items_ok") or []),
                                comment=data.get("comment") or None)
        db.session.add(opinion)
        db.session.flush()
        audit.record(actor, "technology.ethics_opinion", opinion, after=audit.snapshot(opinion))
    elif spec == "ethics_decision":
        from app.workflow import services as wf

        summary = wf.task_data(task)  # the BPMN summary script's figures, as the decision was taken on them
        review.agree_count = int(summary.get("agree_count") or 0)
        review.modify_count = int(summary.get("modify_count") or 0)
        review.disagree_count = int(summary.get("disagree_count") or 0)
        review.majority = str(summary.get("majority") or "none")
        review.decision = str(data["decision"])
        review.conditions = data.get("conditions") or None
        review.decision_comment = data.get("comment") or None
        review.decided_by_id = actor.id
        if review.decision == "resubmit":
            review.status = EthicsStatus.RESUBMIT
        audit.record(actor, "technology.ethics_decided", review,
                     after={"decision": review.decision, "agree": review.agree_count, "modify": review.modify_count,
                            "disagree": review.disagree_count, "majority": review.majority})
    elif spec == "resubmit":
        revised = (data.get("revised_text") or "").strip()
        if revised and revised != review.description:
            audit.record(actor, "technology.ethics_revised", review, before={"description": review.description},
                         after={"description": revised})
            review.description = revised
        review.round += 1
        review.status = EthicsStatus.IN_REVIEW
    db.session.flush()


def finalize(*, instance: Any, data: dict[str, Any], actor: Any) -> EthicsReview | None:
    """End hook: record the decision (or withdrawal), tell the applicant, and hand the decision back to the
    technology flow that asked for the review (message tech_ethics_done). Idempotent."""
    review = review_for_instance(instance)
    if review is None or review.status in (EthicsStatus.DECIDED, EthicsStatus.WITHDRAWN):
        return review
    final = str(data.get("final_decision") or "")
    if final in ("withdrawn", "terminated"):
        review.status = EthicsStatus.WITHDRAWN
        review.decision_comment = data.get("reason") or None
        audit.record(actor, "technology.ethics_withdrawn", review, after={"reason": review.decision_comment})
    elif final in ("approved", "rejected"):
        review.status = EthicsStatus.DECIDED
        review.decided_at = utcnow()
        if not review.decision:
            review.decision = "approve" if final == "approved" else "disapprove"
        audit.record(actor, "technology.ethics_closed", review, after={"decision": review.decision})
        notify.notify(user_ids=[review.applicant_id], title=f"伦理审查 {review.number}：{review.decision_label}",
                      body=review.title, link=f"/technology/ethics/{review.id}", kind="result")
    else:
        return review
    db.session.flush()
    if review.source_kind in ("new_tech", "restricted") and review.status == EthicsStatus.DECIDED:
        _hand_back(review)
    return review


def _hand_back(review: EthicsReview) -> None:
    from app.workflow import services as wf

    key = _source_business_key(review)
    if not key:
        return
    try:
        wf.deliver_message(name=DONE_MESSAGE, correlation_key=key, message_id=f"ethics-{review.id}-{review.round}",
                           payload={"decision": review.decision, "review_id": review.id, "review_no": review.number,
                                    "comment": review.decision_comment or review.conditions or ""},
                           sender="伦理审查")
    except DomainError as exc:  # the asking flow was withdrawn meanwhile: the decision stays on record
        audit.record("系统", "technology.ethics_not_delivered", review, after={"reason": exc.message})
        return
    if review.decision in ("approve", "approve_modified"):
        _advance_source(review)


def _source_business_key(review: EthicsReview) -> str | None:
    if review.source_kind == "new_tech" and review.source_id:
        return f"XJS{review.source_id:06d}"
    if review.source_kind == "restricted" and review.source_id:
        return f"XZ{review.source_id:06d}"
    return None


def _advance_source(review: EthicsReview) -> None:
    if review.source_kind == "new_tech":
        from app.technology.models.new_tech import NewTechProject, ProjectStatus

        project = db.session.get(NewTechProject, review.source_id)
        if project is not None and project.status == ProjectStatus.ETHICS_REVIEW:
            project.status = ProjectStatus.MAO_APPROVAL
            audit.record("伦理审查", "technology.project_status", project, before={"status": "ethics_review"},
                         after={"status": "mao_approval", "ethics": review.number})
    elif review.source_kind == "restricted":
        from app.technology.models.restricted import RestrictedApplication, RestrictedStatus

        application = db.session.get(RestrictedApplication, review.source_id)
        if application is not None and application.status == RestrictedStatus.ETHICS_REVIEW:
            application.status = RestrictedStatus.APPROVAL
            audit.record("伦理审查", "technology.restricted_status", application, before={"status": "ethics_review"},
                         after={"status": "approval", "ethics": review.number})
    db.session.flush()


# ---------------------------------------------------------------- queries and output


def summary(review: EthicsReview) -> dict[str, Any]:
    """Counts of the current round's opinions (live, before the decision) or the recorded summary."""
    current = [o for o in review.opinions if o.round == review.round]
    counts = {k: sum(1 for o in current if o.opinion == k) for k in OPINION_LABELS}
    if review.status == EthicsStatus.DECIDED and review.agree_count is not None:
        counts = {"agree": review.agree_count, "modify": review.modify_count or 0,
                  "disagree": review.disagree_count or 0}
    total = len(review.member_ids or [])
    return {"counts": counts, "submitted": len(current), "members": total,
            "majority": review.majority_label if review.majority else ""}


def reviews_for_source(*, source_kind: str, source_id: int) -> list[EthicsReview]:
    """The ethics reviews opened for one new-technology project or restricted-technology application."""
    return list(db.session.scalars(select(EthicsReview).where(EthicsReview.source_kind == source_kind,
                                                              EthicsReview.source_id == source_id)
                                   .order_by(EthicsReview.id)))


def members(review: EthicsReview) -> list[User]:
    ids = list(review.member_ids or [])
    users = {u.id: u for u in db.session.scalars(select(User).where(User.id.in_(ids)))} if ids else {}
    return [users[i] for i in ids if i in users]


@dataclass(frozen=True)
class EthicsFilter:
    status: str | None = None
    mode: str | None = None
    source_kind: str | None = None
    q: str | None = None


def may_view(review: EthicsReview, viewer: User) -> bool:
    if viewer.id == review.applicant_id or viewer.id in (review.member_ids or []):
        return True
    if has_permission(viewer, "technology.manage"):
        scope = data_scope(viewer, "technology.manage")
        return scope.allows(dept_id=review.dept_id, campus_id=review.campus_id)
    if has_permission(viewer, "technology.view"):
        scope = data_scope(viewer, "technology.view")
        return scope.level.value != "self" and scope.allows(dept_id=review.dept_id, campus_id=review.campus_id)
    return False


def get_review(*, review_id: int, viewer: User) -> EthicsReview:
    review = db.session.get(EthicsReview, review_id)
    if review is None:
        raise NotFound("伦理审查不存在")
    if not may_view(review, viewer):
        raise Forbidden("您无权查看该伦理审查")
    return review


def reviews_query(*, viewer: User, filters: EthicsFilter | None = None) -> Select:
    """Reviews the viewer may list: the office's scope, a member's own reviews, an applicant's own."""
    f = filters or EthicsFilter()
    stmt = select(EthicsReview).order_by(EthicsReview.id.desc())
    if has_permission(viewer, "technology.manage"):
        scope = data_scope(viewer, "technology.manage")
        stmt = scope.filter(stmt, user_col=EthicsReview.applicant_id, dept_col=EthicsReview.dept_id,
                            campus_col=EthicsReview.campus_id)
    elif has_permission(viewer, "technology.view") and data_scope(viewer, "technology.view").level.value != "self":
        stmt = data_scope(viewer, "technology.view").filter(stmt, dept_col=EthicsReview.dept_id,
                                                            campus_col=EthicsReview.campus_id)
    elif has_permission(viewer, "ethics.review"):
        # member lists are short JSON arrays; reviews number in the hundreds a year, so match them here
        assigned = [rid for rid, ids in db.session.execute(select(EthicsReview.id, EthicsReview.member_ids))
                    if isinstance(ids, list) and viewer.id in ids]
        stmt = stmt.where(or_(EthicsReview.applicant_id == viewer.id, EthicsReview.id.in_(assigned)))
    else:
        stmt = stmt.where(EthicsReview.applicant_id == viewer.id)
    if f.status:
        stmt = stmt.where(EthicsReview.status == f.status)
    if f.mode:
        stmt = stmt.where(EthicsReview.mode == f.mode)
    if f.source_kind:
        stmt = stmt.where(EthicsReview.source_kind == f.source_kind)
    if f.q:
        stmt = stmt.where(EthicsReview.title.ilike(f"%{f.q.strip()}%"))
    return stmt


def letter_docx(*, review: EthicsReview) -> bytes:
    """The decision letter (审查决定书) as a Word document. Raises InvalidTransition before a decision."""
    from app.errors import InvalidTransition
    from reports.ethics_letter import LetterData, build_letter

    if review.status != EthicsStatus.DECIDED:
        raise InvalidTransition("伦理委员会尚未作出决定，不能生成决定书")
    s = summary(review)
    data = LetterData(
        number=review.number, title=review.title, applicant=review.applicant.name,
        dept=review.dept.name if review.dept else "", source=review.source_label, mode=review.mode_label,
        members=[u.name + (f"（{u.title}）" if u.title else "") for u in members(review)],
        review_items=[REVIEW_ITEMS.get(i, i) for i in review.review_items or []],
        counts={OPINION_LABELS[k]: v for k, v in s["counts"].items()}, majority=review.majority_label,
        decision=DECISION_LABELS.get(review.decision or "", ""), conditions=review.conditions or "",
        comment=review.decision_comment or "", meeting_date=review.meeting_date,
        decided_on=(review.decided_at and local(review.decided_at, "%Y-%m-%d")) or "",
        decided_by=review.decided_by.name if review.decided_by else "")
    return build_letter(data)


EXPORT_COLUMNS = ["审查编号", "项目名称", "来源", "申请人", "科室", "审查方式", "委员人数", "同意", "修改后同意", "不同意",
                  "多数意见", "决定", "状态", "决定时间"]


def export_workbook(reviews: list[EthicsReview]) -> bytes:
    rows = [[r.number, r.title, r.source_label, r.applicant.name, r.dept.name if r.dept else "", r.mode_label,
             len(r.member_ids or []), r.agree_count or 0, r.modify_count or 0, r.disagree_count or 0,
             r.majority_label if r.majority else "", r.decision_label,
             ETHICS_STATUS_LABELS.get(str(r.status), str(r.status)), local(r.decided_at)] for r in reviews]
    return workbook("伦理审查", EXPORT_COLUMNS, rows, [12, 30, 12, 8, 10, 10, 8, 6, 8, 6, 10, 10, 12, 16])
