"""Closed-loop models: loop types and nodes (editable per campus), the interface dictionary, the
append-only event store, orders (the main index) and the per-order node projection."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Model, utcnow
from app.workflow.models import ProcessInstance

# 64-bit keys for the high-volume tables; SQLite's rowid needs INTEGER to autoincrement
BigId = BigInteger().with_variant(Integer(), "sqlite")


class OrderStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    CLOSED = "closed"
    INTERRUPTED = "interrupted"


ORDER_STATUS_LABELS = {"in_progress": "进行中", "closed": "已闭环", "interrupted": "已中断"}


class NodeStatus(StrEnum):
    DONE = "done"
    CURRENT = "current"
    PENDING = "pending"
    LATE = "late"
    SKIPPED = "skipped"
    ABNORMAL = "abnormal"


NODE_STATUS_LABELS = {"done": "已完成", "current": "进行中", "pending": "未开始", "late": "补录（迟到）",
                      "skipped": "缺环", "abnormal": "异常"}


class EventStatus(StrEnum):
    PENDING = "pending"      # stored, not yet applied
    APPLIED = "applied"      # advanced the loop
    LATE = "late"            # a skipped node arriving after its grace period: kept, shown as late
    REPEAT = "repeat"        # another event for a node already done: kept, changes nothing
    IGNORED = "ignored"      # arrived after the loop ended (e.g. after cancellation)


class LoopType(Model):
    __tablename__ = "loop_types"
    __table_args__ = (UniqueConstraint("key", "campus_id"), {"comment": "闭环类型（集团标准或院区版本）"})
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    key: Mapped[str] = mapped_column(String(64), index=True, comment="闭环类型标识（对接用）")
    name: Mapped[str] = mapped_column(String(64), comment="闭环名称")
    order_category: Mapped[str] = mapped_column(String(16), comment="医嘱类别（药品/检验/检查/手术…）")
    campus_id: Mapped[int | None] = mapped_column(ForeignKey("campuses.id"), comment="院区（空=集团标准）")
    process_key: Mapped[str] = mapped_column(String(80), comment="对应 BPMN 流程标识")
    grace_minutes: Mapped[int] = mapped_column(default=5, comment="缺环等待时长（分钟）")
    stall_minutes: Mapped[int] = mapped_column(default=1440, comment="停滞告警阈值（分钟）")
    template_of: Mapped[str | None] = mapped_column(String(64), comment="复制自的典型闭环")
    is_active: Mapped[bool] = mapped_column(default=True, comment="是否启用")
    source_url_template: Mapped[str | None] = mapped_column(String(500), comment="源系统调阅链接模板（{order_no}）")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, comment="更新时间")

    nodes: Mapped[list[LoopNode]] = relationship(order_by="LoopNode.seq", cascade="all, delete-orphan",
                                                 lazy="selectin")


class LoopNode(Model):
    __tablename__ = "loop_nodes"
    __table_args__ = (UniqueConstraint("loop_type_id", "key"), {"comment": "闭环节点定义"})
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    loop_type_id: Mapped[int] = mapped_column(ForeignKey("loop_types.id"), index=True, comment="闭环类型")
    seq: Mapped[int] = mapped_column(comment="顺序（从 0 开始）")
    key: Mapped[str] = mapped_column(String(64), comment="节点标识")
    name: Mapped[str] = mapped_column(String(64), comment="节点名称")
    standard_minutes: Mapped[int] = mapped_column(default=30, comment="标准用时（分钟，自上一节点起）")
    required_fields: Mapped[list[Any]] = mapped_column(default=list, comment="必填数据字段")
    qc_rules: Mapped[dict[str, Any]] = mapped_column(default=dict, comment="质控规则")
    responsible_role: Mapped[str | None] = mapped_column(String(32), comment="责任角色（告警接收）")


class InterfaceMapping(Model):
    __tablename__ = "interface_mappings"
    __table_args__ = (UniqueConstraint("source", "kind", "code"), {"comment": "接口字典（外部编码→闭环编码）"})
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    source: Mapped[str] = mapped_column(String(32), comment="来源系统（HIS/LIS/PACS…，* 表示全部）")
    kind: Mapped[str] = mapped_column(String(64), comment="类别：order_type 医嘱类型 / node:<闭环> 状态码 / dept 科室")
    code: Mapped[str] = mapped_column(String(64), comment="外部编码")
    target: Mapped[str] = mapped_column(String(64), comment="对应的闭环类型/节点/科室编码")
    note: Mapped[str | None] = mapped_column(String(200), comment="说明")


class LoopOrder(Model):
    __tablename__ = "loop_orders"
    __table_args__ = (
        Index("ix_loop_orders_pending", "pending", "wait_until"),
        Index("ix_loop_orders_type_started", "loop_type_key", "started_at"),
        {"comment": "医嘱（闭环主索引）"},
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, comment="主键")
    order_no: Mapped[str] = mapped_column(String(64), unique=True, comment="医嘱号")
    loop_type_key: Mapped[str] = mapped_column(String(64), comment="闭环类型")
    loop_type_id: Mapped[int | None] = mapped_column(ForeignKey("loop_types.id"), comment="所用闭环类型版本")
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("process_instances.id"), comment="流程实例")
    status: Mapped[str] = mapped_column(String(16), default=OrderStatus.IN_PROGRESS, index=True, comment="状态")
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True, comment="患者 ID")
    patient_name: Mapped[str | None] = mapped_column(String(64), comment="患者姓名")
    inpatient_no: Mapped[str | None] = mapped_column(String(64), index=True, comment="住院号")
    dept_code: Mapped[str | None] = mapped_column(String(32), comment="科室编码（来源系统）")
    dept_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True, comment="科室")
    campus_code: Mapped[str | None] = mapped_column(String(32), comment="院区编码")
    campus_id: Mapped[int | None] = mapped_column(ForeignKey("campuses.id"), comment="院区")
    current_node: Mapped[str | None] = mapped_column(String(64), comment="当前节点")
    started_at: Mapped[datetime | None] = mapped_column(comment="首个节点时间")
    ended_at: Mapped[datetime | None] = mapped_column(comment="闭环或中断时间")
    interrupted_node: Mapped[str | None] = mapped_column(String(64), comment="中断时所在节点")
    interrupted_minutes: Mapped[int | None] = mapped_column(comment="中断前已用时（分钟）")
    has_skipped: Mapped[bool] = mapped_column(default=False, comment="是否有缺环")
    has_abnormal: Mapped[bool] = mapped_column(default=False, comment="是否有异常环节")
    pending: Mapped[bool] = mapped_column(default=True, comment="是否有待应用事件")
    wait_until: Mapped[datetime | None] = mapped_column(comment="等待前序节点至")
    last_event_at: Mapped[datetime | None] = mapped_column(comment="最近事件时间")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, comment="创建时间")

    states: Mapped[list[LoopNodeState]] = relationship(order_by="LoopNodeState.seq", lazy="selectin",
                                                       cascade="all, delete-orphan")
    instance: Mapped[ProcessInstance | None] = relationship(lazy="raise_on_sql")


class LoopNodeState(Model):
    __tablename__ = "loop_node_states"
    __table_args__ = (
        UniqueConstraint("order_id", "node_key"),
        Index("ix_loop_node_states_node_time", "node_key", "occurred_at"),
        {"comment": "医嘱闭环节点状态（时间轴投影）"},
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, comment="主键")
    order_id: Mapped[int] = mapped_column(ForeignKey("loop_orders.id"), index=True, comment="医嘱")
    seq: Mapped[int] = mapped_column(comment="顺序")
    node_key: Mapped[str] = mapped_column(String(64), comment="节点标识")
    name: Mapped[str] = mapped_column(String(64), comment="节点名称")
    status: Mapped[str] = mapped_column(String(16), default=NodeStatus.PENDING, comment="状态")
    occurred_at: Mapped[datetime | None] = mapped_column(comment="发生时间")
    operator_id: Mapped[str | None] = mapped_column(String(64), comment="操作人工号")
    operator_name: Mapped[str | None] = mapped_column(String(64), comment="操作人")
    terminal: Mapped[str | None] = mapped_column(String(128), comment="终端")
    source: Mapped[str | None] = mapped_column(String(32), comment="来源系统")
    minutes_since_previous: Mapped[int | None] = mapped_column(comment="距上一节点用时（分钟）")
    standard_minutes: Mapped[int | None] = mapped_column(comment="标准用时（分钟）")
    deviation_minutes: Mapped[int | None] = mapped_column(comment="偏差（实际-标准，分钟）")
    note: Mapped[str | None] = mapped_column(Text, comment="说明（异常原因、缺环说明）")
    event_id: Mapped[int | None] = mapped_column(BigId, comment="来源事件")
    qc_findings: Mapped[list[Any] | None] = mapped_column(
        comment="质控问题（节点完成时按数据字段与质控规则检查的中文说明；无问题为空）")


class LoopEvent(Model):
    __tablename__ = "loop_events"
    __table_args__ = (
        UniqueConstraint("source", "event_id"),
        Index("ix_loop_events_order_status", "order_no", "status"),
        {"comment": "闭环事件（只追加；接收即持久化）"},
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, comment="主键")
    source: Mapped[str] = mapped_column(String(32), comment="来源系统")
    event_id: Mapped[str] = mapped_column(String(128), comment="来源事件 ID（来源内唯一）")
    channel: Mapped[str] = mapped_column(String(16), default="rest", comment="接入方式：rest/soap/hl7/db")
    order_no: Mapped[str] = mapped_column(String(64), comment="医嘱号")
    order_type: Mapped[str] = mapped_column(String(64), comment="医嘱类型（原值）")
    loop_type_key: Mapped[str] = mapped_column(String(64), comment="闭环类型（映射后）")
    node: Mapped[str] = mapped_column(String(64), comment="节点/状态码（原值）")
    node_key: Mapped[str] = mapped_column(String(64), comment="节点（映射后）")
    occurred_at: Mapped[datetime] = mapped_column(comment="发生时间")
    received_at: Mapped[datetime] = mapped_column(default=utcnow, comment="接收时间")
    operator_id: Mapped[str | None] = mapped_column(String(64), index=True, comment="操作人工号")
    operator_name: Mapped[str | None] = mapped_column(String(64), comment="操作人")
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True, comment="患者 ID")
    patient_name: Mapped[str | None] = mapped_column(String(64), comment="患者姓名")
    inpatient_no: Mapped[str | None] = mapped_column(String(64), comment="住院号")
    dept: Mapped[str | None] = mapped_column(String(32), comment="科室编码")
    campus: Mapped[str | None] = mapped_column(String(32), comment="院区编码")
    terminal: Mapped[str | None] = mapped_column(String(128), index=True, comment="终端")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict, comment="节点数据")
    status: Mapped[str] = mapped_column(String(16), default=EventStatus.PENDING, comment="应用状态")
    applied_at: Mapped[datetime | None] = mapped_column(comment="应用时间")
