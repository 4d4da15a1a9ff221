"""HL7 v2 over MLLP with a real socket: a listener on an ephemeral port, framed ORM/OML/ORU messages, ACKs,
the events stored through the interface dictionary (new order, status codes, cancellation, results),
duplicates, rejected groups with Chinese reasons, unsupported types, GB 18030 and split TCP reads."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from app.loops.models import InterfaceMapping, LoopEvent, LoopOrder
from connectors import hl7_mllp
from tests.connectors.conftest import apply_all


def seg(name: str, fields: dict[int, str]) -> str:
    top = max(fields)
    return "|".join([name] + [fields.get(i, "") for i in range(1, top + 1)])


def msh(control_id: str, mtype: str = "ORM^O01", app: str = "LIS", charset: str = "UNICODE UTF-8",
        when: str = "20261120083000+0800") -> str:
    # MSH-1 is the field separator itself, so MSH fields are shifted by one in the joined string
    fields = {2: "^~\\&", 3: app, 4: "HQ", 5: "MEDLOOP", 6: "HQ", 7: when, 9: mtype, 10: control_id, 11: "P",
              12: "2.5", 17: "CHN", 18: charset}
    return "MSH|" + "|".join(fields.get(i, "") for i in range(2, 19))


PID = seg("PID", {1: "1", 3: "P7001^^^HIS^PI", 5: "赵^六", 7: "19800101", 8: "M"})
PV1 = seg("PV1", {1: "1", 2: "I", 3: "1001^301^12^HQ", 19: "ZY7001"})


def orc(control: str, order_no: str, *, status: str = "", when: str = "20261120080000+0800",
        who: str = "D1002^陈^医生", reason: str = "") -> str:
    return seg("ORC", {1: control, 2: order_no, 3: f"F-{order_no}", 5: status, 9: when, 10: who, 16: reason})


def obr(order_no: str, service: str = "CBC^血常规^L", result_status: str = "") -> str:
    return seg("OBR", {1: "1", 2: order_no, 4: service, 25: result_status})


def message(*segments: str) -> str:
    return "\r".join(segments)


@pytest.fixture
def listener(live, live_ctx):
    server, thread = hl7_mllp.serve_in_thread(live["app"], "127.0.0.1", 0)
    host, port = server.server_address[:2]
    yield host, port
    server.shutdown()
    server.server_close()


def unescape(text: str) -> str:
    for esc, ch in (("\\F\\", "|"), ("\\S\\", "^"), ("\\T\\", "&"), ("\\R\\", "~"), ("\\E\\", "\\")):
        text = text.replace(esc, ch)
    return text


def parse_ack(text: str) -> dict[str, str]:
    segs = {s.split("|")[0]: s.split("|") for s in text.split("\r") if s}
    msa = segs["MSA"]
    return {"code": msa[1], "control": msa[2], "text": unescape(msa[3]) if len(msa) > 3 else "",
            "err": "\r".join(s for s in text.split("\r") if s.startswith("ERR")), "msh": "|".join(segs["MSH"])}


def events_of(order_no: str) -> list[LoopEvent]:
    from app.db import db

    db.session.expire_all()
    return list(db.session.scalars(select(LoopEvent).where(LoopEvent.order_no == order_no).order_by(LoopEvent.id)))


def test_new_order_status_and_result_messages_become_lab_events(listener, live, live_ctx):
    host, port = listener
    ack = parse_ack(hl7_mllp.send(host, port, message(msh("HL7-0001"), PID, PV1, orc("NW", "HL7-LAB-1"),
                                                      obr("HL7-LAB-1"))))
    assert ack["code"] == "AA" and ack["control"] == "HL7-0001"
    assert "已接收 1 条" in ack["text"]
    assert "ACK^O01" in ack["msh"]
    status = message(msh("HL7-0002", when="20261120090000+0800"), PID, PV1,
                     orc("SC", "HL7-LAB-1", status="IP", when="20261120090500+0800", who="L2001^钱^检验"),
                     obr("HL7-LAB-1"))
    assert parse_ack(hl7_mllp.send(host, port, status))["code"] == "AA"
    result = message(msh("HL7-0003", mtype="ORU^R01"), PID, PV1, obr("HL7-LAB-1", result_status="F"),
                     seg("OBX", {1: "1", 2: "NM", 3: "WBC^白细胞", 5: "6.1", 11: "F"}))
    assert parse_ack(hl7_mllp.send(host, port, result))["code"] == "AA"

    rows = events_of("HL7-LAB-1")
    assert [(r.source, r.event_id, r.node_key, r.channel) for r in rows] == [
        ("LIS", "HL7-0001-1", "request", "hl7"), ("LIS", "HL7-0002-1", "perform", "hl7"),
        ("LIS", "HL7-0003-1", "report_feedback", "hl7")]
    first = rows[0]
    assert first.loop_type_key == "lab"
    assert first.occurred_at == datetime(2026, 11, 20, 0, 0, tzinfo=UTC)  # ORC-9 at +08:00
    assert (first.patient_id, first.patient_name, first.inpatient_no) == ("P7001", "赵六", "ZY7001")
    assert (first.operator_id, first.operator_name, first.dept, first.campus) == ("D1002", "陈医生", "1001", "HQ")
    assert first.data["hl7"]["message_type"] == "ORM^O01" and first.data["filler_order_no"] == "F-HL7-LAB-1"
    assert rows[1].operator_name == "钱检验"
    # the ORU has no ORC: MSH-7 is the time
    assert rows[2].occurred_at == datetime(2026, 11, 20, 0, 30, tzinfo=UTC)
    apply_all(live["app"])
    from app.db import db

    db.session.expire_all()
    order = db.session.scalar(select(LoopOrder).where(LoopOrder.order_no == "HL7-LAB-1"))
    assert order is not None and order.loop_type_key == "lab" and order.patient_name == "赵六"


def test_duplicate_message_is_acknowledged_and_not_stored_twice(listener, live_ctx):
    host, port = listener
    text = message(msh("HL7-DUP-1"), PID, PV1, orc("NW", "HL7-LAB-DUP"), obr("HL7-LAB-DUP"))
    assert parse_ack(hl7_mllp.send(host, port, text))["code"] == "AA"
    again = parse_ack(hl7_mllp.send(host, port, text))
    assert again["code"] == "AA" and "重复 1 条" in again["text"]
    assert len(events_of("HL7-LAB-DUP")) == 1


def test_cancel_maps_to_cancelled_and_interrupts_the_loop(listener, live, live_ctx):
    host, port = listener
    exam = obr("HL7-EXAM-1", service="CT01^胸部CT^L")
    assert parse_ack(hl7_mllp.send(host, port, message(msh("HL7-EX-1", app="PACS"), PID, PV1,
                                                       orc("NW", "HL7-EXAM-1"), exam)))["code"] == "AA"
    assert parse_ack(hl7_mllp.send(host, port, message(
        msh("HL7-EX-2", app="PACS"), PID, PV1, orc("SC", "HL7-EXAM-1", status="SC", when="20261120081000+0800"),
        exam)))["code"] == "AA"
    cancel = message(msh("HL7-EX-3", app="PACS"), PID, PV1,
                     orc("CA", "HL7-EXAM-1", status="CA", when="20261120082000+0800", reason="^患者拒绝检查"), exam)
    assert parse_ack(hl7_mllp.send(host, port, cancel))["code"] == "AA"
    rows = events_of("HL7-EXAM-1")
    assert [(r.source, r.loop_type_key, r.node_key) for r in rows] == [
        ("PACS", "exam", "request"), ("PACS", "exam", "booking"), ("PACS", "exam", "cancelled")]
    assert rows[2].data["reason"] == "患者拒绝检查"
    apply_all(live["app"])
    from app.db import db

    db.session.expire_all()
    order = db.session.scalar(select(LoopOrder).where(LoopOrder.order_no == "HL7-EXAM-1"))
    assert order.status == "interrupted"


def test_sending_application_mapping_wins_and_raw_code_is_kept(listener, live_ctx):
    from app.db import db

    db.session.add(InterfaceMapping(source="LIS2", kind="node:lab", code="IP", target="collect", note="测试"))
    db.session.commit()
    try:
        host, port = listener
        text = message(msh("HL7-OWN-1", app="LIS2"), PID, PV1, orc("SC", "HL7-LAB-OWN", status="IP"),
                       obr("HL7-LAB-OWN", service="LAB^检验^L"))
        assert parse_ack(hl7_mllp.send(host, port, text))["code"] == "AA"
        (row,) = events_of("HL7-LAB-OWN")
        assert (row.order_type, row.node, row.node_key) == ("lab", "IP", "collect")
    finally:
        db.session.execute(InterfaceMapping.__table__.delete().where(InterfaceMapping.source == "LIS2"))
        db.session.commit()


def test_a_rejected_group_gives_AE_with_chinese_reason_and_the_rest_is_stored(listener, live_ctx):  # noqa: N802
    host, port = listener
    text = message(msh("HL7-REJ-1"), PID, PV1,
                   orc("NW", "HL7-LAB-R1"), obr("HL7-LAB-R1"),
                   orc("XX", "HL7-LAB-R2", status="ZZ"), obr("HL7-LAB-R2"),
                   orc("NW", "", when="bad-time"), obr(""))
    ack = parse_ack(hl7_mllp.send(host, port, text))
    assert ack["code"] == "AE"
    assert "医嘱组 2" in ack["text"] and "没有节点「ZZ」" in ack["text"]
    assert "医嘱组 3" in ack["text"] and "其余 1 条已接收" in ack["text"]
    assert "ERR||ORC^2^5|207" in ack["err"] and "ERR||ORC^3^" in ack["err"]
    assert len(events_of("HL7-LAB-R1")) == 1 and events_of("HL7-LAB-R2") == []


def test_unsupported_and_unreadable_messages_are_rejected_with_AR(listener, live_ctx):  # noqa: N802
    host, port = listener
    adt = parse_ack(hl7_mllp.send(host, port, message(msh("HL7-ADT-1", mtype="ADT^A01"), PID, PV1)))
    assert adt["code"] == "AR" and "不支持的消息类型 ADT^A01" in adt["text"]
    junk = parse_ack(hl7_mllp.send(host, port, "hello"))
    assert junk["code"] == "AR" and "无法解析" in junk["text"]
    empty = parse_ack(hl7_mllp.send(host, port, message(msh("HL7-EMPTY-1"), PID, PV1)))
    assert empty["code"] == "AE" and "没有 ORC/OBR" in empty["text"]


def test_gb18030_message_and_a_frame_split_across_reads(listener, live_ctx):
    host, port = listener
    text = message(msh("HL7-GB-1", charset="GB 18030-2000"), PID, PV1,
                   orc("NW", "HL7-LAB-GB", when="202611200830"), obr("HL7-LAB-GB"))
    payload = hl7_mllp.frame(text.encode("gb18030"))
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"noise" + payload[:25])
        time.sleep(0.2)
        sock.sendall(payload[25:])
        buffer = bytearray()
        while not (frames := hl7_mllp.extract_frames(buffer)):
            buffer.extend(sock.recv(4096))
        ack = parse_ack(frames[0].decode("gb18030"))
        assert ack["code"] == "AA"
        # a second message on the same connection
        sock.sendall(hl7_mllp.frame(message(msh("HL7-GB-2", charset="GB 18030-2000"), PID, PV1,
                                            orc("NW", "HL7-LAB-GB2"), obr("HL7-LAB-GB2")).encode("gb18030")))
        buffer = bytearray()
        while not (frames := hl7_mllp.extract_frames(buffer)):
            buffer.extend(sock.recv(4096))
        assert parse_ack(frames[0].decode("gb18030"))["control"] == "HL7-GB-2"
    (row,) = events_of("HL7-LAB-GB")
    assert row.patient_name == "赵六"
    assert row.occurred_at == datetime(2026, 11, 20, 0, 30, tzinfo=UTC)  # no offset: +08:00


def test_framing_and_escaping_helpers():
    buf = bytearray(b"xx\x0bA\x1c\x0d\x0bB\x1c\x0d\x0bC")
    assert hl7_mllp.extract_frames(buf) == [b"A", b"B"]
    assert bytes(buf) == b"\x0bC"
    assert hl7_mllp.escape("a|b^c&d~e\\f") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"


def test_default_dictionary_is_seeded(live_ctx):
    from app.db import db

    count = db.session.scalar(select(func.count()).select_from(InterfaceMapping)
                              .where(InterfaceMapping.source == "HL7"))
    assert count == len(hl7_mllp.default_mappings())
    assert hl7_mllp.seed_mappings() == 0  # idempotent
