"""Closed-loop dashboard measures (seed 003 §二.2, the eight 看板 figures), computed by SQL aggregation.

Every figure is filtered by campus, department, loop type (or order category) and a range of **order start
days** in Asia/Shanghai (an order belongs to the day its first node happened). Definitions:

1. 闭环达成率 (closure): 完整闭环 / 应闭环. 完整闭环 = status closed and no skipped node (has_skipped false).
   应闭环 = orders started in the range that have ended (closed or interrupted) plus those still in
   progress although their loop's standard total time (sum of its nodes' standard minutes) has passed
   (超时未闭环). Orders still inside their standard time are not yet due and count in neither.
   Reported per loop type and per order category (药品/检验/检查/…), with the day trend.
2. 执行及时率 (timeliness): every node with a measured duration (status done or late, minutes since the
   previous node known, standard > 0) is 提前 when actual < 50 % of the standard, 按时 when 50 % ≤ actual
   ≤ standard, 延迟 when actual > standard; 平均延迟 = mean (actual − standard) over the late ones. By
   department, with the whole-hospital total.
3. 闭环中断率 (interruption): interrupted orders / orders started, per stage 开立/审核/执行/反馈 of the node
   the loop was waiting for when it was cancelled (STAGES), with the mean minutes from start to interruption;
   the per-node detail is listed too.
4. 告警率 (alerts): confirmed alerts / all alerts, per alert kind, alerts created in the range (Shanghai
   days) — read from app.loops.alerts.LoopAlert when that module is installed, zeros otherwise.
5. 检验周转 (lab turnaround): loops lab and critical_value, closed, first node → last node: mean, median, P90.
6. 检查预约周转 (exam turnaround): loop exam, 检查申请 → 检查预约 and 检查申请 → 检查报告打印.
7. 医嘱执行周转 (execution turnaround): first node → the loop's execution node (EXEC_NODE: 执行用药 for
   the medication loops, 执行检验/检查 for lab/exam/critical values, 开始输血, 手术结束, 会诊处理意见, 结算出院).
8. 节点耗时 (node durations): per loop type and node: mean actual minutes since the previous node vs the
   mean standard, the deviation, how many were late, skipped (缺环) or abnormal.

Sources: day-level rollups (models_metrics) hold additive counts and sums per (day, campus, department, loop
type[, node]); a range is served from rollups for days that have them and from the raw tables for the rest,
through the same column layout, so both give the same counts and means. Ranges of one or two days are read
raw (real time, exact); longer ranges read today's rollup only while it is younger than TODAY_ROLLUP_MAX_AGE
(the rollup job refreshes today and the last two days that often, older days hourly/daily). The "due" count
depends on the time of computation: a rollup holds it as of its refresh. Medians and P90
come from bucketed counts (BUCKETS) when rollups are involved — interpolated within a bucket, shown as
approximate — and exactly (percentile_cont) when the whole range is read raw on PostgreSQL.
Nothing here loads orders into Python: queries return aggregated rows only; drill-down lists paginate.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Date,
    Float,
    Integer,
    String,
    and_,
    case,
    cast,
    delete,
    exists,
    extract,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.orm import aliased

from app.core.timefmt import SHANGHAI
from app.db import UTCDateTime, db, utcnow
from app.errors import ValidationFailed
from app.loops.models import LoopNode, LoopNodeState, LoopOrder, LoopType, NodeStatus, OrderStatus
from app.loops.models_metrics import LoopDailyHistogram, LoopDailyNodeStat, LoopDailyStat, LoopRollupDay

EARLY_RATIO = 0.5  # a node done in less than half its standard time counts as 提前
AUTO_RAW_MAX_DAYS = 2  # ranges this short are read raw (exact, real time); longer ones use rollups
TODAY_ROLLUP_MAX_AGE = timedelta(minutes=5)  # a longer range reads today's rollup when it is this fresh
MAX_RANGE_DAYS = 366

# the node each loop counts as "executed" for 医嘱执行周转 (measure 7)
EXEC_NODE: dict[str, str] = {
    "iv_admixture": "administer", "oral_medication": "administer", "unit_dose": "administer",
    "ward_admixture": "administer", "critical_value": "perform", "lab": "perform", "exam": "perform",
    "transfusion": "start", "surgery": "surgery_end", "consultation": "opinion", "admission_discharge": "settlement",
}
LAB_LOOPS = ("lab", "critical_value")

# 开立 - 审核 - 执行 - 反馈 (seed 003 §二.2(3)); nodes not listed (added by a hospital) count as 执行
STAGE_LABELS = {"order": "开立", "review": "审核", "execute": "执行", "feedback": "反馈"}
STAGES: dict[str, str] = {
    **dict.fromkeys(("order_issued", "request", "admission", "order"), "order"),
    **dict.fromkeys(("order_signed", "pharmacist_review", "senior_review", "nurse_check", "sign", "exam_review",
                     "schedule", "send", "appointment", "accept"), "review"),
    **dict.fromkeys(("report_print", "report_feedback", "medication_end", "finish", "post_visit", "report",
                     "settlement"), "feedback"),
}


def stage_of(node_key: str | None) -> str:
    return STAGES.get(node_key or "", "execute")


# turnaround buckets: upper bounds in minutes (the last bucket is open-ended)
BUCKETS: tuple[int, ...] = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 360, 480, 720, 1080, 1440, 2160, 2880,
                            4320, 7200, 10080, 20160)
MEASURES = ("cycle", "exec", "booking", "report")

DONE = (NodeStatus.DONE.value, NodeStatus.LATE.value)


# ---------------------------------------------------------------- filters and days


@dataclass(frozen=True)
class Filters:
    date_from: date
    date_to: date
    campus_id: int | None = None
    dept_id: int | None = None
    loop_type: str | None = None
    category: str | None = None

    def days(self) -> int:
        return (self.date_to - self.date_from).days + 1


def today(now: datetime | None = None) -> date:
    return (now or utcnow()).astimezone(SHANGHAI).date()


def day_start(d: date) -> datetime:
    """The UTC instant a Shanghai day begins."""
    return datetime(d.year, d.month, d.day, tzinfo=SHANGHAI).astimezone(UTC)


def default_filters(now: datetime | None = None) -> Filters:
    end = today(now)
    return Filters(date_from=end - timedelta(days=29), date_to=end)


def parse_filters(args: Any, *, now: datetime | None = None) -> Filters:
    """Filters from query arguments (date_from, date_to as YYYY-MM-DD; campus, dept ids; loop_type; category).
    Raises ValidationFailed with a Chinese message per field."""
    base = default_filters(now)
    errors: dict[str, str] = {}

    def day(name: str, default: date) -> date:
        raw = (args.get(name) or "").strip()
        if not raw:
            return default
        try:
            return date.fromisoformat(raw)
        except ValueError:
            errors[name] = "日期格式应为 YYYY-MM-DD，如 2026-11-01"
            return default

    def number(name: str, label: str) -> int | None:
        raw = (args.get(name) or "").strip()
        if not raw:
            return None
        if not raw.isdigit():
            errors[name] = f"{label}应为编号"
            return None
        return int(raw)

    date_from = day("date_from", base.date_from)
    date_to = day("date_to", base.date_to)
    if "date_from" not in errors and "date_to" not in errors:
        if date_to < date_from:
            errors["date_to"] = "结束日期不能早于开始日期"
        elif (date_to - date_from).days >= MAX_RANGE_DAYS:
            errors["date_to"] = f"统计区间不能超过 {MAX_RANGE_DAYS} 天"
    campus_id = number("campus", "院区")
    dept_id = number("dept", "科室")
    loop_type = (args.get("loop_type") or "").strip() or None
    category = (args.get("category") or "").strip() or None
    names = loop_names()
    if loop_type and loop_type not in names:
        errors["loop_type"] = f"未知的闭环类型「{loop_type}」"
    if category and category not in set(loop_categories().values()):
        errors["category"] = f"未知的医嘱类别「{category}」"
    if errors:
        raise ValidationFailed(errors)
    return Filters(date_from=date_from, date_to=date_to, campus_id=campus_id, dept_id=dept_id,
                   loop_type=loop_type, category=category)


# ---------------------------------------------------------------- loop definitions (small tables)


@dataclass
class Defs:
    """The group-standard loop definitions the figures are labelled with (a few dozen rows)."""

    names: dict[str, str]
    categories: dict[str, str]
    nodes: dict[tuple[str, str], str]
    expected: dict[str, int]
    all_keys: list[str]


def defs() -> Defs:
    """Loaded once per database session (a request, a job run): a dashboard asks for them many times."""
    cached = db.session.info.get("loop_metric_defs")
    if cached is not None:
        return cached
    names: dict[str, str] = {}
    categories: dict[str, str] = {}
    nodes: dict[tuple[str, str], str] = {}
    expected: dict[str, int] = {}
    rows = db.session.execute(select(LoopType.key, LoopType.name, LoopType.order_category, LoopNode.key, LoopNode.name,
                                     LoopNode.standard_minutes)
                              .join(LoopNode, LoopNode.loop_type_id == LoopType.id)
                              .where(LoopType.campus_id.is_(None)).order_by(LoopType.id, LoopNode.seq))
    for key, name, category, node_key, node_name, minutes in rows:
        names[key], categories[key] = name, category
        nodes[(key, node_key)] = node_name
        expected[key] = expected.get(key, 0) + (minutes or 0)
    result = Defs(names=names, categories=categories, nodes=nodes, expected=expected,
                  all_keys=sorted(set(db.session.scalars(select(LoopType.key)))))
    db.session.info["loop_metric_defs"] = result
    return result


def loop_names() -> dict[str, str]:
    return defs().names


def loop_categories() -> dict[str, str]:
    return defs().categories


def node_names() -> dict[tuple[str, str], str]:
    return defs().nodes


def expected_minutes() -> dict[str, int]:
    """The standard total time of each loop (sum of its nodes' standard minutes)."""
    return defs().expected


def _all_type_keys() -> list[str]:
    return defs().all_keys


def _type_keys(f: Filters | None) -> list[str]:
    """The loop types a filter selects. Always an explicit list: with it, PostgreSQL can use the
    (loop_type_key, started_at) index for a day range."""
    keys = _all_type_keys()
    if f is None:
        return keys
    if f.loop_type:
        keys = [k for k in keys if k == f.loop_type]
    if f.category:
        cats = loop_categories()
        keys = [k for k in keys if cats.get(k) == f.category]
    return keys


# ---------------------------------------------------------------- SQL helpers (PostgreSQL and SQLite)


def _dialect() -> str:
    return db.session.get_bind().dialect.name


def _day_expr(col):
    if _dialect() == "postgresql":
        return cast(func.timezone("Asia/Shanghai", col), Date)
    return func.date(col, "+8 hours")  # Shanghai has had no daylight saving since 1991


def _minutes_between(a, b):
    if _dialect() == "postgresql":
        return extract("epoch", b - a) / 60.0
    return (func.julianday(b) - func.julianday(a)) * 1440.0


def _bucket_expr(m):
    return case(*[(m < bound, i) for i, bound in enumerate(BUCKETS)], else_=len(BUCKETS))


def _ranges(days: list[date]) -> list[tuple[date, date]]:
    """Contiguous inclusive ranges of sorted days."""
    out: list[tuple[date, date]] = []
    for d in sorted(days):
        if out and (d - out[-1][1]).days == 1:
            out[-1] = (out[-1][0], d)
        else:
            out.append((d, d))
    return out


def _started_in(col, ranges: list[tuple[date, date]]):
    if not ranges:
        return false()
    return or_(*[and_(col >= day_start(a), col < day_start(b + timedelta(days=1))) for a, b in ranges])


def _day_in(col, ranges: list[tuple[date, date]]):
    if not ranges:
        return false()
    return or_(*[col.between(a, b) for a, b in ranges])


def _flag(cond):
    return case((cond, 1), else_=0)


# ---------------------------------------------------------------- raw facts


def _order_conditions(o, *, f: Filters | None, scope, ranges: list[tuple[date, date]]) -> list:
    conds = [o.c.loop_type_key.in_(_type_keys(f)), _started_in(o.c.started_at, ranges)]
    if f is not None and f.campus_id:
        conds.append(o.c.campus_id == f.campus_id)
    if f is not None and f.dept_id:
        conds.append(o.c.dept_id == f.dept_id)
    return conds


def _scoped(stmt, scope, dept_col, campus_col):
    return scope.filter(stmt, dept_col=dept_col, campus_col=campus_col) if scope is not None else stmt


def _order_facts(*, f: Filters | None, scope, ranges: list[tuple[date, date]], now: datetime):
    """One row per order: day, org, type, status flags and its turnaround minutes (a subquery)."""
    o = LoopOrder.__table__.alias("o")
    ex = LoopNodeState.__table__.alias("ex")
    bk = LoopNodeState.__table__.alias("bk")
    rp = LoopNodeState.__table__.alias("rp")
    expected = expected_minutes()
    cutoff = case({k: literal(now - timedelta(minutes=m), UTCDateTime()) for k, m in expected.items()},
                  value=o.c.loop_type_key, else_=literal(now - timedelta(days=1), UTCDateTime()))
    exec_node = case(EXEC_NODE, value=o.c.loop_type_key, else_=literal("administer"))
    in_progress = o.c.status == OrderStatus.IN_PROGRESS.value
    overdue = and_(in_progress, o.c.started_at <= cutoff)
    stmt = (
        select(
            _day_expr(o.c.started_at).label("day"), o.c.campus_id, o.c.dept_id, o.c.loop_type_key, o.c.status,
            _flag(o.c.has_skipped.is_(True)).label("skipped"), _flag(o.c.has_abnormal.is_(True)).label("abnormal"),
            _flag(overdue).label("overdue"),
            o.c.interrupted_minutes,
            case((o.c.status == OrderStatus.CLOSED.value, _minutes_between(o.c.started_at, o.c.ended_at)))
            .label("cycle"),
            _minutes_between(o.c.started_at, ex.c.occurred_at).label("exec"),
            _minutes_between(o.c.started_at, bk.c.occurred_at).label("booking"),
            _minutes_between(o.c.started_at, rp.c.occurred_at).label("report"),
        )
        .select_from(
            o.outerjoin(ex, and_(ex.c.order_id == o.c.id, ex.c.node_key == exec_node, ex.c.status.in_(DONE)))
            .outerjoin(bk, and_(bk.c.order_id == o.c.id, o.c.loop_type_key == "exam", bk.c.node_key == "booking",
                                bk.c.status.in_(DONE)))
            .outerjoin(rp, and_(rp.c.order_id == o.c.id, o.c.loop_type_key == "exam",
                                rp.c.node_key == "report_print", rp.c.status.in_(DONE)))
        )
        .where(*_order_conditions(o, f=f, scope=scope, ranges=ranges))
    )
    # a CTE: the stats and the four histogram parts read it, and it is computed once per statement
    return _scoped(stmt, scope, o.c.dept_id, o.c.campus_id).cte("facts")


STAT_SUMS = ("started", "due", "closed", "closed_clean", "interrupted", "in_progress", "overdue", "skipped_orders",
             "abnormal_orders", "interrupted_minutes", "cycle_count", "cycle_minutes", "exec_count", "exec_minutes",
             "booking_count", "booking_minutes", "report_count", "report_minutes")
KEY_COLS = ("day", "campus_id", "dept_id", "loop_type_key")


def _raw_stat_select(facts):
    c = facts.c
    closed = c.status == OrderStatus.CLOSED.value
    interrupted = c.status == OrderStatus.INTERRUPTED.value
    cols = {
        "started": func.count(),
        "due": func.sum(_flag(or_(closed, interrupted, c.overdue == 1))),
        "closed": func.sum(_flag(closed)),
        "closed_clean": func.sum(_flag(and_(closed, c.skipped == 0))),
        "interrupted": func.sum(_flag(interrupted)),
        "in_progress": func.sum(_flag(c.status == OrderStatus.IN_PROGRESS.value)),
        "overdue": func.sum(c.overdue),
        "skipped_orders": func.sum(c.skipped),
        "abnormal_orders": func.sum(c.abnormal),
        "interrupted_minutes": func.coalesce(func.sum(case((interrupted, c.interrupted_minutes))), 0),
    }
    for m in MEASURES:
        cols[f"{m}_count"] = func.count(c[m])
        cols[f"{m}_minutes"] = func.coalesce(func.sum(c[m]), 0)
    return (select(*[c[k] for k in KEY_COLS], *[cast(cols[k], Float if k.endswith("minutes") else Integer).label(k)
                                                 for k in STAT_SUMS])
            .group_by(*[c[k] for k in KEY_COLS]))


def _raw_hist_parts(facts) -> list:
    """One select per turnaround measure (kept flat: SQLite refuses a parenthesised UNION inside a UNION)."""
    c = facts.c
    parts = []
    for m in MEASURES:
        bucket = _bucket_expr(c[m])
        parts.append(select(*[c[k] for k in KEY_COLS], literal(m, String).label("measure"),
                            cast(bucket, Integer).label("bucket"), cast(func.count(), Integer).label("n"))
                     .where(c[m].is_not(None)).group_by(*[c[k] for k in KEY_COLS], bucket))
    return parts


NODE_SUMS = ("timed", "early", "on_time", "late", "late_minutes", "actual_minutes", "standard_minutes", "skipped",
             "abnormal", "interrupted", "interrupted_minutes")


def _raw_node_select(*, f: Filters | None, scope, ranges: list[tuple[date, date]]):
    o = LoopOrder.__table__.alias("o")
    s = LoopNodeState.__table__.alias("s")
    m, std = s.c.minutes_since_previous, s.c.standard_minutes
    timed = and_(s.c.status.in_(DONE), m.is_not(None), std > 0)
    day = _day_expr(o.c.started_at)
    keys = (day.label("day"), o.c.campus_id, o.c.dept_id, o.c.loop_type_key)
    zero_i, zero_f = cast(literal(0), Integer), cast(literal(0), Float)
    node_part = (
        select(*keys, s.c.node_key.label("node_key"), func.min(s.c.seq).label("seq"),
               func.sum(_flag(timed)).label("timed"),
               func.sum(_flag(and_(timed, m < std * EARLY_RATIO))).label("early"),
               func.sum(_flag(and_(timed, m >= std * EARLY_RATIO, m <= std))).label("on_time"),
               func.sum(_flag(and_(timed, m > std))).label("late"),
               cast(func.coalesce(func.sum(case((and_(timed, m > std), m - std))), 0), Float).label("late_minutes"),
               cast(func.coalesce(func.sum(case((timed, m))), 0), Float).label("actual_minutes"),
               cast(func.coalesce(func.sum(case((timed, std))), 0), Float).label("standard_minutes"),
               func.sum(_flag(s.c.status.in_((NodeStatus.SKIPPED.value, NodeStatus.LATE.value)))).label("skipped"),
               func.sum(_flag(or_(s.c.status == NodeStatus.ABNORMAL.value, s.c.note.like("异常%")))).label("abnormal"),
               zero_i.label("interrupted"), zero_f.label("interrupted_minutes"))
        .select_from(s.join(o, o.c.id == s.c.order_id))
        .where(*_order_conditions(o, f=f, scope=scope, ranges=ranges))
        .group_by(day, o.c.campus_id, o.c.dept_id, o.c.loop_type_key, s.c.node_key)
    )
    node_part = _scoped(node_part, scope, o.c.dept_id, o.c.campus_id)
    inode = func.coalesce(o.c.interrupted_node, "")
    int_part = (
        select(*keys, inode.label("node_key"), cast(literal(0), Integer).label("seq"),
               *[zero_i.label(k) for k in ("timed", "early", "on_time", "late")],
               *[zero_f.label(k) for k in ("late_minutes", "actual_minutes", "standard_minutes")],
               zero_i.label("skipped"), zero_i.label("abnormal"), cast(func.count(), Integer).label("interrupted"),
               cast(func.coalesce(func.sum(o.c.interrupted_minutes), 0), Float).label("interrupted_minutes"))
        .where(*_order_conditions(o, f=f, scope=scope, ranges=ranges),
               o.c.status == OrderStatus.INTERRUPTED.value)
        .group_by(day, o.c.campus_id, o.c.dept_id, o.c.loop_type_key, inode)
    )
    int_part = _scoped(int_part, scope, o.c.dept_id, o.c.campus_id)
    both = union_all(node_part, int_part).subquery("nodeparts")
    b = both.c
    return (select(*[b[k] for k in KEY_COLS], b.node_key, func.max(b.seq).label("seq"),
                   *[cast(func.sum(b[k]), Float if k.endswith("minutes") else Integer).label(k) for k in NODE_SUMS])
            .group_by(*[b[k] for k in KEY_COLS], b.node_key))


# ---------------------------------------------------------------- rollups


def refresh_rollups(*, start: date, end: date, now: datetime | None = None) -> dict[str, Any]:
    """Recompute the day-level rollups of order start days [start, end] from the raw tables (DELETE, then
    the aggregated rows of a GROUP BY inserted; caller commits). Returns {"days", "orders", "seconds"}."""
    now = now or utcnow()
    t0 = time.perf_counter()
    if _dialect() == "postgresql":
        db.session.execute(text("set local jit = off"))  # JIT compiling costs more than these queries run
    ranges = [(start, end)]
    for model in (LoopDailyStat, LoopDailyNodeStat, LoopDailyHistogram):
        db.session.execute(delete(model).where(model.day.between(start, end)))
    facts = _order_facts(f=None, scope=None, ranges=ranges, now=now)
    # aggregate with SELECT, then insert the (few thousand) rows: PostgreSQL runs a SELECT with parallel
    # workers but an INSERT … SELECT serially, which was 3-7 times slower here
    parts = (
        (LoopDailyStat, [*KEY_COLS, *STAT_SUMS], _raw_stat_select(facts)),
        (LoopDailyNodeStat, [*KEY_COLS, "node_key", "seq", *NODE_SUMS],
         _raw_node_select(f=None, scope=None, ranges=ranges)),
        (LoopDailyHistogram, [*KEY_COLS, "measure", "bucket", "n"], union_all(*_raw_hist_parts(facts))),
    )
    for model, cols, query in parts:
        values = [dict(zip(cols, r, strict=True)) for r in db.session.execute(query)]
        for v in values:
            if isinstance(v["day"], str):  # SQLite's date() gives text
                v["day"] = date.fromisoformat(v["day"])
        for i in range(0, len(values), 5000):
            db.session.execute(insert(model), values[i:i + 5000])
    if _dialect() == "postgresql" and (end - start).days >= 6:
        # a bulk refresh changes the tables' statistics; without fresh ones the planner sorts on disk
        for model in (LoopDailyStat, LoopDailyNodeStat, LoopDailyHistogram):
            db.session.execute(text(f"analyze {model.__tablename__}"))
    counts = dict(db.session.execute(select(LoopDailyStat.day, func.sum(LoopDailyStat.started))
                                     .where(LoopDailyStat.day.between(start, end)).group_by(LoopDailyStat.day)).all())
    seconds = time.perf_counter() - t0
    n_days = (end - start).days + 1
    existing = {r.day: r for r in db.session.scalars(select(LoopRollupDay).where(LoopRollupDay.day.between(start, end)))}
    for i in range(n_days):
        d = start + timedelta(days=i)
        row = existing.get(d)
        if row is None:
            row = LoopRollupDay(day=d)
            db.session.add(row)
        row.orders = int(counts.get(d) or 0)
        row.refreshed_at = now
        row.seconds = round(seconds / n_days, 4)
    db.session.flush()
    return {"days": n_days, "orders": int(sum(counts.values())), "seconds": round(seconds, 3)}


def _stale_after(age_days: int) -> timedelta:
    """How old a day's rollup may get: recent days change as late events arrive, older ones rarely."""
    if age_days <= 2:
        return TODAY_ROLLUP_MAX_AGE
    if age_days <= 14:
        return timedelta(hours=1)
    return timedelta(hours=24)


def stale_days(*, now: datetime | None = None, horizon: int = 60) -> list[date]:
    """Days up to today (Shanghai) within `horizon` days whose rollup is missing or older than allowed, newest
    first."""
    now = now or utcnow()
    end = today(now)
    begin = end - timedelta(days=horizon)
    done = dict(db.session.execute(select(LoopRollupDay.day, LoopRollupDay.refreshed_at)
                                   .where(LoopRollupDay.day >= begin)).all())
    out = []
    for age in range(0, horizon + 1):
        d = end - timedelta(days=age)
        at = done.get(d)
        if at is None or at < now - _stale_after(age):
            out.append(d)
    return out


def rollup_job(*, max_days: int = 5) -> int:
    """Periodic job: refresh the stalest recent days (at most max_days per run, newest first); commits."""
    days = stale_days()[:max_days]
    for a, b in _ranges(days):
        refresh_rollups(start=a, end=b)
        db.session.commit()
    return len(days)


# ---------------------------------------------------------------- planning a query


@dataclass
class Plan:
    rollup: list[tuple[date, date]] = field(default_factory=list)
    raw: list[tuple[date, date]] = field(default_factory=list)
    refreshed_at: datetime | None = None

    @property
    def exact_percentiles(self) -> bool:
        return not self.rollup and _dialect() == "postgresql"

    def describe(self) -> str:
        def fmt(rs):
            return "、".join(a.isoformat() if a == b else f"{a.isoformat()}～{b.isoformat()}" for a, b in rs)

        parts = []
        if self.rollup:
            parts.append(f"日汇总 {fmt(self.rollup)}")
        if self.raw:
            parts.append(f"实时明细 {fmt(self.raw)}")
        return "；".join(parts)


def plan(f: Filters, *, source: str = "auto", now: datetime | None = None) -> Plan:
    """Which days come from rollups and which from the raw tables. source: auto | raw | rollup."""
    if source not in ("auto", "raw", "rollup"):
        raise ValidationFailed({"source": "数据来源应为 auto、raw 或 rollup"})
    days = [f.date_from + timedelta(days=i) for i in range(f.days())]
    if source == "raw" or (source == "auto" and f.days() <= AUTO_RAW_MAX_DAYS):
        return Plan(raw=_ranges(days))
    rows = dict(db.session.execute(select(LoopRollupDay.day, LoopRollupDay.refreshed_at)
                                   .where(LoopRollupDay.day.between(f.date_from, f.date_to))).all())
    now = now or utcnow()
    last = today(now)
    # today's rollup is partial: auto reads it only while fresh (the job refreshes it every few minutes)
    use = [d for d in days if d in rows and (source == "rollup" or d < last
                                             or (d == last and rows[d] >= now - TODAY_ROLLUP_MAX_AGE))]
    rest = [d for d in days if d not in set(use)]
    refreshed = min((rows[d] for d in use), default=None)
    return Plan(rollup=_ranges(use), raw=_ranges(rest), refreshed_at=refreshed)


def _rollup_rows(model, cols: list[str], *, f: Filters, scope, p: Plan):
    t = model.__table__
    stmt = select(*[t.c[k] for k in cols]).where(_day_in(t.c.day, p.rollup),
                                                 t.c.loop_type_key.in_(_type_keys(f)))
    if f.campus_id:
        stmt = stmt.where(t.c.campus_id == f.campus_id)
    if f.dept_id:
        stmt = stmt.where(t.c.dept_id == f.dept_id)
    return _scoped(stmt, scope, t.c.dept_id, t.c.campus_id)


@dataclass
class Sources:
    """The three row sets (daily stats, node stats, histograms) for a filter, rollups ∪ raw."""

    stats: Any
    nodes: Any
    hist: Any
    facts: Any  # raw per-order facts (only when the whole range is raw)


def sources(f: Filters, *, scope, p: Plan, now: datetime | None = None) -> Sources:
    now = now or utcnow()
    stat_cols = [*KEY_COLS, *STAT_SUMS]
    node_cols = [*KEY_COLS, "node_key", "seq", *NODE_SUMS]
    hist_cols = [*KEY_COLS, "measure", "bucket", "n"]
    stats, nodes, hist = [], [], []
    facts = None
    if p.rollup:
        stats.append(_rollup_rows(LoopDailyStat, stat_cols, f=f, scope=scope, p=p))
        nodes.append(_rollup_rows(LoopDailyNodeStat, node_cols, f=f, scope=scope, p=p))
        hist.append(_rollup_rows(LoopDailyHistogram, hist_cols, f=f, scope=scope, p=p))
    if p.raw:
        facts = _order_facts(f=f, scope=scope, ranges=p.raw, now=now)
        stats.append(_raw_stat_select(facts))
        nodes.append(_raw_node_select(f=f, scope=scope, ranges=p.raw))
        hist.extend(_raw_hist_parts(facts))

    def combine(parts, name):
        return (parts[0] if len(parts) == 1 else union_all(*parts)).subquery(name)

    return Sources(stats=combine(stats, "stats"), nodes=combine(nodes, "nodes"), hist=combine(hist, "hist"),
                   facts=facts if not p.rollup else None)


# ---------------------------------------------------------------- measures


def _rate(num: float | int | None, den: float | int | None) -> float | None:
    return round(num / den, 4) if num is not None and den else None


def _avg(total: float | None, count: int | None) -> float | None:
    return round(float(total) / count, 1) if total is not None and count else None


def _num(v: Any) -> Any:
    return v if isinstance(v, int | float) else (float(v) if v is not None else 0)


def stat_totals(src: Sources) -> list[dict[str, Any]]:
    """The daily stats summed per (day, loop type): one scan of the rows, a few hundred rows back."""
    c = src.stats.c
    stmt = (select(c.day, c.loop_type_key, *[func.sum(c[k]).label(k) for k in STAT_SUMS])
            .group_by(c.day, c.loop_type_key))
    out = []
    for r in db.session.execute(stmt):
        row = {k: _num(getattr(r, k)) for k in STAT_SUMS}
        row["day"] = r.day if isinstance(r.day, date) else date.fromisoformat(str(r.day))
        row["loop_type_key"] = r.loop_type_key
        out.append(row)
    return out


def node_totals(src: Sources) -> list[dict[str, Any]]:
    """The node stats summed per (department, loop type, node): one scan, a few thousand rows back."""
    c = src.nodes.c
    stmt = (select(c.dept_id, c.loop_type_key, c.node_key, func.max(c.seq).label("seq"),
                   *[func.sum(c[k]).label(k) for k in NODE_SUMS])
            .group_by(c.dept_id, c.loop_type_key, c.node_key))
    out = []
    for r in db.session.execute(stmt):
        row = {k: _num(getattr(r, k)) for k in NODE_SUMS}
        row.update(dept_id=r.dept_id, loop_type_key=r.loop_type_key, node_key=r.node_key, seq=int(r.seq or 0))
        out.append(row)
    return out


CLOSURE_FIELDS = ("started", "due", "closed", "closed_clean", "interrupted", "in_progress", "overdue", "skipped_orders",
                  "abnormal_orders")


def closure(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Measure 1: per loop type and per category, with totals and the day trend."""
    fields = CLOSURE_FIELDS
    names, cats = loop_names(), loop_categories()
    by_loop: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(fields, 0))
    by_day: dict[date, dict[str, int]] = defaultdict(lambda: dict.fromkeys(fields, 0))
    for r in stats:
        for k in fields:
            by_loop[r["loop_type_key"]][k] += int(r[k])
            by_day[r["day"]][k] += int(r[k])
    out = []
    by_cat: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(fields, 0))
    total = dict.fromkeys(fields, 0)
    for key, vals in by_loop.items():
        item: dict[str, Any] = dict(vals)
        item.update(loop_type=key, name=names.get(key, key), category=cats.get(key, ""),
                    rate=_rate(vals["closed_clean"], vals["due"]))
        out.append(item)
        for k in fields:
            by_cat[item["category"]][k] += vals[k]
            total[k] += vals[k]
    order = list(names)
    out.sort(key=lambda i: order.index(i["loop_type"]) if i["loop_type"] in order else 99)
    cat_rows = [{"category": cat, **vals, "rate": _rate(vals["closed_clean"], vals["due"])}
                for cat, vals in sorted(by_cat.items(), key=lambda kv: -kv[1]["started"])]
    trend = [{"day": d, "started": v["started"], "due": v["due"], "closed_clean": v["closed_clean"],
              "rate": _rate(v["closed_clean"], v["due"])} for d, v in sorted(by_day.items())]
    return {"rows": out, "by_category": cat_rows, "total": {**total, "rate": _rate(total["closed_clean"], total["due"])},
            "trend": trend}


def timeliness(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Measure 2: node timeliness by department and for the whole hospital."""
    from app.auth.models import Department

    fields = ("timed", "early", "on_time", "late", "late_minutes")
    by_dept: dict[int | None, dict[str, Any]] = defaultdict(lambda: dict.fromkeys(fields, 0))
    for r in nodes:
        for k in fields:
            by_dept[r["dept_id"]][k] += r[k]
    depts = {d.id: d.name for d in db.session.scalars(select(Department))}

    def item(vals: dict[str, Any]) -> dict[str, Any]:
        vals = {k: (float(v) if k == "late_minutes" else int(v)) for k, v in vals.items()}
        return {**vals, "early_rate": _rate(vals["early"], vals["timed"]),
                "on_time_rate": _rate(vals["on_time"], vals["timed"]), "late_rate": _rate(vals["late"], vals["timed"]),
                "avg_late_minutes": _avg(vals["late_minutes"], vals["late"])}

    out = []
    total: dict[str, Any] = dict.fromkeys(fields, 0)
    for dept_id, vals in by_dept.items():
        if not vals["timed"]:
            continue
        for k in fields:
            total[k] += vals[k]
        out.append({"dept_id": dept_id, "dept_name": depts.get(dept_id, "未归属科室") if dept_id else "未归属科室",
                    **item(vals)})
    out.sort(key=lambda i: (-(i["late_rate"] or 0), i["dept_name"]))
    return {"rows": out, "total": item(total), "early_ratio": EARLY_RATIO}


def interruption(stats: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Measure 3: interruption rate per stage (and node), with mean minutes before interruption."""
    started = int(sum(r["started"] for r in stats))
    per_node: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for r in nodes:
        if r["interrupted"]:
            acc = per_node[(r["loop_type_key"], r["node_key"])]
            acc[0] += int(r["interrupted"])
            acc[1] += float(r["interrupted_minutes"])
    names, nnames = loop_names(), node_names()
    stages: dict[str, dict[str, Any]] = {k: {"stage": k, "label": v, "interrupted": 0, "minutes": 0.0}
                                         for k, v in STAGE_LABELS.items()}
    out: list[dict[str, Any]] = []
    for (loop, node), (n, minutes) in per_node.items():
        st = stage_of(node)
        stages[st]["interrupted"] += int(n)
        stages[st]["minutes"] += minutes
        out.append({"loop_type": loop, "loop_name": names.get(loop, loop), "node_key": node,
                    "node_name": nnames.get((loop, node), node or "未知"), "stage": st, "stage_label": STAGE_LABELS[st],
                    "interrupted": int(n), "rate": _rate(int(n), started), "avg_minutes": _avg(minutes, int(n))})
    out.sort(key=lambda i: (-i["interrupted"], i["loop_type"], i["node_key"]))
    stage_rows = [{**s, "rate": _rate(s["interrupted"], started), "avg_minutes": _avg(s["minutes"], s["interrupted"])}
                  for s in stages.values()]
    n_all = sum(s["interrupted"] for s in stage_rows)
    minutes_all = sum(s["minutes"] for s in stage_rows)
    return {"started": started, "stages": stage_rows, "nodes": out,
            "total": {"interrupted": n_all, "rate": _rate(n_all, started), "avg_minutes": _avg(minutes_all, n_all)}}


def _percentile_from_hist(counts: dict[int, int], q: float) -> float | None:
    total = sum(counts.values())
    if not total:
        return None
    target = q * total
    seen = 0
    for b in sorted(counts):
        n = counts[b]
        if seen + n >= target:
            lower = BUCKETS[b - 1] if b > 0 else 0
            if b >= len(BUCKETS):
                return float(lower)
            upper = BUCKETS[b]
            return round(lower + (upper - lower) * ((target - seen) / n), 1)
        seen += n
    return None


TURNAROUND_LOOPS: dict[str, tuple[str, ...] | None] = {"cycle": LAB_LOOPS, "booking": ("exam",), "report": ("exam",),
                                                       "exec": None}


def turnarounds(src: Sources, p: Plan, stats: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """count/avg/median/p90 per turnaround measure and loop type: measure -> loop -> figures (one histogram
    query on rollups; exact percentiles, one query, when the whole range is raw)."""
    h = src.hist.c
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for r in stats:
        for m in MEASURES:
            acc = sums[(m, r["loop_type_key"])]
            acc[0] += int(r[f"{m}_count"])
            acc[1] += float(r[f"{m}_minutes"])
    out: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in MEASURES}
    for (m, key), (n, total) in sums.items():
        loops = TURNAROUND_LOOPS[m]
        if n and (loops is None or key in loops):
            out[m][key] = {"count": int(n), "avg": _avg(total, int(n)), "median": None, "p90": None,
                           "approx": not p.exact_percentiles}
    if p.exact_percentiles and src.facts is not None:
        fc = src.facts.c
        cols = []
        for m in MEASURES:  # percentile_cont skips NULLs: one pass gives every measure
            cols += [func.percentile_cont(0.5).within_group(fc[m]).label(f"{m}_median"),
                     func.percentile_cont(0.9).within_group(fc[m]).label(f"{m}_p90")]
        for pr in db.session.execute(select(fc.loop_type_key, *cols).group_by(fc.loop_type_key)):
            for m in MEASURES:
                got = out[m].get(pr.loop_type_key)
                if got is not None and getattr(pr, f"{m}_median") is not None:
                    got["median"] = round(float(getattr(pr, f"{m}_median")), 1)
                    got["p90"] = round(float(getattr(pr, f"{m}_p90")), 1)
        return out
    hist: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    for hr in db.session.execute(select(h.measure, h.loop_type_key, h.bucket, func.sum(h.n).label("n"))
                                 .group_by(h.measure, h.loop_type_key, h.bucket)):
        if hr.loop_type_key in out.get(hr.measure, {}):
            hist[(hr.measure, hr.loop_type_key)][int(hr.bucket)] = int(hr.n)
    for (m, key), counts in hist.items():
        out[m][key]["median"] = _percentile_from_hist(counts, 0.5)
        out[m][key]["p90"] = _percentile_from_hist(counts, 0.9)
    return out


def lab_turnaround(t: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Measure 5: lab and critical-value loops, first node → last node (closed loops)."""
    names = loop_names()
    got = t["cycle"]
    return {"rows": [{"loop_type": k, "name": names.get(k, k), **got[k]} for k in LAB_LOOPS if k in got]}


def exam_turnaround(t: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Measure 6: exam loop, request → booking and request → report."""
    rows = []
    for measure, label in (("booking", "检查申请→检查预约"), ("report", "检查申请→检查报告打印")):
        got = t[measure].get("exam")
        if got:
            rows.append({"measure": measure, "label": label, "loop_type": "exam", **got})
    return {"rows": rows}


def exec_turnaround(t: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Measure 7: first node (开立/申请) → the loop's execution node, per loop type."""
    names, nnames = loop_names(), node_names()
    got = t["exec"]
    rows = [{"loop_type": k, "name": names.get(k, k), "exec_node": EXEC_NODE.get(k, ""),
             "exec_node_name": nnames.get((k, EXEC_NODE.get(k, "")), ""), **got[k]} for k in names if k in got]
    return {"rows": rows}


def node_durations(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Measure 8: per loop type and node, mean actual vs standard minutes and the deviation."""
    fields = ("timed", "late", "skipped", "abnormal", "actual_minutes", "standard_minutes")
    per: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {**dict.fromkeys(fields, 0), "seq": 0})
    for r in nodes:
        acc = per[(r["loop_type_key"], r["node_key"])]
        for k in fields:
            acc[k] += r[k]
        acc["seq"] = max(acc["seq"], r["seq"])
    names, nnames = loop_names(), node_names()
    out = []
    for (loop, node), v in per.items():
        if (loop, node) not in nnames and not v["timed"]:
            continue  # an interruption row for a node no longer in the definition
        n = int(v["timed"])
        avg_actual, avg_std = _avg(v["actual_minutes"], n), _avg(v["standard_minutes"], n)
        out.append({"loop_type": loop, "loop_name": names.get(loop, loop), "node_key": node,
                    "node_name": nnames.get((loop, node), node), "seq": int(v["seq"]), "count": n,
                    "avg_actual": avg_actual, "avg_standard": avg_std,
                    "avg_deviation": round(avg_actual - avg_std, 1) if avg_actual is not None and avg_std is not None
                    else None,
                    "late": int(v["late"]), "late_rate": _rate(int(v["late"]), n), "skipped": int(v["skipped"]),
                    "abnormal": int(v["abnormal"])})
    order = list(names)
    out.sort(key=lambda i: (order.index(i["loop_type"]) if i["loop_type"] in order else 99, i["seq"]))
    return {"rows": out}


# ---------------------------------------------------------------- alerts (another module; optional)


def alert_model() -> Any:
    """app.loops.alerts.LoopAlert when that module is installed, else None."""
    try:
        from importlib import import_module

        mod = import_module("app.loops.alerts")
    except ImportError:
        return None
    return getattr(mod, "LoopAlert", None)


DEFAULT_ALERT_LABELS = {"skipped": "缺环", "abnormal": "环节异常", "overdue": "超时未闭环", "stalled": "流程停滞",
                        "late": "节点延迟"}


def alert_time(A: Any) -> Any:
    """When an alert was raised (raised_at in app.loops.alerts; created_at accepted too)."""
    col = getattr(A, "raised_at", None)
    return col if col is not None else A.created_at


def alert_labels() -> dict[str, str]:
    try:
        from importlib import import_module

        mod = import_module("app.loops.alerts")
    except ImportError:
        return dict(DEFAULT_ALERT_LABELS)
    for name in ("KIND_LABELS", "ALERT_KIND_LABELS", "ALERT_KINDS"):
        labels = getattr(mod, name, None)
        if isinstance(labels, dict):
            return {**DEFAULT_ALERT_LABELS, **{str(k): str(v) for k, v in labels.items()}}
    return dict(DEFAULT_ALERT_LABELS)


def _alert_conditions(A, f: Filters) -> list:
    from app.auth.models import Department

    at = alert_time(A)
    conds = [at >= day_start(f.date_from), at < day_start(f.date_to + timedelta(days=1))]
    if f.dept_id:
        conds.append(A.dept_id == f.dept_id)
    if f.campus_id:
        if hasattr(A, "campus_id"):
            conds.append(A.campus_id == f.campus_id)
        else:
            conds.append(A.dept_id.in_(select(Department.id).where(Department.campus_id == f.campus_id)))
    if f.loop_type or f.category:
        keys = _type_keys(f)
        if hasattr(A, "loop_type_key"):
            conds.append(A.loop_type_key.in_(keys))
        elif hasattr(A, "order_id"):
            conds.append(A.order_id.in_(select(LoopOrder.id).where(LoopOrder.loop_type_key.in_(keys))))
    return conds


def alerts(f: Filters, *, scope) -> dict[str, Any]:
    """Measure 4: confirmed / all alerts per kind (zeros when the alerts module is absent)."""
    A = alert_model()
    if A is None:
        return {"available": False, "rows": [], "total": {"total": 0, "confirmed": 0, "rate": None}}
    st = A.status
    stmt = (select(A.kind, func.count().label("total"), func.sum(_flag(st == "confirmed")).label("confirmed"),
                   func.sum(_flag(st == "dismissed")).label("dismissed"),
                   func.sum(_flag(st == "open")).label("open"))
            .where(*_alert_conditions(A, f)).group_by(A.kind))
    stmt = _scoped(stmt, scope, A.dept_id, getattr(A, "campus_id", None))
    labels = alert_labels()
    rows = []
    for r in db.session.execute(stmt):
        total, confirmed = int(r.total), int(r.confirmed or 0)
        rows.append({"kind": r.kind, "label": labels.get(r.kind, r.kind), "total": total, "confirmed": confirmed,
                     "dismissed": int(r.dismissed or 0), "open": int(r.open or 0), "rate": _rate(confirmed, total)})
    rows.sort(key=lambda i: -i["total"])
    total = sum(r["total"] for r in rows)
    confirmed = sum(r["confirmed"] for r in rows)
    return {"available": True, "rows": rows, "total": {"total": total, "confirmed": confirmed,
                                                        "rate": _rate(confirmed, total)}}


# ---------------------------------------------------------------- the whole dashboard


def dashboard(*, f: Filters, scope, source: str = "auto", now: datetime | None = None) -> dict[str, Any]:
    """All eight measures for a filter within the viewer's data scope. Read-only."""
    now = now or utcnow()
    if _dialect() == "postgresql":
        # the raw queries look expensive to the planner, whose JIT then spends ~1 s compiling what runs in 0.1 s
        db.session.execute(text("set local jit = off"))
    p = plan(f, source=source, now=now)
    src = sources(f, scope=scope, p=p, now=now)
    stats, nodes = stat_totals(src), node_totals(src)
    tat = turnarounds(src, p, stats)
    return {
        "closure": closure(stats), "timeliness": timeliness(nodes), "interruption": interruption(stats, nodes),
        "alerts": alerts(f, scope=scope), "lab": lab_turnaround(tat), "exam": exam_turnaround(tat),
        "exec": exec_turnaround(tat), "nodes": node_durations(nodes),
        "plan": {"description": p.describe(), "refreshed_at": p.refreshed_at,
                 "approx_percentiles": not p.exact_percentiles},
    }


# ---------------------------------------------------------------- drill-down: the orders behind a figure

DRILL_KINDS = {
    "closure": ("started", "due", "closed", "closed_clean", "not_clean", "interrupted", "in_progress", "overdue",
                "skipped", "abnormal"),
    "timeliness": ("timed", "early", "on_time", "late"),
    "nodes": ("timed", "late", "skipped", "abnormal"),
}
DRILL_LABELS = {
    "started": "全部开始的医嘱", "due": "应闭环", "closed": "已闭环", "closed_clean": "完整闭环", "not_clean": "应闭环未完整闭环",
    "interrupted": "已中断", "in_progress": "进行中", "overdue": "超时未闭环", "skipped": "有缺环", "abnormal": "有异常",
    "timed": "有用时记录", "early": "提前", "on_time": "按时", "late": "延迟",
}
TURNAROUND_PANELS = {"lab": "cycle", "exam_booking": "booking", "exam_report": "report", "exec": "exec"}
PANELS = ("closure", "timeliness", "interruption", "alerts", "lab", "exam_booking", "exam_report", "exec", "nodes")


@dataclass(frozen=True)
class Drill:
    panel: str
    kind: str | None = None
    loop_type: str | None = None
    category: str | None = None
    dept: str | None = None  # a department id, or "none" for orders without one
    stage: str | None = None
    node: str | None = None
    alert_kind: str | None = None
    confirmed: bool = False

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"panel": self.panel}
        for k in ("kind", "loop_type", "category", "dept", "stage", "node", "alert_kind"):
            v = getattr(self, k)
            if v:
                out[f"d_{k}"] = v
        if self.confirmed:
            out["d_confirmed"] = "1"
        return out


def parse_drill(args: Any) -> Drill:
    """The drill-down target from query arguments (panel + d_* parameters). Raises ValidationFailed."""
    errors: dict[str, str] = {}
    panel = (args.get("panel") or "").strip()
    if panel not in PANELS:
        errors["panel"] = "请选择要查看的指标（panel）"
    kind = (args.get("d_kind") or "").strip() or None
    allowed = DRILL_KINDS.get(panel)
    if kind and allowed is not None and kind not in allowed:
        errors["d_kind"] = f"无效的分类「{kind}」"
    loop_type = (args.get("d_loop_type") or "").strip() or None
    if loop_type and loop_type not in loop_names():
        errors["d_loop_type"] = f"未知的闭环类型「{loop_type}」"
    dept = (args.get("d_dept") or "").strip() or None
    if dept and not (dept.isdigit() or dept == "none"):
        errors["d_dept"] = "科室应为编号"
    stage = (args.get("d_stage") or "").strip() or None
    if stage and stage not in STAGE_LABELS:
        errors["d_stage"] = f"无效的环节阶段「{stage}」"
    if errors:
        raise ValidationFailed(errors)
    return Drill(panel=panel, kind=kind, loop_type=loop_type, category=(args.get("d_category") or "").strip() or None,
                 dept=dept, stage=stage, node=(args.get("d_node") or "").strip() or None,
                 alert_kind=(args.get("d_alert_kind") or "").strip() or None,
                 confirmed=args.get("d_confirmed") == "1")


def drill_title(d: Drill) -> str:
    names, nnames = loop_names(), node_names()
    parts = [{"closure": "闭环达成", "timeliness": "执行及时", "interruption": "闭环中断", "alerts": "告警",
              "lab": "检验周转", "exam_booking": "检查预约周转", "exam_report": "检查报告周转", "exec": "医嘱执行周转",
              "nodes": "节点耗时"}[d.panel]]
    if d.loop_type:
        parts.append(names.get(d.loop_type, d.loop_type))
    if d.category:
        parts.append(d.category)
    if d.stage:
        parts.append(f"{STAGE_LABELS[d.stage]}阶段")
    if d.node:
        parts.append(nnames.get((d.loop_type or "", d.node), d.node))
    if d.alert_kind:
        parts.append(alert_labels().get(d.alert_kind, d.alert_kind) + ("（已核实）" if d.confirmed else ""))
    if d.kind:
        parts.append(DRILL_LABELS.get(d.kind, d.kind))
    return " · ".join(parts)


def _node_class(s, kind: str):
    m, std = s.minutes_since_previous, s.standard_minutes
    timed = and_(s.status.in_(DONE), m.is_not(None), std > 0)
    return {
        "timed": timed, "early": and_(timed, m < std * EARLY_RATIO),
        "on_time": and_(timed, m >= std * EARLY_RATIO, m <= std), "late": and_(timed, m > std),
        "skipped": s.status.in_((NodeStatus.SKIPPED.value, NodeStatus.LATE.value)),
        "abnormal": or_(s.status == NodeStatus.ABNORMAL.value, s.note.like("异常%")),
    }[kind]


def drill_query(*, f: Filters, scope, d: Drill, now: datetime | None = None):
    """select(LoopOrder, value) of the orders behind a figure (value: the figure's minutes, where it has one),
    newest or largest first; paginate it. Raises ValidationFailed for an impossible combination."""
    now = now or utcnow()
    o = LoopOrder
    value: Any = cast(literal(None), Float)
    conds = [o.loop_type_key.in_(_type_keys(f)), _started_in(o.started_at, [(f.date_from, f.date_to)])]
    if f.campus_id:
        conds.append(o.campus_id == f.campus_id)
    if f.dept_id:
        conds.append(o.dept_id == f.dept_id)
    if d.loop_type:
        conds.append(o.loop_type_key == d.loop_type)
    if d.category:
        cats = loop_categories()
        conds.append(o.loop_type_key.in_([k for k, c in cats.items() if c == d.category]))
    if d.dept == "none":
        conds.append(o.dept_id.is_(None))
    elif d.dept:
        conds.append(o.dept_id == int(d.dept))
    order_by: list[Any] = [o.started_at.desc(), o.id.desc()]
    if d.panel == "closure":
        expected = expected_minutes()
        cutoff = case({k: literal(now - timedelta(minutes=m), UTCDateTime()) for k, m in expected.items()},
                      value=o.loop_type_key, else_=literal(now - timedelta(days=1), UTCDateTime()))
        closed = o.status == OrderStatus.CLOSED.value
        interrupted = o.status == OrderStatus.INTERRUPTED.value
        overdue = and_(o.status == OrderStatus.IN_PROGRESS.value, o.started_at <= cutoff)
        kind_cond = {
            None: true(), "started": true(), "due": or_(closed, interrupted, overdue), "closed": closed,
            "closed_clean": and_(closed, o.has_skipped.is_(False)),
            "not_clean": or_(and_(closed, o.has_skipped.is_(True)), interrupted, overdue),
            "interrupted": interrupted, "in_progress": o.status == OrderStatus.IN_PROGRESS.value, "overdue": overdue,
            "skipped": o.has_skipped.is_(True), "abnormal": o.has_abnormal.is_(True),
        }[d.kind]
        conds.append(kind_cond)
        value = _minutes_between(o.started_at, func.coalesce(o.ended_at, literal(now, UTCDateTime())))
    elif d.panel in ("timeliness", "nodes"):
        s = aliased(LoopNodeState)
        sub = [s.order_id == o.id, _node_class(s, d.kind or "timed")]
        if d.node:
            sub.append(s.node_key == d.node)
        if d.panel == "nodes":
            value = (select(func.max(s.deviation_minutes)).where(*sub).correlate(o).scalar_subquery())
            order_by = [value.desc().nulls_last(), o.id.desc()] if _dialect() == "postgresql" else [value.desc()]
        conds.append(exists(select(s.id).where(*sub)))
    elif d.panel == "interruption":
        conds.append(o.status == OrderStatus.INTERRUPTED.value)
        if d.node:
            conds.append(o.interrupted_node == d.node)
        elif d.stage:
            keys = {n for (_t, n) in node_names()} | set(STAGES)
            in_stage = [k for k in keys if stage_of(k) == d.stage]
            conds.append(o.interrupted_node.in_(in_stage))
        value = cast(o.interrupted_minutes, Float)
        order_by = [o.interrupted_minutes.desc(), o.id.desc()]
    elif d.panel == "alerts":
        A = alert_model()
        if A is None:
            conds.append(false())
        else:
            sub = [*_alert_conditions(A, f)]
            if d.alert_kind:
                sub.append(A.kind == d.alert_kind)
            if d.confirmed:
                sub.append(A.status == "confirmed")
            if hasattr(A, "order_id"):
                conds.append(o.id.in_(select(A.order_id).where(*sub)))
            elif hasattr(A, "order_no"):
                conds.append(o.order_no.in_(select(A.order_no).where(*sub)))
            else:
                conds.append(false())
    else:  # turnarounds
        measure = TURNAROUND_PANELS[d.panel]
        if measure == "cycle":
            if not d.loop_type:
                conds.append(o.loop_type_key.in_(LAB_LOOPS))
            conds.append(o.status == OrderStatus.CLOSED.value)
            value = _minutes_between(o.started_at, o.ended_at)
        else:
            s = aliased(LoopNodeState)
            node: Any
            if measure == "exec":
                node = case(EXEC_NODE, value=o.loop_type_key, else_=literal("administer"))
            else:
                conds.append(o.loop_type_key == "exam")
                node = literal("booking" if measure == "booking" else "report_print")
            at = (select(func.min(s.occurred_at)).where(s.order_id == o.id, s.node_key == node, s.status.in_(DONE))
                  .correlate(o).scalar_subquery())
            conds.append(at.is_not(None))
            value = _minutes_between(o.started_at, at)
        order_by = [value.desc(), o.id.desc()]
    stmt = select(o, value.label("value")).where(*conds).order_by(*order_by)
    return _scoped(stmt, scope, o.dept_id, o.campus_id)
