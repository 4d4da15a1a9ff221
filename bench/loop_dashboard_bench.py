"""闭环看板 at scale: bulk-load N orders (default 1,000,000) with their node states into PostgreSQL, build the
day-level rollups, then time a month's dashboard (all eight measures) from rollups and from the raw tables.

Prints figures; never asserts on timing. Run from the repository root:

    .venv/bin/python bench/loop_dashboard_bench.py                      # 1,000,000 orders over 30 days
    .venv/bin/python bench/loop_dashboard_bench.py --orders 100000      # a quicker run
    .venv/bin/python bench/loop_dashboard_bench.py --reuse              # keep the loaded data, time again
    .venv/bin/python bench/loop_dashboard_bench.py --raw-repeats 0      # skip the (slow) raw-table timing

It owns the database `medloop_bench_loopdash` (or --url / BENCH_LOOPS_DATABASE_URL): its schema is dropped and
rebuilt with the Alembic migrations unless --reuse. Rows are generated in Python and streamed with COPY
(psycopg), not sent through the API: orders and node states look like what the applier writes (statuses,
minutes since the previous node, deviations, 缺环, 异常, cancellations, loops still running today).
What the figures mean:
- load: schema (Alembic) + demo organisation; generate + COPY (secondary indexes and constraints dropped first);
  rebuilding them; VACUUM ANALYZE; the rollups of every day (metrics.refresh_rollups, server-side INSERT … SELECT).
- rollup refresh: what the periodic job `loops.rollups` pays per tick (today and the two days before) and for one
  older day.
- dashboard: metrics.dashboard(...) with all eight measures, as the page calls it (own session per run, the
  first run discarded as warm-up); `rollups only` reads only day rollups, `auto` is what the page does (rollups
  for past days, today's rollup while younger than 5 minutes, else today raw; ranges of ≤ 2 days raw), `raw
  tables only` recomputes everything from loop_orders/loop_node_states. The bracket says which days came from
  where. Figures move a lot on this shared 2-core machine: compare orders of magnitude.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/medloop_bench_loopdash"
N_DEPTS = 40  # clinical departments of a large hospital, over two campuses


# ---------------------------------------------------------------- setup


def ensure_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.scalar(text("select 1 from pg_database where datname = :n"), {"n": u.database}):
            conn.execute(text(f'create database "{u.database}"'))
    admin.dispose()


def build_app(url: str):
    from app import create_app
    from app.config import Config

    cfg = Config()
    cfg.SQLALCHEMY_DATABASE_URI = url
    cfg.IN_PROCESS_SCHEDULER = False
    cfg.LOOPS_DEMO_FEED = False  # type: ignore[attr-defined]
    return create_app(cfg)


def reset_schema(app) -> None:
    from flask_migrate import upgrade
    from sqlalchemy import text

    from app.db import db

    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text("drop schema public cascade; create schema public"))
        upgrade()


def prepare(app) -> list[tuple[int, int, str, str]]:
    """Demo organisation + loop types, plus N_DEPTS bench departments. Returns (dept id, campus id, HIS code,
    campus code) of the clinical departments."""
    from sqlalchemy import select

    from app.auth.models import Campus, Department
    from app.db import db
    from app.demo import load_demo

    with app.app_context():
        load_demo()
        campuses = list(db.session.scalars(select(Campus).order_by(Campus.id)))
        have = {d.code for d in db.session.scalars(select(Department))}
        for i in range(N_DEPTS):
            code = f"B{i:03d}"
            if code not in have:
                db.session.add(Department(code=code, name=f"临床{i + 1:02d}科", campus_id=campuses[i % 2].id,
                                          his_code=f"8{i:03d}", kind="clinical"))
        db.session.commit()
        by_campus = {c.id: c.code for c in campuses}
        return [(d.id, d.campus_id, d.his_code or d.code, by_campus[d.campus_id])
                for d in db.session.scalars(select(Department).where(Department.code.like("B%"))
                                            .order_by(Department.id))]


# ---------------------------------------------------------------- bulk load

ORDER_COLS = ("id", "order_no", "loop_type_key", "loop_type_id", "status", "patient_id", "patient_name", "inpatient_no",
              "dept_code", "dept_id", "campus_code", "campus_id", "current_node", "started_at", "ended_at",
              "interrupted_node", "interrupted_minutes", "has_skipped", "has_abnormal", "pending", "last_event_at",
              "created_at")
STATE_COLS = ("id", "order_id", "seq", "node_key", "name", "status", "occurred_at", "operator_id", "operator_name",
              "terminal", "source", "minutes_since_previous", "standard_minutes", "deviation_minutes", "note")


def _index_ddl(cur, tables: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(drop statements, create statements) for the secondary indexes and constraints of the tables, so the
    COPY writes heap pages only; they are rebuilt afterwards (indexes first, then constraints)."""
    drops: list[str] = []
    creates: list[str] = []
    fk_drops: list[str] = []
    cur.execute("""select conrelid::regclass::text, conname, pg_get_constraintdef(oid), contype from pg_constraint
                   where conrelid::regclass::text = any(%s) and contype in ('u', 'f')""", (list(tables),))
    constraint_names = set()
    for table, name, definition, kind in cur.fetchall():
        constraint_names.add(name)
        (fk_drops if kind == "f" else drops).append(f'alter table {table} drop constraint "{name}"')
        creates.append(f'alter table {table} add constraint "{name}" {definition}')
    cur.execute("""select tablename, indexname, indexdef from pg_indexes where tablename = any(%s)
                   and indexname not like 'pk_%%'""", (list(tables),))
    for _table, name, definition in cur.fetchall():
        if name in constraint_names:
            continue
        drops.append(f'drop index "{name}"')
        creates.insert(0, definition)
    return fk_drops + drops, creates


def bulk_load(url: str, *, orders: int, days: int, seed: int, depts: list[tuple[int, int, str, str]],
              now: datetime) -> dict[str, float]:
    """Generate `orders` orders started over the `days` days up to now, with their node states, COPY them in."""
    import psycopg

    from app.loops.catalog import LOOPS
    from app.loops.generator import CANCEL_RATE, LOOP_WEIGHTS, NODE_SOURCE

    rng = random.Random(seed)
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    timings: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=False) as conn, conn.cursor() as cur:
        cur.execute("set synchronous_commit = off")
        cur.execute("set maintenance_work_mem = '512MB'")
        cur.execute("select key, id from loop_types where campus_id is null")
        type_ids = dict(cur.fetchall())
        drops, creates = _index_ddl(cur, ("loop_orders", "loop_node_states"))
        for stmt in drops:
            cur.execute(stmt)
        conn.commit()

        defs = [d for d in LOOPS if d.key in LOOP_WEIGHTS]
        weights = [LOOP_WEIGHTS[d.key] for d in defs]
        # per loop: static text of each node row (seq, key, name, standard, source)
        static = {d.key: [(i, n.key, n.name, n.standard_minutes, NODE_SOURCE.get(n.key, ("HIS",))[0])
                          for i, n in enumerate(d.nodes)] for d in defs}
        # lognormal delay factors, precomputed (median 0.74 of the standard, long right tail)
        factors = [math.exp(rng.gauss(-0.3, 0.55)) for _ in range(65536)]
        slowness = [0.8 + 0.5 * rng.random() for _ in depts]
        t0_min = int((now - timedelta(days=days)).timestamp() // 60)
        now_min = int(now.timestamp() // 60)
        ts_cache: dict[int, str] = {}

        def ts(minute: int) -> str:
            s = ts_cache.get(minute)
            if s is None:
                s = datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%d %H:%M:00+00")
                ts_cache[minute] = s
            return s

        t_gen = time.perf_counter()
        state_id = 0
        n_states = 0
        order_copy = f"copy loop_orders ({', '.join(ORDER_COLS)}) from stdin"
        state_copy = f"copy loop_node_states ({', '.join(STATE_COLS)}) from stdin"
        rand, randrange, choices = rng.random, rng.randrange, rng.choices
        span = now_min - t0_min
        null = "\\N"
        oid = 0
        while oid < orders:
            order_buf: list[str] = []
            state_buf: list[str] = []
            for _ in range(min(20000, orders - oid)):
                oid += 1
                d = choices(defs, weights)[0]
                di = randrange(len(depts))
                dept_id, campus_id, dept_code, campus_code = depts[di]
                slow = slowness[di]
                start = t0_min + randrange(span)
                if rand() < 0.8:  # most orders are written during the day shift (Beijing time)
                    local = (start + 480) % 1440
                    if local < 480 or local >= 1080:
                        start = start - local + 480 + randrange(600)
                        if start >= now_min:
                            start = now_min - randrange(1, 600)
                nodes = static[d.key]
                n = len(nodes)
                r = rand()
                cancel_at = randrange(1, n) if r < CANCEL_RATE else -1
                missing = randrange(1, n - 1) if CANCEL_RATE <= r < CANCEL_RATE + 0.02 and n > 2 else -1
                abnormal_at = randrange(1, n) if rand() < 0.02 else -1
                t = prev_done = start
                status = "closed"
                current = ended = interrupted_minutes = None
                skipped = abnormal = False
                for seq, key, name, std, source in nodes:
                    state_id += 1
                    if seq:
                        t += max(1, int(std * factors[randrange(65536)] * slow)) if std else randrange(1, 5)
                    if status == "closed" and t > now_min:  # not happened yet: the loop is still running
                        status, current = "in_progress", key
                        state_buf.append(f"{state_id}\t{oid}\t{seq}\t{key}\t{name}\tcurrent\t{null}\t{null}\t{null}\t"
                                         f"{null}\t{null}\t{null}\t{std}\t{null}\t{null}\n")
                        continue
                    if status == "closed" and seq == cancel_at:  # 医嘱停止 while waiting for this node
                        status, current = "interrupted", key
                        ended = prev_done + max(1, (t - prev_done) // 2)
                        interrupted_minutes = ended - start
                    if status != "closed":
                        state_buf.append(f"{state_id}\t{oid}\t{seq}\t{key}\t{name}\tpending\t{null}\t{null}\t{null}\t"
                                         f"{null}\t{null}\t{null}\t{std}\t{null}\t{null}\n")
                        continue
                    if seq == missing:  # 缺环
                        skipped = True
                        state_buf.append(f"{state_id}\t{oid}\t{seq}\t{key}\t{name}\tskipped\t{null}\t{null}\t{null}\t"
                                         f"{null}\t{null}\t{null}\t{std}\t{null}\t缺环：超过等待时长仍未收到该节点\n")
                        continue
                    note = null
                    if seq == abnormal_at:
                        abnormal, note = True, "异常：标本溶血，拒收"
                    if seq:
                        msp = t - prev_done
                        state_buf.append(f"{state_id}\t{oid}\t{seq}\t{key}\t{name}\tdone\t{ts(t)}\tN{2000 + seq}\t"
                                         f"操作员{seq}\t{source}-{di % 8}\t{source}\t{msp}\t{std}\t{msp - std}\t{note}\n")
                    else:
                        state_buf.append(f"{state_id}\t{oid}\t{seq}\t{key}\t{name}\tdone\t{ts(t)}\tD2001\t开单医生\t"
                                         f"医生站-{di % 8}\tHIS\t{null}\t{std}\t{null}\t{null}\n")
                    prev_done = t
                if status == "closed":
                    ended = prev_done
                n_states += n
                order_buf.append("\t".join((
                    str(oid), f"B{seed}-{oid:08d}", d.key, str(type_ids[d.key]), status, f"P{oid % 400000:07d}",
                    f"患者{oid % 997}", f"ZY{oid:010d}", dept_code, str(dept_id), campus_code, str(campus_id),
                    current or null, ts(start), ts(ended) if ended is not None else null,
                    current if status == "interrupted" else null,
                    str(interrupted_minutes) if interrupted_minutes is not None else null,
                    "t" if skipped else "f", "t" if abnormal else "f", "f", ts(prev_done), ts(start))) + "\n")
            with cur.copy(order_copy) as cp:
                cp.write("".join(order_buf))
            with cur.copy(state_copy) as cp:
                cp.write("".join(state_buf))
            if oid % 200000 == 0 or oid == orders:
                print(f"  … {oid:,} orders, {n_states:,} node states, {time.perf_counter() - t_gen:.0f} s", flush=True)
        conn.commit()
        timings["generate + COPY"] = time.perf_counter() - t_gen
        t_idx = time.perf_counter()
        for stmt in creates:
            cur.execute(stmt)
        cur.execute("select setval(pg_get_serial_sequence('loop_orders', 'id'), %s)", (oid,))
        cur.execute("select setval(pg_get_serial_sequence('loop_node_states', 'id'), %s)", (state_id,))
        conn.commit()
        timings["indexes + constraints"] = time.perf_counter() - t_idx
        t_an = time.perf_counter()
        conn.autocommit = True
        cur.execute("vacuum analyze loop_orders")
        cur.execute("vacuum analyze loop_node_states")
        timings["vacuum analyze"] = time.perf_counter() - t_an
        timings["node states"] = n_states
    return timings


# ---------------------------------------------------------------- timing


def time_dashboard(app, f, *, source: str, repeats: int) -> tuple[list[float], int, dict]:
    from sqlalchemy import event

    from app.db import db
    from app.loops import metrics

    times = []
    count = [0]
    data: dict = {}
    with app.app_context():
        def counter(*_a):
            count[0] += 1

        event.listen(db.engine, "before_cursor_execute", counter)
        try:
            for _ in range(repeats):
                db.session.remove()  # a fresh session per run, as a request gets
                count[0] = 0
                t = time.perf_counter()
                data = metrics.dashboard(f=f, scope=None, source=source)
                times.append(time.perf_counter() - t)
                db.session.rollback()
        finally:
            event.remove(db.engine, "before_cursor_execute", counter)
            db.session.remove()
    return times, count[0], data


def fmt_ms(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{statistics.median(values) * 1000:,.0f} ms (min {min(values) * 1000:,.0f}, max {max(values) * 1000:,.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", "-n", type=int, default=1_000_000, help="orders to load (default 1,000,000)")
    ap.add_argument("--days", type=int, default=30, help="days the orders start over, up to now (default 30)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", "-r", type=int, default=5, help="timed dashboard runs from rollups (median)")
    ap.add_argument("--raw-repeats", type=int, default=1, help="timed runs from the raw tables (slow; 0 to skip)")
    ap.add_argument("--reuse", action="store_true", help="keep the loaded database; only time again")
    ap.add_argument("--url", default=os.environ.get("BENCH_LOOPS_DATABASE_URL", DEFAULT_URL))
    args = ap.parse_args()

    from app.db import db
    from app.loops import metrics

    print(f"MedLoop loop dashboard benchmark — {platform.node()}, {os.cpu_count()} CPU, Python "
          f"{platform.python_version()}")
    ensure_database(args.url)
    app = build_app(args.url)
    now = datetime.now(UTC)
    end = metrics.today(now)
    start = end - timedelta(days=args.days - 1)
    load: dict[str, float] = {}
    if not args.reuse:
        t = time.perf_counter()
        reset_schema(app)
        depts = prepare(app)
        load["schema + demo organisation"] = time.perf_counter() - t
        print(f"loading {args.orders:,} orders over {args.days} days into {args.url.rsplit('/', 1)[-1]} …", flush=True)
        load.update(bulk_load(args.url, orders=args.orders, days=args.days, seed=args.seed, depts=depts, now=now))
        t = time.perf_counter()
        with app.app_context():
            db.session.execute(db.text("set work_mem = '64MB'"))
            result = metrics.refresh_rollups(start=start - timedelta(days=1), end=end, now=now)
            db.session.commit()
        load["rollups (all days)"] = time.perf_counter() - t
        print(f"  rollups: {result['days']} days, {result['orders']:,} orders", flush=True)
    with app.app_context():
        n_orders = db.session.scalar(db.text("select count(*) from loop_orders"))
        n_states = db.session.scalar(db.text("select count(*) from loop_node_states"))
        sizes = {t: db.session.scalar(db.text(f"select count(*) from {t}"))
                 for t in ("loop_daily_stats", "loop_daily_node_stats", "loop_daily_histograms")}
        db_size = db.session.scalar(db.text("select pg_size_pretty(pg_database_size(current_database()))"))
        in_month = db.session.scalar(db.text("select count(*) from loop_orders where started_at >= :a"),
                                     {"a": metrics.day_start(start)})

    if load:
        print("\nload")
        total = 0.0
        for k, v in load.items():
            if k == "node states":
                continue
            total += v
            print(f"  {k:<28} {v:8.1f} s")
        print(f"  {'total':<28} {total:8.1f} s")
    print(f"\ndata: {n_orders:,} orders ({in_month:,} started in the month), {n_states:,} node states, database "
          f"{db_size}; rollup rows: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))

    # what the periodic job pays: today and the two days before (refreshed every 5 minutes), one older day
    with app.app_context():
        t = time.perf_counter()
        metrics.refresh_rollups(start=end - timedelta(days=2), end=end)
        db.session.commit()
        tick = time.perf_counter() - t
        t = time.perf_counter()
        metrics.refresh_rollups(start=end - timedelta(days=10), end=end - timedelta(days=10))
        db.session.commit()
        one_day = time.perf_counter() - t
    print(f"\nrollup refresh: today + 2 days {tick * 1000:,.0f} ms (every 5 minutes); one older day "
          f"{one_day * 1000:,.0f} ms")

    month = metrics.Filters(date_from=start, date_to=end)
    week = metrics.Filters(date_from=end - timedelta(days=6), date_to=end)
    with app.app_context():
        some_dept = db.session.scalar(db.text("select id from departments where code = 'B007'"))
    one_dept = metrics.Filters(date_from=start, date_to=end, dept_id=some_dept)
    lab_only = metrics.Filters(date_from=start, date_to=end, loop_type="lab")
    print(f"\ndashboard, all eight measures, month {start} … {end} (median of {args.repeats}; first run warms caches)")
    rows = [
        ("month, rollups only", month, "rollup", args.repeats),
        ("month, auto (as the page does)", month, "auto", args.repeats),
        ("week, auto", week, "auto", args.repeats),
        ("month, one department, auto", one_dept, "auto", args.repeats),
        ("month, loop type 检验, auto", lab_only, "auto", args.repeats),
        ("today only, raw (real time)", metrics.Filters(date_from=end, date_to=end), "raw", args.repeats),
    ]
    if args.raw_repeats:
        rows.append(("month, raw tables only", month, "raw", args.raw_repeats))
    results = {}
    for label, f, source, reps in rows:
        times, queries, data = time_dashboard(app, f, source=source, repeats=reps + (1 if reps > 1 else 0))
        measured = times[1:] if len(times) > 1 else times
        results[label] = data
        print(f"  {label:<36} {fmt_ms(measured):<36} {queries} queries  [{data['plan']['description']}]", flush=True)
    d = results["month, rollups only"]
    c = d["closure"]["total"]
    t = d["timeliness"]["total"]
    print(f"\nsanity (month): started {c['started']:,}, 达成率 {c['rate']:.1%}, 延迟率 {t['late_rate']:.1%}, "
          f"中断率 {d['interruption']['total']['rate']:.1%}, node rows {len(d['nodes']['rows'])}")
    if "month, raw tables only" in results:
        r = results["month, raw tables only"]
        stable = ("started", "closed", "closed_clean", "interrupted", "skipped_orders", "abnormal_orders")
        same = ({k: r["closure"]["total"][k] for k in stable} == {k: d["closure"]["total"][k] for k in stable}
                and r["timeliness"]["total"] == d["timeliness"]["total"]
                and r["nodes"]["rows"] == d["nodes"]["rows"])
        print(f"raw and rollup month figures agree (counts, timeliness, node durations; 应闭环 depends on the time "
              f"of computation): {same}")


if __name__ == "__main__":
    main()
