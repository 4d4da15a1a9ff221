"""The outbox: every outbound call to a hospital system, written in the same transaction as the change."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Model, utcnow


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"

    @property
    def label(self) -> str:
        return OUTBOX_STATUS_LABELS[self.value]


OUTBOX_STATUS_LABELS = {"pending": "待发送", "sending": "发送中", "sent": "已发送", "dead": "发送失败（死信）"}


class OutboxMessage(Model):
    __tablename__ = "outbox_messages"
    __table_args__ = (
        Index("ix_outbox_messages_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_outbox_messages_key_id", "key", "id"),
        {"comment": "对外接口发件箱（与业务变更同一事务写入，由后台任务发送、重试、死信）"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键（消息编号，对方据此去重）")
    channel: Mapped[str] = mapped_column(String(32), index=True, comment="发送通道（如 his）")
    event: Mapped[str] = mapped_column(String(64), comment="事件类型（如 privilege.changed）")
    payload: Mapped[dict[str, Any]] = mapped_column(comment="消息内容（JSON）")
    key: Mapped[str | None] = mapped_column(String(128), comment="顺序键：同一键的消息严格按写入顺序发送")
    status: Mapped[OutboxStatus] = mapped_column(String(16), default=OutboxStatus.PENDING,
                                                 comment="状态：pending/sending/sent/dead")
    attempts: Mapped[int] = mapped_column(default=0, comment="已失败的发送次数")
    # indexed through (status, next_attempt_at): the dispatcher asks for due *pending* rows, and an index on
    # the time alone would also walk every sent row, whose times all lie in the past
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, comment="下次发送时间")
    last_error: Mapped[str | None] = mapped_column(Text, comment="最近一次失败原因")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, comment="写入时间")
    sent_at: Mapped[datetime | None] = mapped_column(comment="发送成功时间")

    @property
    def status_label(self) -> str:
        return OUTBOX_STATUS_LABELS.get(str(self.status), str(self.status))
