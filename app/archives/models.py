"""Physician archive models (医师技术档案, seed 000 §一): profile, versioned section records, section registry,
certificates and their files, reminders, HR import batches and differences, departures."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.auth.models import User
from app.db import Model, TimestampMixin, utcnow
from app.forms.models import StartFormMixin


class RecordStatus(StrEnum):
    """State of one version of an archive record."""

    PENDING = "pending"          # submitted, waiting for 医务处 (archive_change_review)
    RETURNED = "returned"        # sent back to the submitter for revision (a draft again)
    EFFECTIVE = "effective"      # the version in force
    SUPERSEDED = "superseded"    # was in force (or was a returned draft) and has been replaced
    REJECTED = "rejected"        # not approved; the previous version stays in force
    WITHDRAWN = "withdrawn"      # the review flow was withdrawn or terminated

    @property
    def label(self) -> str:
        return RECORD_STATUS_LABELS[self.value]


RECORD_STATUS_LABELS = {"pending": "待审核", "returned": "退回修改", "effective": "已生效", "superseded": "历史版本",
                        "rejected": "未通过", "withdrawn": "已撤回"}
OPEN_RECORD_STATUSES = (RecordStatus.PENDING.value, RecordStatus.RETURNED.value)

ACTION_LABELS = {"create": "新增", "update": "修改", "delete": "删除"}


class ArchiveProfile(TimestampMixin, Model):
    """Current basic information of one person's archive: a projection of the effective `profile` record
    (whose versions keep the history), plus the computed completeness used by list filters."""

    __tablename__ = "archive_profiles"
    __table_args__ = (
        Index("ix_archive_profiles_completeness", "completeness"),
        {"comment": "医师档案基本信息（当前生效版本的投影，含完整度）"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True, comment="档案所属人员")
    gender: Mapped[str | None] = mapped_column(String(8), comment="性别")
    birth_date: Mapped[date | None] = mapped_column(comment="出生日期")
    id_number: Mapped[str | None] = mapped_column(String(18), index=True, comment="身份证号（展示时按权限脱敏）")
    education: Mapped[str | None] = mapped_column(String(32), comment="最高学历")
    degree: Mapped[str | None] = mapped_column(String(32), index=True, comment="最高学位")
    practice_cert_no: Mapped[str | None] = mapped_column(String(64), comment="医师执业证书编号")
    hire_date: Mapped[date | None] = mapped_column(comment="入职日期")
    specialty: Mapped[str | None] = mapped_column(String(200), comment="专业特长")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict, comment="基本信息全部字段（含模板自定义字段）")
    completeness: Mapped[int] = mapped_column(default=0, comment="档案完整度（百分比 0–100）")
    missing: Mapped[list[Any]] = mapped_column(default=list, comment="缺项说明列表")
    completeness_at: Mapped[datetime | None] = mapped_column(comment="完整度计算时间")
    hr_pending: Mapped[bool] = mapped_column(default=False, comment="人事系统新增、待医务处确认")
    origin: Mapped[str] = mapped_column(String(16), default="manual", comment="建档来源：manual 手工/hr 人事系统/demo 演示")

    user: Mapped[User] = relationship(lazy="joined")


class ArchiveEntry(Model):
    """One logical record of a section (e.g. one 教育经历 line); its versions are ArchiveRecord rows."""

    __tablename__ = "archive_entries"
    __table_args__ = (
        Index("ix_archive_entries_user_section", "user_id", "section"),
        {"comment": "档案条目（同一条记录各版本的归属）"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), comment="档案所属人员")
    section: Mapped[str] = mapped_column(String(32), comment="档案栏目编码")
    is_deleted: Mapped[bool] = mapped_column(default=False, comment="是否已删除（软删除，版本保留）")
    deleted_at: Mapped[datetime | None] = mapped_column(comment="删除生效时间")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, comment="创建时间")

    records: Mapped[list[ArchiveRecord]] = relationship(back_populates="entry", order_by="ArchiveRecord.version")


class ArchiveRecord(Model):
    """One version of an archive record. Every change is a new row; nothing is updated in place except the
    status and decision columns of a version while its review runs."""

    __tablename__ = "archive_records"
    __table_args__ = (
        UniqueConstraint("entry_id", "version"),
        Index("ix_archive_records_user_section_status", "user_id", "section", "status"),
        {"comment": "档案记录版本（每次变更新增一行，保留全部历史）"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    entry_id: Mapped[int] = mapped_column(ForeignKey("archive_entries.id"), index=True, comment="所属条目")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), comment="档案所属人员")
    section: Mapped[str] = mapped_column(String(32), comment="档案栏目编码")
    version: Mapped[int] = mapped_column(comment="版本号（同一条目从 1 递增）")
    action: Mapped[str] = mapped_column(String(16), comment="变更类型：create 新增/update 修改/delete 删除")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict, comment="字段内容（按栏目表单模板校验）")
    form_key: Mapped[str | None] = mapped_column(String(64), comment="表单模板编码")
    form_version: Mapped[int | None] = mapped_column(comment="表单模板版本")
    status: Mapped[RecordStatus] = mapped_column(String(16), default=RecordStatus.EFFECTIVE,
                                                 comment="状态：pending/returned/effective/superseded/rejected/withdrawn")
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("archive_records.id"),
                                                      comment="提交时所基于（将被替代）的版本")
    source: Mapped[str] = mapped_column(String(16), default="manual", comment="来源：manual 页面/hr 人事系统/demo 演示")
    reason: Mapped[str | None] = mapped_column(Text, comment="变更或删除原因")
    instance_id: Mapped[int | None] = mapped_column(index=True, comment="审核流程实例编号")
    submitted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="提交人")
    submitted_by_name: Mapped[str | None] = mapped_column(String(64), comment="提交人姓名或系统名")
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow, comment="提交时间")
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="审核人")
    decided_at: Mapped[datetime | None] = mapped_column(comment="生效或办结时间")
    decision_comment: Mapped[str | None] = mapped_column(Text, comment="审核意见")

    entry: Mapped[ArchiveEntry] = relationship(back_populates="records")
    user: Mapped[User] = relationship(foreign_keys=[user_id])
    submitted_by: Mapped[User | None] = relationship(foreign_keys=[submitted_by_id])
    decided_by: Mapped[User | None] = relationship(foreign_keys=[decided_by_id])

    @property
    def status_label(self) -> str:
        return RECORD_STATUS_LABELS.get(str(self.status), str(self.status))

    @property
    def action_label(self) -> str:
        return ACTION_LABELS.get(self.action, self.action)


class ArchiveSectionSetting(Model):
    """The office's registry of section rules (overrides the shipped defaults in services.SECTIONS)."""

    __tablename__ = "archive_section_settings"
    __table_args__ = {"comment": "档案栏目设置（是否需审核、是否必填、本人可否填写）"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    section: Mapped[str] = mapped_column(String(32), unique=True, comment="档案栏目编码")
    requires_review: Mapped[bool] = mapped_column(default=False, comment="变更是否需医务处审核")
    is_required: Mapped[bool] = mapped_column(default=False, comment="是否计入档案完整度（必填栏目）")
    staff_editable: Mapped[bool] = mapped_column(default=True, comment="本人及科室可否提交（否则仅医务处维护）")
    updated_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="最近修改人")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, comment="最近修改时间")


class CertificateType(TimestampMixin, Model):
    __tablename__ = "certificate_types"
    __table_args__ = {"comment": "证件类型（毕业证、学位证、执业证等，可维护）"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    code: Mapped[str] = mapped_column(String(32), unique=True, comment="类型编码")
    name: Mapped[str] = mapped_column(String(64), comment="类型名称（批量上传按文件名中的名称识别）")
    aliases: Mapped[str | None] = mapped_column(String(200), comment="别名（逗号分隔，文件名识别用）")
    has_expiry: Mapped[bool] = mapped_column(default=False, comment="是否有有效期")
    remind_days: Mapped[list[Any]] = mapped_column(default=list, comment="到期前提醒天数（如 [90, 30]）")
    sort_order: Mapped[int] = mapped_column(default=0, comment="排序号")
    is_active: Mapped[bool] = mapped_column(default=True, comment="是否启用")


class CertificateRequirement(Model):
    """A certificate type required of people with a title and/or role (empty = everyone in the archive)."""

    __tablename__ = "certificate_requirements"
    __table_args__ = (
        UniqueConstraint("type_id", "title", "role_code"),
        {"comment": "证件必备要求（按职称、角色）"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    type_id: Mapped[int] = mapped_column(ForeignKey("certificate_types.id"), index=True, comment="证件类型")
    title: Mapped[str | None] = mapped_column(String(32), comment="适用职称（空为不限）")
    role_code: Mapped[str | None] = mapped_column(String(32), comment="适用角色编码（空为不限）")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, comment="创建时间")

    type: Mapped[CertificateType] = relationship(lazy="joined")


class Certificate(StartFormMixin, TimestampMixin, Model):
    __tablename__ = "certificates"
    __table_args__ = (
        Index("ix_certificates_user_type", "user_id", "type_id"),
        {"comment": "人员证件"},
    )
    FORM_KEY = "archive_certificate"
    FORM_COLUMNS = ("type_id", "number", "issuer", "issue_date", "expiry_date", "note")
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), comment="证件所属人员")
    type_id: Mapped[int] = mapped_column(ForeignKey("certificate_types.id"), comment="证件类型")
    number: Mapped[str | None] = mapped_column(String(64), comment="证件编号")
    issuer: Mapped[str | None] = mapped_column(String(128), comment="发证机关")
    issue_date: Mapped[date | None] = mapped_column(comment="发证日期")
    expiry_date: Mapped[date | None] = mapped_column(index=True, comment="有效期至（含当日）")
    note: Mapped[str | None] = mapped_column(String(500), comment="备注")
    source: Mapped[str] = mapped_column(String(16), default="manual", comment="来源：manual 单个/batch 批量/demo 演示")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="登记人")
    is_deleted: Mapped[bool] = mapped_column(default=False, comment="是否已删除（软删除）")
    deleted_at: Mapped[datetime | None] = mapped_column(comment="删除时间")
    deleted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="删除人")
    deleted_reason: Mapped[str | None] = mapped_column(String(500), comment="删除原因")

    user: Mapped[User] = relationship(foreign_keys=[user_id])
    type: Mapped[CertificateType] = relationship(lazy="joined")
    files: Mapped[list[CertificateFile]] = relationship(
        lazy="selectin", order_by="CertificateFile.id",
        primaryjoin="and_(CertificateFile.certificate_id == Certificate.id, CertificateFile.is_deleted.is_(False))",
        viewonly=True)


class CertificateFile(Model):
    __tablename__ = "certificate_files"
    __table_args__ = {"comment": "证件扫描件（文件存于上传目录，文件名由系统生成）"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id"), index=True, comment="所属证件")
    stored_path: Mapped[str] = mapped_column(String(255), unique=True, comment="相对上传目录的存储路径（系统生成）")
    original_name: Mapped[str] = mapped_column(String(255), comment="上传时的文件名（仅供显示）")
    content_type: Mapped[str] = mapped_column(String(64), comment="文件类型（按内容识别）")
    size: Mapped[int] = mapped_column(comment="字节数")
    sha256: Mapped[str] = mapped_column(String(64), comment="内容 SHA-256")
    uploaded_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="上传人")
    uploaded_at: Mapped[datetime] = mapped_column(default=utcnow, comment="上传时间")
    is_deleted: Mapped[bool] = mapped_column(default=False, comment="是否已删除（软删除，文件保留）")

    certificate: Mapped[Certificate] = relationship()

    @property
    def is_image(self) -> bool:
        return self.content_type.startswith("image/")

    @property
    def is_pdf(self) -> bool:
        return self.content_type == "application/pdf"


class ArchiveReminder(Model):
    """One reminder sent (unique key), so the daily job never sends the same reminder twice."""

    __tablename__ = "archive_reminders"
    __table_args__ = {"comment": "档案提醒发送记录（按提醒键幂等）"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    key: Mapped[str] = mapped_column(String(128), unique=True, comment="提醒键（类型:对象:阈值或周期）")
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True, comment="被提醒人员")
    kind: Mapped[str] = mapped_column(String(32), comment="类别：expiring 将到期/expired 已过期/missing 缺证/digest 汇总/daily 每日任务")
    sent_at: Mapped[datetime] = mapped_column(default=utcnow, comment="发送时间")


class HrImportBatch(Model):
    __tablename__ = "hr_import_batches"
    __table_args__ = {"comment": "人事（HR/HRP）数据导入批次"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    source: Mapped[str] = mapped_column(String(16), comment="来源：file 文件导入/api 接口推送")
    filename: Mapped[str | None] = mapped_column(String(255), comment="导入文件名")
    system: Mapped[str | None] = mapped_column(String(64), comment="推送系统名")
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="导入人")
    actor_name: Mapped[str | None] = mapped_column(String(64), comment="导入人姓名或系统名")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, comment="导入时间")
    total: Mapped[int] = mapped_column(default=0, comment="总行数")
    created_count: Mapped[int] = mapped_column(default=0, comment="新建人员数（待确认）")
    unchanged_count: Mapped[int] = mapped_column(default=0, comment="与本系统一致的行数")
    diff_count: Mapped[int] = mapped_column(default=0, comment="产生差异的字段数")
    rejected_count: Mapped[int] = mapped_column(default=0, comment="被拒绝的行数")
    report: Mapped[list[Any]] = mapped_column(default=list, comment="逐行结果（含拒绝原因）")


class HrDiffStatus(StrEnum):
    OPEN = "open"
    ACCEPTED = "accepted"
    IGNORED = "ignored"
    SUPERSEDED = "superseded"

    @property
    def label(self) -> str:
        return HR_DIFF_STATUS_LABELS[self.value]


HR_DIFF_STATUS_LABELS = {"open": "待处理", "accepted": "已采纳", "ignored": "已忽略", "superseded": "已被新数据替代"}


class HrDiff(Model):
    __tablename__ = "hr_diffs"
    __table_args__ = (
        Index("ix_hr_diffs_status_user", "status", "user_id"),
        {"comment": "人事数据与本系统的差异（待医务处采纳或忽略）"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    batch_id: Mapped[int] = mapped_column(ForeignKey("hr_import_batches.id"), index=True, comment="导入批次")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), comment="人员")
    field: Mapped[str] = mapped_column(String(32), comment="字段编码")
    ours: Mapped[str | None] = mapped_column(String(200), comment="本系统当前值")
    theirs: Mapped[str | None] = mapped_column(String(200), comment="人事系统的值")
    departure_date: Mapped[date | None] = mapped_column(
        comment="人事系统报告的离职日期（仅“人事系统报告离职”差异，人事系统未提供时为空）")
    status: Mapped[HrDiffStatus] = mapped_column(String(16), default=HrDiffStatus.OPEN,
                                                 comment="状态：open/accepted/ignored/superseded")
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="处理人")
    decided_at: Mapped[datetime | None] = mapped_column(comment="处理时间")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, comment="发现时间")

    user: Mapped[User] = relationship(foreign_keys=[user_id], lazy="joined")
    batch: Mapped[HrImportBatch] = relationship()

    @property
    def status_label(self) -> str:
        return HR_DIFF_STATUS_LABELS.get(str(self.status), str(self.status))


class DepartureKind(StrEnum):
    RESIGNATION = "resignation"
    RETIREMENT = "retirement"
    DISMISSAL = "dismissal"
    OTHER = "other"

    @property
    def label(self) -> str:
        return DEPARTURE_KIND_LABELS[self.value]


DEPARTURE_KIND_LABELS = {"resignation": "辞职", "retirement": "退休", "dismissal": "辞退/解聘", "other": "其他离岗"}


class DepartureStatus(StrEnum):
    DEPARTED = "departed"
    REINSTATING = "reinstating"
    REINSTATED = "reinstated"

    @property
    def label(self) -> str:
        return DEPARTURE_STATUS_LABELS[self.value]


DEPARTURE_STATUS_LABELS = {"departed": "已离职", "reinstating": "复职审批中", "reinstated": "已复职"}


class Departure(StartFormMixin, Model):
    __tablename__ = "archive_departures"
    __table_args__ = {"comment": "离职登记（辞职、退休、辞退）及复职"}
    FORM_KEY = "archive_departure"
    FORM_COLUMNS = ("kind", "departure_date", "reason")
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True, comment="离职人员")
    kind: Mapped[DepartureKind] = mapped_column(String(16), comment="类型：resignation/retirement/dismissal/other")
    departure_date: Mapped[date] = mapped_column(comment="离职日期")
    reason: Mapped[str] = mapped_column(Text, comment="离职原因")
    status: Mapped[DepartureStatus] = mapped_column(String(16), default=DepartureStatus.DEPARTED,
                                                    comment="状态：departed/reinstating/reinstated")
    registered_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="登记人")
    registered_at: Mapped[datetime] = mapped_column(default=utcnow, comment="登记时间（权限即时切断）")
    grants_revoked: Mapped[int] = mapped_column(default=0, comment="停止的医疗授权数")
    technology_revoked: Mapped[int] = mapped_column(default=0, comment="取消的医疗技术授权数（高风险诊疗技术授权、日间手术资质）")
    affected_tasks: Mapped[list[Any]] = mapped_column(default=list, comment="处理的待办与流程（放回任务组/撤回）")
    reinstatement_instance_id: Mapped[int | None] = mapped_column(comment="复职审批流程实例编号")
    reinstatement_reason: Mapped[str | None] = mapped_column(Text, comment="复职理由")
    reinstated_at: Mapped[datetime | None] = mapped_column(comment="复职生效时间")
    reinstated_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="复职批准人")

    user: Mapped[User] = relationship(foreign_keys=[user_id], lazy="joined")
    registered_by: Mapped[User | None] = relationship(foreign_keys=[registered_by_id])

    @property
    def number(self) -> str:
        return f"LZ{self.id:06d}"

    @property
    def kind_label(self) -> str:
        return DEPARTURE_KIND_LABELS.get(str(self.kind), str(self.kind))

    @property
    def status_label(self) -> str:
        return DEPARTURE_STATUS_LABELS.get(str(self.status), str(self.status))
