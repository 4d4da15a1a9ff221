"""Workflow throughput: the service layer on PostgreSQL against the raw SpiffWorkflow engine in memory.

Prints figures; never asserts on timing. Run from the repository root:

    .venv/bin/python bench/workflow_bench.py                # N=300, 3 repeats, medians
    .venv/bin/python bench/workflow_bench.py --instances 1000 --repeats 1
    .venv/bin/python bench/workflow_bench.py --profile 100  # + cProfile of 100 service completes

What is measured (see bench/README.md):
- service layer: app.workflow.services.start / complete / deliver_message, one app context (own session,
  as a web request gets) and one COMMIT per operation, against the real PostgreSQL database
  `medloop_bench` (dropped and rebuilt with the Alembic migrations on every run);
- raw engine: app.workflow.engine with no database: parse once, then new_workflow+run,
  complete_user_task+run, send_message+run per instance;
- serialization: engine.dumps / engine.loads of the same workflows at each of the three steps.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests" / "workflow" / "fixtures"
KEY = "test_review"
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/medloop_bench"
START_DATA = {"grade": 1, "reminder_duration": "P1D"}  # timer one day away: never fires during the run
REVIEW_DATA = {"decision": "approve", "score": 90}


# ---------------------------------------------------------------- setup (copied from tests/conftest.py on purpose)


def ensure_database(url: str) -> None:
    """Create the database if it is missing (PostgreSQL only)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not u.drivername.startswith("postgresql"):
        return
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.scalar(text("select 1 from pg_database where datname = :n"), {"n": u.database}):
            conn.execute(text(f'create database "{u.database}"'))
    admin.dispose()


def reset_schema(app) -> None:
    """Drop the public schema and build it through the Alembic migrations (Flask-Migrate upgrade)."""
    from flask_migrate import upgrade
    from sqlalchemy import text

    from app.db import db

    with app.app_context():
        with db.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("drop schema public cascade; create schema public"))
        upgrade()


def build_app(url: str):
    from app import create_app
    from app.config import Config

    cfg = Config()
    cfg.SQLALCHEMY_DATABASE_URI = url
    cfg.IN_PROCESS_SCHEDULER = False
    return create_app(cfg)


def prepare(app) -> dict[str, int]:
    """Demo data, the fixture forms and the fixture process; returns the user ids the benchmark acts as."""
    from sqlalchemy import select

    from app.auth.models import User
    from app.db import db
    from app.demo import load_demo
    from app.forms import services as forms
    from app.workflow import services

    with app.app_context():
        load_demo()
        db.session.commit()
        forms.sync_files(FIXTURES)
        flow = db.session.scalar(select(User).where(User.username == "flow"))
        services.upload_version(bpmn_xml=bpmn_xml(), dmn=dmn_docs(), actor=flow, note="benchmark")
        db.session.commit()
        ids = {u.username: u.id for u in db.session.scalars(select(User).where(User.username.in_(["gs_doc", "mao"])))}
    return ids


def bpmn_xml() -> str:
    return (FIXTURES / "review.bpmn").read_text(encoding="utf-8")


def dmn_docs() -> dict[str, str]:
    return {"test_levels.dmn": (FIXTURES / "test_levels.dmn").read_text(encoding="utf-8")}


# ---------------------------------------------------------------- measurements


@dataclass
class Figure:
    """One measured operation: seconds per repeat for `count` operations."""

    name: str
    count: int = 0
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # this process's CPU time (service rows only)
    baseline: str | None = None  # name of the raw-engine figure this one is compared with

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.count / self.median if self.median else float("inf")

    @property
    def spread(self) -> str:
        if len(self.seconds) < 2:
            return ""
        rates = sorted(self.count / s for s in self.seconds)
        return f"{rates[0]:,.0f}–{rates[-1]:,.0f}"


class Bench:
    def __init__(self, app, users: dict[str, int], n: int) -> None:
        self.app = app
        self.users = users
        self.n = n
        self.figures: dict[str, Figure] = {}
        self.sizes: list[int] = []
        self.run_no = 0
        self.sql_per_op: dict[str, float] = {}
        self._sql_count: int | None = None  # None: not counting (no listener installed)

    def fig(self, name: str, count: int, baseline: str | None = None) -> Figure:
        f = self.figures.setdefault(name, Figure(name, count, baseline=baseline))
        f.count = count
        return f

    # one web request: own app context (so a fresh scoped session), the user loaded as Flask-Login would,
    # the operation, one commit
    def request(self, fn: Callable[[], Any]) -> Any:
        from app.db import db

        with self.app.app_context():
            out = fn()
            db.session.commit()
        return out

    def start_one(self, business_key: str) -> None:
        from app.auth.models import User
        from app.db import db
        from app.workflow import services

        def op() -> None:
            actor = db.session.get(User, self.users["gs_doc"])
            services.start(key=KEY, business_key=business_key, title=f"基准测试 {business_key}", actor=actor,
                           data=dict(START_DATA))

        self.request(op)

    def complete_one(self, task_id: int) -> None:
        from app.auth.models import User
        from app.db import db
        from app.workflow import services

        def op() -> None:
            actor = db.session.get(User, self.users["mao"])
            services.complete(task_id=task_id, actor=actor, data=dict(REVIEW_DATA))

        self.request(op)

    def message_one(self, business_key: str) -> None:
        from app.workflow import services

        self.request(lambda: services.deliver_message(
            name="signed", correlation_key=business_key, payload={"by": "HIS"},
            message_id=f"bench-{business_key}", sender="HIS"))

    def review_task_ids(self, keys: list[str]) -> list[int]:
        from sqlalchemy import select

        from app.db import db
        from app.workflow.models import HumanTask, ProcessInstance

        with self.app.app_context():
            rows = db.session.execute(
                select(HumanTask.id, ProcessInstance.business_key).join(ProcessInstance)
                .where(ProcessInstance.business_key.in_(keys), HumanTask.spec_name == "review",
                       HumanTask.status == "ready")
            ).all()
        by_key = {bk: tid for tid, bk in rows}
        missing = [k for k in keys if k not in by_key]
        if missing:
            raise SystemExit(f"setup problem: no READY review task for {missing[:3]} …")
        return [by_key[k] for k in keys]

    def check(self, keys: list[str], status: str, node: str | None) -> None:
        """Correctness of what was measured (not timing): every instance reached the expected state."""
        from sqlalchemy import func, select

        from app.db import db
        from app.workflow.models import ProcessInstance

        with self.app.app_context():
            stmt = select(func.count()).select_from(ProcessInstance).where(
                ProcessInstance.business_key.in_(keys), ProcessInstance.status == status)
            ok = db.session.scalar(stmt)
            if node is not None:
                ok = sum(1 for cur in db.session.scalars(
                    select(ProcessInstance.current_nodes).where(ProcessInstance.business_key.in_(keys)))
                    if cur == [node])
        if ok != len(keys):
            raise SystemExit(f"flow did not do what the benchmark expects: {ok}/{len(keys)} {status} {node or ''}")

    def count_sql(self, fn: Callable[[], None], n: int, label: str) -> None:
        """Run fn with a statement counter on the engine (SQL statements + COMMITs), store per-op average."""
        from sqlalchemy import event

        from app.db import db

        with self.app.app_context():
            eng = db.engine

        def on_stmt(*_a: Any) -> None:
            self._sql_count = (self._sql_count or 0) + 1

        event.listen(eng, "before_cursor_execute", on_stmt)
        event.listen(eng, "commit", on_stmt)
        self._sql_count = 0
        try:
            fn()
        finally:
            event.remove(eng, "before_cursor_execute", on_stmt)
            event.remove(eng, "commit", on_stmt)
        self.sql_per_op[label] = (self._sql_count or 0) / max(n, 1)
        self._sql_count = None

    def service_round(self, n: int, *, record: bool = True, sql: bool = False) -> list[str]:
        """N starts, then N completes, then N messages; sql=True counts statements instead of recording times."""
        self.run_no += 1
        keys = [f"B{self.run_no}-{i:05d}" for i in range(n)]

        def starts() -> None:
            for k in keys:
                self.start_one(k)

        def completes() -> None:
            for tid in tasks:
                self.complete_one(tid)

        def messages() -> None:
            for k in keys:
                self.message_one(k)

        if sql:
            self.count_sql(starts, n, "service start")
            tasks = self.review_task_ids(keys)
            self.count_sql(completes, n, "service complete")
            self.count_sql(messages, n, "service deliver_message")
            self.check(keys, "completed", None)
            return keys
        c0, t0 = time.process_time(), time.perf_counter()
        starts()
        c1, t1 = time.process_time(), time.perf_counter()
        self.check(keys, "running", "review")
        tasks = self.review_task_ids(keys)
        c2, t2 = time.process_time(), time.perf_counter()
        completes()
        c3, t3 = time.process_time(), time.perf_counter()
        self.check(keys, "running", "wait_signed")
        c4, t4 = time.process_time(), time.perf_counter()
        messages()
        c5, t5 = time.process_time(), time.perf_counter()
        self.check(keys, "completed", None)
        if record:
            for name, base, wall, cpu in (("service start", "raw start", t1 - t0, c1 - c0),
                                          ("service complete", "raw complete", t3 - t2, c3 - c2),
                                          ("service deliver_message", "raw message", t5 - t4, c5 - c4)):
                f = self.fig(name, n, base)
                f.seconds.append(wall)
                f.cpu.append(cpu)
        return keys

    def raw_round(self, p, n: int, *, record: bool = True) -> None:
        from app.workflow import engine

        starts = completes = messages = 0.0
        for i in range(n):
            t0 = time.perf_counter()
            wf = engine.new_workflow(p, {**START_DATA, "initiator_id": 1, "business_key": f"R-{i}"})
            engine.run(wf)
            t1 = time.perf_counter()
            guid = engine.ready_user_tasks(wf, p)[0].guid
            engine.complete_user_task(wf, guid, dict(REVIEW_DATA))
            engine.run(wf)
            t2 = time.perf_counter()
            engine.send_message(wf, "signed", {"by": "HIS"})
            engine.run(wf)
            t3 = time.perf_counter()
            if not engine.is_completed(wf):
                raise SystemExit("raw engine: the workflow did not complete")
            starts += t1 - t0
            completes += t2 - t1
            messages += t3 - t2
        if record:
            self.fig("raw start", n).seconds.append(starts)
            self.fig("raw complete", n).seconds.append(completes)
            self.fig("raw message", n).seconds.append(messages)
            self.fig("raw lifecycle (3 steps)", n).seconds.append(starts + completes + messages)

    def serde_round(self, p, n: int, *, record: bool = True) -> None:
        """dumps + loads of each workflow at the three states the service saves (after start/complete/message)."""
        from app.workflow import engine

        dumps = loads = 0.0
        sizes: list[int] = []

        def roundtrip(wf) -> Any:
            nonlocal dumps, loads
            t0 = time.perf_counter()
            text = engine.dumps(wf)
            t1 = time.perf_counter()
            back = engine.loads(text)
            t2 = time.perf_counter()
            dumps += t1 - t0
            loads += t2 - t1
            sizes.append(len(text.encode("utf-8")))
            return back

        for i in range(n):
            wf = engine.new_workflow(p, {**START_DATA, "initiator_id": 1, "business_key": f"S-{i}"})
            engine.run(wf)
            wf = roundtrip(wf)
            engine.complete_user_task(wf, engine.ready_user_tasks(wf, p)[0].guid, dict(REVIEW_DATA))
            engine.run(wf)
            wf = roundtrip(wf)
            engine.send_message(wf, "signed", {"by": "HIS"})
            engine.run(wf)
            roundtrip(wf)
        if record:
            self.fig("serialize (dumps) per step", 3 * n).seconds.append(dumps)
            self.fig("deserialize (loads) per step", 3 * n).seconds.append(loads)
            self.fig("dumps+loads per step", 3 * n).seconds.append(dumps + loads)
            self.sizes = sizes

    def profile_completes(self, n: int, top: int) -> str:
        keys = [f"P-{i:05d}" for i in range(n)]
        for k in keys:
            self.start_one(k)
        tasks = self.review_task_ids(keys)
        prof = cProfile.Profile()
        prof.enable()
        for tid in tasks:
            self.complete_one(tid)
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("cumulative")
        out.write(f"== cProfile: {n} service-layer completes, cumulative, app/ code only ==\n")
        stats.print_stats(str(ROOT / "app") + "/", top)
        out.write("== cProfile: same run, own time (tottime) summed per package; the profiler roughly doubles "
                  "the cost of each call, so read shares, not milliseconds ==\n")
        groups: dict[str, float] = {}
        total = 0.0
        for (filename, _line, _func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():
            if "site-packages/" in filename:
                group = filename.split("site-packages/", 1)[1].split("/", 1)[0]
            elif filename.startswith(str(ROOT / "app")):
                group = "app/" + filename[len(str(ROOT / "app")) + 1:]
            elif filename == "~":
                group = "builtins (dict/str methods, isinstance ...)"
            else:
                group = "stdlib/other"
            groups[group] = groups.get(group, 0.0) + tt
            total += tt
        for group, tt in sorted(groups.items(), key=lambda kv: -kv[1])[:15]:
            out.write(f"  {1000 * tt / n:8.3f} ms/op {100 * tt / total:5.1f}%  {group}\n")
        return out.getvalue()


# ---------------------------------------------------------------- report


def machine_note(url: str) -> str:
    from sqlalchemy import create_engine, text

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        eng = create_engine(url)
        with eng.connect() as conn:
            pg = str(conn.scalar(text("show server_version")))
        eng.dispose()
    except Exception:  # noqa: BLE001 - the note is informative only
        pg = "?"
    from importlib.metadata import version

    return (f"machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"SpiffWorkflow {version('SpiffWorkflow')}, SQLAlchemy {version('SQLAlchemy')}, PostgreSQL {pg} on "
            f"localhost (same 2 cores as the client).\n"
            "note: a small shared VM; other jobs run on it, so figures move by 10-30 % between runs. Compare ratios\n"
            "      and orders of magnitude, not the third digit; the min–max column shows this run's spread.")


def table(bench: Bench, repeats: int) -> str:
    rows = [
        "service start", "service complete", "service deliver_message",
        "raw start", "raw complete", "raw message", "raw lifecycle (3 steps)",
        "serialize (dumps) per step", "deserialize (loads) per step", "dumps+loads per step",
    ]
    head = (f"{'operation':<30} {'count':>6} {'seconds':>8} {'per-second':>11} {'min–max/s':>15} "
            f"{'ms/op':>7} {'svc/raw':>8}")
    lines = [f"figures: median of {repeats} repeat(s); seconds = time for `count` operations", head,
             "-" * len(head)]
    for name in rows:
        f = bench.figures.get(name)
        if f is None:
            continue
        ratio = ""
        if f.baseline and f.baseline in bench.figures:
            ratio = f"{bench.figures[f.baseline].rate / f.rate:7.1f}x"
        lines.append(f"{f.name:<30} {f.count:>6} {f.median:>8.3f} {f.rate:>11,.0f} {f.spread:>15} "
                     f"{1000 * f.median / f.count:>7.3f} {ratio:>8}")
    if bench.sizes:
        lines.append(f"serialized workflow: {min(bench.sizes):,}–{max(bench.sizes):,} bytes "
                     f"(mean {statistics.mean(bench.sizes):,.0f})")
    return "\n".join(lines)


def breakdown(bench: Bench) -> str:
    """Where one service operation's time goes: engine, (de)serialization, the rest (SQL, ORM, projections, forms)."""
    f = bench.figures
    if "dumps+loads per step" not in f:
        return ""
    dump_ms = 1000 * f["serialize (dumps) per step"].median / f["serialize (dumps) per step"].count
    load_ms = 1000 * f["deserialize (loads) per step"].median / f["deserialize (loads) per step"].count
    # start saves once (no load); complete and deliver_message load once and save once
    serde = {"service start": dump_ms, "service complete": dump_ms + load_ms,
             "service deliver_message": dump_ms + load_ms}
    lines = ["per-operation breakdown, ms. engine/serde: the raw figures above (start saves once; complete and",
             "deliver_message load once and save once). rest = total - engine - serde: SQL round trips, ORM flushes,",
             "projections, form validation, audit. client CPU = this process's CPU time per op (median repeat);",
             "wait = total - client CPU (PostgreSQL working, scheduling on 2 shared cores). SQL = statements per",
             "operation incl. SAVEPOINTs and the COMMIT, counted during the warm-up.",
             f"{'operation':<26} {'total':>7} {'engine':>7} {'serde':>7} {'rest':>7} {'rest %':>7} "
             f"{'client CPU':>10} {'wait':>6} {'SQL':>5}"]
    for name in ("service start", "service complete", "service deliver_message"):
        if name not in f:
            continue
        svc = f[name]
        total = 1000 * svc.median / svc.count
        eng = 1000 * f[svc.baseline].median / f[svc.baseline].count if svc.baseline in f else 0.0
        rest = total - eng - serde[name]
        sql = f"{bench.sql_per_op[name]:.0f}" if name in bench.sql_per_op else "-"
        cpu = 1000 * statistics.median(svc.cpu) / svc.count if svc.cpu else 0.0
        lines.append(f"{name:<26} {total:>7.2f} {eng:>7.2f} {serde[name]:>7.2f} {rest:>7.2f} "
                     f"{100 * rest / total:>6.0f}% {cpu:>10.2f} {total - cpu:>6.2f} {sql:>5}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", "-n", type=int, default=300, help="instances per repeat (default 300)")
    ap.add_argument("--repeats", "-r", type=int, default=3, help="repeats; medians are printed (default 3)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed lifecycles before measuring (default 10)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also cProfile N service-layer completes and print the hotspots (e.g. 100)")
    ap.add_argument("--top", type=int, default=25, help="rows of cProfile output (default 25)")
    ap.add_argument("--url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL),
                    help="database URL (default medloop_bench on local PostgreSQL); it is DROPPED and rebuilt")
    args = ap.parse_args(argv)

    wall0 = time.perf_counter()
    print(machine_note(args.url))
    ensure_database(args.url)
    app = build_app(args.url)
    reset_schema(app)
    users = prepare(app)
    setup_s = time.perf_counter() - wall0
    print(f"setup (schema via Alembic, demo data, forms, deploy {KEY}): {setup_s:.1f} s; "
          f"N={args.instances}, repeats={args.repeats}", flush=True)

    from app.workflow import engine

    p = engine.parse_documents(bpmn_xml(), dmn_docs(), expected_key=KEY)  # parsed once, as the service cache does
    bench = Bench(app, users, args.instances)
    if args.warmup:
        bench.service_round(args.warmup, record=False, sql=True)
        bench.raw_round(p, args.warmup, record=False)
        bench.serde_round(p, args.warmup, record=False)
    for r in range(args.repeats):
        t = time.perf_counter()
        bench.service_round(args.instances)
        bench.raw_round(p, args.instances)
        bench.serde_round(p, args.instances)
        print(f"repeat {r + 1}/{args.repeats}: {time.perf_counter() - t:.1f} s", flush=True)

    print()
    print(table(bench, args.repeats))
    print()
    print(breakdown(bench))
    if args.profile:
        print()
        print(bench.profile_completes(args.profile, args.top))
    print(f"total wall time {time.perf_counter() - wall0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
