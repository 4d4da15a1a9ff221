"""People, organisation and access models."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from flask_login import UserMixin
from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Model, TimestampMixin, utcnow


class Scope(StrEnum):
    """Data scope of a role: the rows a user may see or act on through it."""

    SELF = "self"
    DEPT = "dept"
    CAMPUS = "campus"
    GROUP = "group"

    @property
    def rank(self) -> int:
        return ["self", "dept", "campus", "group"].index(self.value)

    @property
    def label(self) -> str:
        return {"self": "本人", "dept": "本科室", "campus": "本院区", "group": "全集团"}[self.value]


class Campus(Model):
    __tablename__ = "campuses"
    __table_args__ = {"comment": "院区"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    code: Mapped[str] = mapped_column(String(32), unique=True, comment="院区编码")
    name: Mapped[str] = mapped_column(String(64), comment="院区名称")
    is_active: Mapped[bool] = mapped_column(default=True, comment="是否启用")


class Department(Model):
    __tablename__ = "departments"
    __table_args__ = {"comment": "科室"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    code: Mapped[str] = mapped_column(String(32), unique=True, comment="科室编码")
    name: Mapped[str] = mapped_column(String(64), comment="科室名称")
    campus_id: Mapped[int] = mapped_column(ForeignKey("campuses.id"), index=True, comment="所属院区")
    his_code: Mapped[str | None] = mapped_column(String(32), comment="HIS 科室编码")
    kind: Mapped[str] = mapped_column(String(16), default="clinical", comment="类别：clinical 临床/tech 医技/admin 职能")
    is_active: Mapped[bool] = mapped_column(default=True, comment="是否启用")

    campus: Mapped[Campus] = relationship()


class Role(Model):
    __tablename__ = "roles"
    __table_args__ = {"comment": "角色"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    code: Mapped[str] = mapped_column(String(32), unique=True, comment="角色编码（BPMN 泳道名与之对应）")
    name: Mapped[str] = mapped_column(String(64), comment="角色名称")
    description: Mapped[str | None] = mapped_column(String(255), comment="说明")

    permissions: Mapped[list[RolePermission]] = relationship(cascade="all, delete-orphan")


class RolePermission(Model):
    __tablename__ = "role_permissions"
    __table_args__ = (UniqueConstraint("role_id", "permission"), {"comment": "角色所含权限"})
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id"), index=True, comment="角色")
    permission: Mapped[str] = mapped_column(String(64), comment="权限编码")


class User(UserMixin, TimestampMixin, Model):
    __tablename__ = "users"
    __table_args__ = {"comment": "用户（含医师、护士、药师、职能人员）"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    username: Mapped[str] = mapped_column(String(64), unique=True, comment="登录名")
    name: Mapped[str] = mapped_column(String(64), comment="姓名")
    staff_no: Mapped[str | None] = mapped_column(String(32), unique=True, comment="工号")
    password_hash: Mapped[str | None] = mapped_column(String(255), comment="密码哈希")
    dept_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True, comment="所属科室")
    title: Mapped[str | None] = mapped_column(String(32), comment="职称")
    phone: Mapped[str | None] = mapped_column(String(32), comment="手机号")
    is_active: Mapped[bool] = mapped_column(default=True, comment="是否可登录")
    failed_logins: Mapped[int] = mapped_column(default=0, comment="连续登录失败次数")
    locked_until: Mapped[datetime | None] = mapped_column(comment="锁定至")
    password_changed_at: Mapped[datetime | None] = mapped_column(comment="密码修改时间")
    must_change_password: Mapped[bool] = mapped_column(default=False, comment="下次登录须先修改密码（管理员设置或重置后）")
    last_login_at: Mapped[datetime | None] = mapped_column(comment="最近登录时间")
    departed_at: Mapped[datetime | None] = mapped_column(comment="离职时间")

    dept: Mapped[Department | None] = relationship()
    roles: Mapped[list[UserRole]] = relationship(cascade="all, delete-orphan", lazy="selectin")

    @property
    def campus_id(self) -> int | None:
        return self.dept.campus_id if self.dept else None

    def get_id(self) -> str:
        return str(self.id)

    @property
    def role_codes(self) -> set[str]:
        return {ur.role.code for ur in self.roles}


class UserRole(Model):
    __tablename__ = "user_roles"
    __table_args__ = (UniqueConstraint("user_id", "role_id"), {"comment": "用户角色及数据范围"})
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True, comment="用户")
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id"), index=True, comment="角色")
    scope: Mapped[Scope] = mapped_column(String(16), default=Scope.DEPT, comment="数据范围：self/dept/campus/group")

    role: Mapped[Role] = relationship(lazy="joined")


class ApiToken(Model):
    __tablename__ = "api_tokens"
    __table_args__ = {"comment": "外部系统接口令牌"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    system: Mapped[str] = mapped_column(String(64), index=True, comment="系统名称（HIS/LIS/PACS…）")
    token_hash: Mapped[str] = mapped_column(String(128), unique=True, comment="令牌 SHA-256")
    prefix: Mapped[str] = mapped_column(String(12), comment="令牌前缀（便于辨认）")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, comment="创建时间")
    revoked_at: Mapped[datetime | None] = mapped_column(comment="吊销时间")
    last_used_at: Mapped[datetime | None] = mapped_column(comment="最近使用时间")
