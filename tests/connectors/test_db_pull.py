"""Database-view pulls against the real local MariaDB standing in for the HIS database: the high-water mark,
a second pull bringing only the new rows, re-reads never doubling events, a rejected row not blocking,
a SELECT source with column mapping and an update-time watermark, config validation and the periodic job."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from app.loops.models import LoopEvent
from connectors import db_pull

HIS_DB = "medloop_his_test"
SERVER_URL = "mysql+pymysql://root@127.0.0.1:3306/?charset=utf8mb4"
HIS_URL = f"mysql+pymysql://root@127.0.0.1:3306/{HIS_DB}?charset=utf8mb4"


@pytest.fixture(scope="module")
def his():
    """A fresh medloop_his_test database with the table his_order_events and the view v_his_order_events."""
    engine = sa.create_engine(SERVER_URL)
    for attempt in range(30):  # CI starts mariadbd in the background
        try:
            with engine.connect():
                break
        except sa.exc.OperationalError:
            if attempt == 29:
                raise
            time.sleep(1)
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop database if exists {HIS_DB}"))
        conn.execute(sa.text(f"create database {HIS_DB} character set utf8mb4"))
    engine.dispose()
    his_engine = sa.create_engine(HIS_URL)
    with his_engine.begin() as conn:
        conn.execute(sa.text("""
            create table his_order_events (
                id int auto_increment primary key,
                evt_id varchar(64) not null,
                order_no varchar(64) not null,
                order_type varchar(32) not null,
                node varchar(64) not null,
                occurred_at datetime not null,
                operator_id varchar(32), operator_name varchar(32),
                patient_id varchar(32), patient_name varchar(32), inpatient_no varchar(32),
                dept varchar(16), sample_no varchar(32),
                updated_at datetime not null
            ) character set utf8mb4"""))
        conn.execute(sa.text("""
            create view v_his_order_events as
            select id, evt_id as event_id, order_no, order_type, node, occurred_at, operator_id, operator_name,
                   patient_id, patient_name, inpatient_no, dept, sample_no
            from his_order_events"""))
    yield his_engine
    his_engine.dispose()
    for eng in db_pull._ENGINES.values():
        eng.dispose()


def add_rows(engine, order_no: str, nodes: list[str], *, start: int = 0, loop: str = "lab",
             updated: str = "2026-11-20 10:00:00"):
    with engine.begin() as conn:
        for i, node in enumerate(nodes, start=start):
            conn.execute(sa.text(
                "insert into his_order_events (evt_id, order_no, order_type, node, occurred_at, operator_id,"
                " operator_name, patient_id, patient_name, inpatient_no, dept, sample_no, updated_at)"
                " values (:e, :o, :t, :n, :at, 'N1001', '吴护士', 'P5001', '钱七', 'ZY5001', '1001', :s, :u)"),
                {"e": f"HIS-{order_no}-{i}", "o": order_no, "t": loop, "n": node,
                 "at": f"2026-11-20 08:{i:02d}:00", "s": f"S-{i}", "u": updated})


def count(order_prefix: str) -> int:
    from app.db import db

    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(LoopEvent)
                             .where(LoopEvent.order_no.like(f"{order_prefix}%"), LoopEvent.channel == "db"))


VIEW_SOURCE = {"name": "his_view", "url": HIS_URL, "view": "v_his_order_events", "watermark": "id",
               "constants": {"source": "HISDB"}, "data_columns": ["sample_no"], "batch": 2}


def test_view_pull_moves_the_mark_and_never_doubles(his, live_ctx):
    from app.db import db

    add_rows(his, "DBV-1", ["request", "senior_review", "nurse_check"])
    first = db_pull.pull(VIEW_SOURCE)
    assert (first.rows, first.accepted, first.duplicate, first.rejected) == (3, 3, 0, 0)
    assert first.batches == 2  # batch size 2: 2 + 1 rows
    assert count("DBV-") == 3
    cursor = db.session.scalar(select(db_pull.PullCursor).where(db_pull.PullCursor.source_name == "his_view"))
    assert (cursor.last_value, cursor.value_type, cursor.total_rows) == ("3", "int", 3)

    ev = db.session.scalar(select(LoopEvent).where(LoopEvent.event_id == "HIS-DBV-1-1"))
    assert (ev.source, ev.node_key, ev.patient_name, ev.operator_name) == ("HISDB", "senior_review", "钱七", "吴护士")
    assert ev.occurred_at == datetime(2026, 11, 20, 0, 1, tzinfo=UTC)  # naive HIS time taken as +08:00
    assert ev.data == {"sample_no": "S-1"}

    assert db_pull.pull(VIEW_SOURCE).rows == 0  # nothing new
    add_rows(his, "DBV-1", ["print_barcode", "identify"], start=3)
    second = db_pull.pull(VIEW_SOURCE)
    assert (second.rows, second.accepted, second.duplicate) == (2, 2, 0)  # only the new rows
    assert second.last_value == "5"
    assert count("DBV-") == 5

    # rewinding the mark re-reads everything: all duplicates, nothing doubles
    db_pull.reset(name="his_view", value=None)
    db.session.commit()
    again = db_pull.pull(VIEW_SOURCE)
    assert (again.rows, again.accepted, again.duplicate) == (5, 0, 5)
    assert count("DBV-") == 5


def test_rejected_rows_are_counted_and_do_not_block(his, live_ctx):
    from app.db import db

    source = {**VIEW_SOURCE, "name": "his_view_rej", "batch": 100}
    db_pull.reset(name="his_view_rej", value=str(_max_id(his)))
    db.session.commit()
    add_rows(his, "DBR-1", ["request", "no_such_node", "senior_review"])
    result = db_pull.pull(source)
    assert (result.rows, result.accepted, result.rejected) == (3, 2, 1)
    assert "没有节点「no_such_node」" in result.reasons[0]
    cursor = db.session.scalar(select(db_pull.PullCursor).where(db_pull.PullCursor.source_name == "his_view_rej"))
    assert cursor.last_rejected == 1 and "no_such_node" in cursor.last_error
    assert count("DBR-") == 2


def _max_id(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.text("select coalesce(max(id), 0) from his_order_events"))


def test_query_source_with_column_mapping_and_time_watermark(his, live_ctx):
    with his.begin() as conn:
        conn.execute(sa.text("update his_order_events set updated_at = '2026-11-19 00:00:00'"))
    add_rows(his, "DBQ-1", ["request", "senior_review"], updated="2026-11-20 11:00:00")
    source = {"name": "his_query", "url": HIS_URL, "watermark": "CHANGED", "watermark_inclusive": True,
              "query": "select ID, EVT_ID, ORDER_NO, ORDER_TYPE, NODE, OCCURRED_AT, OPERATOR_NAME, PATIENT_NAME,"
                       " updated_at as CHANGED from his_order_events where order_no like 'DBQ-%'",
              "columns": {"event_id": "EVT_ID", "node": "NODE", "occurred_at": "OCCURRED_AT"},
              "constants": {"source": "HISQ", "dept": "1001"}, "timezone": "+08:00"}
    first = db_pull.pull(source)
    assert (first.rows, first.accepted) == (2, 2)
    assert first.last_value == "2026-11-20T11:00:00"
    # inclusive: the rows at the mark are read again, as duplicates; a later row comes in
    add_rows(his, "DBQ-1", ["nurse_check"], start=2, updated="2026-11-20 11:05:00")
    second = db_pull.pull(source)
    assert (second.accepted, second.duplicate) == (1, 2)
    assert count("DBQ-") == 3
    from app.db import db

    ev = db.session.scalar(select(LoopEvent).where(LoopEvent.event_id == "HIS-DBQ-1-2"))
    assert (ev.source, ev.dept, ev.node_key) == ("HISQ", "1001", "nurse_check")


def test_config_is_validated_in_chinese():
    with pytest.raises(ValueError) as err:
        db_pull.parse_source({"name": "x", "url": "", "view": "v; drop table", "watermark": "",
                              "columns": {"bogus": "A"}})
    text = str(err.value)
    assert "url" in text and "view" in text and "watermark" in text and "bogus" in text
    with pytest.raises(ValueError):
        db_pull.parse_source({"name": "x", "url": HIS_URL, "query": "delete from t", "watermark": "id"})
    assert db_pull.configured_sources({"LOOP_DB_SOURCES": [VIEW_SOURCE]})[0].batch == 2


def test_periodic_job_pulls_configured_sources(his, live, live_ctx, monkeypatch):
    from app.db import db
    from app.jobs import JOBS

    source = {**VIEW_SOURCE, "name": "his_job"}
    db_pull.reset(name="his_job", value=str(_max_id(his)))
    db.session.commit()
    add_rows(his, "DBJ-1", ["request"])
    monkeypatch.setitem(live["app"].config, "LOOP_DB_SOURCES", [source])
    from app.loops import docs

    monkeypatch.setattr("app.jobs.JOBS", dict(JOBS))
    docs.register_jobs(live["app"])
    from app import jobs

    assert "connectors.db_pull" in jobs.JOBS
    out = jobs.JOBS["connectors.db_pull"]()
    assert out["his_job"].accepted == 1
    assert count("DBJ-") == 1
