"""Closed loops: intake of hospital-system events, applying them to each order's BPMN loop, projections.

Invariants:
- an accepted event is stored (unique on source + event_id) before the sender gets its answer; a
  duplicate is acknowledged and changes nothing; a bad event is rejected alone, with a reason and a path;
- events of one order are applied by one worker at a time (a try-lock claim per order), in loop
  order as far as they can be: a node whose predecessors are missing waits up to the loop's grace period,
  then the missing nodes are marked skipped (缺环) and the loop moves on;
- nothing rolls a loop back: a skipped node that arrives later is kept and shown as late; an event for a
  node already done is kept as a repeat; `cancelled` ends the loop as interrupted, `abnormal` flags the
  current node and keeps the loop open;
- the stored events are the queue: a lost wake-up only delays applying, a periodic sweep picks it up;
- a completed node is checked against its configured data fields and QC rules (seed 003 §二.3): findings are
  stored on the node and raised as a 质控不合格 alert, and the event is applied all the same (a hospital feed
  never loses a step for a missing field); the rules are compiled once per loop-type version and cached, so a
  node without rules costs one dict lookup and no query.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select, text, update

from app.db import db, utcnow
from app.loops import bpmn
from app.loops.catalog import LOOPS, RESERVED_NODES
from app.loops.models import (
    EventStatus,
    InterfaceMapping,
    LoopEvent,
    LoopNode,
    LoopNodeState,
    LoopOrder,
    LoopType,
    NodeStatus,
    OrderStatus,
)
from app.loops.qc import NodeQc, compile_nodes

MAX_BATCH = 1000

# ---------------------------------------------------------------- loop types


def seed_loop_types() -> int:
    """Create the group-standard loop types from the catalogue (idempotent). Returns how many were created."""
    existing = {t.key for t in db.session.scalars(select(LoopType).where(LoopType.campus_id.is_(None)))}
    created = 0
    for d in LOOPS:
        if d.key in existing:
            continue
        lt = LoopType(key=d.key, name=d.name, order_category=d.order_category, process_key=bpmn.process_key(d.key),
                      grace_minutes=d.grace_minutes)
        for i, n in enumerate(d.nodes):
            lt.nodes.append(LoopNode(seq=i, key=n.key, name=n.name, standard_minutes=n.standard_minutes))
        db.session.add(lt)
        created += 1
    db.session.flush()
    _TYPES.clear()
    return created


@dataclass
class TypeInfo:
    id: int
    key: str
    name: str
    process_key: str
    grace: timedelta
    nodes: list[tuple[str, str, int]]  # (key, name, standard minutes) in order
    index: dict[str, int] = field(default_factory=dict)


_TYPES: dict[tuple[str, int | None], TypeInfo | None] = {}
# configuration is edited in web processes while workers apply events: caches expire after a short TTL
CACHE_TTL_SECONDS = 30.0
_cache_born: list[float] = [0.0]


def _expire_caches() -> None:
    import time

    now = time.monotonic()
    if now - _cache_born[0] > CACHE_TTL_SECONDS:
        _TYPES.clear()
        _MAPPINGS.clear()
        _ORG.clear()
        _QC.clear()
        _LOOP_TYPES.clear()
        _cache_born[0] = now


def type_info(key: str, campus_id: int | None = None) -> TypeInfo | None:
    """The loop definition in force for a campus (its own version, else the group standard); cached,
    including "no such version" answers so the hot path never queries for them again."""
    _expire_caches()
    for cache_key in ((key, campus_id), (key, None)):
        if cache_key in _TYPES:
            hit = _TYPES[cache_key]
            if hit is not None:
                return hit
            continue
        campus_cond = LoopType.campus_id == cache_key[1] if cache_key[1] is not None else LoopType.campus_id.is_(None)
        lt = db.session.scalar(select(LoopType).where(LoopType.key == key, campus_cond, LoopType.is_active.is_(True)))
        if lt is None:
            _TYPES[cache_key] = None
            continue
        info = TypeInfo(id=lt.id, key=lt.key, name=lt.name, process_key=lt.process_key,
                        grace=timedelta(minutes=lt.grace_minutes),
                        nodes=[(n.key, n.name, n.standard_minutes) for n in lt.nodes])
        info.index = {k: i for i, (k, _n, _m) in enumerate(info.nodes)}
        _TYPES[cache_key] = info
        _QC[lt.id] = compile_nodes((n.key, n.name, n.required_fields, n.qc_rules) for n in lt.nodes)
        return info
    return None


# compiled QC rules per loop-type version (LoopType.id): {node key: NodeQc}, only nodes that have rules
_QC: dict[int, dict[str, NodeQc]] = {}


def node_qc(loop_type_id: int | None) -> dict[str, NodeQc]:
    """The compiled data-field and QC rules of a loop-type version by node key (empty: nothing to check);
    cached with the loop definitions, so the applier queries at most once per version and cache period."""
    if loop_type_id is None:
        return {}
    hit = _QC.get(loop_type_id)
    if hit is None:  # an order on a version type_info() has not loaded (e.g. a campus version added since)
        rows = db.session.execute(select(LoopNode.key, LoopNode.name, LoopNode.required_fields, LoopNode.qc_rules)
                                  .where(LoopNode.loop_type_id == loop_type_id)).tuples()
        hit = _QC[loop_type_id] = compile_nodes(rows)
    return hit


_NODE_KEYS: dict[str, set[str]] = {}


def _all_node_keys(loop_key: str) -> set[str]:
    """Node keys of every version (group or campus, past or present) of a loop type; cached."""
    hit = _NODE_KEYS.get(loop_key)
    if hit is None:
        hit = set(db.session.scalars(select(LoopNode.key).join(LoopType, LoopType.id == LoopNode.loop_type_id)
                                     .where(LoopType.key == loop_key)))
        _NODE_KEYS[loop_key] = hit
    return hit


def invalidate_types() -> None:
    """Forget cached loop definitions, interface mappings and departments (after configuration changes)."""
    _TYPES.clear()
    _MAPPINGS.clear()
    _ORG.clear()
    _NODE_KEYS.clear()
    _QC.clear()
    _LOOP_TYPES.clear()


# GET /api/v1/loop-types answers by campus code ("" = the group standards); they expire with type_info()'s
# caches (TTL, invalidate_types()), so the integration API reads the configuration at most once per period
_LOOP_TYPES: dict[str, list[dict[str, Any]]] = {}


def _fields_out(fields: Any) -> list[dict[str, Any]]:
    """A node's configured data fields as the integration contract shows them: the key in the event's `data`,
    the Chinese name, the data format (app.loops.qc.FIELD_TYPES) and whether the field is 必填."""
    return [{"key": str(f["name"]), "name": str(f.get("label") or f["name"]), "type": str(f.get("type") or "string"),
             "required": bool(f.get("required"))}
            for f in fields or () if isinstance(f, dict) and f.get("name")]


def loop_types_out(campus: str | None = None) -> list[dict[str, Any]]:
    """Every active loop type with its nodes in order: key, name, standard minutes and the node's data fields.
    Without a campus: the group standards; with a campus code: the version in force there (the campus's own
    version where it has one, as intake uses it). Cached; callers must not modify the answer.
    Raises ValidationFailed for an unknown campus code."""
    from sqlalchemy import or_

    from app.auth.models import Campus
    from app.errors import ValidationFailed

    _expire_caches()
    code = (campus or "").strip()
    hit = _LOOP_TYPES.get(code)
    if hit is not None:
        return hit
    campus_id = None
    if code:
        campus_id = db.session.scalar(select(Campus.id).where(Campus.code == code))
        if campus_id is None:
            raise ValidationFailed({"campus": f"院区「{code}」不存在"}, message="查询条件有误")
    group = LoopType.campus_id.is_(None)
    scope = group if campus_id is None else or_(group, LoopType.campus_id == campus_id)
    versions = db.session.scalars(select(LoopType).where(scope, LoopType.is_active.is_(True)).order_by(LoopType.id))
    in_force: dict[str, LoopType] = {}
    for lt in sorted(versions, key=lambda t: t.campus_id is not None):  # group first; a campus version replaces it
        in_force[lt.key] = lt
    out = []
    for lt in in_force.values():
        out.append({"key": lt.key, "name": lt.name, "order_category": lt.order_category,
                    "campus": code if lt.campus_id is not None else None, "grace_minutes": lt.grace_minutes,
                    "nodes": [{"key": n.key, "name": n.name, "standard_minutes": n.standard_minutes,
                               "fields": _fields_out(n.required_fields)} for n in lt.nodes]})
    _LOOP_TYPES[code] = out
    return out


def write_bpmn_files(directory) -> list[str]:
    """Write processes/loops/loop_<key>.bpmn for every catalogue loop (the shipped group standard)."""
    from pathlib import Path

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for d in LOOPS:
        path = root / f"{bpmn.process_key(d.key)}.bpmn"
        path.write_text(bpmn.generate(loop_key=d.key, name=d.name, nodes=d.nodes), encoding="utf-8")
        written.append(path.name)
    return written


# ---------------------------------------------------------------- interface dictionary

_MAPPINGS: dict[tuple[str, str, str], str] = {}


def _mapping(source: str, kind: str, code: str) -> str | None:
    if not _MAPPINGS:
        # built aside and published in one update: another thread never sees a half-loaded dictionary
        loaded = {(m.source, m.kind, m.code): m.target for m in db.session.scalars(select(InterfaceMapping))}
        loaded[("", "", "")] = ""  # loaded marker
        _MAPPINGS.update(loaded)
    return _MAPPINGS.get((source, kind, code)) or _MAPPINGS.get(("*", kind, code))


# ---------------------------------------------------------------- intake


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return dt.astimezone(UTC)


def _str(ev: dict, name: str, errors: list, path: str, *, required: bool, max_len: int) -> str | None:
    value = ev.get(name)
    if value is None or value == "":
        if required:
            errors.append({"path": f"{path}/{name}", "message": f"必填：{FIELD_LABELS.get(name, name)}"})
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        errors.append({"path": f"{path}/{name}", "message": f"{FIELD_LABELS.get(name, name)}应为字符串"})
        return None
    value = value.strip()
    if len(value) > max_len:
        errors.append({"path": f"{path}/{name}", "message": f"{FIELD_LABELS.get(name, name)}不能超过 {max_len} 个字符"})
        return None
    return value


FIELD_LABELS = {
    "source": "来源系统 source", "event_id": "事件 ID event_id", "order_no": "医嘱号 order_no",
    "order_type": "医嘱类型 order_type", "node": "节点 node", "occurred_at": "发生时间 occurred_at",
    "dept": "科室 dept", "campus": "院区 campus", "terminal": "终端 terminal", "id": "编号 id", "name": "姓名 name",
    "inpatient_no": "住院号 inpatient_no",
}


@dataclass
class Normalized:
    row: dict[str, Any]
    index: int


def normalize(ev: Any, path: str) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """Validate one event and map its codes through the interface dictionary. Returns (row, errors)."""
    errors: list[dict[str, str]] = []
    if not isinstance(ev, dict):
        return None, [{"path": path, "message": "事件应为 JSON 对象"}]
    source = _str(ev, "source", errors, path, required=True, max_len=32)
    event_id = _str(ev, "event_id", errors, path, required=True, max_len=128)
    order_no = _str(ev, "order_no", errors, path, required=True, max_len=64)
    order_type = _str(ev, "order_type", errors, path, required=True, max_len=64)
    node = _str(ev, "node", errors, path, required=True, max_len=64)
    dept = _str(ev, "dept", errors, path, required=False, max_len=32)
    campus = _str(ev, "campus", errors, path, required=False, max_len=32)
    terminal = _str(ev, "terminal", errors, path, required=False, max_len=128)
    occurred = _parse_time(ev.get("occurred_at"))
    if ev.get("occurred_at") in (None, ""):
        errors.append({"path": f"{path}/occurred_at", "message": "必填：发生时间 occurred_at"})
    elif occurred is None:
        errors.append({"path": f"{path}/occurred_at",
                       "message": "发生时间应为带时区偏移的 ISO 8601 时间，如 2026-11-23T10:00:00+08:00"})
    elif occurred > utcnow() + timedelta(minutes=10):
        errors.append({"path": f"{path}/occurred_at", "message": "发生时间晚于当前时间，请检查来源系统时钟"})
    person: dict[str, dict[str, str | None]] = {}
    for obj, fields in (("operator", ("id", "name")), ("patient", ("id", "name", "inpatient_no"))):
        value = ev.get(obj)
        if value is None:
            person[obj] = {}
            continue
        if not isinstance(value, dict):
            errors.append({"path": f"{path}/{obj}", "message": f"{obj} 应为 JSON 对象"})
            person[obj] = {}
            continue
        person[obj] = {f: _str(value, f, errors, f"{path}/{obj}", required=False, max_len=64) for f in fields}
    data = ev.get("data") or {}
    if not isinstance(data, dict):
        errors.append({"path": f"{path}/data", "message": "data 应为 JSON 对象"})
        data = {}
    loop_key = node_key = None
    info = None
    if source and order_type:
        campus_id = org_of(dept, campus)[1]
        loop_key = order_type if type_info(order_type) else _mapping(source, "order_type", order_type)
        info = type_info(loop_key, campus_id) if loop_key else None
        if info is None:
            errors.append({"path": f"{path}/order_type",
                           "message": f"未知的医嘱类型「{order_type}」：既不是闭环类型标识，也未在接口字典中映射"})
    if info is not None and node and source:
        if node in info.index or node in RESERVED_NODES or node in _all_node_keys(info.key):
            # a node of any version of this loop: running orders keep the node list they started with
            node_key = node
        else:
            node_key = _mapping(source, f"node:{info.key}", node) or _mapping(source, "node", node)
            if node_key is None or (node_key not in info.index and node_key not in RESERVED_NODES):
                errors.append({"path": f"{path}/node",
                               "message": f"「{info.name}」闭环没有节点「{node}」，接口字典中也无此状态码映射"})
                node_key = None
    if errors:
        return None, errors
    return {
        "source": source, "event_id": event_id, "order_no": order_no, "order_type": order_type,
        "loop_type_key": loop_key, "node": node, "node_key": node_key, "occurred_at": occurred,
        "operator_id": person["operator"].get("id"), "operator_name": person["operator"].get("name"),
        "patient_id": person["patient"].get("id"), "patient_name": person["patient"].get("name"),
        "inpatient_no": person["patient"].get("inpatient_no"), "dept": dept, "campus": campus,
        "terminal": terminal, "data": data,
    }, []


def _insert(model):
    dialect = db.session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(model)


def intake(*, events: Any, channel: str = "rest") -> list[dict[str, Any]]:
    """Store a batch of events durably (caller commits before answering). One result per event, in order:
    accepted / duplicate / rejected with Chinese reasons and field paths. Raises nothing for bad events."""
    from app.errors import ValidationFailed

    if not isinstance(events, list) or not events:
        raise ValidationFailed({"events": "events 应为非空数组"})
    if len(events) > MAX_BATCH:
        raise ValidationFailed({"events": f"一次最多提交 {MAX_BATCH} 个事件"})
    results: list[dict[str, Any]] = [{} for _ in events]
    rows: list[dict[str, Any]] = []
    positions: dict[tuple[str, str], int] = {}
    now = utcnow()
    for i, ev in enumerate(events):
        row, errors = normalize(ev, f"events/{i}")
        if row is None:
            results[i] = {"status": "rejected", "reason": errors[0]["message"], "errors": errors}
            continue
        key = (row["source"], row["event_id"])
        if key in positions:
            results[i] = {"status": "duplicate", "event_id": row["event_id"]}
            continue
        positions[key] = i
        row["channel"] = channel
        row["received_at"] = now
        row["status"] = EventStatus.PENDING
        rows.append(row)
    inserted: set[tuple[str, str]] = set()
    postgres = db.session.get_bind().dialect.name == "postgresql"
    if rows and postgres:
        # one statement whatever the batch size: the columns go as arrays (unnest), so its text is prepared once
        # per connection instead of a multi-row INSERT the driver parses again for every request
        inserted = {(r[0], r[1]) for r in db.session.execute(_unnest_insert(
            LoopEvent.__table__, EVENT_COLUMNS, conflict=("source", "event_id"), returning=("source", "event_id")),
            _columns(rows, EVENT_COLUMNS, json_cols={"data"}))}
    elif rows:
        # Core executemany ("insertmanyvalues"): one cached statement, batched, no ORM bookkeeping
        table = LoopEvent.__table__
        stmt = _insert(table).on_conflict_do_nothing(index_elements=["source", "event_id"]).returning(
            table.c.source, table.c.event_id)
        inserted = {(r[0], r[1]) for r in db.session.connection().execute(stmt, rows)}
    orders: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = (row["source"], row["event_id"])
        i = positions[key]
        if key in inserted:
            results[i] = {"status": "accepted", "event_id": row["event_id"]}
            o = orders.setdefault(row["order_no"], {
                "order_no": row["order_no"], "loop_type_key": row["loop_type_key"], "pending": True,
                "has_skipped": False, "has_abnormal": False,
                "patient_id": row["patient_id"], "patient_name": row["patient_name"],
                "inpatient_no": row["inpatient_no"], "dept_code": row["dept"], "campus_code": row["campus"],
                "status": OrderStatus.IN_PROGRESS, "created_at": now,
            })
            for k_src, k_dst in (("patient_id", "patient_id"), ("patient_name", "patient_name"),
                                 ("inpatient_no", "inpatient_no"), ("dept", "dept_code"), ("campus", "campus_code")):
                if o[k_dst] is None and row[k_src]:
                    o[k_dst] = row[k_src]
        else:
            results[i] = {"status": "duplicate", "event_id": row["event_id"]}
    if orders and postgres:
        db.session.execute(_unnest_insert(LoopOrder.__table__, ORDER_COLUMNS, conflict=("order_no",),
                                          update="pending = true, wait_until = null"),
                           _columns(list(orders.values()), ORDER_COLUMNS))
    elif orders:
        ins = _insert(LoopOrder.__table__)
        stmt = ins.on_conflict_do_update(index_elements=["order_no"], set_={"pending": True, "wait_until": None})
        db.session.connection().execute(stmt, list(orders.values()))
    return results


EVENT_COLUMNS = ("source", "event_id", "channel", "order_no", "order_type", "loop_type_key", "node", "node_key",
                 "occurred_at", "received_at", "operator_id", "operator_name", "patient_id", "patient_name",
                 "inpatient_no", "dept", "campus", "terminal", "data", "status")
# every column a new order row needs (the model's Python-side defaults are not applied to this statement)
ORDER_COLUMNS = ("order_no", "loop_type_key", "pending", "patient_id", "patient_name", "inpatient_no", "dept_code",
                 "campus_code", "status", "created_at", "has_skipped", "has_abnormal")
_UNNEST: dict[tuple, Any] = {}


def _unnest_insert(table, columns: tuple[str, ...], *, conflict: tuple[str, ...], returning: tuple[str, ...] = (),
                   update: str | None = None):
    """INSERT … SELECT * FROM unnest(<one array per column>) ON CONFLICT …: a fixed statement (PostgreSQL)."""
    key = (table.name, columns, conflict, returning, update)
    stmt = _UNNEST.get(key)
    if stmt is None:
        from sqlalchemy.dialects import postgresql

        dialect = postgresql.dialect()
        arrays = ", ".join(f"cast(:{c} as {table.c[c].type.compile(dialect=dialect)}[])" for c in columns)
        action = f"do update set {update}" if update else "do nothing"
        sql = (f"insert into {table.name} ({', '.join(columns)}) select * from unnest({arrays}) "
               f"on conflict ({', '.join(conflict)}) {action}")
        if returning:
            sql += f" returning {', '.join(returning)}"
        stmt = _UNNEST[key] = text(sql)
    return stmt


def _columns(rows: list[dict[str, Any]], columns: tuple[str, ...], json_cols: set[str] | None = None) -> dict:
    import json

    out: dict[str, list[Any]] = {}
    for c in columns:
        values = [r.get(c) for r in rows]
        if json_cols and c in json_cols:
            values = [None if v is None else json.dumps(v, ensure_ascii=False) for v in values]
        elif values and isinstance(values[0], StrEnum):
            values = [str(v) for v in values]
        out[c] = values
    return out


# ---------------------------------------------------------------- applying


@dataclass
class ApplyStats:
    orders: int = 0
    applied: int = 0
    waiting: int = 0


def _minutes(a: datetime | None, b: datetime | None) -> int | None:
    if a is None or b is None:
        return None
    return int(round((b - a).total_seconds() / 60))


def _in(column, values: list):
    """column IN values; on PostgreSQL as `= ANY(array)` so the statement text (and its prepared plan) is the
    same whatever the batch size, instead of a new IN (…) list to parse every time."""
    if db.session.get_bind().dialect.name == "postgresql":
        from sqlalchemy import any_, bindparam
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)


# advisory lock keys of claimed orders: this namespace plus the order id (nothing else takes advisory locks)
CLAIM_NAMESPACE = 7301 << 48


def _claim(limit: int, now: datetime) -> list[LoopOrder]:
    """The orders this worker applies now, each claimed for the transaction.

    On PostgreSQL the claim is a transaction-level advisory lock per order (taken with try: an order another
    worker holds is skipped), not a row lock: intake's upsert of the order row (pending = true) must never wait
    for a batch being applied, only for the batch's short flush-to-commit window. A lock ends with its
    transaction, or with the connection of a killed worker. SQLite (the embedded default, one applier thread)
    simply reads the orders."""
    due = (LoopOrder.pending.is_(True), (LoopOrder.wait_until.is_(None)) | (LoopOrder.wait_until <= now))
    if db.session.get_bind().dialect.name != "postgresql":
        return list(db.session.scalars(select(LoopOrder).where(*due).order_by(LoopOrder.id).limit(limit)))
    candidates = list(db.session.scalars(select(LoopOrder.id).where(*due).order_by(LoopOrder.id).limit(limit * 3)))
    if not candidates:
        return []
    claimed = list(db.session.scalars(
        text("select id from unnest(cast(:ids as bigint[])) as c(id) "
             "where pg_try_advisory_xact_lock(:ns + id) limit :n"),
        {"ids": candidates, "ns": CLAIM_NAMESPACE, "n": limit}))
    if not claimed:
        return []
    # read again under the claim: another worker may have applied one of them since the candidates were read
    return list(db.session.scalars(select(LoopOrder).where(_in(LoopOrder.id, claimed), *due).order_by(LoopOrder.id)))


def _reflag_arrivals(orders: list[LoopOrder]) -> None:
    """Orders this batch marked done (pending = false) that got new events meanwhile are flagged again. Events
    committed before this statement are seen here; an intake committing later updates the order row after this
    transaction's commit (its upsert waits for the row this batch wrote), so no arrival is left unflagged."""
    ids = [o.id for o in orders if not o.pending]
    if not ids:
        return
    arrived = (select(LoopEvent.id).where(LoopEvent.order_no == LoopOrder.order_no,
                                          LoopEvent.status == EventStatus.PENDING).exists())
    db.session.execute(update(LoopOrder).where(_in(LoopOrder.id, ids), LoopOrder.pending.is_(False), arrived)
                       .values(pending=True, wait_until=None).execution_options(synchronize_session=False))


def apply_pending(*, limit: int = 200, now: datetime | None = None) -> ApplyStats:
    """Claim orders with pending events (see _claim) and apply them. Caller commits."""
    now = now or utcnow()
    orders = _claim(limit, now)
    stats = ApplyStats(orders=len(orders))
    if not orders:
        return stats
    from app.workflow import services as wf
    from app.workflow.models import ProcessInstance

    events_by_order: dict[str, list[LoopEvent]] = {}
    for ev in db.session.scalars(select(LoopEvent).where(_in(LoopEvent.order_no, [o.order_no for o in orders]),
                                                          LoopEvent.status == EventStatus.PENDING)
                                 .order_by(LoopEvent.occurred_at, LoopEvent.id)):
        events_by_order.setdefault(ev.order_no, []).append(ev)
    ids = [o.instance_id for o in orders if o.instance_id]
    instances = {i.id: i for i in db.session.scalars(select(ProcessInstance).where(_in(ProcessInstance.id, ids)))} \
        if ids else {}
    hot: list[tuple[Any, Any]] = []
    raised: list[tuple[LoopOrder, list[tuple[str, str | None, str]]]] = []
    if db.session.get_bind().dialect.name == "postgresql":
        wanted = 0
        for order in orders:
            if not order.instance_id and events_by_order.get(order.order_no):
                info = type_info(order.loop_type_key, order.campus_id)
                wanted += len(info.nodes) if info else 0
        _batch_ids.pool = _draw_ids(wanted) if wanted else []
    # one flush for the whole batch: no autoflush between orders
    try:
        with db.session.no_autoflush:
            for order in orders:
                applied, waiting = _apply_order(order, events_by_order.get(order.order_no, []), now, instances, hot,
                                                raised)
                stats.applied += applied
                stats.waiting += waiting
    finally:
        _batch_ids.pool = None
    db.session.flush()
    wf.remember_headless(hot)
    # alerts after the batch's flush (same transaction): raising one (a savepoint, its notifications) then costs
    # only its own rows instead of flushing the half-applied batch early
    for order, alerts in raised:
        _raise_alerts(order, alerts)
    if raised:
        db.session.flush()
    _reflag_arrivals(orders)
    return stats


_ORG: dict[str, dict[str, tuple[int | None, int | None]]] = {}


def org_of(dept_code: str | None, campus_code: str | None) -> tuple[int | None, int | None]:
    """(dept_id, campus_id) for a source system's department code (HIS code or our code) and campus code; cached."""
    from app.auth.models import Campus, Department

    depts, campuses = _ORG.get("dept"), _ORG.get("campus")
    if depts is None or campuses is None:
        # built aside and published whole: threads of a web worker may read while another builds or clears it
        depts, campuses = {}, {}
        for d in db.session.scalars(select(Department)):
            depts[d.code] = (d.id, d.campus_id)
            if d.his_code:
                depts[d.his_code] = (d.id, d.campus_id)
        for c in db.session.scalars(select(Campus)):
            campuses[c.code] = (None, c.id)
        _ORG.update(dept=depts, campus=campuses)
    dept_id = campus_id = None
    if dept_code and dept_code in depts:
        dept_id, campus_id = depts[dept_code]
    if campus_id is None and campus_code and campus_code in campuses:
        campus_id = campuses[campus_code][1]
    return dept_id, campus_id


def _resolve_org(order: LoopOrder) -> None:
    if order.dept_id is None or order.campus_id is None:
        dept_id, campus_id = org_of(order.dept_code, order.campus_code)
        order.dept_id = order.dept_id or dept_id
        order.campus_id = order.campus_id or campus_id


_batch_ids = threading.local()


_SEQUENCE: list[str] = []  # the node-state id sequence's name (fixed by the schema; looked up once per process)


def _draw_ids(n: int) -> list[int]:
    if not _SEQUENCE:
        _SEQUENCE.append(str(db.session.scalar(text("select pg_get_serial_sequence('loop_node_states', 'id')"))))
    return list(db.session.scalars(text("select nextval(cast(:seq as regclass)) from generate_series(1, :n)"),
                                   {"seq": _SEQUENCE[0], "n": n}))


def _state_ids(n: int) -> list[int] | None:
    """On PostgreSQL, `n` ids for new node-state rows from the ids the batch drew ahead from their sequence. With
    the keys known, the batch's flush sends the rows as one prepared executemany instead of a multi-row
    INSERT … RETURNING whose text (hundreds of KB per batch) the driver has to parse again every time. Ids of
    a rolled-back batch are simply never used, as with any sequence; nothing is kept across batches."""
    pool: list[int] | None = getattr(_batch_ids, "pool", None)
    if pool is None:
        return None
    if len(pool) < n:
        pool.extend(_draw_ids(max(n, 100)))
    taken = pool[:n]
    del pool[:n]
    return taken


def _start_loop(order: LoopOrder, info: TypeInfo) -> tuple[dict[str, LoopNodeState], Any, Any]:
    from app.workflow import services as wf

    _resolve_org(order)
    instance, flow = wf.new_headless(key=info.process_key, business_key=order.order_no,
                                     title=f"{info.name}闭环 {order.order_no}", dept_id=order.dept_id,
                                     campus_id=order.campus_id, data={"order_no": order.order_no})
    expected = {k for k, _n, _m in info.nodes}
    if set(wf.version_messages(instance.version_id)) - {"cancelled"} != expected:
        # a cache in this process is older than a configuration change made elsewhere: refresh and retry once
        db.session.expunge(instance)
        wf.forget_active(info.process_key)
        invalidate_types()
        fresh = type_info(order.loop_type_key, order.campus_id) or info
        info = fresh
        instance, flow = wf.new_headless(key=info.process_key, business_key=order.order_no,
                                         title=f"{info.name}闭环 {order.order_no}", dept_id=order.dept_id,
                                         campus_id=order.campus_id, data={"order_no": order.order_no})
    order.instance = instance
    order.loop_type_id = info.id
    states = {}
    ids = _state_ids(len(info.nodes))
    for i, (key, name, minutes) in enumerate(info.nodes):
        st = LoopNodeState(seq=i, node_key=key, name=name, standard_minutes=minutes,
                           status=NodeStatus.CURRENT if i == 0 else NodeStatus.PENDING)
        if ids:
            st.id = ids[i]
        order.states.append(st)
        states[key] = st
    order.current_node = info.nodes[0][0]
    return states, instance, flow


def _apply_order(order: LoopOrder, events: list[LoopEvent], now: datetime, instances: dict[int, Any],
                 hot: list[tuple[Any, Any]],
                 raised: list[tuple[LoopOrder, list[tuple[str, str | None, str]]]]) -> tuple[int, int]:
    """Apply one order's pending events in memory (the caller flushes the batch, then raises the alerts collected
    in `raised`); returns (applied, waiting)."""
    from app.workflow import services as wf

    order.pending = False
    order.wait_until = None
    if not events:
        return 0, 0
    if order.instance_id is None:
        _resolve_org(order)
    info = type_info(order.loop_type_key, order.campus_id)
    if info is None:  # the loop type was deactivated after intake: keep the events, look again later
        order.pending = True
        order.wait_until = now + timedelta(minutes=5)
        return 0, len(events)
    had_instance = bool(order.instance_id)
    before_status = order.status
    before_flags = (order.has_abnormal, order.current_node)
    if order.instance_id:
        states = {s.node_key: s for s in order.states}
        instance = instances.get(order.instance_id)
        flow = wf.load_headless(instance) if instance is not None else None
    else:
        states, instance, flow = _start_loop(order, info)
    # a running order keeps the node list it started with, whatever was edited since
    nodes = [(s.node_key, s.name, s.standard_minutes) for s in sorted(states.values(), key=lambda s: s.seq)]
    index = {k: i for i, (k, _n, _m) in enumerate(nodes)}
    messages: list[tuple[str, dict[str, Any]]] = []
    alerts: list[tuple[str, str | None, str]] = []
    checks = node_qc(order.loop_type_id)
    applied = 0
    remaining = list(events)

    def position() -> int:
        for i, (key, _n, _m) in enumerate(nodes):
            if states[key].status in (NodeStatus.CURRENT, NodeStatus.PENDING, NodeStatus.ABNORMAL):
                return i
        return len(nodes)

    def previous_time(idx: int) -> datetime | None:
        for j in range(idx - 1, -1, -1):
            st = states[nodes[j][0]]
            if st.occurred_at is not None and st.status in (NodeStatus.DONE, NodeStatus.LATE):
                return st.occurred_at
        return None

    def mark_done(st: LoopNodeState, ev: LoopEvent, idx: int, status: str) -> None:
        st.status = status
        st.occurred_at = ev.occurred_at
        st.operator_id, st.operator_name = ev.operator_id, ev.operator_name
        st.terminal, st.source, st.event_id = ev.terminal, ev.source, ev.id
        prev = previous_time(idx)
        st.minutes_since_previous = _minutes(prev, ev.occurred_at)
        if st.minutes_since_previous is not None and st.standard_minutes is not None:
            st.deviation_minutes = st.minutes_since_previous - st.standard_minutes
        check = checks.get(st.node_key) if checks else None
        if check is not None:  # only nodes with configured fields or rules get here
            findings = check.findings(data=ev.data, operator_id=ev.operator_id,
                                      minutes_since_previous=st.minutes_since_previous)
            st.qc_findings = findings or None
            if findings:
                alerts.append(("qc", st.node_key, "；".join(findings)))

    progress = True
    while progress and remaining:
        progress = False
        for ev in list(remaining):
            key = ev.node_key
            if order.status != OrderStatus.IN_PROGRESS and key != "abnormal":
                st = states.get(key)
                if st is not None and st.status == NodeStatus.SKIPPED:
                    mark_done(st, ev, index[key], NodeStatus.LATE)
                    ev.status = EventStatus.LATE
                elif st is not None and st.status in (NodeStatus.DONE, NodeStatus.LATE):
                    ev.status = EventStatus.REPEAT
                else:
                    ev.status = EventStatus.IGNORED
            elif key == "cancelled":
                pos = position()
                order.interrupted_node = nodes[pos][0] if pos < len(nodes) else None
                order.status = OrderStatus.INTERRUPTED
                order.ended_at = ev.occurred_at
                order.interrupted_minutes = _minutes(order.started_at, ev.occurred_at)
                messages.append(("cancelled", {"reason": ev.data.get("reason")}))
                for st in states.values():
                    if st.status == NodeStatus.CURRENT:
                        st.status = NodeStatus.PENDING
                ev.status = EventStatus.APPLIED
            elif key == "abnormal":
                pos = position()
                target = states[nodes[min(pos, len(nodes) - 1)][0]]
                target.status = NodeStatus.ABNORMAL if order.status == OrderStatus.IN_PROGRESS else target.status
                reason = str(ev.data.get("reason") or ev.data.get("message") or "未说明原因")
                target.note = f"异常：{reason}"
                order.has_abnormal = True
                alerts.append(("abnormal", target.node_key, f"{target.name}异常：{reason}"))
                ev.status = EventStatus.APPLIED
            elif key not in index:  # a node this order's loop version does not have
                ev.status = EventStatus.IGNORED
            else:
                idx = index[key]
                st = states[key]
                pos = position()
                if st.status in (NodeStatus.DONE, NodeStatus.LATE):
                    ev.status = EventStatus.REPEAT
                elif st.status == NodeStatus.SKIPPED:
                    mark_done(st, ev, idx, NodeStatus.LATE)
                    ev.status = EventStatus.LATE
                elif idx > pos and ev.received_at + info.grace > now:
                    continue  # predecessors may still come: wait
                else:
                    for j in range(pos, idx):
                        gap = states[nodes[j][0]]
                        earlier = f"{gap.note}；" if gap.status == NodeStatus.ABNORMAL and gap.note else ""
                        gap.status = NodeStatus.SKIPPED
                        gap.note = earlier + "缺环：超过等待时长仍未收到该节点"
                        order.has_skipped = True
                        messages.append((gap.node_key, {"skipped": True}))
                        alerts.append(("skipped", gap.node_key, f"缺环：{gap.name}（由{ev.operator_name or ev.source}的后续节点触发）"))
                    mark_done(st, ev, idx, NodeStatus.DONE)
                    if order.started_at is None or idx == 0:
                        order.started_at = order.started_at or ev.occurred_at
                    messages.append((key, {"event_id": ev.event_id, "operator": ev.operator_id}))
                    ev.status = EventStatus.APPLIED
                    nxt = position()
                    if nxt < len(nodes):
                        nst = states[nodes[nxt][0]]
                        if nst.status == NodeStatus.PENDING:
                            nst.status = NodeStatus.CURRENT
                        order.current_node = nst.node_key
                    else:
                        order.current_node = None
                        order.status = OrderStatus.CLOSED
                        order.ended_at = ev.occurred_at
            ev.applied_at = now
            remaining.remove(ev)
            applied += 1
            order.last_event_at = max(order.last_event_at or ev.occurred_at, ev.occurred_at)
            progress = True
            break
    if order.started_at is None:
        times = [s.occurred_at for s in states.values() if s.occurred_at]
        order.started_at = min(times) if times else None
    if remaining:
        order.pending = True
        order.wait_until = min(ev.received_at for ev in remaining) + info.grace
    _feedback(order, before_status, before_flags, started_now=not had_instance)
    if instance is not None and (messages or not instance.serialized):
        wf.advance_headless(instance=instance, wf=flow, messages=messages)
        hot.append((instance, flow))
    if alerts:
        raised.append((order, alerts))
    return applied, len(remaining)


def _feedback(order: LoopOrder, before_status: str, before_flags: tuple[bool, str | None], *, started_now: bool) -> None:
    """Queue status feedback for the ordering system (received / in progress / done / abnormal / cancelled),
    one message per change, ordered per order; added to the batch's single flush."""
    from app.outbox.models import OutboxMessage

    changes = []
    if started_now:
        changes.append("received")
    if order.status == OrderStatus.CLOSED and before_status != OrderStatus.CLOSED:
        changes.append("done")
    elif order.status == OrderStatus.INTERRUPTED and before_status != OrderStatus.INTERRUPTED:
        changes.append("cancelled")
    elif order.status == OrderStatus.IN_PROGRESS and order.current_node != before_flags[1] and not started_now:
        changes.append("in_progress")
    if order.has_abnormal and not before_flags[0]:
        changes.append("abnormal")
    for status in changes:
        db.session.add(OutboxMessage(channel="order_feedback", event="loop.status", key=f"order:{order.order_no}",
                                     payload={"order_no": order.order_no, "loop_type": order.loop_type_key,
                                              "status": status, "current_node": order.current_node,
                                              "at": utcnow().isoformat()}))


def _raise_alerts(order: LoopOrder, alerts: list[tuple[str, str | None, str]]) -> None:
    for hook in ALERT_HOOKS:
        hook(order=order, alerts=alerts)


# set by the alerts module (kept pluggable so the hot path stays small)
ALERT_HOOKS: list[Any] = []


def run_grace_sweep(*, now: datetime | None = None) -> int:
    """Re-flag orders whose waiting period is over (the periodic sweep behind lost wake-ups)."""
    now = now or utcnow()
    result = db.session.execute(update(LoopOrder).where(LoopOrder.pending.is_(False), LoopOrder.wait_until <= now)
                                .values(pending=True))
    return getattr(result, "rowcount", 0) or 0


# ---------------------------------------------------------------- reading


def order_loop(order_no: str) -> dict[str, Any] | None:
    order = db.session.scalar(select(LoopOrder).where(LoopOrder.order_no == order_no))
    if order is None:
        return None
    return order_out(order)


def order_out(order: LoopOrder) -> dict[str, Any]:
    info = type_info(order.loop_type_key, order.campus_id)
    states = list(order.states)
    if not states and info is not None:  # events stored but not yet applied
        states = [LoopNodeState(seq=i, node_key=k, name=n, standard_minutes=m, status=NodeStatus.PENDING)
                  for i, (k, n, m) in enumerate(info.nodes)]
    return {
        "order_no": order.order_no,
        "loop_type": order.loop_type_key,
        "loop_name": info.name if info else order.loop_type_key,
        "status": order.status,
        "patient": {"id": order.patient_id, "name": order.patient_name, "inpatient_no": order.inpatient_no},
        "dept": order.dept_code,
        "started_at": order.started_at.isoformat() if order.started_at else None,
        "ended_at": order.ended_at.isoformat() if order.ended_at else None,
        "interrupted_node": order.interrupted_node,
        "pending_events": order.pending,
        "nodes": [{
            "key": s.node_key, "name": s.name, "status": s.status,
            "occurred_at": s.occurred_at.isoformat() if s.occurred_at else None,
            "operator": {"id": s.operator_id, "name": s.operator_name} if s.operator_id or s.operator_name else None,
            "minutes_since_previous": s.minutes_since_previous, "standard_minutes": s.standard_minutes,
            "deviation_minutes": s.deviation_minutes, "note": s.note,
            **({"qc": list(s.qc_findings)} if s.qc_findings else {}),
        } for s in sorted(states, key=lambda s: s.seq)],
    }
