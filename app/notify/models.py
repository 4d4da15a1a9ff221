"""In-app notifications and the addresses used to push them to DingTalk / 浙政钉."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
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


class NotifyAccount(Model):
    """A user's address on an external notification channel (钉钉 userid / 浙政钉 accountId)."""

    __tablename__ = "notify_accounts"
    __table_args__ = (
        UniqueConstraint("user_id", "channel"),
        UniqueConstraint("channel", "account_id"),
        {"comment": "用户的外部通知账号（钉钉 userid / 浙政钉 accountId），工作通知按此发送"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True, comment="用户")
    channel: Mapped[str] = mapped_column(String(16), comment="通知渠道：dingtalk 钉钉 / zzd 浙政钉")
    account_id: Mapped[str] = mapped_column(String(64), comment="渠道内的用户标识（钉钉 userid / 浙政钉 accountId）")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, comment="最近修改时间")
    updated_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="最近修改人")


class DeptRobot(Model):
    """A department group's DingTalk custom robot: urgent notices are also posted into the group."""

    __tablename__ = "notify_dept_robots"
    __table_args__ = {"comment": "科室群机器人（钉钉自定义机器人 Webhook，加签），紧急提醒同时发到科室群"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    dept_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), unique=True, comment="科室")
    webhook_url: Mapped[str] = mapped_column(String(500), comment="机器人 Webhook 地址（含 access_token）")
    secret: Mapped[str | None] = mapped_column(String(128), comment="加签密钥（SEC 开头；为空则不加签）")
    is_active: Mapped[bool] = mapped_column(default=True, comment="是否启用")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, comment="最近修改时间")
    updated_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="最近修改人")
