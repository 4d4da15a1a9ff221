"""限制类技术: the national catalogue, a department's application, its case reports and annual summaries."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.auth.models import Department, User
from app.db import Model, TimestampMixin, utcnow
from app.forms.models import StartFormMixin


class RestrictedTechnology(Model):
    __tablename__ = "restricted_technologies"
    __table_args__ = {"comment": "国家限制类技术目录"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    seq: Mapped[int] = mapped_column(unique=True, comment="目录序号")
    name: Mapped[str] = mapped_column(String(200), comment="技术名称")
    is_new_2022: Mapped[bool] = mapped_column(default=False, comment="2022年版新增")
    spec_title: Mapped[str | None] = mapped_column(String(300), comment="临床应用管理规范名称（部分为推定）")
    qc_title: Mapped[str | None] = mapped_column(String(300), comment="质量控制指标名称")
    effective_date: Mapped[date | None] = mapped_column(comment="施行日期")
    is_active: Mapped[bool] = mapped_column(default=True, comment="是否在用")
    # seed 000 §三.1 限制类医疗技术授权: who may perform it is a privilege grant of this item (checked by HIS)
    privilege_item_id: Mapped[int | None] = mapped_column(
        ForeignKey("privilege_items.id"),
        comment="对应的医疗权限目录项目（限制类医疗技术授权，首次批准开展时关联；停止开展时据此暂停科室医师的授权）")


class RestrictedStatus(StrEnum):
    EXPERT_REVIEW = "expert_review"
    RETURNED = "returned"
    ETHICS_REVIEW = "ethics_review"
    APPROVAL = "approval"
    FILING = "filing"
    TRACKING = "tracking"
    STOPPED = "stopped"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


RESTRICTED_STATUS_LABELS = {
    "expert_review": "专家审查中", "returned": "退回修改", "ethics_review": "科学性与伦理审查中",
    "approval": "待审批", "filing": "待备案", "tracking": "已备案（追踪中）", "stopped": "已停止开展",
    "rejected": "未通过", "withdrawn": "已撤回",
}


class RestrictedApplication(StartFormMixin, TimestampMixin, Model):
    __tablename__ = "restricted_tech_applications"
    __table_args__ = (
        Index("ix_restricted_tech_applications_dept_status", "dept_id", "status"),
        {"comment": "限制类技术临床应用申请与备案"},
    )
    FORM_KEY = "tech_restricted_apply"
    FORM_COLUMNS = ("technology_id", "team", "conditions")
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键（申请编号）")
    technology_id: Mapped[int] = mapped_column(ForeignKey("restricted_technologies.id"), index=True,
                                               comment="限制类技术")
    dept_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), comment="开展科室")
    campus_id: Mapped[int | None] = mapped_column(ForeignKey("campuses.id"), comment="所属院区")
    applicant_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True, comment="申请人（项目负责人）")
    team: Mapped[list[Any]] = mapped_column(default=list, comment="技术团队成员")
    conditions: Mapped[str] = mapped_column(Text, comment="人员、设备、设施条件说明（对照管理规范）")
    status: Mapped[RestrictedStatus] = mapped_column(String(16), default=RestrictedStatus.EXPERT_REVIEW, index=True,
                                                     comment="状态（见 RESTRICTED_STATUS_LABELS）")
    instance_id: Mapped[int | None] = mapped_column(index=True, comment="审批与追踪流程实例编号")
    filing_no: Mapped[str | None] = mapped_column(String(64), comment="备案号")
    filed_on: Mapped[date | None] = mapped_column(comment="备案日期")
    filing_authority: Mapped[str | None] = mapped_column(String(100), comment="备案机关")
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow, comment="提交时间")
    decided_at: Mapped[datetime | None] = mapped_column(comment="办结时间")
    final_comment: Mapped[str | None] = mapped_column(Text, comment="最终意见")
    suspended_grants: Mapped[dict[str, Any] | None] = mapped_column(
        comment="停止开展时暂停的本科室医师医疗权限授予记录（reason 暂停原因、grant_ids 编号；重新备案时据此恢复）")

    technology: Mapped[RestrictedTechnology] = relationship(lazy="joined")
    dept: Mapped[Department] = relationship(lazy="joined")
    applicant: Mapped[User] = relationship(lazy="joined")
    case_reports: Mapped[list[RestrictedCaseReport]] = relationship(order_by="RestrictedCaseReport.id",
                                                                    back_populates="application")
    annual_summaries: Mapped[list[RestrictedAnnualSummary]] = relationship(
        order_by="RestrictedAnnualSummary.id", back_populates="application")

    @property
    def number(self) -> str:
        return f"XZ{self.id:06d}"

    @property
    def status_label(self) -> str:
        return RESTRICTED_STATUS_LABELS.get(str(self.status), str(self.status))


class RestrictedCaseReport(Model):
    __tablename__ = "restricted_case_reports"
    __table_args__ = {"comment": "限制类技术季度病例报告"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    application_id: Mapped[int] = mapped_column(ForeignKey("restricted_tech_applications.id"), index=True,
                                                comment="限制类技术申请")
    period_label: Mapped[str] = mapped_column(String(64), comment="报告期间（如 2026年第1季度）")
    cases: Mapped[int] = mapped_column(comment="开展例数")
    success_cases: Mapped[int] = mapped_column(comment="成功例数")
    complications: Mapped[int] = mapped_column(default=0, comment="并发症例数")
    deaths: Mapped[int] = mapped_column(default=0, comment="死亡例数")
    adverse_events: Mapped[int] = mapped_column(default=0, comment="不良事件例数")
    note: Mapped[str | None] = mapped_column(Text, comment="说明")
    submitted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="提交人")
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow, comment="提交时间")

    application: Mapped[RestrictedApplication] = relationship(back_populates="case_reports")


class RestrictedAnnualSummary(Model):
    __tablename__ = "restricted_annual_summaries"
    __table_args__ = {"comment": "限制类技术年度总结"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    application_id: Mapped[int] = mapped_column(ForeignKey("restricted_tech_applications.id"), index=True,
                                                comment="限制类技术申请")
    year: Mapped[int] = mapped_column(comment="总结年度")
    total_cases: Mapped[int] = mapped_column(comment="年度开展例数")
    qc_summary: Mapped[str] = mapped_column(Text, comment="质量控制指标完成情况")
    problems: Mapped[str | None] = mapped_column(Text, comment="存在问题")
    plan: Mapped[str | None] = mapped_column(Text, comment="下一年度计划")
    submitted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="提交人")
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow, comment="提交时间")
    review_decision: Mapped[str | None] = mapped_column(String(16), comment="医务处审核结论：continue/stop/return")
    review_comment: Mapped[str | None] = mapped_column(Text, comment="审核意见")
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="审核人")
    reviewed_at: Mapped[datetime | None] = mapped_column(comment="审核时间")

    application: Mapped[RestrictedApplication] = relationship(back_populates="annual_summaries")

    @property
    def review_label(self) -> str:
        return {"continue": "继续开展", "stop": "停止开展", "return": "退回补充"}.get(self.review_decision or "", "待审核")
