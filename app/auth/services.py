"""Access rules.

Invariants:
- a password is stored only as a salted hash; a locked or departed user cannot log in;
- a permission is held through a role, and applies within that role assignment's data scope;
- an API token is shown once and stored only as its SHA-256;
- a password set by an administrator, or older than PASSWORD_MAX_AGE_DAYS, must be changed before use;
- campuses and departments are deactivated, never deleted; at least one active account keeps users.manage;
- administration changes are audited (before/after) in the caller's transaction; services flush, never commit.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from io import BytesIO

from openpyxl import Workbook
from sqlalchemy import Select, and_, distinct, false, func, not_, or_, select
from sqlalchemy.orm import joinedload, selectinload
from werkzeug.security import check_password_hash, generate_password_hash

from app.audit import services as audit
from app.auth.models import ApiToken, Campus, Department, Role, RolePermission, Scope, User, UserRole
from app.auth.permissions import PERMISSIONS, ROLES
from app.core.timefmt import SHANGHAI
from app.db import db, utcnow
from app.errors import Forbidden, InvalidTransition, ValidationFailed


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
        return stmt.where(false())

    def departments(self) -> list[Department]:
        """The active departments this scope covers, by code (for filter lists and pickers); a department or
        self scope covers the user's own department."""
        stmt = select(Department).where(Department.is_active.is_(True)).order_by(Department.code)
        if self.level is Scope.GROUP:
            return list(db.session.scalars(stmt))
        if self.level is Scope.CAMPUS:
            return list(db.session.scalars(stmt.where(Department.campus_id == self.campus_id)))
        return list(db.session.scalars(stmt.where(Department.id == self.dept_id))) if self.dept_id else []


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


# hospital systems call some APIs (the HIS privilege check) for every order: remember verified tokens briefly
TOKEN_CACHE_SECONDS = 10.0
_token_cache: dict[str, tuple[float, int, str]] = {}


def verify_api_token_cached(token: str) -> tuple[int, str] | None:
    """(token id, system) of a valid token; positive answers are remembered for TOKEN_CACHE_SECONDS, so a
    revocation takes effect within that time in every process."""
    import time

    digest = _token_hash(token)
    now = time.monotonic()
    hit = _token_cache.get(digest)
    if hit is not None and hit[0] > now:
        return hit[1], hit[2]
    row = verify_api_token(token)
    if row is None:
        _token_cache.pop(digest, None)
        return None
    if len(_token_cache) > 10000:
        _token_cache.clear()
    _token_cache[digest] = (now + TOKEN_CACHE_SECONDS, row.id, row.system)
    return row.id, row.system


def verify_api_token(token: str) -> ApiToken | None:
    row = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == _token_hash(token)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def require_permission(user: User, permission: str) -> None:
    if not has_permission(user, permission):
        raise Forbidden(f"没有权限：{PERMISSIONS.get(permission, permission)}", permission=permission)


# ---------------------------------------------------------------------------
# People and access administration (用户管理 · 角色与权限 · 院区与科室).
#
# Invariants:
# - bad input raises ValidationFailed naming every bad field at once, before anything is changed;
# - departments and campuses are deactivated, never deleted (old records keep pointing at them);
# - at least one active account keeps "users.manage", so the office cannot lock itself out;
# - a password set by an administrator must be changed by its owner at the next login;
# - every change is audited with before/after snapshots in the caller's transaction.

AUDIT_LABELS: dict[str, str] = {
    "user.created": "新建用户",
    "user.updated": "修改用户",
    "user.disabled": "停用账号",
    "user.enabled": "启用账号",
    "user.unlocked": "解除锁定",
    "user.password_reset": "重置密码",
    "user.password_changed": "修改密码",
    "role.created": "新建角色",
    "role.updated": "修改角色",
    "department.created": "新建科室",
    "department.updated": "修改科室",
    "department.deactivated": "停用科室",
    "department.activated": "启用科室",
    "campus.created": "新建院区",
    "campus.updated": "修改院区",
    "campus.deactivated": "停用院区",
    "campus.activated": "启用院区",
}

USER_STATUSES: dict[str, str] = {"normal": "正常", "disabled": "停用", "locked": "锁定", "departed": "离职"}
DEPT_KINDS: dict[str, str] = {"clinical": "临床", "tech": "医技", "admin": "职能"}
SCOPE_LABELS: dict[str, str] = {s.value: s.label for s in Scope}

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{2,64}$")
MOBILE_RE = re.compile(r"^1[3-9]\d{9}$")
ROLE_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{1,31}$")
ORG_CODE_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MANAGE_PERMISSION = "users.manage"


@dataclass
class UserInput:
    """What the user form submits; role_scopes maps role code -> data scope (self/dept/campus/group)."""

    username: str = ""
    name: str = ""
    staff_no: str | None = None
    dept_id: int | None = None
    title: str | None = None
    phone: str | None = None
    role_scopes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, user: User) -> UserInput:
        return cls(username=user.username, name=user.name, staff_no=user.staff_no, dept_id=user.dept_id,
                   title=user.title, phone=user.phone,
                   role_scopes={ur.role.code: Scope(ur.scope).value for ur in user.roles})


def mask_phone(phone: str | None) -> str:
    """138****1234: lists and exports hide the middle of a phone number (个人信息保护法 minimum disclosure)."""
    if not phone:
        return ""
    if len(phone) < 7:
        return "*" * len(phone)
    return f"{phone[:3]}{'*' * (len(phone) - 7)}{phone[-4:]}"


def user_status(user: User, *, now: datetime | None = None) -> str:
    """One of USER_STATUSES: departed wins over disabled, disabled over locked."""
    now = now or utcnow()
    if user.departed_at is not None:
        return "departed"
    if not user.is_active:
        return "disabled"
    if user.locked_until is not None and user.locked_until > now:
        return "locked"
    return "normal"


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def user_query(
    *, q: str = "", dept_id: int | None = None, role_code: str = "", status: str = "", now: datetime | None = None,
) -> Select:
    """select(User) narrowed by a search text (name, username, staff no), department, role and status."""
    now = now or utcnow()
    stmt = select(User).options(selectinload(User.dept).joinedload(Department.campus)).order_by(User.id)
    q = (q or "").strip()
    if q:
        like = _like(q)
        stmt = stmt.where(or_(User.name.ilike(like, escape="\\"), User.username.ilike(like, escape="\\"),
                              User.staff_no.ilike(like, escape="\\")))
    if dept_id:
        stmt = stmt.where(User.dept_id == dept_id)
    if role_code:
        stmt = stmt.where(User.id.in_(select(UserRole.user_id).join(Role).where(Role.code == role_code)))
    locked = and_(User.locked_until.is_not(None), User.locked_until > now)
    live = and_(User.departed_at.is_(None), User.is_active.is_(True))
    if status == "departed":
        stmt = stmt.where(User.departed_at.is_not(None))
    elif status == "disabled":
        stmt = stmt.where(User.departed_at.is_(None), User.is_active.is_(False))
    elif status == "locked":
        stmt = stmt.where(live, locked)
    elif status == "normal":
        stmt = stmt.where(live, not_(locked))
    return stmt


def export_users(stmt: Select) -> bytes:
    """The users selected by stmt as an .xlsx workbook (phone numbers masked)."""
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "用户"
    ws.append(["登录名", "姓名", "工号", "科室", "院区", "职称", "手机号", "角色（数据范围）", "状态", "最近登录"])
    now = utcnow()
    for user in db.session.scalars(stmt.limit(50000)):
        roles = "、".join(f"{ur.role.name}（{Scope(ur.scope).label}）" for ur in user.roles)
        last = user.last_login_at.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M") if user.last_login_at else ""
        ws.append([user.username, user.name, user.staff_no or "", user.dept.name if user.dept else "",
                   user.dept.campus.name if user.dept else "", user.title or "", mask_phone(user.phone), roles,
                   USER_STATUSES[user_status(user, now=now)], last])
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _user_snapshot(user: User) -> dict:
    return {**audit.snapshot(user), "roles": {ur.role.code: Scope(ur.scope).value for ur in user.roles}}


def _drop_permission_cache(user: User) -> None:
    user.__dict__.pop("_perm_cache", None)


def _clean(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _user_errors(data: UserInput, *, user: User | None) -> dict[str, str]:
    errors: dict[str, str] = {}
    username = (data.username or "").strip()
    if not username:
        errors["username"] = "请填写登录名"
    elif not USERNAME_RE.match(username):
        errors["username"] = "登录名为 2–64 位字母、数字、下划线、点或短横线"
    else:
        other = db.session.scalar(select(User.id).where(func.lower(User.username) == username.lower()))
        if other is not None and (user is None or other != user.id):
            errors["username"] = "登录名已存在"
    name = (data.name or "").strip()
    if not name:
        errors["name"] = "请填写姓名"
    elif len(name) > 64:
        errors["name"] = "姓名不超过 64 个字符"
    staff_no = _clean(data.staff_no)
    if staff_no:
        if len(staff_no) > 32:
            errors["staff_no"] = "工号不超过 32 个字符"
        else:
            other = db.session.scalar(select(User.id).where(User.staff_no == staff_no))
            if other is not None and (user is None or other != user.id):
                errors["staff_no"] = "工号已存在"
    dept = db.session.get(Department, data.dept_id) if data.dept_id else None
    if dept is None:
        errors["dept_id"] = "请选择所属科室"
    elif not dept.is_active and (user is None or user.dept_id != dept.id):
        errors["dept_id"] = "该科室已停用"
    title = _clean(data.title)
    if title and len(title) > 32:
        errors["title"] = "职称不超过 32 个字符"
    phone = _clean(data.phone)
    if phone and not MOBILE_RE.match(phone):
        errors["phone"] = "手机号应为 1 开头的 11 位数字"
    if not data.role_scopes:
        errors["roles"] = "请至少选择一个角色"
    else:
        roles = {r.code: r for r in db.session.scalars(select(Role).where(Role.code.in_(data.role_scopes)))}
        for code, scope in data.role_scopes.items():
            if code not in roles:
                errors["roles"] = f"未知角色：{code}"
            elif scope not in SCOPE_LABELS:
                errors["roles"] = f"请为角色「{roles[code].name}」选择数据范围"
    return errors


def _new_password_errors(password: str, confirm: str, *, key: str, confirm_key: str,
                         username: str = "") -> dict[str, str]:
    errors: dict[str, str] = {}
    if not password:
        errors[key] = "请填写密码"
    else:
        try:
            check_password_strength(password)
        except ValidationFailed as exc:
            errors[key] = exc.errors[0]["message"]
        if key not in errors and username and username.lower() in password.lower():
            errors[key] = "密码不能包含登录名"
    if password and password != confirm:
        errors[confirm_key] = "两次输入的密码不一致"
    return errors


def _assign_fields(user: User, data: UserInput) -> None:
    user.username = data.username.strip()
    user.name = data.name.strip()
    user.staff_no = _clean(data.staff_no)
    user.dept_id = data.dept_id
    user.dept = db.session.get(Department, data.dept_id) if data.dept_id else None
    user.title = _clean(data.title)
    user.phone = _clean(data.phone)
    roles = {r.code: r for r in db.session.scalars(select(Role).where(Role.code.in_(data.role_scopes)))}
    # update kept assignments in place: deleting and re-adding one would trip the (user, role) unique key
    for ur in list(user.roles):
        if ur.role.code not in data.role_scopes:
            user.roles.remove(ur)
        else:
            ur.scope = Scope(data.role_scopes[ur.role.code])
    have = {ur.role.code for ur in user.roles}
    for code, scope in data.role_scopes.items():
        if code not in have:
            user.roles.append(UserRole(role=roles[code], scope=Scope(scope)))
    _drop_permission_cache(user)


def _ensure_a_manager_remains(field_name: str) -> None:
    """Raise ValidationFailed if no active account would keep users.manage after this change."""
    db.session.flush()
    count = db.session.scalar(
        select(func.count(distinct(User.id)))
        .join(UserRole, UserRole.user_id == User.id)
        .join(RolePermission, RolePermission.role_id == UserRole.role_id)
        .where(RolePermission.permission == MANAGE_PERMISSION, User.is_active.is_(True), User.departed_at.is_(None))
    )
    if not count:
        message = f"至少要保留一个可登录的账号拥有「{PERMISSIONS[MANAGE_PERMISSION]}」权限"
        raise ValidationFailed({field_name: message}, message=message)


def add_user(*, data: UserInput, password: str, confirm_password: str, actor: User | None) -> User:
    """Create a user from the admin form; they must change the initial password at first login.

    Raises ValidationFailed (every bad field at once, nothing saved); audits user.created.
    """
    errors = _user_errors(data, user=None)
    errors.update(_new_password_errors(password, confirm_password, key="password", confirm_key="confirm_password",
                                       username=data.username.strip()))
    if errors:
        raise ValidationFailed(errors)
    user = User(password_hash=hash_password(password), password_changed_at=utcnow(), must_change_password=True,
                is_active=True, failed_logins=0)
    _assign_fields(user, data)
    db.session.add(user)
    db.session.flush()
    audit.record(actor, "user.created", user, after=_user_snapshot(user))
    return user


def update_user(*, user: User, data: UserInput, actor: User | None) -> User:
    """Change a user's profile, roles and per-role data scopes (effective at the next request).

    Raises ValidationFailed (nothing changed); audits user.updated.
    """
    errors = _user_errors(data, user=user)
    if errors:
        raise ValidationFailed(errors)
    before = _user_snapshot(user)
    _assign_fields(user, data)
    _ensure_a_manager_remains("roles")
    audit.record(actor, "user.updated", user, before=before, after=_user_snapshot(user))
    return user


def disable_user(*, user: User, actor: User | None) -> User:
    """Stop a user logging in (open sessions end at their next request). Raises InvalidTransition."""
    if actor is not None and actor.id == user.id:
        raise InvalidTransition("不能停用自己的账号", user_id=user.id)
    if not user.is_active:
        raise InvalidTransition("该账号已经停用", user_id=user.id)
    before = audit.snapshot(user)
    user.is_active = False
    _ensure_a_manager_remains("user")
    audit.record(actor, "user.disabled", user, before=before, after=audit.snapshot(user))
    return user


def enable_user(*, user: User, actor: User | None) -> User:
    """Let a disabled user log in again. Raises InvalidTransition for departed or already active users."""
    if user.departed_at is not None:
        raise InvalidTransition("离职人员的账号不能启用", user_id=user.id)
    if user.is_active:
        raise InvalidTransition("该账号已经是启用状态", user_id=user.id)
    before = audit.snapshot(user)
    user.is_active = True
    db.session.flush()
    audit.record(actor, "user.enabled", user, before=before, after=audit.snapshot(user))
    return user


def unlock_user(*, user: User, actor: User | None) -> User:
    """Clear a login lockout and the failure count. Raises InvalidTransition if nothing to clear."""
    if user.locked_until is None and not user.failed_logins:
        raise InvalidTransition("该账号没有被锁定", user_id=user.id)
    before = audit.snapshot(user)
    user.locked_until = None
    user.failed_logins = 0
    db.session.flush()
    audit.record(actor, "user.unlocked", user, before=before, after=audit.snapshot(user))
    return user


def reset_password(*, user: User, password: str, confirm_password: str, actor: User | None) -> User:
    """Set a new password chosen by an administrator; the user must change it at the next login.

    Also clears a lockout. Raises ValidationFailed; audits user.password_reset.
    """
    errors = _new_password_errors(password, confirm_password, key="new_password", confirm_key="confirm_password",
                                  username=user.username)
    if errors:
        raise ValidationFailed(errors)
    before = audit.snapshot(user)
    user.password_hash = hash_password(password)
    user.password_changed_at = utcnow()
    user.must_change_password = True
    user.locked_until = None
    user.failed_logins = 0
    db.session.flush()
    audit.record(actor, "user.password_reset", user, before=before, after=audit.snapshot(user))
    return user


def change_password(*, user: User, old_password: str, new_password: str, confirm_password: str) -> User:
    """A user replaces their own password (clears a forced change). Raises ValidationFailed; audits."""
    errors: dict[str, str] = {}
    if not user.password_hash:
        errors["old_password"] = "该账号通过统一身份认证登录，没有本地密码"
    elif not check_password_hash(user.password_hash, old_password or ""):
        errors["old_password"] = "原密码不正确"
    errors.update(_new_password_errors(new_password, confirm_password, key="new_password",
                                       confirm_key="confirm_password", username=user.username))
    if ("new_password" not in errors and user.password_hash and new_password
            and check_password_hash(user.password_hash, new_password)):
        errors["new_password"] = "新密码不能与原密码相同"
    if errors:
        raise ValidationFailed(errors)
    before = audit.snapshot(user)
    user.password_hash = hash_password(new_password)
    user.password_changed_at = utcnow()
    user.must_change_password = False
    db.session.flush()
    audit.record(user, "user.password_changed", user, before=before, after=audit.snapshot(user))
    return user


def password_change_reason(user: User, *, max_age_days: int, now: datetime | None = None) -> str | None:
    """Why the user must change their password before going on (None when they need not).

    等保 2.0 identity checks: an administrator-set password is temporary and passwords expire.
    Accounts without a local password (single sign-on) are never asked.
    """
    if not user.password_hash:
        return None
    if user.must_change_password:
        return "您的密码由管理员设置或重置，请先修改密码再继续使用"
    changed = user.password_changed_at
    if max_age_days and (changed is None or changed < (now or utcnow()) - timedelta(days=max_age_days)):
        return f"您的密码已超过 {max_age_days} 天未修改，请先修改密码再继续使用"
    return None


def assignable_departments(*, keep_id: int | None = None) -> list[Department]:
    """Active departments (plus keep_id, a user's current one even if deactivated), by campus then code."""
    stmt = (select(Department).join(Campus).options(joinedload(Department.campus))
            .where(or_(Department.is_active.is_(True), Department.id == (keep_id or 0)))
            .order_by(Campus.code, Department.code))
    return list(db.session.scalars(stmt))


def all_roles() -> list[Role]:
    return list(db.session.scalars(select(Role).order_by(Role.id)))


def default_scope(role_code: str) -> str:
    """The scope a role is usually given (shipped roles carry one; new roles default to 本科室)."""
    return ROLES[role_code][2] if role_code in ROLES else Scope.DEPT.value


# --- roles ---------------------------------------------------------------------------------------


def role_user_counts() -> dict[int, int]:
    """role id -> number of users (not departed) holding it."""
    rows = db.session.execute(
        select(UserRole.role_id, func.count(UserRole.id)).join(User, User.id == UserRole.user_id)
        .where(User.departed_at.is_(None)).group_by(UserRole.role_id)
    )
    return {role_id: count for role_id, count in rows}


def _role_snapshot(role: Role) -> dict:
    return {**audit.snapshot(role), "permissions": sorted(rp.permission for rp in role.permissions)}


def _role_errors(*, name: str, description: str | None, permissions: list[str]) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not (name or "").strip():
        errors["name"] = "请填写角色名称"
    elif len(name.strip()) > 64:
        errors["name"] = "角色名称不超过 64 个字符"
    if description and len(description.strip()) > 255:
        errors["description"] = "说明不超过 255 个字符"
    unknown = [p for p in permissions if p not in PERMISSIONS]
    if unknown:
        errors["permissions"] = f"未知权限：{'、'.join(unknown)}"
    return errors


def _set_permissions(role: Role, permissions: list[str]) -> None:
    wanted = set(permissions)
    for rp in list(role.permissions):
        if rp.permission not in wanted:
            role.permissions.remove(rp)
    have = {rp.permission for rp in role.permissions}
    for perm in PERMISSIONS:  # catalogue order keeps the rows tidy
        if perm in wanted and perm not in have:
            role.permissions.append(RolePermission(permission=perm))


def create_role(*, code: str, name: str, description: str | None = None, permissions: list[str],
                actor: User | None) -> Role:
    """Create a role (code: lowercase letters, digits, underscore). Raises ValidationFailed; audits."""
    code = (code or "").strip()
    errors = _role_errors(name=name, description=description, permissions=permissions)
    if not ROLE_CODE_RE.match(code):
        errors["code"] = "角色编码为 2–32 位小写字母、数字或下划线，以字母开头"
    elif db.session.scalar(select(Role.id).where(Role.code == code)) is not None:
        errors["code"] = "角色编码已存在"
    if errors:
        raise ValidationFailed(errors)
    role = Role(code=code, name=name.strip(), description=_clean(description))
    _set_permissions(role, permissions)
    db.session.add(role)
    db.session.flush()
    audit.record(actor, "role.created", role, after=_role_snapshot(role))
    return role


def update_role(*, role: Role, name: str, description: str | None = None, permissions: list[str],
                actor: User | None) -> Role:
    """Change a role's name and permission set; holders gain or lose access at their next request.

    The code stays fixed (BPMN lanes name it). Raises ValidationFailed; audits role.updated.
    """
    errors = _role_errors(name=name, description=description, permissions=permissions)
    if errors:
        raise ValidationFailed(errors)
    before = _role_snapshot(role)
    role.name = name.strip()
    role.description = _clean(description)
    _set_permissions(role, permissions)
    _ensure_a_manager_remains("permissions")
    audit.record(actor, "role.updated", role, before=before, after=_role_snapshot(role))
    return role


# --- campuses and departments --------------------------------------------------------------------


def department_query(*, q: str = "", campus_id: int | None = None, kind: str = "",
                     include_inactive: bool = True) -> Select:
    """select(Department) by campus, kind and a search text (code, name, HIS code)."""
    stmt = (select(Department).join(Campus).options(joinedload(Department.campus))
            .order_by(Campus.code, Department.code))
    q = (q or "").strip()
    if q:
        like = _like(q)
        stmt = stmt.where(or_(Department.code.ilike(like, escape="\\"), Department.name.ilike(like, escape="\\"),
                              Department.his_code.ilike(like, escape="\\")))
    if campus_id:
        stmt = stmt.where(Department.campus_id == campus_id)
    if kind:
        stmt = stmt.where(Department.kind == kind)
    if not include_inactive:
        stmt = stmt.where(Department.is_active.is_(True))
    return stmt


def all_campuses() -> list[Campus]:
    return list(db.session.scalars(select(Campus).order_by(Campus.code)))


def campus_department_counts() -> dict[int, int]:
    """campus id -> number of active departments."""
    rows = db.session.execute(select(Department.campus_id, func.count(Department.id))
                              .where(Department.is_active.is_(True)).group_by(Department.campus_id))
    return {campus_id: count for campus_id, count in rows}


def department_user_counts() -> dict[int, int]:
    """department id -> number of users (not departed)."""
    rows = db.session.execute(select(User.dept_id, func.count(User.id))
                              .where(User.departed_at.is_(None), User.dept_id.is_not(None)).group_by(User.dept_id))
    return {dept_id: count for dept_id, count in rows if dept_id is not None}


def _department_errors(*, dept: Department | None, code: str, name: str, campus_id: int | None,
                       his_code: str | None, kind: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not ORG_CODE_RE.match(code):
        errors["code"] = "科室编码为 1–32 位字母、数字、下划线或短横线"
    else:
        other = db.session.scalar(select(Department.id).where(func.lower(Department.code) == code.lower()))
        if other is not None and (dept is None or other != dept.id):
            errors["code"] = "科室编码已存在"
    if not name:
        errors["name"] = "请填写科室名称"
    elif len(name) > 64:
        errors["name"] = "科室名称不超过 64 个字符"
    campus = db.session.get(Campus, campus_id) if campus_id else None
    if campus is None:
        errors["campus_id"] = "请选择所属院区"
    elif not campus.is_active and (dept is None or dept.campus_id != campus.id):
        errors["campus_id"] = "该院区已停用"
    if his_code:
        if len(his_code) > 32:
            errors["his_code"] = "HIS 科室编码不超过 32 个字符"
        else:
            # HIS events name the department by this code, so it must point at one department only
            other = db.session.scalar(select(Department.id).where(Department.his_code == his_code))
            if other is not None and (dept is None or other != dept.id):
                errors["his_code"] = "该 HIS 科室编码已被其他科室使用"
    if kind not in DEPT_KINDS:
        errors["kind"] = "请选择科室类别"
    return errors


def create_department(*, code: str, name: str, campus_id: int | None, his_code: str | None = None,
                      kind: str = "clinical", actor: User | None) -> Department:
    """Create a department. Raises ValidationFailed; audits department.created."""
    code, name, his = (code or "").strip(), (name or "").strip(), _clean(his_code)
    errors = _department_errors(dept=None, code=code, name=name, campus_id=campus_id, his_code=his, kind=kind)
    if errors:
        raise ValidationFailed(errors)
    dept = Department(code=code, name=name, campus_id=campus_id, his_code=his, kind=kind, is_active=True)
    db.session.add(dept)
    db.session.flush()
    audit.record(actor, "department.created", dept, after=audit.snapshot(dept))
    return dept


def update_department(*, dept: Department, code: str, name: str, campus_id: int | None,
                      his_code: str | None = None, kind: str = "clinical", actor: User | None) -> Department:
    """Change a department's code, name, campus, HIS code or kind. Raises ValidationFailed; audits."""
    code, name, his = (code or "").strip(), (name or "").strip(), _clean(his_code)
    errors = _department_errors(dept=dept, code=code, name=name, campus_id=campus_id, his_code=his, kind=kind)
    if errors:
        raise ValidationFailed(errors)
    before = audit.snapshot(dept)
    dept.code, dept.name, dept.his_code, dept.kind = code, name, his, kind
    campus = db.session.get(Campus, campus_id or 0)
    if campus is not None and campus.id != dept.campus_id:  # never None here: checked above
        dept.campus = campus
    db.session.flush()
    audit.record(actor, "department.updated", dept, before=before, after=audit.snapshot(dept))
    return dept


def deactivate_department(*, dept: Department, actor: User | None) -> Department:
    """Hide a department from new assignments (its users and records stay). Raises InvalidTransition."""
    if not dept.is_active:
        raise InvalidTransition("该科室已经停用", department_id=dept.id)
    before = audit.snapshot(dept)
    dept.is_active = False
    db.session.flush()
    audit.record(actor, "department.deactivated", dept, before=before, after=audit.snapshot(dept))
    return dept


def activate_department(*, dept: Department, actor: User | None) -> Department:
    """Bring a deactivated department back. Raises InvalidTransition (already active, campus deactivated)."""
    if dept.is_active:
        raise InvalidTransition("该科室已经是启用状态", department_id=dept.id)
    if not dept.campus.is_active:
        raise InvalidTransition("所属院区已停用，请先启用院区", department_id=dept.id)
    before = audit.snapshot(dept)
    dept.is_active = True
    db.session.flush()
    audit.record(actor, "department.activated", dept, before=before, after=audit.snapshot(dept))
    return dept


def _campus_errors(*, campus: Campus | None, code: str, name: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not ORG_CODE_RE.match(code):
        errors["code"] = "院区编码为 1–32 位字母、数字、下划线或短横线"
    else:
        other = db.session.scalar(select(Campus.id).where(func.lower(Campus.code) == code.lower()))
        if other is not None and (campus is None or other != campus.id):
            errors["code"] = "院区编码已存在"
    if not name:
        errors["name"] = "请填写院区名称"
    elif len(name) > 64:
        errors["name"] = "院区名称不超过 64 个字符"
    return errors


def create_campus(*, code: str, name: str, actor: User | None) -> Campus:
    """Create a campus. Raises ValidationFailed; audits campus.created."""
    code, name = (code or "").strip(), (name or "").strip()
    errors = _campus_errors(campus=None, code=code, name=name)
    if errors:
        raise ValidationFailed(errors)
    campus = Campus(code=code, name=name, is_active=True)
    db.session.add(campus)
    db.session.flush()
    audit.record(actor, "campus.created", campus, after=audit.snapshot(campus))
    return campus


def update_campus(*, campus: Campus, code: str, name: str, actor: User | None) -> Campus:
    """Rename or recode a campus. Raises ValidationFailed; audits campus.updated."""
    code, name = (code or "").strip(), (name or "").strip()
    errors = _campus_errors(campus=campus, code=code, name=name)
    if errors:
        raise ValidationFailed(errors)
    before = audit.snapshot(campus)
    campus.code, campus.name = code, name
    db.session.flush()
    audit.record(actor, "campus.updated", campus, before=before, after=audit.snapshot(campus))
    return campus


def deactivate_campus(*, campus: Campus, actor: User | None) -> Campus:
    """Deactivate a campus with no active departments. Raises InvalidTransition."""
    if not campus.is_active:
        raise InvalidTransition("该院区已经停用", campus_id=campus.id)
    active = db.session.scalar(select(func.count(Department.id))
                               .where(Department.campus_id == campus.id, Department.is_active.is_(True)))
    if active:
        raise InvalidTransition(f"该院区仍有 {active} 个启用的科室，请先停用或调整这些科室", campus_id=campus.id)
    before = audit.snapshot(campus)
    campus.is_active = False
    db.session.flush()
    audit.record(actor, "campus.deactivated", campus, before=before, after=audit.snapshot(campus))
    return campus


def activate_campus(*, campus: Campus, actor: User | None) -> Campus:
    """Bring a deactivated campus back. Raises InvalidTransition when already active."""
    if campus.is_active:
        raise InvalidTransition("该院区已经是启用状态", campus_id=campus.id)
    before = audit.snapshot(campus)
    campus.is_active = True
    db.session.flush()
    audit.record(actor, "campus.activated", campus, before=before, after=audit.snapshot(campus))
    return campus
