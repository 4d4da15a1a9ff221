"""伦理审查: a review (standalone or for a new-technology / restricted-technology application) and members' opinions."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.auth.models import Department, User
from app.db import Model, TimestampMixin, utcnow
from app.forms.models import StartFormMixin


class EthicsStatus(StrEnum):
    PENDING_SETUP = "pending_setup"
    IN_REVIEW = "in_review"
    RESUBMIT = "resubmit"
    DECIDED = "decided"
    WITHDRAWN = "withdrawn"


ETHICS_STATUS_LABELS = {"pending_setup": "待确定审查方式", "in_review": "委员审查中", "resubmit": "修改后重审",
                        "decided": "已作出决定", "withdrawn": "已撤回"}
MODE_LABELS = {"meeting": "会议审查", "expedited": "快速审查"}
OPINION_LABELS = {"agree": "同意", "modify": "修改后同意", "disagree": "不同意"}
DECISION_LABELS = {"approve": "同意", "approve_modified": "修改后同意", "resubmit": "修改后重审",
                   "disapprove": "不同意"}
SOURCE_LABELS = {"standalone": "伦理审查申请", "new_tech": "新技术新项目", "restricted": "限制类技术"}
# the review items (审查内容) a review may cover; the setup picks which apply
REVIEW_ITEMS = {
    "science": "研究/技术的科学性与必要性",
    "risk_benefit": "风险与受益评估",
    "consent": "知情同意书及知情同意过程",
    "privacy": "患者隐私与数据保护",
    "recruitment": "病例选择与招募、补偿",
    "vulnerable": "弱势群体保护",
    "conflict": "利益冲突",
    "safety": "安全监测与应急预案",
}


class EthicsReview(StartFormMixin, TimestampMixin, Model):
    __tablename__ = "ethics_reviews"
    __table_args__ = (
        Index("ix_ethics_reviews_source", "source_kind", "source_id"),
        {"comment": "伦理审查"},
    )
    FORM_KEY = "tech_ethics_apply"
    FORM_COLUMNS = ("title", "description")
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键（审查编号）")
    title: Mapped[str] = mapped_column(String(200), comment="审查项目名称")
    source_kind: Mapped[str] = mapped_column(String(16), default="standalone",
                                             comment="来源：standalone 单独申请/new_tech 新技术新项目/restricted 限制类技术")
    source_id: Mapped[int | None] = mapped_column(comment="来源申请编号")
    applicant_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True, comment="申请人")
    dept_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True, comment="申请科室")
    campus_id: Mapped[int | None] = mapped_column(ForeignKey("campuses.id"), comment="所属院区")
    description: Mapped[str] = mapped_column(Text, comment="审查内容简介")
    mode: Mapped[str | None] = mapped_column(String(16), comment="审查方式：meeting 会议审查/expedited 快速审查")
    member_ids: Mapped[list[Any]] = mapped_column(default=list, comment="审查委员（用户编号）")
    review_items: Mapped[list[Any]] = mapped_column(default=list, comment="审查内容（见 REVIEW_ITEMS）")
    meeting_date: Mapped[date | None] = mapped_column(comment="会议日期（会议审查）")
    round: Mapped[int] = mapped_column(default=1, comment="审查轮次")
    status: Mapped[EthicsStatus] = mapped_column(String(16), default=EthicsStatus.PENDING_SETUP, index=True,
                                                 comment="状态：pending_setup/in_review/resubmit/decided/withdrawn")
    agree_count: Mapped[int | None] = mapped_column(comment="同意票数")
    modify_count: Mapped[int | None] = mapped_column(comment="修改后同意票数")
    disagree_count: Mapped[int | None] = mapped_column(comment="不同意票数")
    majority: Mapped[str | None] = mapped_column(String(16), comment="多数意见：agree/modify/disagree/none")
    decision: Mapped[str | None] = mapped_column(String(24), comment="审查决定：approve/approve_modified/disapprove")
    conditions: Mapped[str | None] = mapped_column(Text, comment="修改要求或附加条件")
    decision_comment: Mapped[str | None] = mapped_column(Text, comment="决定意见")
    decided_at: Mapped[datetime | None] = mapped_column(comment="决定时间")
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="决定登记人")
    instance_id: Mapped[int | None] = mapped_column(index=True, comment="审查流程实例编号")

    applicant: Mapped[User] = relationship(foreign_keys=[applicant_id], lazy="joined")
    decided_by: Mapped[User | None] = relationship(foreign_keys=[decided_by_id])
    dept: Mapped[Department | None] = relationship(lazy="joined")
    opinions: Mapped[list[EthicsOpinion]] = relationship(back_populates="review", order_by="EthicsOpinion.id")

    @property
    def number(self) -> str:
        return f"LL{self.id:06d}"

    @property
    def status_label(self) -> str:
        return ETHICS_STATUS_LABELS.get(str(self.status), str(self.status))

    @property
    def mode_label(self) -> str:
        return MODE_LABELS.get(self.mode or "", "未确定")

    @property
    def decision_label(self) -> str:
        return DECISION_LABELS.get(self.decision or "", "")

    @property
    def majority_label(self) -> str:
        return OPINION_LABELS.get(self.majority or "", "无多数意见")

    @property
    def source_label(self) -> str:
        return SOURCE_LABELS.get(self.source_kind, self.source_kind)


class EthicsOpinion(Model):
    __tablename__ = "ethics_opinions"
    __table_args__ = (UniqueConstraint("review_id", "member_id", "round"), {"comment": "伦理审查委员意见"})
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    review_id: Mapped[int] = mapped_column(ForeignKey("ethics_reviews.id"), index=True, comment="伦理审查")
    member_id: Mapped[int] = mapped_column(ForeignKey("users.id"), comment="审查委员")
    round: Mapped[int] = mapped_column(default=1, comment="审查轮次")
    opinion: Mapped[str] = mapped_column(String(16), comment="意见：agree/modify/disagree")
    items_ok: Mapped[list[Any]] = mapped_column(default=list, comment="审查通过的审查内容")
    comment: Mapped[str | None] = mapped_column(Text, comment="意见说明")
    at: Mapped[datetime] = mapped_column(default=utcnow, comment="提交时间")

    review: Mapped[EthicsReview] = relationship(back_populates="opinions")
    member: Mapped[User] = relationship(lazy="joined")

    @property
    def opinion_label(self) -> str:
        return OPINION_LABELS.get(self.opinion, self.opinion)
