"""Versioned form templates: every stored JSON Schema (from a shipped file or the admin editor) is a new row."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Model, utcnow

if TYPE_CHECKING:
    from app.auth.models import User


class FormSource(StrEnum):
    FILE = "file"
    ADMIN = "admin"

    @property
    def label(self) -> str:
        return {"file": "随产品发布的文件", "admin": "管理员在线编辑"}[self.value]


class StartFormMixin:
    """A row opened through a start form (app.forms.start): the template version it was submitted with and the
    fields of that version the row has no own column for. Subclasses name FORM_KEY (the template) and
    FORM_COLUMNS (template fields stored in their own columns)."""

    FORM_KEY: ClassVar[str] = ""
    FORM_COLUMNS: ClassVar[tuple[str, ...]] = ()

    form_version: Mapped[int | None] = mapped_column(comment="申请表单模板版本（提交时所用的版本）")
    form_data: Mapped[dict[str, Any]] = mapped_column(default=dict,
                                                      comment="申请表单中医务处增加的字段（按模板校验，JSON）")


class FormTemplate(Model):
    __tablename__ = "form_templates"
    __table_args__ = (
        UniqueConstraint("key", "version"),
        {"comment": "表单模板版本（JSON Schema 2020-12 与界面描述）"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    key: Mapped[str] = mapped_column(String(64), index=True, comment="表单编码（forms/ 下的文件名，不含 .json）")
    version: Mapped[int] = mapped_column(comment="版本号（同一表单从 1 递增）")
    schema: Mapped[dict[str, Any]] = mapped_column(comment="JSON Schema（draft 2020-12）")
    ui_schema: Mapped[dict[str, Any]] = mapped_column(default=dict, comment="界面描述（字段顺序、控件、帮助文字）")
    source: Mapped[str] = mapped_column(String(16), default=FormSource.FILE.value,
                                        comment="来源：file 发布文件/admin 在线编辑")
    checksum: Mapped[str] = mapped_column(String(64), comment="内容校验和（SHA-256）")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), comment="保存人（文件同步为空）")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, comment="保存时间")
    note: Mapped[str | None] = mapped_column(String(255), comment="版本说明")

    created_by: Mapped[User | None] = relationship()

    @property
    def title(self) -> str:
        return str((self.schema or {}).get("title") or self.key)

    @property
    def source_label(self) -> str:
        try:
            return FormSource(self.source).label
        except ValueError:
            return self.source

    @property
    def field_count(self) -> int:
        return len((self.schema or {}).get("properties") or {})
