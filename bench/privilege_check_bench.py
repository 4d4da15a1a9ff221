"""HIS privilege check API under load: gunicorn (2 workers) on 127.0.0.1, cached index vs a query per check.

Prints figures; never asserts on timing. Run from the repository root:

    .venv/bin/python bench/privilege_check_bench.py                  # 20 s per mode, wrk if installed
    .venv/bin/python bench/privilege_check_bench.py --seconds 10 --connections 16
    .venv/bin/python bench/privilege_check_bench.py --driver python  # the Python load generator instead of wrk

What it does (see bench/README.md):
- owns the PostgreSQL database `medloop_bench_priv`: drops and rebuilds its schema with the Alembic migrations,
  loads the demo data (catalogue included), adds --physicians physicians with --grants-each grants each (a few
  thousand grants; some suspended, some expired) and an API token for "HIS";
- starts `gunicorn -w 2` on 127.0.0.1 with REDIS_URL=redis://127.0.0.1:6379/13 (the index stamp lives there),
  once with PRIVILEGE_CHECK_CACHE=1 (the in-process index) and once with PRIVILEGE_CHECK_CACHE=0 (a query per
  check), checks a few answers, warms up, then drives GET /api/v1/privileges/check over keep-alive connections
  from the same machine for --seconds and prints checks/s, p50 and p99 (targets to report, not assert:
  p99 < 5 ms, >= 5,000 checks/s);
- the request mix: 80 % keys that hold a grant (effective, suspended or expired), 20 % keys without one.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/medloop_bench_priv"
REDIS_URL = "redis://127.0.0.1:6379/13"
PATH = "/api/v1/privileges/check"


# ---------------------------------------------------------------- data


def ensure_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.scalar(text("select 1 from pg_database where datname = :n"), {"n": u.database}):
            conn.execute(text(f'create database "{u.database}"'))
    admin.dispose()


def build_data(url: str, physicians: int, grants_each: int, seed: int) -> tuple[str, list[tuple[str, str, str]]]:
    """Fresh schema, demo data, physicians and grants. Returns the HIS token and the keys to query."""
    from flask_migrate import upgrade
    from sqlalchemy import insert, select, text

    from app import create_app
    from app.auth.models import Department, User
    from app.auth.services import create_api_token
    from app.config import Config
    from app.db import db, utcnow
    from app.demo import load_demo
    from app.privileges.models import Grant, GrantStatus, PrivilegeCategory, PrivilegeItem
    from app.privileges.services import today

    cfg = Config()
    cfg.SQLALCHEMY_DATABASE_URI = url
    cfg.IN_PROCESS_SCHEDULER = False
    app = create_app(cfg)
    rng = random.Random(seed)
    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text("drop schema public cascade; create schema public"))
        upgrade()
        load_demo()
        depts = list(db.session.scalars(select(Department.id).where(Department.kind == "clinical")))
        titles = ["住院医师", "主治医师", "副主任医师", "主任医师"]
        db.session.execute(insert(User), [
            {"username": f"bench{i:05d}", "name": f"压测医师{i}", "staff_no": f"B{i:05d}", "dept_id": rng.choice(depts),
             "title": rng.choice(titles), "is_active": True, "failed_logins": 0, "must_change_password": False,
             "created_at": utcnow(), "updated_at": utcnow()} for i in range(physicians)])
        users = dict(db.session.execute(select(User.staff_no, User.id).where(User.username.like("bench%"))).all())
        items = list(db.session.execute(
            select(PrivilegeCategory.code, PrivilegeItem.code, PrivilegeItem.id)
            .join(PrivilegeCategory, PrivilegeItem.category_id == PrivilegeCategory.id)
            .where(PrivilegeCategory.code != "emergency")).all())
        start, rows, keys_with_grant = today() - timedelta(days=100), [], []
        for staff_no, uid in users.items():
            for cat, code, item_id in rng.sample(items, grants_each):
                roll = rng.random()
                status = GrantStatus.SUSPENDED if roll < 0.05 else GrantStatus.EXPIRED if roll < 0.10 else \
                    GrantStatus.ACTIVE
                rows.append({"user_id": uid, "item_id": item_id, "status": status.value, "valid_from": start,
                             "valid_until": start + timedelta(days=730), "granted_at": utcnow(),
                             "created_at": utcnow(), "updated_at": utcnow()})
                keys_with_grant.append((staff_no, cat, code))
        db.session.execute(insert(Grant), rows)
        token = create_api_token(system="HIS-bench")
        db.session.commit()
        import redis

        from app.privileges.check import REDIS_STAMP_KEY

        redis.Redis.from_url(REDIS_URL).delete(REDIS_STAMP_KEY)  # the rebuilt database starts again at version 0
        staff = list(users)
        misses = [(rng.choice(staff), *rng.choice(items)[:2]) for _ in range(len(keys_with_grant) // 4)]
        db.engine.dispose()
    keys = keys_with_grant + misses
    rng.shuffle(keys)
    print(f"data: {physicians} physicians, {len(rows)} grants (~5 % suspended, ~5 % expired), "
          f"{len(keys)} distinct keys queried (80 % with a grant)")
    return token, keys


# ---------------------------------------------------------------- the server


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path

    def worker_cpu_seconds(self) -> float:
        """User+system CPU time of the gunicorn workers so far (Linux /proc): the server's own cost of the checks,
        which other jobs on the machine do not inflate the way they inflate wall-clock figures."""
        pid = self.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return float("nan")
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for child in children:
            try:
                fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def token_cached_app():
    """What-if (--what-if-token-cache): the same app with Bearer-token verification memoized in the process for
    30 s, to show what the check costs once app.auth's per-request token query is out of the way. Not shipped."""
    from app.auth import services as auth
    from app.db import db

    original = auth.verify_api_token
    memo: dict[str, tuple[object, float]] = {}

    def verify(token: str):
        hit = memo.get(token)
        if hit is not None and time.monotonic() - hit[1] < 30:
            return hit[0]
        row = original(token)
        if row is not None:
            db.session.expunge(row)
        memo[token] = (row, time.monotonic())
        return row

    auth.verify_api_token = verify  # type: ignore[assignment]
    from wsgi import app

    return app


def start_server(url: str, cache: bool, worker_class: str, threads: int, logdir: Path,
                 token_cache: bool = False, workers: int = 2) -> Server:
    port = free_port()
    env = dict(os.environ, DATABASE_URL=url, REDIS_URL=REDIS_URL, PRIVILEGE_CHECK_CACHE="1" if cache else "0")
    log = logdir / f"gunicorn-{'cached' if cache else 'uncached'}.log"
    args = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}", "--log-level", "warning",
            "--worker-class", worker_class, "--keep-alive", "30"]
    if worker_class == "gthread":
        args += ["--threads", str(threads)]
    target = "bench.privilege_check_bench:token_cached_app()" if token_cache else "wsgi:app"
    proc = subprocess.Popen([*args, target], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = Server(proc, port, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited: see {log}\n{log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", PATH)
            conn.getresponse().read()
            conn.close()
            return server
        except OSError:
            time.sleep(0.3)
    server.stop()
    raise SystemExit("gunicorn did not answer within 60 s")


def path_for(key: tuple[str, str, str]) -> str:
    return f"{PATH}?{urlencode({'staff_no': key[0], 'category': key[1], 'code': key[2]})}"


def sanity(port: int, token: str, keys: list[tuple[str, str, str]]) -> dict[str, int]:
    """A few real answers before timing: every answer is 200 and some are allowed, some not."""
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    seen = {"allowed": 0, "denied": 0}
    for key in keys[:200]:
        conn.request("GET", path_for(key), headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise SystemExit(f"check answered {resp.status}: {body[:300]!r}")
        seen["allowed" if json.loads(body)["allowed"] else "denied"] += 1
        if resp.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.close()
    return seen


# ---------------------------------------------------------------- load generators


@dataclass
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_us: float = float("nan")  # gunicorn workers' CPU per check

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value.strip())
    if not m:
        return float("nan")
    number, unit = float(m.group(1)), m.group(2)
    return number / 1000 if unit == "us" else number if unit == "ms" else number * 1000


def run_wrk(port: int, token: str, keys: list[tuple[str, str, str]], seconds: float, connections: int,
            threads: int, workdir: Path) -> Result:
    script = workdir / "checks.lua"
    lines = [f'local token = "Bearer {token}"', "local paths = {"]
    lines += [f'  "{path_for(k)}",' for k in keys]
    lines += ["}", "local i = 0", "init = function(args) i = math.random(#paths) end",
              "request = function()", "  i = i % #paths + 1",
              '  return wrk.format("GET", paths[i], {["Authorization"] = token})', "end"]
    script.write_text("\n".join(lines), encoding="utf-8")
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--latency",
                          "-s", str(script), f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True)
    text = out.stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", text)
    if total is None:
        raise SystemExit(f"could not read wrk's output:\n{text}")
    secs = float(total.group(2)) * {"ms": 0.001, "s": 1, "m": 60}[total.group(3)]
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", text, re.M))
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(x) for x in m.groups())
    return Result(int(total.group(1)), secs, _ms(pct.get("50", "nan")), _ms(pct.get("99", "nan")), errors)


def run_python(port: int, token: str, keys: list[tuple[str, str, str]], seconds: float, connections: int) -> Result:
    paths = [path_for(k) for k in keys]
    headers = {"Authorization": f"Bearer {token}"}
    stop_at = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        i = random.randrange(len(paths))
        mine = latencies[n]
        while time.monotonic() < stop_at:
            i = (i + 1) % len(paths)
            t0 = time.perf_counter()
            try:
                conn.request("GET", paths[i], headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors[n] += 1
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            except (OSError, http.client.HTTPException):
                errors[n] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            mine.append(time.perf_counter() - t0)
        conn.close()

    started = time.monotonic()
    workers = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    merged = sorted(x for part in latencies for x in part)
    if not merged:
        return Result(0, elapsed, float("nan"), float("nan"), sum(errors))
    p50 = statistics.median(merged) * 1000
    p99 = merged[min(len(merged) - 1, int(len(merged) * 0.99))] * 1000
    return Result(len(merged), elapsed, p50, p99, sum(errors))


# ---------------------------------------------------------------- in-process parts of one check


def in_process_breakdown(url: str, keys: list[tuple[str, str, str]]) -> dict[str, float]:
    """What the check itself costs, without HTTP: index load, stamp read, index lookup, query-per-check."""
    from app import create_app
    from app.config import Config
    from app.privileges import check as checker

    cfg = Config()
    cfg.SQLALCHEMY_DATABASE_URI = url
    cfg.REDIS_URL = REDIS_URL
    cfg.IN_PROCESS_SCHEDULER = False
    app = create_app(cfg)
    out: dict[str, float] = {}
    with app.app_context():
        from app.db import db

        cache = checker.cache_for(app)
        t = time.perf_counter()
        index = checker.load_index(cache.read_stamp())
        out["index load ms"] = (time.perf_counter() - t) * 1000
        n = 2000
        t = time.perf_counter()
        for _ in range(n):
            cache.redis.get(checker.REDIS_STAMP_KEY)
        out["stamp read per check before (Redis GET) us"] = (time.perf_counter() - t) / n * 1e6
        listener = checker.listener_for(cache.redis_url)
        deadline = time.monotonic() + 10
        while not listener.live and time.monotonic() < deadline:
            time.sleep(0.05)
        n = 200_000
        t = time.perf_counter()
        for _ in range(n):
            cache.read_stamp()
        out[f"stamp read now ({'pushed by pub/sub' if listener.live else 'listener not live: GET'}) us"] = \
            (time.perf_counter() - t) / n * 1e6
        n = 200_000
        t = time.perf_counter()
        for i in range(n):
            checker.check_in_index(index, *keys[i % len(keys)])
        out["index lookup + answer us"] = (time.perf_counter() - t) / n * 1e6
        n = 1000
        t = time.perf_counter()
        for i in range(n):
            checker.check_uncached(*keys[i % len(keys)])
        out["query per check (uncached) us"] = (time.perf_counter() - t) / n * 1e6
        db.session.remove()
    # one whole WSGI request in process (no socket, no gunicorn): the short path vs the Flask view
    from werkzeug.test import EnvironBuilder

    from app.auth.services import create_api_token
    from app.privileges.fastpath import CheckFastPath

    with app.app_context():
        token = create_api_token(system="HIS-breakdown")
        db.session.commit()
    environs = []
    for key in keys[:500]:
        path, query = path_for(key).split("?", 1)
        environs.append(EnvironBuilder(path=path, query_string=query,
                                       headers={"Authorization": f"Bearer {token}"}).get_environ())
    fast = app.extensions["privilege_check_fastpath"]

    def through_flask(self, environ, start_response):
        return self.next(environ, start_response)

    def run(label: str) -> None:
        def start_response(status, headers, exc_info=None):
            return None

        for env in environs:  # warm
            b"".join(app.wsgi_app(dict(env), start_response))
        n = 5000
        t = time.perf_counter()
        for i in range(n):
            b"".join(app.wsgi_app(dict(environs[i % len(environs)]), start_response))
        out[label] = (time.perf_counter() - t) / n * 1e6

    run("WSGI request, short path us")
    original = CheckFastPath.__call__
    CheckFastPath.__call__ = through_flask  # type: ignore[method-assign]
    try:
        run("WSGI request, Flask view us")
    finally:
        CheckFastPath.__call__ = original  # type: ignore[method-assign]
    assert isinstance(fast, CheckFastPath)
    with app.app_context():
        db.engine.dispose()
    return out


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("BENCH_PRIV_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--physicians", type=int, default=400)
    parser.add_argument("--grants-each", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--driver", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--worker-class", choices=["gthread", "sync", "gevent"], default="gthread",
                        help="gunicorn worker class (sync closes the connection after every response)")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker with gthread (medloop serve: 4)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--modes", default="cached,uncached",
                        help="comma list of cached, uncached, cached+tokencache (the what-if: see token_cached_app)")
    parser.add_argument("--what-if-token-cache", action="store_true",
                        help="also run cached+tokencache: token verification memoized (not shipped)")
    args = parser.parse_args()

    driver = args.driver
    if driver == "auto":
        driver = "wrk" if shutil.which("wrk") else "python"
    if driver == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk), or use --driver python")
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, driver {driver}, "
          f"gunicorn -w {args.workers} --worker-class {args.worker_class}"
          + (f" --threads {args.threads}" if args.worker_class == "gthread" else "")
          + f", {args.connections} keep-alive connections, {args.seconds:g} s per mode")
    ensure_database(args.url)
    t0 = time.monotonic()
    token, keys = build_data(args.url, args.physicians, args.grants_each, args.seed)
    print(f"setup took {time.monotonic() - t0:.1f} s")

    parts = in_process_breakdown(args.url, keys)
    print("in process, no HTTP: " + "; ".join(f"{k} {v:.2f}" for k, v in parts.items()))

    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="privbench-") as tmp:
        workdir = Path(tmp)
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        if args.what_if_token_cache and "cached+tokencache" not in modes:
            modes.append("cached+tokencache")
        for mode in modes:
            server = start_server(args.url, mode.startswith("cached"), args.worker_class, args.threads, workdir,
                                  token_cache=mode.endswith("+tokencache"), workers=args.workers)
            try:
                seen = sanity(server.port, token, keys)
                print(f"[{mode}] server up on 127.0.0.1:{server.port}; first 200 answers: {seen['allowed']} allowed, "
                      f"{seen['denied']} denied")

                def drive(seconds: float, port: int = server.port) -> Result:
                    if driver == "wrk":
                        return run_wrk(port, token, keys, seconds, args.connections, 2, workdir)
                    return run_python(port, token, keys, seconds, args.connections)

                drive(args.warmup)
                cpu0 = server.worker_cpu_seconds()
                result = drive(args.seconds)
                if result.requests:
                    result.server_cpu_us = (server.worker_cpu_seconds() - cpu0) / result.requests * 1e6
                results[mode] = result
            finally:
                server.stop()

    print()
    print(f"{'mode':<18} {'checks':>9} {'seconds':>8} {'checks/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'server CPU/check':>17}")
    for mode, r in results.items():
        print(f"{mode:<18} {r.requests:>9} {r.seconds:>8.1f} {r.rate:>10.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
              f"{r.errors:>7} {r.server_cpu_us:>14.0f} us")
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores "
          "(other jobs on the machine inflate latency and cut throughput; server CPU/check is less affected)")
    if "cached" in results:
        r = results["cached"]
        print(f"\ntargets (reported, not asserted): p99 < 5 ms -> {'met' if r.p99_ms < 5 else 'NOT met'} "
              f"({r.p99_ms:.2f} ms); >= 5,000 checks/s -> {'met' if r.rate >= 5000 else 'NOT met'} ({r.rate:.0f}/s)")
    if "cached" in results and "uncached" in results and results["uncached"].rate:
        print(f"cached / uncached throughput: {results['cached'].rate / results['uncached'].rate:.2f}x")


if __name__ == "__main__":
    main()
