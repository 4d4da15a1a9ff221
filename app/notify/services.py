"""Notifications: in-app messages, pushed to DingTalk / 浙政钉 when a channel is configured.

Invariants:
- a notification belongs to one user; marking read never deletes;
- `notify` always writes the in-app row; when NOTIFY_CHANNEL names a provider (dingtalk | zzd) and the recipient
  has an account on it, it also writes one outbox message (channel "notify", key notify:user:<id>) in the same
  transaction, so a push exists exactly when the notification was committed, and one recipient's pushes arrive
  in order; sending, retries, dead letters and replay are the outbox's (app/outbox);
- for urgent kinds (NOTIFY_ROBOT_KINDS, default "alert") each recipient department with an active group robot gets
  one group message per notification (channel "notify_robot", key notify:robot:<dept id>);
- one user has at most one account per channel, and one account belongs to one user; account ids and robot
  webhooks are masked wherever they are listed; every change of them is audited (masked).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Select, func, or_, select, update

from app.audit import services as audit
from app.auth.models import Department, User
from app.db import db, utcnow
from app.errors import ValidationFailed
from app.notify.models import DeptRobot, Notification, NotifyAccount
from app.outbox import services as outbox

PUSH_CHANNEL = "notify"
ROBOT_CHANNEL = "notify_robot"
CHANNELS = {"dingtalk": "钉钉", "zzd": "浙政钉"}
CHANNEL_SETTING_VALUES = (*CHANNELS, "none")
DEFAULT_ROBOT_KINDS = "alert"
KIND_LABELS = {"task": "待办", "reminder": "催办", "result": "结果", "info": "通知", "alert": "预警"}

AUDIT_LABELS = {"notify.account_changed": "修改通知账号", "notify.robot_saved": "保存科室群机器人"}

# DingTalk userids are set by the enterprise (letters, digits and a few marks, at most 64);
# 浙政钉 accountIds are numbers
_ACCOUNT_RULES = {
    "dingtalk": (re.compile(r"^[A-Za-z0-9_.@$-]{1,64}$"),
                 "钉钉用户 ID 只能包含字母、数字及 _ . @ $ -，且不超过 64 个字符"),
    "zzd": (re.compile(r"^[0-9]{1,20}$"), "浙政钉账号 ID（accountId）应为不超过 20 位的数字"),
}


def _config(name: str, default: Any = None) -> Any:
    from flask import current_app, has_app_context

    if not has_app_context():
        return default
    value = current_app.config.get(name)
    return default if value in (None, "") else value


def push_channel() -> str | None:
    """The configured provider (dingtalk | zzd), or None when pushes are off (NOTIFY_CHANNEL none or unknown)."""
    value = str(_config("NOTIFY_CHANNEL", "none")).strip().lower()
    return value if value in CHANNELS else None


def _kinds(name: str, default: str) -> set[str] | None:
    """Kinds listed in a comma-separated setting; None means every kind ("*" or empty)."""
    raw = str(_config(name, default) or "").replace(" ", "")
    if raw in ("", "*"):
        return None
    return {k for k in raw.split(",") if k}


def absolute_url(link: str | None) -> str | None:
    """A link a phone can open: PUBLIC_BASE_URL + the in-app path (absolute links are kept)."""
    if not link:
        return None
    if link.startswith(("http://", "https://")):
        return link
    base = str(_config("PUBLIC_BASE_URL", "") or "").rstrip("/")
    if not base:
        return link
    return f"{base}{link if link.startswith('/') else '/' + link}"


def notify(*, user_ids: Iterable[int], title: str, body: str | None = None, link: str | None = None,
           kind: str = "info") -> list[Notification]:
    """Queue an in-app message for each user and, with a push channel configured, an outbox message for each
    recipient who has an account on it, plus one per department group robot for urgent kinds (flushes)."""
    rows = [Notification(user_id=uid, title=title[:200], body=body, link=link, kind=kind)
            for uid in sorted(set(user_ids))]
    db.session.add_all(rows)
    db.session.flush()
    if rows:
        _queue_pushes(rows, title=title[:200], body=body, link=link, kind=kind)
    return rows


def _queue_pushes(rows: list[Notification], *, title: str, body: str | None, link: str | None, kind: str) -> None:
    channel = push_channel()
    kinds = _kinds("NOTIFY_CHANNEL_KINDS", "")
    url = absolute_url(link)
    text = {"kind": kind, "title": title, "body": (body or "")[:1500] or None, "url": url}
    uids = [r.user_id for r in rows]
    if channel and (kinds is None or kind in kinds):
        accounts = {int(uid): str(acc) for uid, acc in db.session.execute(
            select(NotifyAccount.user_id, NotifyAccount.account_id)
            .where(NotifyAccount.user_id.in_(uids), NotifyAccount.channel == channel))}
        for row in rows:
            account = accounts.get(row.user_id)
            if account:
                outbox.enqueue(channel=PUSH_CHANNEL, event=f"notify.{kind}"[:64], key=f"notify:user:{row.user_id}",
                               payload={"channel": channel, "account_id": account, "user_id": row.user_id,
                                        "notification_id": row.id, **text})
    robot_kinds = _kinds("NOTIFY_ROBOT_KINDS", DEFAULT_ROBOT_KINDS)
    if robot_kinds is None or kind in robot_kinds:
        robots = db.session.execute(
            select(DeptRobot.id, DeptRobot.dept_id).join(User, User.dept_id == DeptRobot.dept_id)
            .where(User.id.in_(uids), DeptRobot.is_active.is_(True)).distinct().order_by(DeptRobot.dept_id))
        for robot_id, dept_id in robots:
            outbox.enqueue(channel=ROBOT_CHANNEL, event=f"notify.{kind}"[:64], key=f"notify:robot:{dept_id}",
                           payload={"robot_id": robot_id, "dept_id": dept_id, **text})


def unread_count(user_id: int) -> int:
    return db.session.scalar(
        select(func.count()).select_from(Notification)
        .where(Notification.user_id == user_id, Notification.read_at.is_(None))
    ) or 0


def mark_read(*, user_id: int, notification_id: int | None = None) -> int:
    """Mark one (or all) of a user's notifications read. Returns how many changed."""
    stmt = update(Notification).where(Notification.user_id == user_id, Notification.read_at.is_(None))
    if notification_id is not None:
        stmt = stmt.where(Notification.id == notification_id)
    result = db.session.execute(stmt.values(read_at=utcnow()))
    return getattr(result, "rowcount", 0) or 0


# ---------------------------------------------------------------- accounts


def mask_account(value: str | None) -> str:
    """ab****yz: lists show only the ends of an account id."""
    if not value:
        return ""
    if len(value) <= 4:
        return value[0] + "*" * (len(value) - 1)
    return f"{value[:2]}{'*' * min(8, len(value) - 4)}{value[-2:]}"


def accounts_of(user_id: int) -> dict[str, str]:
    """{channel: account id} of one user."""
    return {str(c): str(a) for c, a in db.session.execute(
        select(NotifyAccount.channel, NotifyAccount.account_id).where(NotifyAccount.user_id == user_id))}


def accounts_for(user_ids: Iterable[int]) -> dict[int, dict[str, str]]:
    ids = sorted(set(user_ids))
    out: dict[int, dict[str, str]] = {uid: {} for uid in ids}
    if ids:
        for uid, channel, account in db.session.execute(
                select(NotifyAccount.user_id, NotifyAccount.channel, NotifyAccount.account_id)
                .where(NotifyAccount.user_id.in_(ids))):
            out[int(uid)][str(channel)] = str(account)
    return out


def set_accounts(*, user: User, values: dict[str, str | None], actor: Any) -> dict[str, str | None]:
    """Bind, change or clear (empty value) a user's channel accounts; audited with masked values.
    Returns {channel: new value} for what changed. Raises ValidationFailed (Chinese message per channel field)."""
    cleaned: dict[str, str | None] = {}
    errors: dict[str, str] = {}
    for channel, raw in values.items():
        if channel not in CHANNELS:
            errors[channel] = f"未知的通知渠道：{channel}"
            continue
        value = (raw or "").strip()
        if not value:
            cleaned[channel] = None
            continue
        pattern, message = _ACCOUNT_RULES[channel]
        if not pattern.match(value):
            errors[channel] = message
            continue
        owner = db.session.scalar(select(NotifyAccount.user_id).where(NotifyAccount.channel == channel,
                                                                      NotifyAccount.account_id == value,
                                                                      NotifyAccount.user_id != user.id))
        if owner is not None:
            errors[channel] = f"该{CHANNELS[channel]}账号已绑定到其他用户"
            continue
        cleaned[channel] = value
    if errors:
        raise ValidationFailed(errors, message="通知账号未保存，请按提示更正")
    existing = {a.channel: a for a in db.session.scalars(select(NotifyAccount)
                                                         .where(NotifyAccount.user_id == user.id))}
    changed: dict[str, str | None] = {}
    for channel, new in cleaned.items():
        row = existing.get(channel)
        before = row.account_id if row else None
        if before == new:
            continue
        if new is None:
            assert row is not None
            db.session.delete(row)
        elif row is None:
            row = NotifyAccount(user_id=user.id, channel=channel, account_id=new, updated_at=utcnow(),
                                updated_by_id=getattr(actor, "id", None))
            db.session.add(row)
        else:
            row.account_id, row.updated_at, row.updated_by_id = new, utcnow(), getattr(actor, "id", None)
        db.session.flush()
        audit.record(actor, "notify.account_changed", entity_type="notify_accounts", entity_id=user.id,
                     before={"channel": channel, "account_id": mask_account(before)},
                     after={"channel": channel, "account_id": mask_account(new), "user": user.username})
        changed[channel] = new
    db.session.flush()
    return changed


def account_query(*, q: str | None = None, bound: str | None = None) -> Select:
    """Users for the admin account list, by login name; q matches name/login/staff no; bound filters
    'yes' (has any account) / 'no'."""
    stmt = select(User).order_by(User.username)
    if q:
        like = f"%{q.strip()}%"
        stmt = stmt.where(or_(User.name.ilike(like), User.username.ilike(like), User.staff_no.ilike(like)))
    has_any = select(NotifyAccount.id).where(NotifyAccount.user_id == User.id).exists()
    if bound == "yes":
        stmt = stmt.where(has_any)
    elif bound == "no":
        stmt = stmt.where(~has_any)
    return stmt


def send_test(*, user: User) -> list[Notification]:
    """A test notification to oneself, through the in-app list and the configured channel (flushes)."""
    return notify(user_ids=[user.id], title="测试通知", body="这是一条测试通知，收到说明通知账号设置正确。",
                  link="/notifications/settings", kind="info")


# ---------------------------------------------------------------- department group robots


def mask_webhook(url: str | None) -> str:
    """https://host/robot/send?access_token=ab****yz: the token is the robot's credential."""
    if not url:
        return ""
    parts = urlsplit(url)
    query = re.sub(r"(access_token=)([^&]+)", lambda m: m.group(1) + mask_account(m.group(2)), parts.query)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")


def robot_query() -> Select:
    return select(DeptRobot).join(Department, Department.id == DeptRobot.dept_id).order_by(Department.code)


def save_robot(*, robot: DeptRobot | None, dept_id: int | None, webhook_url: str, secret: str | None,
               clear_secret: bool = False, is_active: bool = True, actor: Any) -> DeptRobot:
    """Create or change a department's group robot (an empty secret on edit keeps the stored one); audited
    without the secret. Raises ValidationFailed."""
    errors: dict[str, str] = {}
    url = (webhook_url or "").strip()
    secret = (secret or "").strip() or None
    dept = db.session.get(Department, dept_id) if dept_id else None
    if dept is None:
        errors["dept_id"] = "请选择科室"
    else:
        other = db.session.scalar(select(DeptRobot.id).where(DeptRobot.dept_id == dept.id))
        if other is not None and (robot is None or other != robot.id):
            errors["dept_id"] = f"{dept.name}已设置群机器人"
    parts = urlsplit(url)
    if not url:
        errors["webhook_url"] = "请填写机器人 Webhook 地址"
    elif parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 500:
        errors["webhook_url"] = "Webhook 地址应为 http(s):// 开头的完整地址，且不超过 500 个字符"
    if secret is not None and (len(secret) > 128 or not re.match(r"^[\x21-\x7e]+$", secret)):
        errors["secret"] = "加签密钥应为不超过 128 个字符的可见英文字符"
    if errors:
        raise ValidationFailed(errors, message="群机器人未保存，请按提示更正")
    assert dept is not None
    before = _robot_audit(robot) if robot else None
    if robot is None:
        robot = DeptRobot(dept_id=dept.id, webhook_url=url, secret=secret)
        db.session.add(robot)
    robot.dept_id, robot.webhook_url, robot.is_active = dept.id, url, bool(is_active)
    if secret is not None:
        robot.secret = secret
    elif clear_secret:
        robot.secret = None
    robot.updated_at, robot.updated_by_id = utcnow(), getattr(actor, "id", None)
    db.session.flush()
    audit.record(actor, "notify.robot_saved", robot, before=before, after=_robot_audit(robot))
    return robot


def _robot_audit(robot: DeptRobot) -> dict[str, Any]:
    return {"dept_id": robot.dept_id, "webhook_url": mask_webhook(robot.webhook_url),
            "signed": bool(robot.secret), "is_active": robot.is_active}


def send_robot_test(*, robot: DeptRobot) -> None:
    """Queue a test message for one robot (flushes)."""
    outbox.enqueue(channel=ROBOT_CHANNEL, event="notify.test", key=f"notify:robot:{robot.dept_id}",
                   payload={"robot_id": robot.id, "dept_id": robot.dept_id, "kind": "info", "title": "测试消息",
                            "body": "MedLoop 科室群机器人测试消息，收到说明设置正确。", "url": absolute_url("/")})
