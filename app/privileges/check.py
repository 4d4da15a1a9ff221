"""The HIS privilege check (seed 000 §三.6): may this physician do this item now?

Answered from an in-process index of every physician's grants, keyed by (staff_no, category, item code), that
carries the version it was loaded at. Every check compares that version with the shared one, so a change committed
by any process is seen by the very next check everywhere:

- every transaction that changes grants, emergency grants, the catalogue, or a user's staff number, active flag
  or departure increments the row in `privilege_index_versions` just before its COMMIT and logs the affected
  users in `privilege_index_changes` under the new version. The row lock serializes these transactions, so
  versions become visible in commit order, each together with its change;
- the shared version is read from Redis (PRIVILEGE_CHECK_REDIS_URL, else REDIS_URL) where each committing process
  publishes it (only ever raising it), or from that database row without Redis. The database stays the truth:
  what changed is always read from it. After restoring or rebuilding the database behind a running Redis, delete
  the key medloop:privileges:check-version (answers stay right, but every check pays a query until then);
- a listener thread per process subscribes to the version's channel (every raise is published) and keeps the version
  in memory, so a check reads no Redis at all: a commit in this process is seen by its next check at once, one in
  another process as soon as the publish arrives (well under a millisecond on a LAN); the key is re-read every
  few seconds and, while the subscription is down, every check reads the key itself (PRIVILEGE_CHECK_LISTEN=0
  keeps it that way always);
- an index behind the shared version reloads only the users logged since its own version (a copy is patched and
  swapped in); catalogue changes, `invalidate()`, a gap in the log (pruned) or more than DELTA_MAX users mean a
  full reload, as does an index older than PRIVILEGE_CHECK_CACHE_MAX_AGE seconds (self-healing if a publish was
  lost). When the version cannot be read, the check queries the database instead.

Changes are detected by SQLAlchemy session events, whoever makes them: the privilege services, the departure
flow, user administration. Core-level bulk UPDATEs bypass the events: call `invalidate()` in their transaction.

PRIVILEGE_CHECK_CACHE=0 (environment or config) turns the index off: every check runs its own query (the
baseline the benchmark compares against). Both paths share `evaluate`, so they answer identically.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from flask import Flask, current_app, has_app_context
from sqlalchemy import event, insert, inspect, or_, select, update
from sqlalchemy.orm import Session

from app.auth.models import User
from app.core.timefmt import SHANGHAI
from app.db import db
from app.privileges.models import (
    EmergencyGrant,
    Grant,
    GrantStatus,
    PrivilegeCategory,
    PrivilegeIndexChange,
    PrivilegeIndexVersion,
    PrivilegeItem,
)

log = logging.getLogger(__name__)

REDIS_STAMP_KEY = "medloop:privileges:check-version"
EXTENSION = "privilege_check_cache"
SESSION_FLAG = "privilege_index_changed"
DEFAULT_MAX_AGE = 300.0

# attributes whose change alters a check answer (any change of a grant or emergency grant counts)
WATCHED: dict[type, tuple[str, ...] | None] = {
    Grant: None,
    EmergencyGrant: None,
    PrivilegeItem: ("code", "procedure_code", "is_active", "category_id"),
    PrivilegeCategory: ("code", "is_active"),
    User: ("staff_no", "is_active", "departed_at"),
}


# ---------------------------------------------------------------- the index


@dataclass(frozen=True, slots=True)
class StaffEntry:
    user_id: int
    is_active: bool
    departed: bool


@dataclass(frozen=True, slots=True)
class ItemEntry:
    code: str
    is_active: bool


@dataclass(frozen=True, slots=True)
class GrantEntry:
    id: int
    status: str
    valid_from: date
    valid_until: date | None
    expires_at: datetime | None  # emergency grants end to the minute
    reason: str | None


@dataclass
class Index:
    version: int
    loaded_at: float
    staff: dict[str, StaffEntry] = field(default_factory=dict)
    categories: dict[str, bool] = field(default_factory=dict)
    # (category, item code) and (category, procedure code) -> the item
    items: dict[tuple[str, str], ItemEntry] = field(default_factory=dict)
    # (staff_no, category, item code) -> the grants that matter for an answer: every active or suspended one,
    # plus the latest ended one (for the reason given when nothing is in force)
    grants: dict[tuple[str, str, str], tuple[GrantEntry, ...]] = field(default_factory=dict)
    # for patching one user's part: user id -> staff number, user id -> their grant keys
    user_staff: dict[int, str] = field(default_factory=dict)
    user_keys: dict[int, set[tuple[str, str, str]]] = field(default_factory=dict)


def _grant_rows(*, user_ids: Iterable[int] | None = None) -> list[Any]:
    """(user_id, staff_no, category, item code, grant id, status, valid_from, valid_until, expires_at, reason)."""
    stmt = (select(Grant.user_id, User.staff_no, PrivilegeCategory.code, PrivilegeItem.code, Grant.id, Grant.status,
                   Grant.valid_from, Grant.valid_until, EmergencyGrant.expires_at, Grant.revoked_reason)
            .join(User, Grant.user_id == User.id)
            .join(PrivilegeItem, Grant.item_id == PrivilegeItem.id)
            .join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id)
            .outerjoin(EmergencyGrant, EmergencyGrant.grant_id == Grant.id)
            .where(User.staff_no.is_not(None)).order_by(Grant.id))
    if user_ids is not None:
        stmt = stmt.where(Grant.user_id.in_(sorted(user_ids)))
    return list(db.session.execute(stmt))


def _collect_grants(rows: Iterable[Any]) -> dict[tuple[str, str, str], tuple[GrantEntry, ...]]:
    """Rows of (staff_no, category, item code, grant id, status, valid_from, valid_until, expires_at, reason)."""
    live: dict[tuple[str, str, str], list[GrantEntry]] = {}
    ended: dict[tuple[str, str, str], GrantEntry] = {}
    for staff_no, cat, item_code, gid, status, valid_from, valid_until, expires_at, reason in rows:
        entry = GrantEntry(int(gid), str(status), valid_from, valid_until, expires_at, reason)
        key = (staff_no, cat, item_code)
        if entry.status in (GrantStatus.ACTIVE.value, GrantStatus.SUSPENDED.value):
            live.setdefault(key, []).append(entry)
        else:
            ended[key] = entry  # rows come in id order: the last one wins
    out: dict[tuple[str, str, str], tuple[GrantEntry, ...]] = {}
    for key in live.keys() | ended.keys():
        entries = list(live.get(key, ()))
        if key in ended:
            entries.append(ended[key])
        out[key] = tuple(sorted(entries, key=lambda e: e.id))
    return out


def _add_users(index: Index, user_ids: Iterable[int] | None) -> None:
    stmt = select(User.staff_no, User.id, User.is_active, User.departed_at).where(User.staff_no.is_not(None))
    if user_ids is not None:
        stmt = stmt.where(User.id.in_(sorted(user_ids)))
    for staff_no, uid, active, departed_at in db.session.execute(stmt):
        index.staff[str(staff_no)] = StaffEntry(int(uid), bool(active), departed_at is not None)
        index.user_staff[int(uid)] = str(staff_no)
    rows = _grant_rows(user_ids=user_ids)
    index.grants.update(_collect_grants(r[1:] for r in rows))
    for r in rows:
        index.user_keys.setdefault(int(r[0]), set()).add((r[1], r[2], r[3]))


def load_index(version: int = 0) -> Index:
    """Build the full index from the database (one query per table)."""
    index = Index(version=version, loaded_at=time.monotonic())
    for code, active in db.session.execute(select(PrivilegeCategory.code, PrivilegeCategory.is_active)):
        index.categories[code] = bool(active)
    by_code: dict[tuple[str, str], ItemEntry] = {}
    by_procedure: dict[tuple[str, str], ItemEntry] = {}
    for cat, code, procedure_code, active in db.session.execute(
            select(PrivilegeCategory.code, PrivilegeItem.code, PrivilegeItem.procedure_code, PrivilegeItem.is_active)
            .join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id).order_by(PrivilegeItem.id)):
        entry = ItemEntry(code, bool(active))
        by_code[(cat, code)] = entry
        if procedure_code:
            by_procedure.setdefault((cat, procedure_code), entry)
    index.items = by_procedure | by_code  # an item's own code wins over another item's procedure code
    _add_users(index, None)
    return index


def patch_index(index: Index, user_ids: set[int], version: int) -> Index:
    """A copy of the index with these users' staff entries and grants reloaded (the original stays untouched for
    checks running meanwhile)."""
    new = Index(version=version, loaded_at=index.loaded_at, staff=dict(index.staff), categories=index.categories,
                items=index.items, grants=dict(index.grants), user_staff=dict(index.user_staff),
                user_keys=dict(index.user_keys))
    for uid in user_ids:
        for key in new.user_keys.pop(uid, ()):
            new.grants.pop(key, None)
        old_no = new.user_staff.pop(uid, None)
        if old_no is not None:
            new.staff.pop(old_no, None)
    _add_users(new, user_ids)
    return new


# ---------------------------------------------------------------- answering


@dataclass(frozen=True, slots=True)
class CheckResult:
    allowed: bool
    reason: str
    grant: GrantEntry | None = None

    def as_dict(self) -> dict[str, Any]:
        g = self.grant
        return {"allowed": self.allowed, "reason": self.reason,
                "grant": None if g is None else {
                    "id": g.id, "valid_from": g.valid_from.isoformat(),
                    "valid_until": g.valid_until.isoformat() if g.valid_until else None,
                    "status": _shown_status(g, _today()), "expires_at": g.expires_at.isoformat() if g.expires_at
                    else None}}


def _today() -> date:
    return datetime.now(SHANGHAI).date()


def _shown_status(g: GrantEntry, on: date, now: datetime | None = None) -> str:
    if g.status == GrantStatus.ACTIVE.value:
        if g.valid_until is not None and g.valid_until < on:
            return GrantStatus.EXPIRED.value
        if g.expires_at is not None and (now or datetime.now(UTC)) >= g.expires_at:
            return GrantStatus.EXPIRED.value
    return g.status


def _local(ts: datetime) -> str:
    return ts.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")


def evaluate(*, staff: StaffEntry | None, category_active: bool | None, item: ItemEntry | None,
             grants: Sequence[GrantEntry], staff_no: str, category: str, code: str,
             on: date | None = None, now: datetime | None = None) -> CheckResult:
    """The answer for one check from what is known about the physician, the item and their grants."""
    on = on or _today()
    now = now or datetime.now(UTC)
    if staff is None:
        return CheckResult(False, f"工号不存在：{staff_no}")
    if staff.departed:
        return CheckResult(False, "该医师已离职，医疗权限已全部停止")
    if not staff.is_active:
        return CheckResult(False, "该医师账号已停用")
    if category_active is None:
        return CheckResult(False, f"授权类别不存在：{category}")
    if item is None:
        return CheckResult(False, f"授权项目不存在：{category}/{code}")
    if not category_active or not item.is_active:
        return CheckResult(False, "该授权项目已停用")
    for g in grants:
        if (g.status == GrantStatus.ACTIVE.value and g.valid_from <= on
                and (g.valid_until is None or on <= g.valid_until)
                and (g.expires_at is None or now < g.expires_at)):
            if g.expires_at is not None:
                return CheckResult(True, f"紧急授权，有效至 {_local(g.expires_at)}", g)
            until = f"，有效期至 {g.valid_until.isoformat()}" if g.valid_until else "，长期有效"
            return CheckResult(True, f"已授权{until}", g)
    if not grants:
        return CheckResult(False, "未获得该项授权")
    suspended = [g for g in grants if g.status == GrantStatus.SUSPENDED.value]
    if suspended:
        g = suspended[-1]
        return CheckResult(False, f"授权已暂停：{g.reason}" if g.reason else "授权已暂停", g)
    active = [g for g in grants if g.status == GrantStatus.ACTIVE.value]
    for g in reversed(active):
        if g.valid_from > on:
            return CheckResult(False, f"授权尚未生效（{g.valid_from.isoformat()} 起）", g)
        if g.expires_at is not None and now >= g.expires_at:
            return CheckResult(False, f"紧急授权已于 {_local(g.expires_at)} 到期", g)
        if g.valid_until is not None and g.valid_until < on:
            return CheckResult(False, f"授权已于 {g.valid_until.isoformat()} 到期", g)
    g = grants[-1]
    if g.status == GrantStatus.REVOKED.value:
        return CheckResult(False, f"授权已停止：{g.reason}" if g.reason else "授权已停止", g)
    until = g.valid_until.isoformat() if g.valid_until else ""
    return CheckResult(False, f"授权已过期（有效期至 {until}）" if until else "授权已过期", g)


def check_in_index(index: Index, staff_no: str, category: str, code: str, *, on: date | None = None,
                   now: datetime | None = None) -> CheckResult:
    item = index.items.get((category, code))
    grants = index.grants.get((staff_no, category, item.code), ()) if item is not None else ()
    return evaluate(staff=index.staff.get(staff_no), category_active=index.categories.get(category), item=item,
                    grants=grants, staff_no=staff_no, category=category, code=code, on=on, now=now)


def check_uncached(staff_no: str, category: str, code: str, *, on: date | None = None,
                   now: datetime | None = None) -> CheckResult:
    """The same answer from the database: one query when the physician holds grants of the item, up to three
    more to name the reason when not."""
    rows: list[Any] = list(db.session.execute(
        select(User.id, User.is_active, User.departed_at, PrivilegeCategory.is_active, PrivilegeItem.code,
               PrivilegeItem.is_active, Grant.id, Grant.status, Grant.valid_from, Grant.valid_until,
               EmergencyGrant.expires_at, Grant.revoked_reason)
        .join(User, Grant.user_id == User.id)
        .join(PrivilegeItem, Grant.item_id == PrivilegeItem.id)
        .join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id)
        .outerjoin(EmergencyGrant, EmergencyGrant.grant_id == Grant.id)
        .where(User.staff_no == staff_no, PrivilegeCategory.code == category,
               or_(PrivilegeItem.code == code, PrivilegeItem.procedure_code == code))
        .order_by(Grant.id)))
    if rows:
        first = rows[0]
        # a procedure code shared by several items: prefer the item whose own code was asked for
        own = [r for r in rows if r[4] == code] or [r for r in rows if r[4] == first[4]]
        holder = StaffEntry(int(first[0]), bool(first[1]), first[2] is not None)
        grants = _collect_grants((staff_no, category, r[4], r[6], r[7], r[8], r[9], r[10], r[11]) for r in own)
        return evaluate(staff=holder, category_active=bool(first[3]), item=ItemEntry(own[0][4], bool(own[0][5])),
                        grants=next(iter(grants.values()), ()), staff_no=staff_no, category=category, code=code,
                        on=on, now=now)
    user = db.session.execute(select(User.id, User.is_active, User.departed_at)
                              .where(User.staff_no == staff_no)).first()
    staff = StaffEntry(int(user[0]), bool(user[1]), user[2] is not None) if user else None
    cat_active = db.session.scalar(select(PrivilegeCategory.is_active).where(PrivilegeCategory.code == category))
    item_row = db.session.execute(
        select(PrivilegeItem.code, PrivilegeItem.is_active)
        .join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id)
        .where(PrivilegeCategory.code == category, or_(PrivilegeItem.code == code, PrivilegeItem.procedure_code == code))
        .order_by((PrivilegeItem.code == code).desc(), PrivilegeItem.id).limit(1)).first()
    item = ItemEntry(item_row[0], bool(item_row[1])) if item_row else None
    return evaluate(staff=staff, category_active=None if cat_active is None else bool(cat_active), item=item,
                    grants=(), staff_no=staff_no, category=category, code=code, on=on, now=now)


# ---------------------------------------------------------------- the shared version and the per-app cache

DELTA_MAX = 1000
# raise the published version, never lower it (publishes of concurrent commits may arrive out of order)
_PUBLISH_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1') or -1
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('PUBLISH', ARGV[2], ARGV[1])
end
return 1
"""
RESYNC_SECONDS = 5.0

# the highest version this process knows per Redis URL, from its own commits and from the listener: shared by
# every app in the process, so a commit through one app is seen by the next check through another at once
_known: dict[str, int] = {}
_known_lock = threading.Lock()


def _raise_known(url: str, version: int) -> None:
    with _known_lock:
        if _known.get(url, -1) < version:
            _known[url] = version


def channel_for(url: str) -> str:
    """The publish channel of the version: the key's name plus the Redis database number (channels are shared by
    every database of a Redis server, keys are not)."""
    from redis.connection import parse_url

    return f"{REDIS_STAMP_KEY}@{parse_url(url).get('db', 0)}"


class StampListener:
    """One daemon thread per process and Redis URL, subscribed to the version channel (the key's name): every
    publish raises the process's known version, so a check reads a number from memory instead of asking Redis.

    `live` is true only while the subscription stands and the key has been read after subscribing (nothing
    published in between can be missed); every RESYNC_SECONDS the key is read again (a lost message costs at most
    that long) and the connection's health is checked. While not live, checks read the key from Redis as before."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pid = os.getpid()
        self.live = False
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="privilege-check-stamp", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import redis

        backoff = 0.2
        while not self.stopped:
            client = None
            try:
                client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=RESYNC_SECONDS * 2,
                                              health_check_interval=RESYNC_SECONDS)
                pubsub = client.pubsub()
                pubsub.subscribe(channel_for(self.url))
                resync_at = 0.0
                while not self.stopped:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        raw = message["data"]
                        if raw.isdigit():
                            _raise_known(self.url, int(raw))
                    if pubsub.subscribed and time.monotonic() >= resync_at:
                        raw = client.get(REDIS_STAMP_KEY)
                        if raw is None or not raw.isdigit():
                            self.live = False  # a check seeds the key from the database first
                        else:
                            with _known_lock:  # the key is the truth: lower too (a database rebuilt behind Redis)
                                _known[self.url] = int(raw)
                            self.live = True
                            backoff = 0.2
                        resync_at = time.monotonic() + RESYNC_SECONDS
            except Exception as exc:  # noqa: BLE001 - checks fall back to reading the key while we reconnect
                if backoff <= 0.2:  # once per outage, not on every retry
                    log.warning("privilege check version listener lost Redis (%s); retrying", exc)
            finally:
                self.live = False
                if client is not None:
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001
                        pass
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


_listeners: dict[str, StampListener] = {}


def listener_for(url: str) -> StampListener:
    """This process's listener for the URL (started on first use, and again in a forked child)."""
    listener = _listeners.get(url)
    if listener is None or listener.pid != os.getpid():
        with _known_lock:
            listener = _listeners.get(url)
            if listener is None or listener.pid != os.getpid():
                listener = _listeners[url] = StampListener(url)
    return listener


def _flag(value: Any, default: bool = True) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() not in ("0", "false", "no", "off")


def stamp_redis_url(config: Any) -> str | None:
    """Where the shared version is published: PRIVILEGE_CHECK_REDIS_URL, else REDIS_URL, else None (the database)."""
    return config.get("PRIVILEGE_CHECK_REDIS_URL") or config.get("REDIS_URL") or None


def db_version() -> int:
    return int(db.session.scalar(select(PrivilegeIndexVersion.version).where(PrivilegeIndexVersion.id == 1)) or 0)


def changes_since(version: int) -> tuple[int, set[int] | None]:
    """The current version and the users changed after `version`; None when only a full reload will do (a catalogue
    change, a gap in the log, too many users)."""
    current = db_version()
    if current <= version:
        return current, set()
    rows: list[Any] = list(db.session.execute(select(PrivilegeIndexChange.version, PrivilegeIndexChange.user_id)
                                   .where(PrivilegeIndexChange.version > version,
                                          PrivilegeIndexChange.version <= current)))
    if len({int(r[0]) for r in rows}) != current - version or any(r[1] is None for r in rows):
        return current, None
    users = {int(r[1]) for r in rows}
    return current, users if len(users) <= DELTA_MAX else None


def prune_changes(*, keep_days: int = 2) -> int:
    """Drop change-log rows older than `keep_days` (an index that old reloads fully anyway). Returns the count."""
    from datetime import timedelta

    from sqlalchemy import delete

    result = db.session.execute(delete(PrivilegeIndexChange)
                                .where(PrivilegeIndexChange.created_at < datetime.now(UTC) - timedelta(days=keep_days)))
    return int(getattr(result, "rowcount", 0) or 0)


class CheckCache:
    """One app's index and where it reads the shared version."""

    def __init__(self, app: Flask) -> None:
        self.enabled = _flag(app.config.get("PRIVILEGE_CHECK_CACHE"), True)
        self.max_age = float(app.config.get("PRIVILEGE_CHECK_CACHE_MAX_AGE") or DEFAULT_MAX_AGE)
        self.redis_url = stamp_redis_url(app.config)
        # PRIVILEGE_CHECK_LISTEN=0: read the key from Redis on every check instead of listening for its changes
        self.listen = _flag(app.config.get("PRIVILEGE_CHECK_LISTEN"), True)
        self.channel = channel_for(self.redis_url) if self.redis_url else ""
        self._redis: Any = None
        self.index: Index | None = None
        self.floor = 0  # the latest version this process committed itself (in case its publish was lost)
        self.lock = threading.Lock()
        self.full_reloads = 0
        self.patches = 0

    @property
    def reloads(self) -> int:
        return self.full_reloads + self.patches

    @property
    def redis(self) -> Any:
        if self._redis is None and self.redis_url:
            import redis

            self._redis = redis.Redis.from_url(self.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return self._redis

    def _publish_redis(self, version: int) -> None:
        self.redis.eval(_PUBLISH_SCRIPT, 1, REDIS_STAMP_KEY, version, self.channel)

    def read_stamp(self) -> int:
        """The shared version: with Redis, the version pushed to this process while its listener is live, else the
        key read from Redis (seeded from the database when missing); without Redis, the database row."""
        if self.redis_url:
            if self.listen:
                if listener_for(self.redis_url).live:
                    return max(_known.get(self.redis_url, 0), self.floor)
            raw = self.redis.get(REDIS_STAMP_KEY)
            if raw is not None and raw.isdigit():
                return max(int(raw), self.floor, _known.get(self.redis_url, 0))
            version = db_version()
            self._publish_redis(version)
            return max(version, self.floor)
        return max(db_version(), self.floor)

    def publish(self, version: int) -> None:
        """After this process committed `version`."""
        self.floor = max(self.floor, version)
        if self.redis_url:
            _raise_known(self.redis_url, version)
            try:
                self._publish_redis(version)
            except Exception:  # noqa: BLE001 - the index max age bounds how long other processes stay stale
                log.exception("could not publish the privilege check version to Redis")

    def current(self) -> Index | None:
        """The index at least as new as the shared version (patched or reloaded when behind); None when the version
        cannot be read."""
        try:
            stamp = self.read_stamp()
        except Exception:  # noqa: BLE001 - answer from the database rather than from a possibly stale index
            log.warning("privilege check version unreadable; answering from the database", exc_info=True)
            return None
        index = self.index
        if index is not None and index.version >= stamp and time.monotonic() - index.loaded_at < self.max_age:
            return index
        with self.lock:
            index = self.index
            if index is None or time.monotonic() - index.loaded_at >= self.max_age:
                index = self._full()
            elif index.version < stamp:
                version, users = changes_since(index.version)
                if users is None:
                    index = self._full(version)
                elif users:
                    index = patch_index(index, users, version)
                    self.patches += 1
                else:
                    index = Index(version=version, loaded_at=index.loaded_at, staff=index.staff,
                                  categories=index.categories, items=index.items, grants=index.grants,
                                  user_staff=index.user_staff, user_keys=index.user_keys)
            self.index = index
        return index

    def _full(self, version: int | None = None) -> Index:
        index = load_index(db_version() if version is None else version)  # the version is read before the data
        self.full_reloads += 1
        return index


def cache_for(app: Flask) -> CheckCache:
    cache = app.extensions.get(EXTENSION)
    if cache is None:
        cache = app.extensions[EXTENSION] = CheckCache(app)
    return cache


def check(staff_no: str, category: str, code: str) -> CheckResult:
    """Answer one check (index when enabled, else the database)."""
    return check_many([(staff_no, category, code)])[0]


def check_many(checks: Sequence[tuple[str, str, str]]) -> list[CheckResult]:
    """Answer several checks against one consistent view (one stamp read for the whole batch)."""
    cache = cache_for(current_app._get_current_object())  # type: ignore[attr-defined]
    on, now = _today(), datetime.now(UTC)
    index = cache.current() if cache.enabled else None
    if index is None:
        return [check_uncached(s, c, k, on=on, now=now) for s, c, k in checks]
    return [check_in_index(index, s, c, k, on=on, now=now) for s, c, k in checks]


def invalidate() -> None:
    """Mark the current transaction as changing check answers in ways the session events cannot see (Core bulk
    statements): every process reloads its whole index after the commit."""
    changes = _changes(db.session())
    if changes is not None:
        changes["all"] = True


# ---------------------------------------------------------------- change detection


def _changes(session: Session) -> dict[str, Any] | None:
    if not has_app_context():
        return None
    changes = session.info.setdefault(SESSION_FLAG, {"apps": set(), "users": set(), "grants": set(), "all": False})
    changes["apps"].add(current_app._get_current_object())  # type: ignore[attr-defined]
    return changes


def _relevant(obj: Any) -> bool:
    if type(obj) not in WATCHED:
        return False
    watched = WATCHED[type(obj)]
    if watched is None:
        return True
    state = inspect(obj)
    return any(state.attrs[name].history.has_changes() for name in watched)


def _after_flush(session: Session, _ctx: Any) -> None:
    for obj in (*session.new, *session.dirty, *session.deleted):
        if not _relevant(obj):
            continue
        changes = _changes(session)
        if changes is None:
            return
        if isinstance(obj, Grant):
            history = inspect(obj).attrs["user_id"].history
            changes["users"].update(u for u in (*history.deleted, obj.user_id) if u is not None)
        elif isinstance(obj, EmergencyGrant):
            changes["grants"].add(obj.grant_id)
        elif isinstance(obj, User):
            changes["users"].add(obj.id)
        else:  # catalogue items and categories
            changes["all"] = True


def _before_commit(session: Session) -> None:
    # the version row is bumped last thing before COMMIT: the transaction takes no row lock after it, so the row
    # (which every changing transaction updates) can never be part of a lock cycle
    if session.new or session.dirty or session.deleted:
        session.flush()
    changes = session.info.get(SESSION_FLAG)
    if not changes or not (changes["users"] or changes["grants"] or changes["all"]):
        return
    users = set(changes["users"])
    if changes["grants"]:
        users.update(int(u) for u in session.scalars(select(Grant.user_id).where(Grant.id.in_(changes["grants"]))))
    conn = session.connection()
    _bump_db_version(conn)
    version = int(conn.scalar(select(PrivilegeIndexVersion.version).where(PrivilegeIndexVersion.id == 1)) or 0)
    now = datetime.now(UTC)
    rows = [{"version": version, "user_id": None, "created_at": now}] if changes["all"] else \
        [{"version": version, "user_id": uid, "created_at": now} for uid in sorted(users)]
    conn.execute(insert(PrivilegeIndexChange), rows)
    changes["version"] = version


def _bump_db_version(conn: Any) -> None:
    values = {"id": 1, "version": 0, "changed_at": datetime.now(UTC)}
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(PrivilegeIndexVersion).values(**values).on_conflict_do_nothing())
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        conn.execute(sqlite_insert(PrivilegeIndexVersion).values(**values).on_conflict_do_nothing())
    elif conn.scalar(select(PrivilegeIndexVersion.id).where(PrivilegeIndexVersion.id == 1)) is None:
        conn.execute(insert(PrivilegeIndexVersion).values(**values))  # pragma: no cover - other databases
    conn.execute(update(PrivilegeIndexVersion).where(PrivilegeIndexVersion.id == 1)
                 .values(version=PrivilegeIndexVersion.version + 1, changed_at=datetime.now(UTC)))


def _after_commit(session: Session) -> None:
    changes = session.info.pop(SESSION_FLAG, None)
    if changes and changes.get("version"):
        for app in changes["apps"]:
            cache_for(app).publish(int(changes["version"]))


def _after_soft_rollback(session: Session, previous_transaction: Any) -> None:
    # only the outermost rollback discards the changes; after a savepoint rollback earlier changes may still commit
    if previous_transaction.parent is None and not previous_transaction.nested:
        session.info.pop(SESSION_FLAG, None)


_installed = False


def install(app: Flask) -> None:
    """Create the app's cache and listen to every session's flushes and commits (once per process)."""
    global _installed
    app.config.setdefault("PRIVILEGE_CHECK_CACHE", os.environ.get("PRIVILEGE_CHECK_CACHE", "1"))
    app.config.setdefault("PRIVILEGE_CHECK_CACHE_MAX_AGE",
                          float(os.environ.get("PRIVILEGE_CHECK_CACHE_MAX_AGE") or DEFAULT_MAX_AGE))
    app.extensions[EXTENSION] = CheckCache(app)
    if not _installed:
        event.listen(Session, "after_flush", _after_flush)
        event.listen(Session, "before_commit", _before_commit)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_soft_rollback", _after_soft_rollback)
        _installed = True
