"""In-app notifications."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Model, utcnow


class Notification(Model):
    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_user_unread", "user_id", "read_at"), {"comment": "站内消息"})
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), comment="接收人")
    kind: Mapped[str] = mapped_column(String(32), default="info", comment="类别：task 待办/reminder 催办/result 结果/info 通知")
    title: Mapped[str] = mapped_column(String(200), comment="标题")
    body: Mapped[str | None] = mapped_column(Text, comment="内容")
    link: Mapped[str | None] = mapped_column(String(500), comment="跳转链接")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, comment="创建时间")
    read_at: Mapped[datetime | None] = mapped_column(comment="阅读时间")
