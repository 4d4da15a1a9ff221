"""One order's loop read with a large store: GET /api/v1/orders/{order_no}/loop over loopback.

Bulk-loads N orders with their node states (the dashboard bench's loader) and ~10 events per order into
loop_events (COPY; 1,000,000 orders ≈ 10 million events), then serves the app with gunicorn and reads random
orders' loops with a keep-alive client, printing p50/p99. Target from the issue: under 30 ms p99 with 10
million events stored. Prints figures only.

Usage: .venv/bin/python bench/loop_read_bench.py [--orders 1000000] [--reads 3000] [--reuse]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

URL = os.environ.get("BENCH_LOOP_READ_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/medloop_bench_read")


def load_events(url: str, *, orders: int, seed: int) -> float:
    """COPY ~10 events per loaded order into loop_events (as applied), without the unique index during load."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    t = time.perf_counter()
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("set synchronous_commit = off")
        cur.execute("select conname from pg_constraint where conrelid = 'loop_events'::regclass and contype = 'u'")
        uniques = [r[0] for r in cur.fetchall()]
        for name in uniques:
            cur.execute(f"alter table loop_events drop constraint {name}")
        cur.execute("select indexname from pg_indexes where tablename = 'loop_events' and indexname like 'ix_%'")
        for (name,) in cur.fetchall():
            cur.execute(f"drop index {name}")
        conn.commit()
        cols = ("source, event_id, channel, order_no, order_type, loop_type_key, node, node_key, occurred_at, "
                "received_at, operator_id, operator_name, patient_id, terminal, data, status, applied_at")
        ts = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S+00")
        eid = 0
        for start in range(1, orders + 1, 20000):
            buf = []
            for oid in range(start, min(orders, start + 19999) + 1):
                order_no = f"B{seed}-{oid:08d}"
                for j in range(10):
                    eid += 1
                    buf.append(f"HIS\tE{eid}\trest\t{order_no}\tlab\tlab\tn{j}\tn{j}\t{ts}\t{ts}\tN{j}\t护士\tP{oid}\t"
                               f"NS-{j}\t{{}}\tapplied\t{ts}\n")
            with cur.copy(f"copy loop_events ({cols}) from stdin") as cp:
                cp.write("".join(buf))
        conn.commit()
        cur.execute("alter table loop_events add constraint uq_loop_events_source unique (source, event_id)")
        cur.execute("create index ix_loop_events_order_status on loop_events (order_no, status)")
        conn.commit()
        conn.autocommit = True
        cur.execute("vacuum analyze loop_events")
        cur.execute("select count(*) from loop_events")
        print(f"  loop_events rows: {cur.fetchone()[0]:,}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=1_000_000)
    ap.add_argument("--reads", type=int, default=3000)
    ap.add_argument("--reuse", action="store_true", help="keep the loaded database; only time again")
    args = ap.parse_args()
    import loop_dashboard_bench as dash

    print(f"machine: {os.cpu_count()} cores (noisy); database {URL}")
    app = dash.build_app(URL)
    if not args.reuse:
        dash.ensure_database(URL)
        dash.reset_schema(app)
        depts = dash.prepare(app)
        t = time.perf_counter()
        timings = dash.bulk_load(URL, orders=args.orders, days=30, seed=1, depts=depts, now=datetime.now(UTC))
        print(f"orders + node states loaded in {time.perf_counter() - t:.0f} s ({timings.get('node states', 0):,} states)")
        print(f"events loaded in {load_events(URL, orders=args.orders, seed=1):.0f} s")
    with app.app_context():
        from app.auth.services import create_api_token
        from app.db import db

        token = create_api_token(system="HIS")
        db.session.commit()
    env = dict(os.environ, DATABASE_URL=URL, MEDLOOP_SECRET_KEY="bench")
    env.pop("REDIS_URL", None)
    port = 19000 + random.randint(0, 900)
    web = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
                            "--log-level", "warning", "wsgi:app"], cwd=ROOT, env=env)
    try:
        for _ in range(100):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.3)
        rng = random.Random(5)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {token}"}
        lat = []
        for i in range(args.reads + 100):
            order_no = f"B1-{rng.randrange(1, args.orders + 1):08d}"
            t = time.perf_counter()
            conn.request("GET", f"/api/v1/orders/{order_no}/loop", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if i >= 100:  # the first requests warm caches and connections
                lat.append(time.perf_counter() - t)
            if resp.status != 200:
                print("unexpected", resp.status, body[:200])
                break
        lat.sort()
        print(f"order loop reads: {len(lat)}, p50 {statistics.median(lat) * 1000:.1f} ms, "
              f"p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms (target p99 < 30 ms)")
    finally:
        web.terminate()
        web.wait(timeout=30)


if __name__ == "__main__":
    main()
