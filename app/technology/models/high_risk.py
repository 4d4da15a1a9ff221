"""高风险诊疗技术: the hospital's catalogue (per department), who is authorised, and the yearly evaluations."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.auth.models import Department, User
from app.db import Model, TimestampMixin, utcnow

HIGH_RISK_CATEGORY_LABELS = {"surgery": "手术", "interventional": "介入诊疗", "endoscopy": "内镜诊疗",
                             "invasive": "有创操作", "anesthesia": "麻醉", "other": "其他"}
ITEM_STATUS_LABELS = {"active": "在用", "rectifying": "整改中", "suspended": "已暂停", "retired": "已停用"}
EVALUATION_STATUS_LABELS = {"in_progress": "评估中", "continue": "继续开展", "rectify": "限期整改",
                            "suspend": "暂停开展", "withdrawn": "已撤回"}


class HighRiskItem(TimestampMixin, Model):
    __tablename__ = "high_risk_items"
    __table_args__ = {"comment": "高风险诊疗技术目录"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    code: Mapped[str] = mapped_column(String(32), unique=True, comment="目录编码")
    name: Mapped[str] = mapped_column(String(200), comment="技术名称")
    category: Mapped[str] = mapped_column(String(16), comment="类别：surgery/interventional/endoscopy/invasive/anesthesia/other")
    dept_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True, comment="开展科室")
    procedure_code: Mapped[str | None] = mapped_column(String(32), comment="手术操作编码（ICD-9-CM-3）")
    requirements: Mapped[str | None] = mapped_column(Text, comment="准入条件（依据诊疗技术规范）")
    privilege_item_id: Mapped[int | None] = mapped_column(ForeignKey("privilege_items.id"),
                                                          comment="对应的医疗权限目录项目（授权以其授予记录为准时）")
    status: Mapped[str] = mapped_column(String(16), default="active", index=True,
                                        comment="状态：active 在用/rectifying 整改中/suspended 暂停/retired 停用")
    last_evaluated_on: Mapped[date | None] = mapped_column(comment="最近评估日期")
    last_result: Mapped[str | None] = mapped_column(String(16), comment="最近评估结论：continue/rectify/suspend")
    note: Mapped[str | None] = mapped_column(String(500), comment="备注")

    dept: Mapped[Department] = relationship(lazy="joined")
    authorizations: Mapped[list[HighRiskAuthorization]] = relationship(back_populates="item",
                                                                       order_by="HighRiskAuthorization.id")

    @property
    def category_label(self) -> str:
        return HIGH_RISK_CATEGORY_LABELS.get(self.category, self.category)

    @property
    def status_label(self) -> str:
        return ITEM_STATUS_LABELS.get(self.status, self.status)


class HighRiskAuthorization(Model):
    __tablename__ = "high_risk_authorizations"
    __table_args__ = (
        Index("ix_high_risk_authorizations_item_status", "item_id", "status"),
        {"comment": "高风险诊疗技术授权人员"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    item_id: Mapped[int] = mapped_column(ForeignKey("high_risk_items.id"), comment="高风险技术")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True, comment="被授权人员")
    role_in_team: Mapped[str | None] = mapped_column(String(32), comment="授权角色（术者、助手、护理等）")
    valid_from: Mapped[date] = mapped_column(comment="生效日期")
    valid_until: Mapped[date | None] = mapped_column(comment="有效期至")
    status: Mapped[str] = mapped_column(String(16), default="active", comment="状态：active 有效/revoked 已取消")
    granted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="授权人")
    granted_at: Mapped[datetime] = mapped_column(default=utcnow, comment="授权时间")
    revoked_at: Mapped[datetime | None] = mapped_column(comment="取消时间")
    revoked_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="取消操作人")
    revoke_reason: Mapped[str | None] = mapped_column(String(500), comment="取消原因")
    grant_id: Mapped[int | None] = mapped_column(
        ForeignKey("privilege_grants.id"), index=True,
        comment="对应的医疗权限授予记录（技术关联权限项目时，授权即授予或沿用该项目的授权，供 HIS 校验；取消授权时停止）")
    override_reason: Mapped[str | None] = mapped_column(
        String(500), comment="医务处特批理由（被授权人不符合权限项目资格条件时必填，不符项见审计日志）")

    item: Mapped[HighRiskItem] = relationship(back_populates="authorizations")
    user: Mapped[User] = relationship(foreign_keys=[user_id], lazy="joined")


class HighRiskEvaluation(TimestampMixin, Model):
    __tablename__ = "high_risk_evaluations"
    __table_args__ = (UniqueConstraint("item_id", "year"), {"comment": "高风险诊疗技术年度评估"})
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    item_id: Mapped[int] = mapped_column(ForeignKey("high_risk_items.id"), index=True, comment="高风险技术")
    year: Mapped[int] = mapped_column(comment="评估年度")
    status: Mapped[str] = mapped_column(String(16), default="in_progress",
                                        comment="状态：in_progress/continue/rectify/suspend/withdrawn")
    instance_id: Mapped[int | None] = mapped_column(index=True, comment="评估流程实例编号")
    self_evaluation: Mapped[dict[str, Any] | None] = mapped_column(comment="科室自评内容")
    rectification: Mapped[dict[str, Any] | None] = mapped_column(comment="整改报告")
    mao_comment: Mapped[str | None] = mapped_column(Text, comment="医务处评估意见")
    started_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="发起人")
    decided_at: Mapped[datetime | None] = mapped_column(comment="评估完成时间")
    suspended_grants: Mapped[dict[str, Any] | None] = mapped_column(
        comment="暂停开展时一并暂停的医疗权限授予记录（reason 暂停原因、grant_ids 编号；评估恢复开展时据此恢复）")

    item: Mapped[HighRiskItem] = relationship(lazy="joined")

    @property
    def status_label(self) -> str:
        return EVALUATION_STATUS_LABELS.get(self.status, self.status)

    @property
    def number(self) -> str:
        return f"GF{self.id:06d}"
