"""SOAP WebService at /soap/loops, called with zeep over real HTTP: WSDL, accepted / duplicate / rejected
events with field paths, the order's loop, and Chinese faults for a bad token or an unknown order."""

from __future__ import annotations

import pytest
import requests
import zeep  # noqa: E402
from sqlalchemy import func, select

from app.loops.catalog import LOOPS
from app.loops.models import LoopEvent
from tests.connectors.conftest import apply_all


@pytest.fixture
def soap(live, live_ctx):
    return zeep.Client(f"{live['url']}/soap/loops?wsdl")


def _event(order_no: str, node: str, minute: int, **over):
    ev = {"source": "ESB", "event_id": f"{order_no}-{node}", "order_no": order_no, "order_type": "lab",
          "node": node, "occurred_at": f"2026-11-20T08:{minute:02d}:00+08:00", "operator_id": "N1001",
          "operator_name": "吴护士", "patient_id": "P9001", "patient_name": "王五", "inpatient_no": "ZY9001",
          "dept": "1001", "campus": "HQ", "terminal": "护士站-3"}
    ev.update(over)
    return ev


def _submit(soap, token, events):
    return list(soap.service.SubmitLoopEvents(token=token, events={"LoopEventIn": events}))


def test_wsdl_is_published(live):
    resp = requests.get(f"{live['url']}/soap/loops?wsdl", timeout=10)
    assert resp.status_code == 200
    assert "SubmitLoopEvents" in resp.text and "GetOrderLoop" in resp.text
    assert "LoopEventIn" in resp.text and "data_json" in resp.text


def test_submit_accepts_then_acknowledges_duplicates_and_the_loop_is_readable(soap, system_token, live, live_ctx):
    lab = [n.key for n in next(d for d in LOOPS if d.key == "lab").nodes]
    events = [_event("SOAP-LAB-1", node, i) for i, node in enumerate(lab[:3])]
    events[1]["data_json"] = '{"sample_no": "S001"}'
    results = _submit(soap, system_token, events)
    assert [r.status for r in results] == ["accepted"] * 3
    assert [r.index for r in results] == [0, 1, 2]
    assert results[0].event_id == "SOAP-LAB-1-request"

    again = _submit(soap, system_token, events[:2])
    assert [r.status for r in again] == ["duplicate", "duplicate"]
    from app.db import db

    rows = db.session.scalars(select(LoopEvent).where(LoopEvent.order_no == "SOAP-LAB-1")).all()
    assert len(rows) == 3 and {r.channel for r in rows} == {"soap"}
    assert next(r for r in rows if r.node == lab[1]).data == {"sample_no": "S001"}
    assert rows[0].operator_name == "吴护士" and rows[0].patient_name == "王五"

    apply_all(live["app"])
    out = soap.service.GetOrderLoop(token=system_token, order_no="SOAP-LAB-1")
    assert out.order_no == "SOAP-LAB-1" and out.loop_type == "lab" and out.loop_name == "检验"
    assert out.status == "in_progress"
    nodes = out.nodes.LoopNodeOut
    assert [n.key for n in nodes] == lab
    assert [n.status for n in nodes[:4]] == ["done", "done", "done", "current"]
    assert nodes[1].operator_name == "吴护士" and nodes[1].minutes_since_previous == 1


def test_rejected_events_carry_reason_and_soap_field_path(soap, system_token, live_ctx):
    from app.db import db

    events = [
        _event("SOAP-REJ-1", "request", 0),
        _event("SOAP-REJ-1", "collect", 5, occurred_at="2026-11-20 08:05"),
        _event("SOAP-REJ-1", "no_such_node", 6),
        _event("SOAP-REJ-1", "collect", 7, event_id="SOAP-REJ-1-x", data_json="not json"),
        _event("SOAP-REJ-1", "collect", 8, event_id="SOAP-REJ-1-y", patient_id="P" * 80),
    ]
    results = _submit(soap, system_token, events)
    assert [r.status for r in results] == ["accepted", "rejected", "rejected", "rejected", "rejected"]
    assert results[1].path == "events/1/occurred_at" and "ISO 8601" in results[1].reason
    assert results[2].path == "events/2/node" and "没有节点" in results[2].reason
    assert results[3].path == "events/3/data_json" and "JSON" in results[3].reason
    assert results[4].path == "events/4/patient_id" and "64" in results[4].reason
    count = db.session.scalar(select(func.count()).select_from(LoopEvent).where(LoopEvent.order_no == "SOAP-REJ-1"))
    assert count == 1


def test_bad_token_is_a_chinese_fault_and_stores_nothing(soap, live_ctx):
    from app.db import db

    with pytest.raises(zeep.exceptions.Fault) as err:
        _submit(soap, "ml_not-a-token", [_event("SOAP-BAD-1", "request", 0)])
    assert err.value.message == "接口令牌无效或已吊销"
    assert "Unauthorized" in (err.value.code or "")
    with pytest.raises(zeep.exceptions.Fault):
        soap.service.GetOrderLoop(token="", order_no="SOAP-LAB-1")
    assert db.session.scalar(select(func.count()).select_from(LoopEvent)
                             .where(LoopEvent.order_no == "SOAP-BAD-1")) == 0


def test_unknown_order_and_empty_batch_are_faults(soap, system_token):
    with pytest.raises(zeep.exceptions.Fault) as err:
        soap.service.GetOrderLoop(token=system_token, order_no="NO-SUCH-ORDER")
    assert "未找到医嘱" in err.value.message
    with pytest.raises(zeep.exceptions.Fault) as err:
        soap.service.SubmitLoopEvents(token=system_token, events={"LoopEventIn": []})
    assert "非空" in err.value.message
