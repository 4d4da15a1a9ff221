"""Demo/benchmark feed: realistic closed-loop events in the intake contract (the body of POST /api/v1/loop-events).

Pure Python, no database: `generate_feed` returns event dicts in *delivery* order for N orders. What makes it
realistic (seed 003 §二.1/§二.2, and what the dashboards must cope with):
- loop types weighted as on a ward: medication loops most common, transfusion and critical values rare;
- the delay before each node is lognormal around the node's standard minutes (median a little under the
  standard, a long right tail), scaled per department (some departments are slower), never below 1 minute;
  so some nodes are early, most on time, some late;
- ~3 % of orders are cancelled at a random node (`cancelled`), ~2 % have an abnormal step (`abnormal`),
  ~2 % have one node that is never sent (缺环), ~3 % of events are delivered twice (same source + event_id);
- delivery is out of order: each event reaches us after a random transport delay, so later nodes of an
  order are sometimes delivered before earlier ones;
- nothing lies in the future: events after `now` are not produced (those orders stay in progress);
- operators and terminals come from small pools per role; patients are fake demo names;
- departments are the demo departments' HIS codes (app.demo.DEPARTMENTS), campus codes follow them.
The same arguments and seed always give the same list.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from app.core.timefmt import SHANGHAI
from app.loops.catalog import LOOPS, LoopDef

# share of orders per loop type (medication loops dominate a ward's order volume)
LOOP_WEIGHTS: dict[str, int] = {
    "unit_dose": 20, "oral_medication": 18, "iv_admixture": 16, "ward_admixture": 8, "lab": 14, "exam": 8,
    "consultation": 4, "admission_discharge": 4, "surgery": 3, "critical_value": 3, "transfusion": 2,
}

CANCEL_RATE = 0.03
ABNORMAL_RATE = 0.02
MISSING_RATE = 0.02
DUPLICATE_RATE = 0.03

# lognormal delay factor (actual / standard): median e^-0.3 ≈ 0.74; P(late) ≈ 23 %, P(< half) ≈ 27 %
DELAY_MU = -0.3
DELAY_SIGMA = 0.55

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀英华霞平刚桂兰文辉建国玉梅志红海燕鹏飞晓东雪琳子涵宇轩佳怡浩然"

ABNORMAL_REASONS = ("标本溶血，拒收", "患者不在病区", "药品外观异常，退回药房", "条码无法识别", "患者拒绝执行",
                    "设备故障，延后执行", "医嘱信息不完整，退回医生", "配伍禁忌，药师拦截")
CANCEL_REASONS = ("医生停止医嘱", "患者出院", "患者拒绝", "病情变化，医嘱作废", "重复医嘱，作废")

# which hospital system reports a node, and which staff role operates it
NODE_SOURCE: dict[str, tuple[str, str, str]] = {
    # node key: (source system, operator role, terminal kind)
    "order_issued": ("HIS", "doctor", "医生站"), "order_signed": ("HIS", "nurse", "护士站"),
    "pharmacist_review": ("PASS", "pharmacist", "审方工作站"), "exec_sheet": ("HIS", "nurse", "护士站"),
    "ward_stock": ("PHARM", "pharmacist", "住院药房"), "admix": ("PIVAS", "pharmacist", "静配中心"),
    "admix_out": ("PIVAS", "pharmacist", "静配中心"), "oral_pack": ("PHARM", "pharmacist", "包药机"),
    "delivery": ("LOGIS", "porter", "物流PDA"), "nurse_receive": ("NIS", "nurse", "PDA"),
    "administer": ("NIS", "nurse", "PDA"), "medication_end": ("NIS", "nurse", "PDA"),
    "ward_admix": ("NIS", "nurse", "PDA"), "rounds": ("NIS", "nurse", "PDA"),
    "request": ("HIS", "doctor", "医生站"), "senior_review": ("HIS", "doctor", "医生站"),
    "nurse_check": ("NIS", "nurse", "护士站"), "print_barcode": ("NIS", "nurse", "护士站"),
    "identify": ("NIS", "nurse", "PDA"), "collect": ("NIS", "nurse", "PDA"), "transfer": ("LOGIS", "porter", "物流PDA"),
    "receive_specimen": ("LIS", "technician", "检验科"), "perform": ("LIS", "technician", "检验科"),
    "report_print": ("LIS", "technician", "自助机"), "report_feedback": ("LIS", "system", "接口"),
    "booking": ("PACS", "technician", "预约台"), "exam_review": ("PACS", "technician", "登记台"),
    "sign": ("HIS", "nurse", "护士站"), "crossmatch": ("BLOOD", "technician", "输血科"),
    "issue_blood": ("BLOOD", "technician", "输血科"), "pre_check": ("NIS", "nurse", "PDA"),
    "start": ("NIS", "nurse", "PDA"), "finish": ("NIS", "nurse", "PDA"),
    "schedule": ("ANES", "nurse", "手麻系统"), "pre_visit": ("ANES", "doctor", "手麻系统"),
    "or_check_in": ("ANES", "nurse", "手术室"), "enter_or": ("ANES", "nurse", "手术室"),
    "anesthesia_start": ("ANES", "doctor", "手术室"), "operating": ("ANES", "doctor", "手术室"),
    "anesthesia_end": ("ANES", "doctor", "手术室"), "surgery_end": ("ANES", "doctor", "手术室"),
    "pacu_in": ("ANES", "nurse", "复苏室"), "pacu_out": ("ANES", "nurse", "复苏室"),
    "post_visit": ("ANES", "doctor", "手麻系统"), "order": ("HIS", "doctor", "医生站"), "send": ("HIS", "doctor", "医生站"),
    "appointment": ("EMR", "doctor", "医生站"), "accept": ("EMR", "doctor", "医生站"),
    "opinion": ("EMR", "doctor", "医生站"), "report": ("EMR", "doctor", "医生站"),
    "admission": ("HIS", "clerk", "入院处"), "ward_in": ("HIS", "nurse", "护士站"),
    "ward_out": ("HIS", "nurse", "护士站"), "payment_notice": ("HIS", "clerk", "收费处"),
    "settlement": ("HIS", "clerk", "收费处"),
}
EXAM_SOURCE = {"receive_specimen", "perform", "report_print", "report_feedback"}  # PACS, not LIS, in the exam loop

ROLE_PREFIX = {"doctor": ("D", "医生"), "nurse": ("N", "护士"), "pharmacist": ("P", "药师"),
               "technician": ("T", "技师"), "porter": ("W", "工勤"), "clerk": ("C", "收费员"), "system": ("S", "")}


def default_departments() -> list[tuple[str, str]]:
    """(HIS department code, campus code) of the demo's clinical departments."""
    from app.demo import DEPARTMENTS

    return [(his, campus) for _code, _name, campus, his, kind in DEPARTMENTS if kind == "clinical"]


@dataclass
class _Pools:
    patients: list[dict[str, str]]
    staff: dict[str, list[tuple[str, str]]]


def _pools(rng: random.Random, n_patients: int) -> _Pools:
    patients = []
    for i in range(n_patients):
        name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
        patients.append({"id": f"P{100000 + i}", "name": name, "inpatient_no": f"ZY{2026000000 + i * 7 + 3}"})
    staff: dict[str, list[tuple[str, str]]] = {}
    for role, (prefix, title) in ROLE_PREFIX.items():
        size = 1 if role == "system" else 12
        members = []
        for i in range(size):
            if role == "system":
                members.append(("SYS", "系统自动"))
            else:
                members.append((f"{prefix}{2000 + i}", rng.choice(SURNAMES) + title))
        staff[role] = members
    return _Pools(patients=patients, staff=staff)


def _order_start(rng: random.Random, start: datetime, days: int) -> datetime:
    """A start time inside the window, mostly in day-shift hours (Asia/Shanghai, UTC+8)."""
    day = rng.randrange(max(days, 1))
    if rng.random() < 0.8:
        local_minute = rng.randrange(8 * 60, 18 * 60)
    else:
        local_minute = rng.randrange(0, 24 * 60)
    midnight = start.astimezone(SHANGHAI).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight + timedelta(days=day, minutes=local_minute, seconds=rng.randrange(60))).astimezone(UTC)


def _delay(rng: random.Random, standard: int, slowness: float) -> timedelta:
    if standard <= 0:
        return timedelta(minutes=rng.randrange(1, 5))
    factor = math.exp(rng.gauss(DELAY_MU, DELAY_SIGMA)) * slowness
    return timedelta(minutes=max(1.0, standard * factor), seconds=rng.randrange(60))


def _weighted_loops(rng: random.Random) -> Iterator[LoopDef]:
    defs = [d for d in LOOPS if d.key in LOOP_WEIGHTS]
    weights = [LOOP_WEIGHTS[d.key] for d in defs]
    while True:
        yield rng.choices(defs, weights)[0]


def generate_feed(*, orders: int, seed: int, start: datetime, days: int, depts: list[str] | None = None,
                  campuses: dict[str, str] | None = None, now: datetime | None = None,
                  prefix: str = "DEMO") -> list[dict[str, Any]]:
    """Events for `orders` orders started over `days` days from `start`, in delivery order (see module doc).

    depts: HIS department codes (default: the demo's clinical departments); campuses: HIS department code →
    campus code (default: the demo's). `now` (default: the current time) caps occurred_at: later steps are not
    produced. Order numbers are f"{prefix}{seed}-{n:07d}". Deterministic for a seed."""
    rng = random.Random(seed)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    demo = default_departments()
    dept_codes = list(depts) if depts else [d for d, _c in demo]
    campus_of = dict(demo)
    campus_of.update(campuses or {})
    slowness = {d: round(0.8 + 0.5 * rng.random(), 2) for d in dept_codes}
    pools = _pools(rng, max(50, orders // 3))
    loops = _weighted_loops(rng)
    deliveries: list[tuple[datetime, int, dict[str, Any]]] = []
    seq = 0
    for n in range(orders):
        d = next(loops)
        dept = rng.choice(dept_codes)
        campus = campus_of.get(dept)
        patient = rng.choice(pools.patients)
        order_no = f"{prefix}{seed}-{n:07d}"
        t = _order_start(rng, start, days)
        if t > now:  # today's orders start before now
            t = start + (now - start) * rng.random() if now > start else now
        nodes = list(d.nodes)
        cancel_at = rng.randrange(1, len(nodes)) if rng.random() < CANCEL_RATE else None
        abnormal_at = rng.randrange(1, len(nodes)) if rng.random() < ABNORMAL_RATE else None
        missing = rng.randrange(1, len(nodes) - 1) if len(nodes) > 2 and rng.random() < MISSING_RATE else None
        events: list[tuple[datetime, dict[str, Any]]] = []
        for i, node in enumerate(nodes):
            step = _delay(rng, node.standard_minutes if i else 0, slowness[dept])
            if i == cancel_at:
                events.append((t + step * rng.uniform(0.2, 0.9), {
                    "node": "cancelled", "source": "HIS", "role": "doctor", "terminal_kind": "医生站",
                    "data": {"reason": rng.choice(CANCEL_REASONS)}}))
                break
            if i == abnormal_at:
                events.append((t + step * rng.uniform(0.1, 0.5), {
                    "node": "abnormal", "source": NODE_SOURCE.get(node.key, ("HIS", "nurse", "护士站"))[0],
                    "role": "nurse", "terminal_kind": "护士站",
                    "data": {"reason": rng.choice(ABNORMAL_REASONS)}}))
                step = step + timedelta(minutes=rng.randrange(10, 60))  # the abnormal step costs time
            if i:
                t = t + step
            if i == missing:
                continue
            source, role, terminal_kind = NODE_SOURCE.get(node.key, ("HIS", "nurse", "护士站"))
            if d.key == "exam" and node.key in EXAM_SOURCE:
                source = "PACS"
            events.append((t, {"node": node.key, "source": source, "role": role, "terminal_kind": terminal_kind,
                               "data": {}}))
        for k, (when, spec) in enumerate(events):
            if when > now:
                break
            operator = rng.choice(pools.staff.get(spec["role"], pools.staff["nurse"]))
            body = {
                "source": spec["source"], "event_id": f"{order_no}-{k:02d}-{spec['node']}", "order_no": order_no,
                "order_type": d.key, "node": spec["node"], "occurred_at": when.astimezone(SHANGHAI).isoformat(timespec="seconds"),
                "operator": {"id": operator[0], "name": operator[1]},
                "patient": dict(patient), "dept": dept, "campus": campus,
                "terminal": f"{spec['terminal_kind']}-{rng.randrange(1, 9)}", "data": spec["data"],
            }
            # transport delay: mostly seconds, sometimes minutes (a queue backs up), which reorders events
            lag = timedelta(seconds=rng.expovariate(1 / 30)) if rng.random() < 0.9 else \
                timedelta(minutes=rng.uniform(1, 40))
            seq += 1
            deliveries.append((when + lag, seq, body))
            if rng.random() < DUPLICATE_RATE:  # the sender retried: the same event again, a little later
                seq += 1
                deliveries.append((when + lag + timedelta(seconds=rng.uniform(1, 600)), seq, dict(body)))
    deliveries.sort(key=lambda x: (x[0], x[1]))
    return [body for _t, _s, body in deliveries]


# ---------------------------------------------------------------- loading a feed (CLI, demo data)


def post_feed(*, events: list[dict[str, Any]], batch: int = 500, commit: bool = True,
              apply_ahead: timedelta = timedelta(minutes=30)) -> dict[str, int]:
    """Send events through services.intake in batches of `batch`, then drain the applier with its clock
    `apply_ahead` in the future, so that every grace period is over (historical data: missing nodes become
    缺环 now rather than minutes later). Commits per batch when `commit` (the CLI); otherwise only flushes
    (inside load_demo's transaction). Returns counts: accepted, duplicate, rejected, orders, applied."""
    from app.db import db, utcnow
    from app.loops import services

    counts = {"accepted": 0, "duplicate": 0, "rejected": 0, "orders": 0, "applied": 0}
    for i in range(0, len(events), batch):
        for r in services.intake(events=events[i:i + batch], channel="rest"):
            counts[r["status"]] += 1
        if commit:
            db.session.commit()
    orders: set[str] = set()
    for _ in range(100000):
        stats = services.apply_pending(limit=200, now=utcnow() + apply_ahead)
        if commit:
            db.session.commit()
        counts["applied"] += stats.applied
        if stats.orders == 0 or stats.applied == 0:
            break
    orders.update(e["order_no"] for e in events)
    counts["orders"] = len(orders)
    return counts
