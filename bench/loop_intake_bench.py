"""Closed-loop intake benchmark on the production setup: gunicorn + PostgreSQL + Redis + Celery workers.

Drives POST /api/v1/loop-events over loopback with concurrent keep-alive clients and prints:
- durable events per second from first send to last applied (every event stored and applied to its loop);
- intake answer latency p50/p99 per request (and per event, amortised);
- in the same run, the naive baseline: load the whole serialized workflow, advance it, save it, per event.

Usage: .venv/bin/python bench/loop_intake_bench.py [--orders 2000] [--batch 100] [--clients 4]
       [--web-workers 2] [--apply-workers 2] [--baseline-events 1500]
Prints figures only; nothing here asserts on time. The machine has 2 cores and is noisy: every process
(clients, gunicorn, Celery, PostgreSQL) shares them, so the figures are for comparison within a run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/medloop_bench_loops"
REDIS_URL = "redis://127.0.0.1:6379/12"


def prepare_database() -> str:
    """Fresh schema from the migrations, demo data, deployed processes; returns a HIS API token."""
    from flask_migrate import upgrade

    from app import create_app
    from app.config import Config
    from app.db import db

    u = make_url(DB_URL)
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.scalar(text("select 1 from pg_database where datname=:n"), {"n": u.database}):
            conn.execute(text(f'create database "{u.database}"'))
    admin.dispose()
    cfg = Config()
    cfg.SQLALCHEMY_DATABASE_URI = DB_URL
    cfg.IN_PROCESS_SCHEDULER = False
    cfg.LOOPS_DEMO_FEED = False  # type: ignore[attr-defined]  # only the bench's own orders
    app = create_app(cfg)
    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text("drop schema public cascade; create schema public"))
        upgrade()
        from app.auth.services import create_api_token
        from app.demo import load_demo

        load_demo()
        token = create_api_token(system="HIS")
        db.session.commit()
        db.engine.dispose()
    return token


def make_events(orders: int, seed: int = 1) -> list[dict]:
    """Every node of every order, in order, spread across the 11 loop types; a few duplicates."""
    from app.loops.catalog import LOOPS

    rng = random.Random(seed)
    t0 = datetime.now(UTC) - timedelta(days=15)  # the longest loop (admission–discharge) spans days
    events = []
    for i in range(orders):
        d = LOOPS[i % len(LOOPS)]
        t = t0 + timedelta(seconds=i)
        for j, n in enumerate(d.nodes):
            t += timedelta(minutes=max(1, int(rng.gauss(n.standard_minutes or 5, 5))))
            events.append({
                "source": "HIS", "event_id": f"B{i}-{j}", "order_no": f"BENCH{i:07d}", "order_type": d.key,
                "node": n.key, "occurred_at": t.isoformat(), "operator": {"id": f"N{j:03d}", "name": "护士"},
                "patient": {"id": f"P{i}", "name": "测试", "inpatient_no": f"ZY{i}"}, "dept": "1001",
                "campus": "HQ", "terminal": f"NS-{j}",
            })
    dupes = rng.sample(events, max(1, len(events) // 100))
    return events + dupes


def wait_http(port: int, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("gunicorn did not start")


def pending_count(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(text("select count(*) from loop_events where status = 'pending'")) or 0


def run_intake(args, token: str) -> dict:
    env = dict(os.environ, DATABASE_URL=DB_URL, REDIS_URL=REDIS_URL, MEDLOOP_SECRET_KEY="bench")
    port = 18000 + random.randint(0, 999)
    # what `medloop serve` and `medloop worker` run: threaded gunicorn with keep-alive; the Celery worker at a
    # lower CPU priority (--worker-nice), so answering hospital systems goes before applying in the background
    web = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", str(args.web_workers), "-b", f"127.0.0.1:{port}",
                            "--worker-class", "gthread", "--threads", "4", "--keep-alive", "30",
                            "--log-level", "warning", "wsgi:app"], cwd=ROOT, env=env)
    nice = args.worker_nice
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "wsgi:celery", "worker", "-c",
                               str(args.apply_workers), "--loglevel=WARNING", "--without-heartbeat",
                               "--without-gossip", "--without-mingle"], cwd=ROOT, env=env,
                              preexec_fn=(lambda: os.nice(nice)) if nice else None)
    try:
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
        wait_http(port)
        time.sleep(3)  # let the Celery workers connect
        events = make_events(args.orders)
        batches = [events[i:i + args.batch] for i in range(0, len(events), args.batch)]
        latencies: list[float] = []
        statuses = {"accepted": 0, "duplicate": 0, "rejected": 0}
        lock = threading.Lock()
        queue = list(enumerate(batches))

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            while True:
                with lock:
                    if not queue:
                        return
                    _i, batch = queue.pop(0)
                body = json.dumps({"events": batch})
                t = time.perf_counter()
                conn.request("POST", "/api/v1/loop-events", body=body,
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
                resp = conn.getresponse()
                data = json.loads(resp.read())
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    for k in statuses:
                        statuses[k] += data.get(k, 0)

        engine = create_engine(DB_URL)
        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent_done = time.perf_counter()
        while pending_count(engine) > 0:
            time.sleep(0.05)
            if time.perf_counter() - sent_done > 600:
                print("gave up waiting for the workers")
                break
        applied_done = time.perf_counter()
        # latency at a steady hospital-like pace: one sender, 10 events per request, workers idle between
        probe = make_events(200, seed=9)
        for e in probe:
            e["event_id"] = "L" + e["event_id"]
            e["order_no"] = "LAT" + e["order_no"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        probe_lat = []
        for i in range(0, min(len(probe), 2000), 10):
            body = json.dumps({"events": probe[i:i + 10]})
            t = time.perf_counter()
            conn.request("POST", "/api/v1/loop-events", body=body,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            conn.getresponse().read()
            probe_lat.append(time.perf_counter() - t)
            time.sleep(0.01)
        probe_lat.sort()
        with engine.connect() as conn:
            closed = conn.scalar(text("select count(*) from loop_orders where status='closed' "
                                      "and order_no like 'BENCH%'"))
            applied = conn.scalar(text("select count(*) from loop_events where status <> 'pending' "
                                       "and order_no like 'BENCH%'"))
        engine.dispose()
        lat = sorted(latencies)
        return {
            "events_sent": len(events), "accepted": statuses["accepted"], "duplicate": statuses["duplicate"],
            "rejected": statuses["rejected"], "applied": applied, "closed_orders": closed,
            "intake_seconds": sent_done - start, "total_seconds": applied_done - start,
            "p50_ms": statistics.median(lat) * 1000, "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
            "batch": args.batch,
            "probe_p50_ms": statistics.median(probe_lat) * 1000,
            "probe_p99_ms": probe_lat[int(len(probe_lat) * 0.99) - 1] * 1000, "probe_n": len(probe_lat),
        }
    finally:
        web.terminate()
        worker.terminate()
        web.wait(timeout=30)
        worker.wait(timeout=30)


def run_baseline(n_events: int) -> float:
    """Naive: per event, load the whole serialized workflow from PostgreSQL, advance it, save it, commit."""
    from sqlalchemy import select

    from app import create_app
    from app.config import Config
    from app.db import db
    from app.loops.catalog import LOOPS
    from app.workflow import engine as eng
    from app.workflow import services as wf
    from app.workflow.models import ProcessInstance

    cfg = Config()
    cfg.SQLALCHEMY_DATABASE_URI = DB_URL
    cfg.IN_PROCESS_SCHEDULER = False
    app = create_app(cfg)
    d = LOOPS[0]
    with app.app_context():
        plan = []
        for i in range(n_events // len(d.nodes) + 1):
            inst = wf.start_headless(key=f"loop_{d.key}", business_key=f"NAIVE{i}", title="baseline")
            inst.serialized = eng.dumps(wf.load_headless(inst))  # the full, spec-carrying form
            plan += [(inst.id, n.key) for n in d.nodes]
        db.session.commit()
        plan = plan[:n_events]
        t = time.perf_counter()
        for instance_id, node in plan:
            inst = db.session.scalar(select(ProcessInstance).where(ProcessInstance.id == instance_id).with_for_update())
            flow = eng.loads(inst.serialized)
            eng.send_message(flow, node, {})
            eng.run(flow)
            inst.serialized = eng.dumps(flow)
            db.session.commit()
        return len(plan) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--web-workers", type=int, default=2)
    ap.add_argument("--apply-workers", type=int, default=2)
    ap.add_argument("--worker-nice", type=int, default=5,
                    help="CPU niceness of the Celery worker (medloop worker's default; 0 = same priority as the web)")
    ap.add_argument("--baseline-events", type=int, default=1500)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, shared by clients, gunicorn, Celery and PostgreSQL (noisy)")
    token = prepare_database()
    r = run_intake(args, token)
    rate = r["applied"] / r["total_seconds"]
    print(f"events sent {r['events_sent']} (accepted {r['accepted']}, duplicate {r['duplicate']}, "
          f"rejected {r['rejected']}); applied {r['applied']}; closed orders {r['closed_orders']}")
    print(f"intake finished in {r['intake_seconds']:.1f}s ({r['accepted'] / r['intake_seconds']:.0f} durable events/s "
          f"stored); all applied after {r['total_seconds']:.1f}s")
    print(f"durable events/s, first send to last applied: {rate:.0f}")
    print(f"intake answer per request of {r['batch']} events: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms "
          f"(per event amortised p99 {r['p99_ms'] / r['batch']:.2f} ms)")
    print(f"intake answer at a steady pace ({r['probe_n']} requests of 10 events, one sender): "
          f"p50 {r['probe_p50_ms']:.1f} ms, p99 {r['probe_p99_ms']:.1f} ms")
    base = run_baseline(args.baseline_events)
    print(f"naive baseline (load, advance, save whole workflow per event): {base:.0f} events/s")
    print(f"ratio: {rate / base:.1f}x the naive baseline")


if __name__ == "__main__":
    main()
