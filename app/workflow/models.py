"""Process definitions, versions, instances and the projections pages query (inbox, history, waits)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Model, utcnow


class InstanceStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    TERMINATED = "terminated"
    ERROR = "error"

    @property
    def label(self) -> str:
        return INSTANCE_STATUS_LABELS[self.value]


INSTANCE_STATUS_LABELS = {
    "running": "进行中", "completed": "已通过/已完成", "rejected": "未通过", "withdrawn": "已撤回",
    "terminated": "已终止", "error": "出错",
}


class TaskStatus(StrEnum):
    READY = "ready"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class ProcessDefinition(Model):
    __tablename__ = "process_definitions"
    __table_args__ = {"comment": "流程定义（按流程标识）"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    key: Mapped[str] = mapped_column(String(64), unique=True, comment="流程标识（BPMN process id）")
    name: Mapped[str] = mapped_column(String(128), comment="流程名称")
    active_version_id: Mapped[int | None] = mapped_column(ForeignKey("process_versions.id"), comment="当前生效版本")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, comment="创建时间")

    active_version: Mapped[ProcessVersion | None] = relationship(foreign_keys=[active_version_id])


class ProcessVersion(Model):
    __tablename__ = "process_versions"
    __table_args__ = (UniqueConstraint("key", "version"), {"comment": "流程定义版本"})
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    key: Mapped[str] = mapped_column(String(64), index=True, comment="流程标识")
    version: Mapped[int] = mapped_column(comment="版本号（从 1 递增）")
    name: Mapped[str] = mapped_column(String(128), comment="流程名称")
    bpmn_xml: Mapped[str] = mapped_column(Text, comment="BPMN 文档")
    dmn: Mapped[dict[str, Any]] = mapped_column(default=dict, comment="引用的 DMN 决策表（文件名→XML）")
    checksum: Mapped[str] = mapped_column(String(64), comment="内容校验和（BPMN+DMN）")
    source: Mapped[str] = mapped_column(String(16), default="file", comment="来源：file 随产品发布/upload 管理员上传")
    note: Mapped[str | None] = mapped_column(String(255), comment="版本说明")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="上传人")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, comment="部署时间")


class ProcessInstance(Model):
    __tablename__ = "process_instances"
    __table_args__ = (
        Index("ix_process_instances_key_business", "key", "business_key"),
        {"comment": "流程实例"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    key: Mapped[str] = mapped_column(String(64), comment="流程标识")
    version_id: Mapped[int] = mapped_column(ForeignKey("process_versions.id"), index=True, comment="运行所用版本")
    business_key: Mapped[str] = mapped_column(String(64), comment="业务键（申请单号、医嘱号等）")
    title: Mapped[str] = mapped_column(String(200), comment="标题")
    status: Mapped[str] = mapped_column(String(16), default=InstanceStatus.RUNNING, index=True, comment="状态")
    dept_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True, comment="业务所属科室")
    campus_id: Mapped[int | None] = mapped_column(ForeignKey("campuses.id"), comment="业务所属院区")
    started_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True, comment="发起人")
    started_at: Mapped[datetime] = mapped_column(default=utcnow, comment="发起时间")
    ended_at: Mapped[datetime | None] = mapped_column(comment="结束时间")
    current_nodes: Mapped[list[Any]] = mapped_column(default=list, comment="当前所在节点（BPMN id 列表）")
    done_nodes: Mapped[list[Any]] = mapped_column(default=list, comment="已完成节点（BPMN id 列表）")
    next_timer_at: Mapped[datetime | None] = mapped_column(index=True, comment="最早到期的定时器")
    serialized: Mapped[str] = mapped_column(Text, comment="序列化的工作流状态（SpiffWorkflow JSON）")
    error: Mapped[str | None] = mapped_column(Text, comment="最近一次执行错误")
    lock_version: Mapped[int] = mapped_column(Integer, default=1, comment="乐观锁版本号")

    __mapper_args__ = {"version_id_col": lock_version}

    version: Mapped[ProcessVersion] = relationship()

    @property
    def status_label(self) -> str:
        return INSTANCE_STATUS_LABELS.get(self.status, self.status)


class HumanTask(Model):
    __tablename__ = "human_tasks"
    __table_args__ = (
        Index("ix_human_tasks_inbox", "status", "role_code", "dept_id"),
        {"comment": "人工任务（待办收件箱投影）"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    instance_id: Mapped[int] = mapped_column(ForeignKey("process_instances.id"), index=True, comment="流程实例")
    task_guid: Mapped[str] = mapped_column(String(36), unique=True, comment="引擎任务标识")
    spec_name: Mapped[str] = mapped_column(String(64), comment="BPMN 元素 id")
    name: Mapped[str] = mapped_column(String(128), comment="任务名称")
    lane: Mapped[str | None] = mapped_column(String(64), comment="泳道")
    role_code: Mapped[str | None] = mapped_column(String(32), comment="候选角色编码")
    dept_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), comment="数据范围：科室")
    campus_id: Mapped[int | None] = mapped_column(ForeignKey("campuses.id"), comment="数据范围：院区")
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True, comment="处理人（已认领/指派）")
    claimed_at: Mapped[datetime | None] = mapped_column(comment="认领时间")
    form_key: Mapped[str | None] = mapped_column(String(128), comment="表单文件名")
    form_version: Mapped[int | None] = mapped_column(comment="表单版本")
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict, comment="任务扩展属性")
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.READY, comment="状态：ready/completed/cancelled")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, comment="到达时间")
    due_at: Mapped[datetime | None] = mapped_column(index=True, comment="期限")
    completed_at: Mapped[datetime | None] = mapped_column(comment="完成时间")
    completed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="完成人")

    instance: Mapped[ProcessInstance] = relationship()


class TaskLog(Model):
    __tablename__ = "task_logs"
    __table_args__ = {"comment": "流程步骤日志（谁、何时、何终端、提交了什么）"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    instance_id: Mapped[int] = mapped_column(ForeignKey("process_instances.id"), index=True, comment="流程实例")
    task_guid: Mapped[str | None] = mapped_column(String(36), comment="引擎任务标识")
    spec_name: Mapped[str | None] = mapped_column(String(64), comment="BPMN 元素 id")
    task_name: Mapped[str | None] = mapped_column(String(128), comment="任务名称")
    action: Mapped[str] = mapped_column(String(32), comment="动作：start/claim/unclaim/complete/send_back/delegate/withdraw/terminate/message/timer")
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="操作人")
    actor_name: Mapped[str | None] = mapped_column(String(64), comment="操作人姓名或系统名")
    at: Mapped[datetime] = mapped_column(default=utcnow, comment="时间")
    address: Mapped[str | None] = mapped_column(String(64), comment="来源地址")
    terminal: Mapped[str | None] = mapped_column(String(255), comment="终端")
    data: Mapped[dict[str, Any] | None] = mapped_column(comment="提交的数据")
    comment: Mapped[str | None] = mapped_column(Text, comment="意见/原因")


class MessageWait(Model):
    __tablename__ = "message_waits"
    __table_args__ = (
        Index("ix_message_waits_lookup", "message_name", "correlation_key"),
        {"comment": "等待中的消息事件（按关联键索引）"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    instance_id: Mapped[int] = mapped_column(ForeignKey("process_instances.id"), index=True, comment="流程实例")
    message_name: Mapped[str] = mapped_column(String(128), comment="消息名称")
    correlation_key: Mapped[str] = mapped_column(String(128), comment="关联键（医嘱号、申请单号）")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, comment="开始等待时间")


class ProcessedMessage(Model):
    __tablename__ = "processed_messages"
    __table_args__ = {"comment": "已处理的消息（按消息 id 幂等）"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    message_id: Mapped[str] = mapped_column(String(128), unique=True, comment="消息唯一标识")
    message_name: Mapped[str] = mapped_column(String(128), comment="消息名称")
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("process_instances.id"), comment="投递到的实例")
    at: Mapped[datetime] = mapped_column(default=utcnow, comment="处理时间")
