"""Pulling loop events from hospital-system database views (seed 003 "数据源配置"; HIS/LIS views or tables).

A source is configured in app config LOOP_DB_SOURCES (or the environment variable MEDLOOP_LOOP_DB_SOURCES
holding the same list as JSON):

    LOOP_DB_SOURCES = [{
        "name": "his_orders",                        # unique; names the high-water mark row
        "url": "mysql+pymysql://reader:***@his-db:3306/his",   # any SQLAlchemy URL (Oracle, SQL Server ...)
        "view": "v_order_events",                   # a view/table name, or
        # "query": "select ... from ...",           # a SELECT (wrapped as a subquery)
        "watermark": "id",                          # increasing column: auto-increment id or update time
        "watermark_inclusive": False,               # True for times shared by several rows (re-reads ties)
        "columns": {"event_id": "EVT_ID", "order_no": "ORDER_NO", ...},  # contract field -> column
        "constants": {"source": "HIS"},             # fixed values for fields the view lacks
        "data_columns": ["SAMPLE_NO"],              # extra columns copied into the event's data
        "timezone": "+08:00",                       # for times without an offset (default +08:00)
        "batch": 500, "max_batches": 20,            # rows per intake call, calls per run
    }]

Contract fields: source, event_id, order_no, order_type, node, occurred_at, operator_id, operator_name,
patient_id, patient_name, inpatient_no, dept, campus, terminal, data_json; a column named like the field is
used when `columns` does not name one; without an event id column the watermark value is the event id.

Each run reads the rows past the stored high-water mark in watermark order, stores them through the same
intake as REST (channel "db") and moves the mark in the same transaction: a crash re-reads the batch, and
the store ignores what it already holds (unique on source + event_id), so nothing doubles and nothing is
lost. A rejected row is logged and counted on the cursor (last_rejected, last_error); it does not stop the
pull. `medloop connectors pull` runs the sources by hand, `medloop connectors reset NAME` rewinds a mark.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import BigInteger, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Model, db, utcnow

log = logging.getLogger(__name__)

CONTRACT_FIELDS = ("source", "event_id", "order_no", "order_type", "node", "occurred_at", "operator_id",
                   "operator_name", "patient_id", "patient_name", "inpatient_no", "dept", "campus", "terminal",
                   "data_json")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$#]*(\.[A-Za-z_][A-Za-z0-9_$#]*)?$")


class PullCursor(Model):
    __tablename__ = "pull_cursors"
    __table_args__ = {"comment": "数据库视图拉取游标（每个数据源的高水位）"}
    id: Mapped[int] = mapped_column(primary_key=True, comment="主键")
    source_name: Mapped[str] = mapped_column(String(64), unique=True, comment="数据源名称（LOOP_DB_SOURCES 中的 name）")
    last_value: Mapped[str | None] = mapped_column(String(64), comment="高水位：已拉取到的最大水位列值")
    value_type: Mapped[str | None] = mapped_column(String(16), comment="水位值类型：int 整数 / datetime 时间 / str 文本")
    last_run_at: Mapped[datetime | None] = mapped_column(comment="最近一次拉取时间")
    last_rows: Mapped[int] = mapped_column(default=0, comment="最近一次拉取的行数")
    last_rejected: Mapped[int] = mapped_column(default=0, comment="最近一次被拒绝的行数")
    total_rows: Mapped[int] = mapped_column(BigInteger, default=0, comment="累计拉取行数")
    last_error: Mapped[str | None] = mapped_column(Text, comment="最近一次的错误或拒绝原因")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, comment="更新时间")


@dataclass
class Source:
    name: str
    url: str
    watermark: str
    view: str | None = None
    query: str | None = None
    watermark_inclusive: bool = False
    columns: dict[str, str] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    data_columns: list[str] = field(default_factory=list)
    timezone: str = "+08:00"
    batch: int = 500
    max_batches: int = 20
    enabled: bool = True


@dataclass
class PullResult:
    name: str
    rows: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    batches: int = 0
    last_value: str | None = None
    skipped: bool = False  # another worker holds the cursor
    reasons: list[str] = field(default_factory=list)


def parse_source(raw: dict[str, Any]) -> Source:
    """Validate one configured source; raises ValueError with Chinese messages naming every bad key."""
    errors = []
    if not isinstance(raw, dict):
        raise ValueError("数据源配置应为对象")
    name = raw.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        errors.append("name：必填，不超过 64 个字符")
    if not isinstance(raw.get("url"), str) or not raw.get("url"):
        errors.append("url：必填（SQLAlchemy 连接串）")
    view, query = raw.get("view"), raw.get("query")
    if bool(view) == bool(query):
        errors.append("view 与 query 须且只能填写一个")
    if view and (not isinstance(view, str) or not _IDENT.match(view)):
        errors.append("view：应为视图/表名（可带模式名，如 his.v_order_events）")
    if query and (not isinstance(query, str) or not query.lstrip().lower().startswith(("select", "with"))):
        errors.append("query：应为 SELECT 查询")
    wm = raw.get("watermark")
    if not isinstance(wm, str) or not _IDENT.match(wm) or "." in wm:
        errors.append("watermark：必填，水位列名（自增 ID 或更新时间）")
    columns = raw.get("columns") or {}
    if not isinstance(columns, dict) or any(k not in CONTRACT_FIELDS for k in columns):
        bad = [k for k in columns if k not in CONTRACT_FIELDS] if isinstance(columns, dict) else []
        errors.append(f"columns：键应为事件字段（{', '.join(CONTRACT_FIELDS)}）" + (f"，未知：{', '.join(bad)}" if bad else ""))
    for key in ("batch", "max_batches"):
        if key in raw and (not isinstance(raw[key], int) or not 1 <= raw[key] <= 1000):
            errors.append(f"{key}：应为 1–1000 的整数")
    if errors:
        raise ValueError(f"数据源「{name or '?'}」配置有误：" + "；".join(errors))
    known = {f for f in Source.__dataclass_fields__}
    return Source(**{k: v for k, v in raw.items() if k in known})


def configured_sources(config: dict[str, Any] | None = None) -> list[Source]:
    """The sources in app config LOOP_DB_SOURCES (else env MEDLOOP_LOOP_DB_SOURCES as JSON)."""
    if config is None:
        from flask import current_app

        config = current_app.config
    raw = config.get("LOOP_DB_SOURCES")
    if raw is None and os.environ.get("MEDLOOP_LOOP_DB_SOURCES"):
        raw = json.loads(os.environ["MEDLOOP_LOOP_DB_SOURCES"])
    if isinstance(raw, str):
        raw = json.loads(raw)
    return [parse_source(item) for item in raw or []]


# ---------------------------------------------------------------- reading the source database

_ENGINES: dict[str, sa.Engine] = {}


def engine_for(url: str) -> sa.Engine:
    eng = _ENGINES.get(url)
    if eng is None:
        eng = _ENGINES[url] = sa.create_engine(url, pool_pre_ping=True, pool_recycle=3600)
    return eng


def _value_type(value: Any) -> str:
    if isinstance(value, bool):
        return "str"
    if isinstance(value, int) or (isinstance(value, Decimal) and value == value.to_integral_value()):
        return "int"
    if isinstance(value, datetime | date):
        return "datetime"
    return "str"


def _encode(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return str(int(value))
    return str(value)


def _decode(value: str | None, value_type: str | None) -> Any:
    if value is None:
        return None
    if value_type == "int":
        return int(value)
    if value_type == "datetime":
        return datetime.fromisoformat(value)
    return value


def _statement(src: Source, last: Any) -> Any:
    wm: Any = sa.column(src.watermark)
    if src.view:
        schema, _, name = src.view.rpartition(".")
        rel: Any = sa.table(name, wm, schema=schema or None)
    else:
        rel = sa.text(src.query or "").columns(wm).subquery("src")
    col = rel.c[src.watermark]
    stmt: Any = sa.select(sa.literal_column("*")).select_from(rel)
    if last is not None:
        stmt = stmt.where(col >= last if src.watermark_inclusive else col > last)
    return stmt.order_by(col).limit(src.batch)


def fetch(src: Source, last: Any) -> list[dict[str, Any]]:
    """Rows past the mark, in watermark order, as dicts keyed by lower-case column name."""
    with engine_for(src.url).connect() as conn:
        rows = conn.execute(_statement(src, last)).mappings().all()
    return [{str(k).lower(): v for k, v in row.items()} for row in rows]


# ---------------------------------------------------------------- rows to events


def _tz(text: str) -> timezone:
    sign = -1 if text.startswith("-") else 1
    hours, _, minutes = text.lstrip("+-").partition(":")
    return timezone(sign * timedelta(hours=int(hours or 0), minutes=int(minutes or 0)))


def _iso(value: Any, tz: timezone) -> Any:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return value  # intake rejects it with a Chinese reason
        value = parsed
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=tz)).isoformat()
    return value


def _text(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return str(int(value)) if value == value.to_integral_value() else str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value if isinstance(value, str) else str(value)


def to_event(src: Source, row: dict[str, Any]) -> dict[str, Any]:
    """One source row as the REST contract's event dict."""
    tz = _tz(src.timezone)

    def get(name: str) -> Any:
        column = (src.columns.get(name) or name).lower()
        value = row.get(column)
        return src.constants.get(name) if value in (None, "") else value

    event_id = get("event_id")
    if event_id in (None, "") and "event_id" not in src.columns:
        event_id = row.get(src.watermark.lower())
    body: dict[str, Any] = {name: _text(get(name)) for name in ("source", "order_no", "order_type", "node", "dept",
                                                                "campus", "terminal")}
    body["event_id"] = _text(event_id)
    body["occurred_at"] = _iso(get("occurred_at"), tz)
    body["operator"] = {"id": _text(get("operator_id")), "name": _text(get("operator_name"))}
    body["patient"] = {"id": _text(get("patient_id")), "name": _text(get("patient_name")),
                       "inpatient_no": _text(get("inpatient_no"))}
    data: Any = get("data_json")
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError:
            data = {"raw": _text(data)}
    data = dict(data) if isinstance(data, dict) else ({} if data in (None, "") else {"raw": _text(data)})
    for column in src.data_columns:
        data[column] = _text(row.get(column.lower()))
    if data:
        body["data"] = data
    return body


# ---------------------------------------------------------------- pulling


def _cursor(name: str) -> PullCursor | None:
    """The source's cursor row, locked for this transaction; None when another worker holds it."""
    stmt = select(PullCursor).where(PullCursor.source_name == name)
    if db.session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    row = db.session.scalar(stmt)
    if row is not None:
        return row
    exists = db.session.scalar(select(PullCursor.id).where(PullCursor.source_name == name))
    if exists is not None:
        return None  # locked by another worker
    try:
        with db.session.begin_nested():
            row = PullCursor(source_name=name, last_rows=0, last_rejected=0, total_rows=0)
            db.session.add(row)
    except sa.exc.IntegrityError:
        return None  # another worker created it just now
    return db.session.scalar(stmt)


def pull(src: Source | dict[str, Any], *, max_batches: int | None = None) -> PullResult:
    """Pull one source until it has no new rows (or max_batches): each batch is stored and the mark moved in
    one committed transaction. This is a job: it commits."""
    from app.loops import services, tasks

    if isinstance(src, dict):
        src = parse_source(src)
    result = PullResult(name=src.name)
    for _ in range(max_batches or src.max_batches):
        try:
            cur = _cursor(src.name)
            if cur is None:
                db.session.rollback()
                result.skipped = True
                return result
            last = _decode(cur.last_value, cur.value_type)
            result.last_value = result.last_value or cur.last_value
            rows = fetch(src, last)
            cur.last_run_at = utcnow()
            if not rows:
                cur.last_rows = 0
                db.session.commit()
                break
            events = [to_event(src, row) for row in rows]
            results = services.intake(events=events, channel="db")
            rejected = [(ev, r) for ev, r in zip(events, results, strict=True) if r["status"] == "rejected"]
            top = rows[-1].get(src.watermark.lower())
            new_value = _encode(top) if top is not None else cur.last_value
            moved = new_value != cur.last_value
            cur.last_value, cur.value_type = new_value, _value_type(top) if top is not None else cur.value_type
            cur.last_rows = len(rows)
            cur.last_rejected = len(rejected)
            cur.total_rows = (cur.total_rows or 0) + len(rows)
            reasons = [f"{ev.get('event_id')}: {r.get('reason')}" for ev, r in rejected]
            cur.last_error = "；".join(reasons[:20])[:2000] if reasons else None
            db.session.commit()
        except Exception as exc:
            db.session.rollback()
            _record_error(src.name, exc)
            raise
        result.batches += 1
        result.rows += len(rows)
        result.accepted += sum(1 for r in results if r["status"] == "accepted")
        result.duplicate += sum(1 for r in results if r["status"] == "duplicate")
        result.rejected += len(rejected)
        result.reasons += reasons
        result.last_value = new_value
        for reason in reasons[:20]:
            log.warning("db pull %s rejected %s", src.name, reason)
        if result.accepted:
            tasks.wake()
        if len(rows) < src.batch or not moved:
            break
    return result


def _record_error(name: str, exc: Exception) -> None:
    try:
        cur = db.session.scalar(select(PullCursor).where(PullCursor.source_name == name))
        if cur is not None:
            cur.last_error = f"拉取失败：{type(exc).__name__}: {exc}"[:2000]
            cur.last_run_at = utcnow()
            db.session.commit()
    except Exception:  # noqa: BLE001 - the original error is what matters
        db.session.rollback()


def pull_all() -> dict[str, PullResult | str]:
    """Periodic job: pull every enabled configured source; one failing does not stop the others."""
    out: dict[str, PullResult | str] = {}
    for src in configured_sources():
        if not src.enabled:
            continue
        try:
            out[src.name] = pull(src)
        except Exception as exc:  # noqa: BLE001
            log.exception("db pull %s failed", src.name)
            out[src.name] = f"error: {exc}"
    return out


def reset(*, name: str, value: str | None = None, value_type: str | None = None, actor: str = "运维命令") -> PullCursor:
    """Move a source's mark back (value None = read everything again; duplicates are ignored). Caller commits."""
    from app.audit import services as audit

    cur = db.session.scalar(select(PullCursor).where(PullCursor.source_name == name))
    if cur is None:
        cur = PullCursor(source_name=name, last_rows=0, last_rejected=0, total_rows=0)
        db.session.add(cur)
    before = {"last_value": cur.last_value, "value_type": cur.value_type}
    cur.last_value = value
    cur.value_type = value_type or (("int" if value.lstrip("-").isdigit() else "str") if value is not None else None)
    db.session.flush()
    audit.record(actor, "connectors.pull_cursor_reset", cur, before=before,
                 after={"last_value": cur.last_value, "value_type": cur.value_type})
    return cur


def cursors() -> list[PullCursor]:
    return list(db.session.scalars(select(PullCursor).order_by(PullCursor.source_name)))
