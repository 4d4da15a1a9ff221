"""Helpers shared by the technology services: input parsing with field paths, scope, workflow look-ups, Excel."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from io import BytesIO
from typing import Any

from sqlalchemy import select

from app.auth.models import Department, Role, User, UserRole
from app.auth.services import data_scope, has_permission
from app.core.timefmt import SHANGHAI
from app.db import db
from app.errors import NotFound
from app.workflow.models import HumanTask, ProcessInstance, TaskLog, TaskStatus


def today() -> date:
    """The current hospital-local date (Asia/Shanghai)."""
    return datetime.now(SHANGHAI).date()


class Errors(dict):
    """Field path -> Chinese message, collected before anything is written."""

    def text(self, data: dict[str, Any], key: str, label: str, *, required: bool = True, max_len: int = 200,
             path: str | None = None) -> str | None:
        raw = data.get(key)
        value = str(raw).strip() if raw is not None else ""
        if not value:
            if required:
                self[path or key] = f"请填写{label}"
            return None
        if len(value) > max_len:
            self[path or key] = f"{label}不能超过 {max_len} 字"
            return None
        return value

    def integer(self, data: dict[str, Any], key: str, label: str, *, required: bool = True, minimum: int = 0,
                maximum: int = 1_000_000, path: str | None = None) -> int | None:
        raw = data.get(key)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            if required:
                self[path or key] = f"请填写{label}"
            return None
        if isinstance(raw, bool):
            self[path or key] = f"{label}应为整数"
            return None
        try:
            value = int(str(raw).strip()) if not isinstance(raw, int) else raw
        except ValueError:
            self[path or key] = f"{label}应为整数"
            return None
        if value < minimum or value > maximum:
            self[path or key] = f"{label}应在 {minimum}–{maximum} 之间"
            return None
        return value

    def choice(self, data: dict[str, Any], key: str, label: str, options: dict[str, str], *,
               required: bool = True) -> str | None:
        raw = data.get(key)
        value = str(raw).strip() if raw is not None else ""
        if not value:
            if required:
                self[key] = f"请选择{label}"
            return None
        if value not in options:
            self[key] = f"{label}不在可选范围内（{'、'.join(options.values())}）"
            return None
        return value

    def day(self, data: dict[str, Any], key: str, label: str, *, required: bool = True,
            path: str | None = None) -> date | None:
        raw = data.get(key)
        if raw is None or raw == "":
            if required:
                self[path or key] = f"请填写{label}"
            return None
        if isinstance(raw, date):
            return raw
        try:
            return date.fromisoformat(str(raw).strip()[:10])
        except ValueError:
            self[path or key] = f"{label}格式应为 YYYY-MM-DD"
            return None

    def flag(self, data: dict[str, Any], key: str, label: str) -> bool:
        raw = data.get(key, False)
        if isinstance(raw, bool):
            return raw
        if raw in (None, "", 0, "0", "false", "False", "否", "off"):
            return False
        if raw in (1, "1", "true", "True", "是", "on", "y", "yes"):
            return True
        self[key] = f"{label}应为是或否"
        return False


def int_list(values: Any, path: str, errors: Errors) -> list[int]:
    """A list of positive integers (user or catalogue ids); bad entries get `path/index` errors."""
    if values is None or values == "":
        return []
    if not isinstance(values, list | tuple):
        values = [values]
    out: list[int] = []
    for idx, raw in enumerate(values):
        try:
            value = int(str(raw).strip())
        except (TypeError, ValueError):
            errors[f"{path}/{idx}"] = "编号无效"
            continue
        if value <= 0:
            errors[f"{path}/{idx}"] = "编号无效"
            continue
        out.append(value)
    return out


def active_user(user_id: int | None) -> User | None:
    if not user_id:
        return None
    user = db.session.get(User, user_id)
    if user is None or not user.is_active or user.departed_at is not None:
        return None
    return user


def pick_reviewers(raw_ids: Any, path: str, errors: Errors, *, role: str, noun: str, role_label: str,
                   excluded: set[int] | tuple[int, ...], conflict: str) -> tuple[list[int], list[User]]:
    """Reviewers named by id (experts, ethics members): active, distinct, holding `role`, not excluded for a
    conflict of interest. Bad entries get `path/index` errors. Returns (the ids as given, the valid users)."""
    ids = int_list(raw_ids, path, errors)
    users: list[User] = []
    seen: set[int] = set()
    for idx, uid in enumerate(ids):
        item = f"{path}/{idx}"
        user = active_user(uid)
        if uid in seen:
            errors[item] = f"重复选择了同一位{noun}"
        elif user is None:
            errors[item] = f"{noun}不存在或已停用"
        elif not holds_role(user, role):
            errors[item] = f"{user.name}不是{role_label}"
        elif user.id in excluded:
            errors[item] = f"{user.name}{conflict}，应回避"
        else:
            users.append(user)
        seen.add(uid)
    return ids, users


def person_label(user: User) -> str:
    """A person as a choice label: 姓名（职称） · 科室."""
    title = f"（{user.title}）" if user.title else ""
    dept = f" · {user.dept.name}" if user.dept else ""
    return f"{user.name}{title}{dept}"


def users_with_role(code: str) -> list[User]:
    """Active users holding a role (for expert / ethics-member pickers)."""
    return list(db.session.scalars(
        select(User).join(UserRole, UserRole.user_id == User.id).join(Role, Role.id == UserRole.role_id)
        .where(Role.code == code, User.is_active.is_(True), User.departed_at.is_(None))
        .order_by(User.dept_id, User.name)).unique())


def holds_role(user: User, code: str) -> bool:
    return code in user.role_codes


def visible_departments(viewer: User, permission: str) -> list[Department]:
    """Departments the viewer's scope for `permission` covers (for filter lists)."""
    return data_scope(viewer, permission).departments()


def may_manage(user: User) -> bool:
    return has_permission(user, "technology.manage")


# ---------------------------------------------------------------- workflow projections (never deserialize lists)


@dataclass(frozen=True)
class Progress:
    status: str
    status_label: str
    steps: tuple[str, ...]
    next_timer_at: datetime | None = None


def instance_progress(instance_ids: Sequence[int | None]) -> dict[int, Progress]:
    """Workflow instance id -> status and the names of its open tasks, from the engine's projections."""
    from app.workflow.models import INSTANCE_STATUS_LABELS

    ids = [i for i in instance_ids if i]
    if not ids:
        return {}
    steps: dict[int, list[str]] = {}
    for iid, name in db.session.execute(select(HumanTask.instance_id, HumanTask.name)
                                        .where(HumanTask.instance_id.in_(ids), HumanTask.status == TaskStatus.READY)
                                        .order_by(HumanTask.id)):
        steps.setdefault(int(iid), []).append(str(name))
    out: dict[int, Progress] = {}
    for iid, status, timer in db.session.execute(select(ProcessInstance.id, ProcessInstance.status,
                                                        ProcessInstance.next_timer_at)
                                                 .where(ProcessInstance.id.in_(ids))):
        out[int(iid)] = Progress(str(status), INSTANCE_STATUS_LABELS.get(str(status), str(status)),
                                 tuple(steps.get(int(iid), [])), timer)
    return out


def ready_tasks(instance_id: int | None, spec_name: str | None = None) -> list[HumanTask]:
    if not instance_id:
        return []
    stmt = select(HumanTask).where(HumanTask.instance_id == instance_id, HumanTask.status == TaskStatus.READY)
    if spec_name:
        stmt = stmt.where(HumanTask.spec_name == spec_name)
    return list(db.session.scalars(stmt.order_by(HumanTask.id)))


def ready_task(instance_id: int | None, spec_name: str, *, what: str) -> HumanTask:
    """The one open task of a step. Raises NotFound (in Chinese, naming the step) when the flow is elsewhere."""
    tasks = ready_tasks(instance_id, spec_name)
    if not tasks:
        raise NotFound(f"当前没有待办的「{what}」步骤（流程可能已进入其他环节）")
    return tasks[0]


def designated_user_id(task: HumanTask) -> int | None:
    """The user a multi-instance task is meant for (its `assignee_var` value), read from the task data."""
    from app.workflow import services as wf

    var = (task.properties or {}).get("assignee_var")
    if not var:
        return None
    try:
        return int(wf.task_data(task).get(var) or 0) or None
    except (TypeError, ValueError):
        return None


def acts_for_designated(task: HumanTask, actor: User, designated: Any) -> bool:
    """Whether `actor` may submit a review task that names a reviewer: the named reviewer, or whoever the task
    was delegated to (a delegation leaves a task_log row). A group member who merely claimed it may not."""
    try:
        named = int(designated or 0)
    except (TypeError, ValueError):
        named = 0
    if not named or named == actor.id:
        return True
    delegated = db.session.scalar(select(TaskLog.id).where(TaskLog.task_guid == task.task_guid,
                                                           TaskLog.action == "delegate").limit(1))
    return delegated is not None and task.assignee_id == actor.id


# ---------------------------------------------------------------- output


def mask_name(name: str | None) -> str:
    """Keep the family name only: 张三 -> 张*, 欧阳娜娜 -> 欧阳**（two-character surnames are not guessed）."""
    name = (name or "").strip()
    if not name:
        return ""
    if "*" in name:
        return name
    return name[0] + "*" * max(1, len(name) - 1)


def mask_number(value: str | None) -> str:
    value = (value or "").strip()
    if len(value) <= 4:
        return "*" * len(value)
    return "*" * (len(value) - 4) + value[-4:]


def workbook(title: str, headers: list[str], rows: Iterable[list[Any]], widths: list[int] | None = None) -> bytes:
    """One-sheet .xlsx with a frozen header row."""
    from openpyxl import Workbook
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    ws = wb.active
    ws.title = title[:31]
    ws.append(headers)
    for row in rows:
        ws.append(row)
    for idx, width in enumerate(widths or [], start=1):
        ws.column_dimensions[get_column_letter(idx)].width = width
    ws.freeze_panes = "A2"
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()
