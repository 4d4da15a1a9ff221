"""Access rules.

Invariants:
- a password is stored only as a salted hash; a locked or departed user cannot log in;
- a permission is held through a role, and applies within that role assignment's data scope;
- an API token is shown once and stored only as its SHA-256.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from app.auth.models import ApiToken, Department, Role, RolePermission, Scope, User, UserRole
from app.auth.permissions import PERMISSIONS, ROLES
from app.db import db, utcnow
from app.errors import Forbidden, ValidationFailed


class LoginFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def hash_password(password: str) -> str:
    return generate_password_hash(password, method="pbkdf2:sha256:260000")


def check_password_strength(password: str) -> None:
    """Raise ValidationFailed unless the password meets 等保 2.0 complexity (8+ chars, 3 kinds)."""
    kinds = sum(
        [any(c.islower() for c in password), any(c.isupper() for c in password),
         any(c.isdigit() for c in password), any(not c.isalnum() for c in password)]
    )
    if len(password) < 8 or kinds < 3:
        raise ValidationFailed({"password": "密码至少 8 位，且包含大写字母、小写字母、数字、符号中的至少三类"})


def authenticate(*, username: str, password: str, max_failures: int = 5, lock_minutes: int = 15) -> User:
    """Check a local password; count failures and lock the account. Raises LoginFailed."""
    user = db.session.scalar(select(User).where(User.username == username))
    now = utcnow()
    if user is None or not user.password_hash:
        raise LoginFailed("用户名或密码错误")
    if user.departed_at is not None or not user.is_active:
        raise LoginFailed("该账号已停用（离职或被禁用），请联系医务处")
    if user.locked_until and user.locked_until > now:
        minutes = int((user.locked_until - now).total_seconds() // 60) + 1
        raise LoginFailed(f"连续登录失败次数过多，账号已锁定，请 {minutes} 分钟后再试")
    if not check_password_hash(user.password_hash, password):
        user.failed_logins += 1
        if user.failed_logins >= max_failures:
            user.locked_until = now + timedelta(minutes=lock_minutes)
            user.failed_logins = 0
            db.session.flush()
            raise LoginFailed(f"连续登录失败 {max_failures} 次，账号已锁定 {lock_minutes} 分钟")
        db.session.flush()
        left = max_failures - user.failed_logins
        raise LoginFailed(f"用户名或密码错误，再失败 {left} 次账号将被锁定")
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    db.session.flush()
    return user


def permissions_of(user: User) -> dict[str, Scope]:
    """Every permission the user holds, with the widest data scope through which it is held."""
    if user is None or getattr(user, "departed_at", None) is not None:
        return {}
    cache = getattr(user, "_perm_cache", None)
    if cache is not None:
        return cache
    result: dict[str, Scope] = {}
    for ur in user.roles:
        scope = Scope(ur.scope)
        for rp in ur.role.permissions:
            old = result.get(rp.permission)
            if old is None or scope.rank > old.rank:
                result[rp.permission] = scope
    user._perm_cache = result  # type: ignore[attr-defined]
    return result


def has_permission(user: User, permission: str) -> bool:
    return permission in permissions_of(user)


def scope_of(user: User, permission: str) -> Scope | None:
    return permissions_of(user).get(permission)


@dataclass(frozen=True)
class DataScope:
    """Where a user may act through one permission: own rows, own dept, own campus or everything."""

    level: Scope
    user_id: int
    dept_id: int | None
    campus_id: int | None

    def allows(self, *, user_id: int | None = None, dept_id: int | None = None, campus_id: int | None = None) -> bool:
        if self.level is Scope.GROUP:
            return True
        if self.level is Scope.CAMPUS:
            if campus_id is None and dept_id is not None:
                dept = db.session.get(Department, dept_id)
                campus_id = dept.campus_id if dept else None
            return campus_id is not None and campus_id == self.campus_id
        if self.level is Scope.DEPT:
            return dept_id is not None and dept_id == self.dept_id
        return user_id is not None and user_id == self.user_id

    def filter(self, stmt, *, user_col=None, dept_col=None, campus_col=None):
        """Narrow a select() to this scope using whichever columns the table has."""
        if self.level is Scope.GROUP:
            return stmt
        if self.level is Scope.CAMPUS:
            if campus_col is not None:
                return stmt.where(campus_col == self.campus_id)
            if dept_col is not None:
                ids = select(Department.id).where(Department.campus_id == self.campus_id)
                return stmt.where(dept_col.in_(ids))
        if self.level in (Scope.CAMPUS, Scope.DEPT) and dept_col is not None:
            return stmt.where(dept_col == self.dept_id)
        if user_col is not None:
            return stmt.where(user_col == self.user_id)
        return stmt.where(False)


def data_scope(user: User, permission: str) -> DataScope:
    """The user's data scope for a permission. Raises Forbidden when the user lacks it."""
    level = scope_of(user, permission)
    if level is None:
        raise Forbidden(f"没有权限：{PERMISSIONS.get(permission, permission)}", permission=permission)
    return DataScope(level=level, user_id=user.id, dept_id=user.dept_id, campus_id=user.campus_id)


def ensure_roles() -> dict[str, Role]:
    """Create the shipped roles and their permissions if missing (idempotent)."""
    roles = {r.code: r for r in db.session.scalars(select(Role))}
    for code, (name, perms, _scope) in ROLES.items():
        role = roles.get(code)
        if role is None:
            role = Role(code=code, name=name)
            db.session.add(role)
            roles[code] = role
        have = {rp.permission for rp in role.permissions}
        for perm in perms:
            if perm not in have:
                role.permissions.append(RolePermission(permission=perm))
    db.session.flush()
    return roles


def create_user(
    *, username: str, name: str, password: str | None, dept: Department | None = None,
    roles: list[str] | tuple[str, ...] = (), staff_no: str | None = None, title: str | None = None,
    check_strength: bool = True, scopes: dict[str, str] | None = None,
) -> User:
    """Create a local user with roles (default data scope per role). Raises ValidationFailed."""
    errors: dict[str, str] = {}
    if not username or len(username) > 64:
        errors["username"] = "登录名不能为空且不超过 64 个字符"
    elif db.session.scalar(select(User.id).where(User.username == username)):
        errors["username"] = "登录名已存在"
    if staff_no and db.session.scalar(select(User.id).where(User.staff_no == staff_no)):
        errors["staff_no"] = "工号已存在"
    if not name:
        errors["name"] = "姓名不能为空"
    all_roles = ensure_roles()
    for code in roles:
        if code not in all_roles:
            errors["roles"] = f"未知角色：{code}"
    if errors:
        raise ValidationFailed(errors)
    if password is not None and check_strength:
        check_password_strength(password)
    user = User(username=username, name=name, staff_no=staff_no, title=title, dept=dept,
                password_hash=hash_password(password) if password else None,
                password_changed_at=utcnow() if password else None)
    for code in roles:
        scope = (scopes or {}).get(code) or ROLES[code][2]
        user.roles.append(UserRole(role=all_roles[code], scope=Scope(scope)))
    db.session.add(user)
    db.session.flush()
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_token(*, system: str) -> str:
    """Issue a token for a hospital system; only its hash is stored. Returns the token (shown once)."""
    if not system or len(system) > 64:
        raise ValidationFailed({"system": "系统名称不能为空且不超过 64 个字符"})
    token = "ml_" + secrets.token_urlsafe(32)
    db.session.add(ApiToken(system=system, token_hash=_token_hash(token), prefix=token[:10]))
    db.session.flush()
    return token


def verify_api_token(token: str) -> ApiToken | None:
    row = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == _token_hash(token)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def require_permission(user: User, permission: str) -> None:
    if not has_permission(user, permission):
        raise Forbidden(f"没有权限：{PERMISSIONS.get(permission, permission)}", permission=permission)
