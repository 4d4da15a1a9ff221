"""Clinical-privilege models: the catalogue (categories, items), applications and grants."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.auth.models import Campus, Department, User
from app.db import Model, TimestampMixin, utcnow
from app.forms.models import StartFormMixin


class ApplicationStatus(StrEnum):
    DRAFT = "draft"
    IN_REVIEW = "in_review"
    APPROVED = "approved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"

    @property
    def label(self) -> str:
        return APPLICATION_STATUS_LABELS[self.value]


APPLICATION_STATUS_LABELS = {"draft": "草稿", "in_review": "审核中", "approved": "已批准", "rejected": "未通过",
                             "withdrawn": "已撤回"}
OPEN_APPLICATION_STATUSES = (ApplicationStatus.DRAFT.value, ApplicationStatus.IN_REVIEW.value)


class GrantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    EXPIRED = "expired"

    @property
    def label(self) -> str:
        return GRANT_STATUS_LABELS[self.value]


GRANT_STATUS_LABELS = {"active": "生效中", "suspended": "已暂停", "revoked": "已停止", "expired": "已过期"}


class PrivilegeCategory(TimestampMixin, Model):
    __tablename__ = "privilege_categories"
    __table_args__ = {"comment": "医疗权限授权类别（九大类及护理操作）"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    code: Mapped[str] = mapped_column(String(32), unique=True, comment="类别编码")
    name: Mapped[str] = mapped_column(String(64), comment="类别名称")
    description: Mapped[str | None] = mapped_column(String(500), comment="说明")
    validity_years: Mapped[int] = mapped_column(default=2, comment="默认授权有效期（年）")
    validity_days: Mapped[int | None] = mapped_column(comment="按天计的有效期（紧急授权等；设置时优先于年）")
    sort_order: Mapped[int] = mapped_column(default=0, comment="排序号")
    is_active: Mapped[bool] = mapped_column(default=True, comment="是否启用")
    # eligibility defaults for the category's items (seed 000 §三.2 授权对象); an item's own rule wins
    default_min_title: Mapped[str | None] = mapped_column(
        String(32), comment="类别默认最低职称（如 主治医师；项目未设置时适用，空为不限）")
    default_cert_types: Mapped[list[Any] | None] = mapped_column(
        comment="类别默认必备证件类型编码（如 [\"practice\"] 执业证；须在档案中有未过期的该类证件）")
    default_requires_assessment: Mapped[bool] = mapped_column(
        default=False, comment="类别默认是否须近一个考核周期（3 年）定期考核合格")

    items: Mapped[list[PrivilegeItem]] = relationship(back_populates="category")


class PrivilegeItem(TimestampMixin, Model):
    __tablename__ = "privilege_items"
    __table_args__ = (
        Index("ix_privilege_items_category_grade", "category_id", "grade_level"),
        {"comment": "医疗权限授权项目（目录）"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    category_id: Mapped[int] = mapped_column(ForeignKey("privilege_categories.id"), comment="所属类别")
    code: Mapped[str] = mapped_column(String(64), unique=True, comment="项目编码（院内唯一）")
    name: Mapped[str] = mapped_column(String(200), comment="项目名称")
    grade: Mapped[str | None] = mapped_column(String(32), comment="级别名称（如 三级、特殊使用级）")
    grade_level: Mapped[int | None] = mapped_column(comment="级别序号（1 起，越大要求越高；用于审批层级判定）")
    procedure_code: Mapped[str | None] = mapped_column(String(32), index=True,
                                                       comment="手术操作编码（ICD-9-CM-3 国家临床版 2.0）")
    procedure_category: Mapped[str | None] = mapped_column(
        String(16), comment="编码类别：手术/介入治疗/治疗性操作/诊断性操作")
    chapter: Mapped[str | None] = mapped_column(String(64), comment="所属章节或分组（如 消化系统手术）")
    requirements: Mapped[str | None] = mapped_column(Text, comment="授权条件（职称、资质、培训考核要求）")
    note: Mapped[str | None] = mapped_column(String(500), comment="备注（来源、演示数据说明）")
    source: Mapped[str | None] = mapped_column(String(200), comment="依据或数据来源")
    sort_order: Mapped[int] = mapped_column(default=0, comment="排序号")
    is_active: Mapped[bool] = mapped_column(default=True, comment="是否启用")
    # structured eligibility rules (app.privileges.eligibility); None = the category's default applies
    min_title: Mapped[str | None] = mapped_column(
        String(32), comment="最低职称（如 主治医师，按同系列职称等级比较；空为沿用类别默认）")
    cert_types: Mapped[list[Any] | None] = mapped_column(
        comment="必备证件类型编码（如 [\"practice\"]；空为沿用类别默认，[] 为不要求证件）")
    requires_assessment: Mapped[bool | None] = mapped_column(
        comment="是否须近一个考核周期（3 年）定期考核合格（空为沿用类别默认）")
    rules_note: Mapped[str | None] = mapped_column(
        String(300), comment="资格规则说明（依据；演示默认规则须经医务处核定后使用）")

    category: Mapped[PrivilegeCategory] = relationship(back_populates="items", lazy="joined")


class PrivilegeApplication(StartFormMixin, TimestampMixin, Model):
    __tablename__ = "privilege_applications"
    __table_args__ = (
        Index("ix_privilege_applications_applicant_status", "applicant_id", "status"),
        {"comment": "医疗权限申请"},
    )
    FORM_KEY = "privilege_apply"
    FORM_COLUMNS = ("item_ids", "reason", "override_reason")
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键（申请编号）")
    applicant_id: Mapped[int] = mapped_column(ForeignKey("users.id"), comment="申请人")
    dept_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True, comment="申请时所在科室")
    campus_id: Mapped[int | None] = mapped_column(ForeignKey("campuses.id"), comment="申请时所在院区")
    status: Mapped[ApplicationStatus] = mapped_column(String(16), default=ApplicationStatus.DRAFT,
                                                      comment="状态：draft/in_review/approved/rejected/withdrawn")
    reason: Mapped[str] = mapped_column(Text, comment="申请理由")
    instance_id: Mapped[int | None] = mapped_column(index=True, comment="审批流程实例编号")
    submitted_at: Mapped[datetime | None] = mapped_column(comment="提交时间")
    decided_at: Mapped[datetime | None] = mapped_column(comment="办结时间")
    final_comment: Mapped[str | None] = mapped_column(Text, comment="最终审批意见")
    override_reason: Mapped[str | None] = mapped_column(
        Text, comment="医务处特批理由（含资格不符项目时必填，逐项不符原因见审计日志）")
    override_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="特批人（医务处）")

    applicant: Mapped[User] = relationship(foreign_keys=[applicant_id], lazy="joined")
    override_by: Mapped[User | None] = relationship(foreign_keys=[override_by_id])
    dept: Mapped[Department | None] = relationship(lazy="joined")
    campus: Mapped[Campus | None] = relationship()
    items: Mapped[list[PrivilegeApplicationItem]] = relationship(
        back_populates="application", cascade="all, delete-orphan", lazy="selectin",
        order_by="PrivilegeApplicationItem.id")

    @property
    def number(self) -> str:
        return f"QX{self.id:06d}"

    @property
    def status_label(self) -> str:
        return APPLICATION_STATUS_LABELS.get(str(self.status), str(self.status))


class PrivilegeApplicationItem(Model):
    __tablename__ = "privilege_application_items"
    __table_args__ = (UniqueConstraint("application_id", "item_id"), {"comment": "医疗权限申请所含项目"})
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    application_id: Mapped[int] = mapped_column(ForeignKey("privilege_applications.id"), index=True,
                                                comment="所属申请")
    item_id: Mapped[int] = mapped_column(ForeignKey("privilege_items.id"), index=True, comment="申请的授权项目")

    application: Mapped[PrivilegeApplication] = relationship(back_populates="items")
    item: Mapped[PrivilegeItem] = relationship(lazy="joined")


class Grant(TimestampMixin, Model):
    __tablename__ = "privilege_grants"
    __table_args__ = (
        Index("ix_privilege_grants_user_item_status", "user_id", "item_id", "status"),
        {"comment": "医疗权限授予记录"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), comment="被授权医师")
    item_id: Mapped[int] = mapped_column(ForeignKey("privilege_items.id"), index=True, comment="授权项目")
    application_id: Mapped[int | None] = mapped_column(ForeignKey("privilege_applications.id"), index=True,
                                                       comment="来源申请")
    status: Mapped[GrantStatus] = mapped_column(String(16), default=GrantStatus.ACTIVE,
                                                comment="状态：active/suspended/revoked/expired")
    valid_from: Mapped[date] = mapped_column(comment="生效日期")
    valid_until: Mapped[date | None] = mapped_column(comment="有效期至（含当日）")
    granted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="批准人")
    granted_at: Mapped[datetime] = mapped_column(default=utcnow, comment="授予时间")
    revoked_at: Mapped[datetime | None] = mapped_column(comment="暂停、停止或失效时间")
    revoked_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="暂停或停止操作人")
    revoked_reason: Mapped[str | None] = mapped_column(String(500), comment="暂停、停止或失效原因")

    user: Mapped[User] = relationship(foreign_keys=[user_id], lazy="joined")
    item: Mapped[PrivilegeItem] = relationship(lazy="joined")
    application: Mapped[PrivilegeApplication | None] = relationship()
    granted_by: Mapped[User | None] = relationship(foreign_keys=[granted_by_id])
    revoked_by: Mapped[User | None] = relationship(foreign_keys=[revoked_by_id])

    @property
    def status_label(self) -> str:
        return GRANT_STATUS_LABELS.get(str(self.status), str(self.status))

    def is_effective(self, on: date) -> bool:
        """Active and inside its validity window on the given day."""
        return (self.status == GrantStatus.ACTIVE and self.valid_from <= on
                and (self.valid_until is None or on <= self.valid_until))


class EmergencyReviewStatus(StrEnum):
    PENDING = "pending"
    KEPT = "kept"
    REVOKED = "revoked"

    @property
    def label(self) -> str:
        return EMERGENCY_REVIEW_LABELS[self.value]


EMERGENCY_REVIEW_LABELS = {"pending": "待事后审核", "kept": "审核维持至到期", "revoked": "审核撤销"}


class EmergencyGrant(StartFormMixin, TimestampMixin, Model):
    """紧急授权 (seed 000 §三.1): a grant effective at once, to the hour, reviewed afterwards by 医务处."""

    __tablename__ = "privilege_emergency_grants"
    __table_args__ = {"comment": "紧急授权（限时、事后审核）"}
    FORM_KEY = "privilege_emergency"
    FORM_COLUMNS = ("staff_no", "item_code", "hours", "reason", "patient_ref")
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    grant_id: Mapped[int] = mapped_column(ForeignKey("privilege_grants.id"), unique=True, comment="对应的授权记录")
    starts_at: Mapped[datetime] = mapped_column(comment="生效时间")
    expires_at: Mapped[datetime] = mapped_column(index=True, comment="失效时间（精确到分钟，最长 72 小时）")
    hours: Mapped[int] = mapped_column(comment="授权时长（小时）")
    reason: Mapped[str] = mapped_column(Text, comment="紧急授权理由（患者情况、无相应权限医师在场等）")
    patient_ref: Mapped[str | None] = mapped_column(String(64), comment="相关患者住院号或门诊号（可选）")
    granted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="授权人（医务处）")
    review_instance_id: Mapped[int | None] = mapped_column(index=True, comment="事后审核流程实例编号")
    review_status: Mapped[EmergencyReviewStatus] = mapped_column(
        String(16), default=EmergencyReviewStatus.PENDING, comment="事后审核状态：pending/kept/revoked")
    reviewed_at: Mapped[datetime | None] = mapped_column(comment="事后审核完成时间")
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="事后审核人")
    review_comment: Mapped[str | None] = mapped_column(Text, comment="事后审核意见")

    grant: Mapped[Grant] = relationship(lazy="joined")
    granted_by: Mapped[User | None] = relationship(foreign_keys=[granted_by_id])
    reviewed_by: Mapped[User | None] = relationship(foreign_keys=[reviewed_by_id])

    @property
    def number(self) -> str:
        return f"JJ{self.id:06d}"

    @property
    def review_label(self) -> str:
        return EMERGENCY_REVIEW_LABELS.get(str(self.review_status), str(self.review_status))


class GrantReminder(Model):
    __tablename__ = "privilege_grant_reminders"
    __table_args__ = (UniqueConstraint("grant_id", "days_before"), {"comment": "授权到期提醒记录（每项授权每个提醒档只发一次）"})
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    grant_id: Mapped[int] = mapped_column(ForeignKey("privilege_grants.id"), index=True, comment="授权记录")
    days_before: Mapped[int] = mapped_column(comment="提醒档（到期前天数：60 或 30）")
    valid_until: Mapped[date] = mapped_column(comment="提醒时的有效期至")
    sent_at: Mapped[datetime] = mapped_column(default=utcnow, comment="提醒时间")


class PrivilegeIndexVersion(Model):
    __tablename__ = "privilege_index_versions"
    __table_args__ = {"comment": "授权校验缓存版本号（未配置 Redis 时各进程据此判断缓存是否失效）"}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False, comment="主键（固定为 1）")
    version: Mapped[int] = mapped_column(BigInteger, default=0, comment="版本号：授权、人员或目录每变更一次加一")
    changed_at: Mapped[datetime] = mapped_column(default=utcnow, comment="最近变更时间")


class PrivilegeIndexChange(Model):
    __tablename__ = "privilege_index_changes"
    __table_args__ = {"comment": "授权校验缓存变更日志（各进程据此只重载受影响医师的授权；技术数据，定期清理）"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    version: Mapped[int] = mapped_column(BigInteger, index=True, comment="本次变更后的版本号")
    user_id: Mapped[int | None] = mapped_column(comment="受影响的人员（为空表示目录等全局变更，须全部重载）")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, comment="记录时间")


class DeptCatalogueItem(Model):
    """科室技术目录 (seed 000 §三.9(1)): the hospital catalogue items a department performs. A department with at
    least one active row may only apply for / be granted those items; removal keeps the row (is_active False)."""

    __tablename__ = "privilege_dept_catalogue_items"
    __table_args__ = (UniqueConstraint("dept_id", "item_id"), {"comment": "科室技术目录（科室开展的院内目录项目）"})
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    dept_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True, comment="科室")
    item_id: Mapped[int] = mapped_column(ForeignKey("privilege_items.id"), index=True, comment="院内目录项目")
    is_active: Mapped[bool] = mapped_column(default=True, comment="是否在目录中（移除后为否，记录保留）")
    added_at: Mapped[datetime] = mapped_column(default=utcnow, comment="加入日期时间")
    added_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="加入人（空为演示数据）")
    removed_at: Mapped[datetime | None] = mapped_column(comment="移除时间")
    removed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="移除人")

    dept: Mapped[Department] = relationship(lazy="joined")
    item: Mapped[PrivilegeItem] = relationship(lazy="joined")
    added_by: Mapped[User | None] = relationship(foreign_keys=[added_by_id])
    removed_by: Mapped[User | None] = relationship(foreign_keys=[removed_by_id])
