"""Append-only audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Model, utcnow


class AuditLog(Model):
    __tablename__ = "audit_logs"
    __table_args__ = (
        Index("ix_audit_logs_entity", "entity_type", "entity_id"),
        {"comment": "审计日志（操作与数据变更留痕）"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True, comment="发生时间")
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True, comment="操作人")
    actor_name: Mapped[str | None] = mapped_column(String(64), comment="操作人姓名（或外部系统名）")
    action: Mapped[str] = mapped_column(String(64), index=True, comment="动作编码")
    entity_type: Mapped[str | None] = mapped_column(String(64), comment="对象类型")
    entity_id: Mapped[str | None] = mapped_column(String(64), comment="对象标识")
    address: Mapped[str | None] = mapped_column(String(64), comment="来源地址")
    terminal: Mapped[str | None] = mapped_column(String(255), comment="终端标识")
    before: Mapped[dict[str, Any] | None] = mapped_column(comment="变更前")
    after: Mapped[dict[str, Any] | None] = mapped_column(comment="变更后")
    extra: Mapped[dict[str, Any] | None] = mapped_column(comment="附加信息")
