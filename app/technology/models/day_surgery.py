"""日间手术: the catalogue, qualification applications and grants, and recorded cases."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.auth.models import Department, User
from app.db import Model, TimestampMixin, utcnow
from app.forms.models import StartFormMixin

GRADE_LABELS = {1: "一级", 2: "二级", 3: "三级", 4: "四级"}
APPLICATION_STATUS_LABELS = {"in_review": "审核中", "returned": "退回修改", "approved": "已批准",
                             "rejected": "未通过", "withdrawn": "已撤回"}
QUALIFICATION_STATUS_LABELS = {"active": "有效", "suspended": "已暂停", "revoked": "已取消"}


class DaySurgeryProcedure(Model):
    __tablename__ = "day_surgery_procedures"
    __table_args__ = {"comment": "日间手术目录（病种及术式）"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    code: Mapped[str] = mapped_column(String(32), unique=True, comment="目录编码（院内唯一）")
    specialty: Mapped[str] = mapped_column(String(32), comment="专业")
    disease_name: Mapped[str] = mapped_column(String(100), comment="病种名称")
    icd10_code: Mapped[str | None] = mapped_column(String(100), comment="疾病编码（ICD-10）")
    procedure_name: Mapped[str] = mapped_column(String(200), comment="术式名称")
    icd9_code: Mapped[str | None] = mapped_column(String(32), index=True, comment="手术操作编码（ICD-9-CM-3）")
    grade: Mapped[int | None] = mapped_column(comment="手术级别（1–4；演示值须按本院手术分级目录核定）")
    grade_confirmed_at: Mapped[datetime | None] = mapped_column(comment="手术级别按本院目录核定时间（空=仍为演示值）")
    grade_confirmed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="手术级别核定人")
    source: Mapped[str | None] = mapped_column(String(200), comment="来源")
    note: Mapped[str | None] = mapped_column(String(500), comment="备注（转录说明、演示数据说明）")
    is_active: Mapped[bool] = mapped_column(default=True, comment="是否在用")

    grade_confirmed_by: Mapped[User | None] = relationship(foreign_keys=[grade_confirmed_by_id])

    @property
    def grade_label(self) -> str:
        return GRADE_LABELS.get(self.grade or 0, "未定级")


class DaySurgeryApplication(StartFormMixin, TimestampMixin, Model):
    __tablename__ = "day_surgery_applications"
    __table_args__ = {"comment": "日间手术资质申请"}
    FORM_KEY = "tech_day_surgery_apply"
    FORM_COLUMNS = ("procedure_ids", "reason")
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键（申请编号）")
    applicant_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True, comment="申请医师")
    dept_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True, comment="申请科室")
    campus_id: Mapped[int | None] = mapped_column(ForeignKey("campuses.id"), comment="所属院区")
    procedure_ids: Mapped[list[Any]] = mapped_column(default=list, comment="申请的日间手术术式（目录编号）")
    reason: Mapped[str] = mapped_column(Text, comment="申请理由（相关手术经验、例数）")
    status: Mapped[str] = mapped_column(String(16), default="in_review", index=True,
                                        comment="状态：in_review/returned/approved/rejected/withdrawn")
    instance_id: Mapped[int | None] = mapped_column(index=True, comment="审核流程实例编号")
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow, comment="提交时间")
    decided_at: Mapped[datetime | None] = mapped_column(comment="办结时间")
    final_comment: Mapped[str | None] = mapped_column(Text, comment="最终意见")

    applicant: Mapped[User] = relationship(lazy="joined")
    dept: Mapped[Department | None] = relationship(lazy="joined")

    @property
    def number(self) -> str:
        return f"RJ{self.id:06d}"

    @property
    def status_label(self) -> str:
        return APPLICATION_STATUS_LABELS.get(self.status, self.status)


class DaySurgeryQualification(Model):
    __tablename__ = "day_surgery_qualifications"
    __table_args__ = (
        Index("ix_day_surgery_qualifications_user_status", "user_id", "status"),
        {"comment": "日间手术资质（医师-术式）"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), comment="医师")
    dept_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True, comment="科室")
    procedure_id: Mapped[int] = mapped_column(ForeignKey("day_surgery_procedures.id"), index=True, comment="术式")
    application_id: Mapped[int | None] = mapped_column(ForeignKey("day_surgery_applications.id"), comment="来源申请")
    status: Mapped[str] = mapped_column(String(16), default="active", comment="状态：active 有效/suspended 暂停/revoked 取消")
    valid_from: Mapped[date] = mapped_column(comment="生效日期")
    valid_until: Mapped[date | None] = mapped_column(comment="有效期至")
    granted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="批准人")
    granted_at: Mapped[datetime] = mapped_column(default=utcnow, comment="授予时间")
    suspended_at: Mapped[datetime | None] = mapped_column(comment="暂停时间（恢复后清空）")
    suspend_reason: Mapped[str | None] = mapped_column(String(500), comment="暂停原因（恢复后清空，历史见审计日志）")
    revoked_at: Mapped[datetime | None] = mapped_column(comment="取消时间")
    revoked_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="取消操作人")
    revoke_reason: Mapped[str | None] = mapped_column(String(500), comment="取消原因（含离职时自动取消）")

    user: Mapped[User] = relationship(foreign_keys=[user_id], lazy="joined")
    procedure: Mapped[DaySurgeryProcedure] = relationship(lazy="joined")
    dept: Mapped[Department | None] = relationship()

    @property
    def status_label(self) -> str:
        return QUALIFICATION_STATUS_LABELS.get(self.status, self.status)


class DaySurgeryCase(TimestampMixin, Model):
    __tablename__ = "day_surgery_cases"
    __table_args__ = (
        UniqueConstraint("source_system", "external_id"),
        Index("ix_day_surgery_cases_dept_date", "dept_id", "scheduled_date"),
        {"comment": "日间手术病例"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    source_system: Mapped[str] = mapped_column(String(64), default="manual", comment="来源系统（manual 手工录入/HIS…）")
    external_id: Mapped[str] = mapped_column(String(64), comment="来源系统中的病例标识（手工录入为登记号）")
    patient_name: Mapped[str] = mapped_column(String(64), comment="患者姓名（已脱敏，仅保留姓）")
    patient_no: Mapped[str] = mapped_column(String(32), comment="病案号（页面与导出脱敏显示）")
    dept_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), comment="手术科室")
    surgeon_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="主刀医师")
    procedure_id: Mapped[int | None] = mapped_column(ForeignKey("day_surgery_procedures.id"), index=True,
                                                     comment="目录术式")
    procedure_code: Mapped[str | None] = mapped_column(String(32), comment="手术操作编码（ICD-9-CM-3）")
    procedure_name: Mapped[str] = mapped_column(String(200), comment="术式名称")
    grade: Mapped[int] = mapped_column(comment="手术级别（1–4）")
    scheduled_date: Mapped[date] = mapped_column(comment="预约手术日期（统计期间按此日期）")
    admitted_on: Mapped[date | None] = mapped_column(comment="入院日期")
    surgery_date: Mapped[date | None] = mapped_column(comment="手术日期（当日取消则为空）")
    discharged_on: Mapped[date | None] = mapped_column(comment="出院日期")
    cancelled_same_day: Mapped[bool] = mapped_column(default=False, comment="当日手术取消")
    cancel_reason: Mapped[str | None] = mapped_column(String(200), comment="取消原因")
    unplanned_reoperation: Mapped[bool] = mapped_column(default=False, comment="非计划再次手术")
    complication: Mapped[bool] = mapped_column(default=False, comment="术后并发症")
    transferred: Mapped[bool] = mapped_column(default=False, comment="转科（转入住院病区）")
    delayed_discharge: Mapped[bool] = mapped_column(default=False, comment="延迟出院（超过 48 小时）")
    unplanned_readmission: Mapped[bool] = mapped_column(default=False, comment="出院后 31 天内非计划再入院")
    is_surgeon_qualified: Mapped[bool | None] = mapped_column(
        comment="登记时主刀医师是否具备该目录术式的日间手术资质（否=无资质开展；空=无法核对：未填主刀或非目录术式）")
    note: Mapped[str | None] = mapped_column(Text, comment="备注")
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="登记人（接口登记为空）")
    voided_at: Mapped[datetime | None] = mapped_column(comment="作废时间（不物理删除）")
    void_reason: Mapped[str | None] = mapped_column(String(200), comment="作废原因")

    dept: Mapped[Department] = relationship(lazy="joined")
    surgeon: Mapped[User | None] = relationship(foreign_keys=[surgeon_id], lazy="joined")
    procedure: Mapped[DaySurgeryProcedure | None] = relationship()

    @property
    def grade_label(self) -> str:
        return GRADE_LABELS.get(self.grade, str(self.grade))
