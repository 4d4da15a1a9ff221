"""新技术新项目: the project, each expert's review and the follow-up (progress) reports."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.auth.models import Department, User
from app.db import Model, TimestampMixin, utcnow
from app.forms.models import StartFormMixin


class ProjectStatus(StrEnum):
    DEPT_REVIEW = "dept_review"
    RETURNED = "returned"
    EXPERT_ASSIGN = "expert_assign"
    EXPERT_REVIEW = "expert_review"
    ETHICS_REVIEW = "ethics_review"
    MAO_APPROVAL = "mao_approval"
    TRACKING = "tracking"
    EXTENDED = "extended"
    SUSPENDED = "suspended"  # 中止: halted pending the office's decision (resume or terminate)
    ROUTINE = "routine"
    TERMINATED = "terminated"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


PROJECT_STATUS_LABELS = {
    "dept_review": "科室审核中", "returned": "退回修改", "expert_assign": "待组织专家评审",
    "expert_review": "专家评审中", "ethics_review": "伦理审查中", "mao_approval": "医务处审批中",
    "tracking": "开展中（追踪）", "extended": "延期追踪", "suspended": "中止（暂停开展）",
    "routine": "已转常规", "terminated": "已终止",
    "rejected": "未通过", "withdrawn": "已撤回",
}
OPEN_PROJECT_STATUSES = ("dept_review", "returned", "expert_assign", "expert_review", "ethics_review",
                         "mao_approval", "tracking", "extended", "suspended")

CATEGORY_LABELS = {
    "diagnosis": "诊断技术", "treatment": "治疗技术", "surgery": "手术（介入）技术", "nursing": "护理技术",
    "lab_imaging": "检验检查技术", "other": "其他",
}
RISK_LABELS = {"low": "低风险", "medium": "中风险", "high": "高风险"}


class NewTechProject(StartFormMixin, TimestampMixin, Model):
    __tablename__ = "new_tech_projects"
    __table_args__ = (
        Index("ix_new_tech_projects_dept_status", "dept_id", "status"),
        {"comment": "新技术新项目"},
    )
    FORM_KEY = "tech_new_apply"
    FORM_COLUMNS = ("name", "category", "dept_id", "lead_id", "team", "description", "risk_level", "ethics_required",
                    "expected_cases")
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键（项目编号）")
    name: Mapped[str] = mapped_column(String(200), comment="项目名称")
    category: Mapped[str] = mapped_column(String(16), comment="类别：diagnosis/treatment/surgery/nursing/lab_imaging/other")
    dept_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), comment="开展科室")
    campus_id: Mapped[int | None] = mapped_column(ForeignKey("campuses.id"), comment="所属院区")
    applicant_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True, comment="申请人")
    lead_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True, comment="项目负责人")
    team: Mapped[list[Any]] = mapped_column(default=list, comment="团队成员（姓名、职称、分工）")
    description: Mapped[str] = mapped_column(Text, comment="项目简介（适应证、技术路线、国内外开展情况）")
    risk_level: Mapped[str] = mapped_column(String(8), comment="风险等级：low/medium/high")
    ethics_required: Mapped[bool] = mapped_column(default=False, comment="是否需要伦理审查")
    expected_cases: Mapped[int] = mapped_column(default=0, comment="预计年开展例数")
    status: Mapped[ProjectStatus] = mapped_column(String(16), default=ProjectStatus.DEPT_REVIEW, index=True,
                                                  comment="状态（见 PROJECT_STATUS_LABELS）")
    instance_id: Mapped[int | None] = mapped_column(index=True, comment="审批与追踪流程实例编号")
    expert_ids: Mapped[list[Any]] = mapped_column(default=list, comment="指定的评审专家（用户编号）")
    expert_count: Mapped[int | None] = mapped_column(comment="已评审专家人数")
    expert_avg: Mapped[float | None] = mapped_column(comment="专家评分均值")
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow, comment="提交时间")
    approved_at: Mapped[datetime | None] = mapped_column(comment="医务处批准开展时间")
    decided_at: Mapped[datetime | None] = mapped_column(comment="办结时间（转常规、终止、未通过、撤回）")
    extension_count: Mapped[int] = mapped_column(default=0, comment="延期次数")
    final_comment: Mapped[str | None] = mapped_column(Text, comment="最终意见")
    suspended_at: Mapped[datetime | None] = mapped_column(comment="中止时间（中止期间；恢复开展后清空）")
    suspend_reason: Mapped[str | None] = mapped_column(Text, comment="中止原因（中止期间；恢复开展后清空）")
    suspended_grant_ids: Mapped[list[Any]] = mapped_column(
        default=list, comment="因项目中止而暂停的授权记录编号（恢复开展时据此恢复）")
    routine_item_id: Mapped[int | None] = mapped_column(
        ForeignKey("privilege_items.id"), comment="转常规后授权所依的医疗权限目录项目（常规类别）")

    dept: Mapped[Department] = relationship(lazy="joined")
    applicant: Mapped[User] = relationship(foreign_keys=[applicant_id], lazy="joined")
    lead: Mapped[User] = relationship(foreign_keys=[lead_id], lazy="joined")
    reviews: Mapped[list[ExpertReview]] = relationship(back_populates="project", order_by="ExpertReview.id")
    reports: Mapped[list[ProgressReport]] = relationship(back_populates="project", order_by="ProgressReport.id")

    @property
    def number(self) -> str:
        return f"XJS{self.id:06d}"

    @property
    def status_label(self) -> str:
        return PROJECT_STATUS_LABELS.get(str(self.status), str(self.status))

    @property
    def category_label(self) -> str:
        return CATEGORY_LABELS.get(self.category, self.category)

    @property
    def risk_label(self) -> str:
        return RISK_LABELS.get(self.risk_level, self.risk_level)


RECOMMENDATION_LABELS = {"support": "支持开展", "conditional": "有条件支持", "oppose": "不支持"}


class ExpertReview(Model):
    __tablename__ = "new_tech_expert_reviews"
    __table_args__ = (UniqueConstraint("project_id", "expert_id", "round"), {"comment": "新技术新项目专家评审意见"})
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    project_id: Mapped[int] = mapped_column(ForeignKey("new_tech_projects.id"), index=True, comment="项目")
    expert_id: Mapped[int] = mapped_column(ForeignKey("users.id"), comment="评审专家")
    round: Mapped[int] = mapped_column(default=1, comment="评审轮次（退回重审时递增）")
    score: Mapped[int] = mapped_column(comment="评分（0–100）")
    recommendation: Mapped[str] = mapped_column(String(16), comment="结论：support/conditional/oppose")
    comment: Mapped[str] = mapped_column(Text, comment="评审意见")
    reviewed_at: Mapped[datetime] = mapped_column(default=utcnow, comment="评审时间")

    project: Mapped[NewTechProject] = relationship(back_populates="reviews")
    expert: Mapped[User] = relationship(lazy="joined")

    @property
    def recommendation_label(self) -> str:
        return RECOMMENDATION_LABELS.get(self.recommendation, self.recommendation)


REVIEW_DECISION_LABELS = {"continue": "继续追踪", "extend": "延期", "routine": "转常规", "terminate": "终止",
                          "suspend": "中止", "return": "退回补充"}


class ProgressReport(Model):
    __tablename__ = "new_tech_progress_reports"
    __table_args__ = {"comment": "新技术新项目进展报告（定期追踪）"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    project_id: Mapped[int] = mapped_column(ForeignKey("new_tech_projects.id"), index=True, comment="项目")
    seq: Mapped[int] = mapped_column(comment="第几次报告")
    period_label: Mapped[str] = mapped_column(String(64), comment="报告期间（如 2026年第1季度）")
    cases_done: Mapped[int] = mapped_column(comment="本期开展例数")
    effective_cases: Mapped[int] = mapped_column(comment="有效（达到预期）例数")
    complications: Mapped[int] = mapped_column(default=0, comment="并发症例数")
    adverse_events: Mapped[int] = mapped_column(default=0, comment="不良事件例数")
    summary: Mapped[str] = mapped_column(Text, comment="进展小结")
    problems: Mapped[str | None] = mapped_column(Text, comment="存在问题与改进")
    submitted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="提交人")
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow, comment="提交时间")
    review_decision: Mapped[str | None] = mapped_column(String(16), comment="医务处审核结论：continue/extend/routine/terminate/suspend/return")
    review_comment: Mapped[str | None] = mapped_column(Text, comment="医务处审核意见")
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="审核人")
    reviewed_at: Mapped[datetime | None] = mapped_column(comment="审核时间")

    project: Mapped[NewTechProject] = relationship(back_populates="reports")
    submitted_by: Mapped[User | None] = relationship(foreign_keys=[submitted_by_id])
    reviewed_by: Mapped[User | None] = relationship(foreign_keys=[reviewed_by_id])

    @property
    def review_label(self) -> str:
        return REVIEW_DECISION_LABELS.get(self.review_decision or "", "待审核")
