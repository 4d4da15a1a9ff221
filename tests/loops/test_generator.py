"""The demo feed generator: deterministic for a seed, and realistic enough to exercise the dashboards —
every loop type, medication loops most common, duplicates, out-of-order delivery, cancellations, abnormal steps,
missing nodes, early and late steps, nothing in the future, demo departments; and it goes through intake."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.demo import DEPARTMENTS
from app.loops.catalog import LOOPS, loop_def
from app.loops.generator import generate_feed, post_feed

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def feed():
    return generate_feed(orders=2000, seed=7, start=NOW - timedelta(days=14), days=15, now=NOW)


def _at(e) -> datetime:
    return datetime.fromisoformat(e["occurred_at"])


def test_same_seed_same_feed_other_seed_other_feed(feed):
    again = generate_feed(orders=2000, seed=7, start=NOW - timedelta(days=14), days=15, now=NOW)
    assert again == feed
    other = generate_feed(orders=2000, seed=8, start=NOW - timedelta(days=14), days=15, now=NOW)
    assert other != feed


def test_every_loop_type_with_medication_loops_most_common(feed):
    first = {d.key: d.nodes[0].key for d in LOOPS}
    starts = Counter(e["order_type"] for e in feed if e["node"] == first[e["order_type"]])
    assert set(starts) == {d.key for d in LOOPS}
    medication = sum(starts[k] for k in ("unit_dose", "oral_medication", "iv_admixture", "ward_admixture"))
    assert medication > sum(starts.values()) / 2
    assert starts["unit_dose"] > starts["transfusion"] * 4


def test_duplicates_cancellations_abnormal_steps_and_missing_nodes(feed):
    keys = Counter((e["source"], e["event_id"]) for e in feed)
    dups = sum(n - 1 for n in keys.values())
    assert 0.015 * len(feed) < dups < 0.05 * len(feed)
    orders = {e["order_no"] for e in feed}
    cancelled = {e["order_no"] for e in feed if e["node"] == "cancelled"}
    abnormal = {e["order_no"] for e in feed if e["node"] == "abnormal"}
    assert 0.015 < len(cancelled) / len(orders) < 0.05
    assert 0.008 < len(abnormal) / len(orders) < 0.035
    assert all(e["data"].get("reason") for e in feed if e["node"] in ("cancelled", "abnormal"))
    # 缺环: a node never sent although a later one was
    seen: dict[str, set[str]] = defaultdict(set)
    types = {}
    for e in feed:
        seen[e["order_no"]].add(e["node"])
        types[e["order_no"]] = e["order_type"]
    gaps = 0
    for no, nodes in seen.items():
        order = [n.key for n in loop_def(types[no]).nodes]
        sent = [i for i, k in enumerate(order) if k in nodes]
        if sent and len(sent) != sent[-1] + 1:
            gaps += 1
    assert 0.008 < gaps / len(orders) < 0.04


def test_delivery_is_out_of_order_and_nothing_lies_in_the_future(feed):
    assert max(_at(e) for e in feed) <= NOW
    last: dict[str, datetime] = {}
    reordered = 0
    for e in feed:
        t = _at(e)
        if e["order_no"] in last and t < last[e["order_no"]]:
            reordered += 1
        last[e["order_no"]] = max(t, last.get(e["order_no"], t))
    assert reordered > 10
    assert any(_at(e).utcoffset() == timedelta(hours=8) for e in feed)  # local time with its offset


def test_delays_spread_around_the_standard(feed):
    by_order: dict[str, dict[str, datetime]] = defaultdict(dict)
    types = {}
    for e in feed:
        by_order[e["order_no"]].setdefault(e["node"], _at(e))
        types[e["order_no"]] = e["order_type"]
    early = on_time = late = 0
    for no, times in by_order.items():
        nodes = loop_def(types[no]).nodes
        for prev, node in zip(nodes, nodes[1:], strict=False):
            if prev.key in times and node.key in times and "abnormal" not in times:
                m = (times[node.key] - times[prev.key]).total_seconds() / 60
                if m < node.standard_minutes * 0.5:
                    early += 1
                elif m <= node.standard_minutes:
                    on_time += 1
                else:
                    late += 1
    total = early + on_time + late
    assert on_time / total > 0.3 and 0.1 < late / total < 0.45 and 0.1 < early / total < 0.45


def test_people_places_and_contract_fields(feed):
    his_codes = {his for _c, _n, _campus, his, kind in DEPARTMENTS if kind == "clinical"}
    assert {e["dept"] for e in feed} == his_codes
    campus_of = {his: campus for _c, _n, campus, his, _k in DEPARTMENTS}
    assert all(e["campus"] == campus_of[e["dept"]] for e in feed)
    assert len({e["operator"]["id"] for e in feed}) > 30 and len({e["terminal"] for e in feed}) > 20
    patients = {e["patient"]["id"]: e["patient"] for e in feed}
    assert len(patients) > 300 and all(p["name"] and p["inpatient_no"].startswith("ZY") for p in patients.values())
    e = feed[0]
    assert {"source", "event_id", "order_no", "order_type", "node", "occurred_at", "operator", "patient", "dept",
            "campus", "terminal", "data"} <= set(e)
    assert all(len(x["source"]) <= 32 and len(x["event_id"]) <= 128 for x in feed)


def test_custom_departments_and_campuses():
    feed = generate_feed(orders=50, seed=1, start=NOW - timedelta(days=2), days=2, now=NOW, depts=["X1", "X2"],
                         campuses={"X1": "C1", "X2": "C2"}, prefix="T")
    assert {e["dept"] for e in feed} == {"X1", "X2"}
    assert {e["campus"] for e in feed} == {"C1", "C2"}
    assert all(e["order_no"].startswith("T1-") for e in feed)


def test_a_feed_goes_through_intake_and_applies(db_session):
    from app.loops.models import LoopOrder

    now = datetime.now(UTC)
    feed = generate_feed(orders=120, seed=3, start=now - timedelta(days=5), days=5, now=now, prefix="GEN")
    counts = post_feed(events=feed, batch=200, commit=False)
    assert counts["rejected"] == 0 and counts["accepted"] + counts["duplicate"] == len(feed)
    assert counts["duplicate"] > 0 and counts["orders"] == 120
    statuses = dict(db_session.execute(select(LoopOrder.status, func.count()).where(LoopOrder.order_no.like("GEN3-%"))
                                       .group_by(LoopOrder.status)).all())
    assert statuses.get("closed", 0) > 60 and sum(statuses.values()) == 120
    assert db_session.scalar(select(func.count()).select_from(LoopOrder)
                             .where(LoopOrder.order_no.like("GEN3-%"), LoopOrder.pending.is_(True))) == 0
    assert db_session.scalar(select(func.count()).select_from(LoopOrder)
                             .where(LoopOrder.order_no.like("GEN3-%"), LoopOrder.dept_id.is_(None))) == 0
