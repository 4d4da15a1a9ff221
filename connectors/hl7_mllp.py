"""HL7 v2 over MLLP: a TCP listener that turns ORM^O01 / OML^O21,O33 / ORU^R01 messages into loop events.

Run it with `medloop connectors hl7 --port 2575`. Each MLLP frame (0x0B ... 0x1C 0x0D) holds one message;
every order group in it (an ORC, or an OBR without its own ORC) becomes one event:

    source       MSH-3 sending application            event_id  MSH-10 control id + "-" + group number
    order_no     ORC-2 placer order no (else OBR-2)   order_type OBR-4 / ORC-29 / MSH-3 via the dictionary
    node         ORC-1 order control, ORC-5 order status, OBR-25 result status via the dictionary
    occurred_at  ORC-9 (else OBR-22, else MSH-7)      operator  ORC-10 entered by (else ORC-12)
    patient      PID-3 id, PID-5 name, PV1-19 visit/inpatient no; dept PV1-3.1; terminal ORC-18

Status codes are looked up in the interface dictionary (InterfaceMapping) kind "node:<loop>" then "node",
and order types in kind "order_type", for the sending application first, then source "HL7", then "*".
Defaults (seed_mappings) map ORC-1/ORC-5 CA, OC, DC, CR to `cancelled` and NW, SC, IP, CM, F to nodes of
the lab and exam loops. The events are stored (committed) before the ACK is sent: MSA-1 AA when every
event was accepted or was a duplicate; AE with the Chinese reasons in MSA-3 and ERR-8 when an event was
rejected (the others are stored); AR when the message cannot be processed at all (unsupported type,
unreadable, or a system error: nothing was stored, the sender should resend).
HL7 TS times without an offset are taken as HL7_DEFAULT_TZ (app config, default +08:00).
"""

from __future__ import annotations

import logging
import socketserver
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import hl7

log = logging.getLogger(__name__)

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"
MAX_FRAME = 4 * 1024 * 1024
SUPPORTED = {"ORM^O01", "OML^O21", "OML^O33", "OML^O35", "ORU^R01", "ORR^O02", "ORL^O22"}
SOURCE_HL7 = "HL7"
CANCEL_CODES = ("CA", "OC", "DC", "CR")

# where each event field comes from (documented in the interface dictionary)
FIELD_MAP: list[tuple[str, str, str]] = [
    ("MSH-3", "source", "发送应用（来源系统编码）"),
    ("MSH-10", "event_id", "消息控制 ID；事件 ID = MSH-10 + \"-\" + 医嘱组序号（从 1 开始）"),
    ("MSH-18", "—", "字符集：UNICODE UTF-8（默认）或 GB 18030-2000；ACK 用同一字符集"),
    ("ORC-2 / OBR-2", "order_no", "申请方医嘱号（placer order number）"),
    ("OBR-4.1 / ORC-29.1 / MSH-3", "order_type", "医嘱项目/类型，按接口字典 order_type 映射为闭环类型"),
    ("ORC-1", "node", "医嘱控制码（NW 新开、CA/OC/DC/CR 取消停止…），映射为 cancelled 时优先"),
    ("ORC-5", "node", "医嘱状态（SC 已安排、IP 进行中、CM 已完成…），按接口字典 node:<闭环>/node 映射"),
    ("OBR-25", "node", "结果状态（ORU：F 最终报告…），ORU 消息优先使用"),
    ("ORC-16", "data.reason", "控制原因（取消原因）"),
    ("ORC-9 / OBR-22 / MSH-7", "occurred_at", "事务时间（HL7 TS，如 20261120083000+0800；无时区按东八区）"),
    ("ORC-10 / ORC-12", "operator_id, operator_name", "录入人（否则开单医生）：工号^姓^名"),
    ("PID-3.1", "patient_id", "患者 ID"),
    ("PID-5", "patient_name", "患者姓名（姓^名）"),
    ("PV1-19.1", "inpatient_no", "就诊号/住院号"),
    ("PV1-3.1", "dept", "病区/科室编码"),
    ("PV1-3.4", "campus", "院区（机构）编码"),
    ("ORC-18.1", "terminal", "录入设备；无则为 HL7:<发送应用>"),
    ("ORC-3.1", "data.filler_order_no", "执行方医嘱号"),
]

# location of each contract field in the message, for ERR-2 of a rejected event
_ERR_LOCATION = {"order_no": ("ORC", 2), "order_type": ("OBR", 4), "node": ("ORC", 5), "occurred_at": ("ORC", 9),
                 "source": ("MSH", 3), "event_id": ("MSH", 10), "dept": ("PV1", 3), "campus": ("PV1", 3),
                 "terminal": ("ORC", 18), "operator": ("ORC", 10), "patient": ("PID", 3)}


def default_mappings() -> list[tuple[str, str, str, str]]:
    """(kind, code, target, note) defaults under source "HL7"; the dictionary pages edit them."""
    from app.loops.catalog import LOOPS

    rows: list[tuple[str, str, str, str]] = []
    for code, note in (("CA", "取消医嘱"), ("OC", "医嘱已取消"), ("DC", "停止医嘱"), ("CR", "按要求取消")):
        rows.append(("node", code, "cancelled", f"ORC-1/ORC-5 {code} {note}→取消（闭环中断）"))
    for d in LOOPS:
        rows.append((f"node:{d.key}", "NW", d.nodes[0].key, f"ORC-1 NW 新开医嘱→{d.nodes[0].name}"))
    per_loop = {
        "lab": (("SC", "receive_specimen", "已安排/标本已接收"), ("IP", "perform", "检验进行中"),
                ("CM", "report_print", "检验完成、报告已出"), ("F", "report_feedback", "OBR-25 最终结果已反馈")),
        "exam": (("SC", "booking", "已预约"), ("IP", "perform", "检查进行中"),
                 ("CM", "report_print", "检查完成、报告已出"), ("F", "report_feedback", "OBR-25 最终报告已反馈")),
        "critical_value": (("SC", "receive_specimen", "标本已接收"), ("IP", "perform", "检验/检查进行中"),
                           ("CM", "report_print", "报告已出"), ("F", "report_print", "OBR-25 最终报告")),
    }
    for loop, items in per_loop.items():
        for code, target, note in items:
            rows.append((f"node:{loop}", code, target, f"{code} {note}"))
    for code, target, note in (("LIS", "lab", "检验系统发送→检验闭环"), ("LAB", "lab", "检验"),
                               ("PACS", "exam", "影像系统发送→检查闭环"), ("RIS", "exam", "放射信息系统→检查闭环"),
                               ("EXAM", "exam", "检查"), ("CV", "critical_value", "危急值")):
        rows.append(("order_type", code, target, note))
    return rows


def seed_mappings() -> int:
    """Add the default HL7 dictionary rows that are missing (idempotent). Returns how many were added."""
    from sqlalchemy import select

    from app.db import db
    from app.loops import services
    from app.loops.models import InterfaceMapping

    have = {(m.kind, m.code) for m in db.session.scalars(select(InterfaceMapping)
                                                          .where(InterfaceMapping.source == SOURCE_HL7))}
    added = 0
    for kind, code, target, note in default_mappings():
        if (kind, code) in have:
            continue
        db.session.add(InterfaceMapping(source=SOURCE_HL7, kind=kind, code=code, target=target, note=note))
        added += 1
    db.session.flush()
    services.invalidate_types()
    return added


# ---------------------------------------------------------------- framing and decoding


def frame(payload: bytes) -> bytes:
    return SB + payload + EB + CR


def extract_frames(buffer: bytearray) -> list[bytes]:
    """Take every complete MLLP frame out of `buffer` (in place); bytes outside frames are dropped."""
    out: list[bytes] = []
    while True:
        start = buffer.find(SB)
        if start < 0:
            buffer.clear()
            return out
        end = buffer.find(EB + CR, start + 1)
        if end < 0:
            if start:
                del buffer[:start]
            return out
        out.append(bytes(buffer[start + 1:end]))
        del buffer[:end + 2]


def _charset(raw: bytes) -> str:
    first = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    fields = first.split(first[3:4] or b"|") if first.startswith(b"MSH") else []
    value = fields[17].decode("ascii", "ignore").upper().replace(" ", "") if len(fields) > 17 else ""
    if "GB" in value:
        return "gb18030"
    return "utf-8"


def decode(raw: bytes) -> tuple[str, str]:
    """The message text (segments separated by CR) and the character set it came in."""
    encoding = _charset(raw)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        encoding = "gb18030"
        text = raw.decode(encoding, errors="replace")
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    return text, encoding


def escape(text: str) -> str:
    """Escape HL7 delimiters in free text (MSA-3, ERR-8)."""
    out = text.replace("\\", "\\E\\")
    for ch, esc in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(ch, esc)
    return out.replace("\r", " ").replace("\n", " ")


# ---------------------------------------------------------------- mapping a message to events


def _text(node: Any) -> str:
    while isinstance(node, list):
        node = node[0] if node else ""
    return str(node)


def _f(seg: Any, field: int, component: int = 1) -> str | None:
    """Field/component of a segment as text (first repetition, first subcomponent); None when empty."""
    if seg is None:
        return None
    try:
        value = seg[field]
    except IndexError:
        return None
    if isinstance(value, str):
        node: Any = value if component == 1 else None
    else:
        first = value[0] if len(value) else ""
        if isinstance(first, hl7.Repetition):
            node = first[component - 1] if len(first) >= component else None
        else:
            node = first if component == 1 else None
    if node is None:
        return None
    text = _text(node).strip()
    return text or None


def _name(seg: Any, field: int, family_component: int = 1) -> str | None:
    family, given = _f(seg, field, family_component), _f(seg, field, family_component + 1)
    parts = [p for p in (family, given) if p]
    if not parts:
        return None
    ascii_only = all(p.isascii() for p in parts)
    return " ".join(reversed(parts)) if ascii_only and len(parts) == 2 else "".join(parts)


def _time(value: str | None, default_tz: timezone) -> str | None:
    if not value:
        return None
    try:
        dt = hl7.parse_datetime(value)
    except (ValueError, TypeError):
        return value  # passed on: intake rejects it with a Chinese reason
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=default_tz)
    return dt.isoformat()


def _default_tz() -> timezone:
    from flask import current_app

    text = str(current_app.config.get("HL7_DEFAULT_TZ") or "+08:00")
    sign = -1 if text.startswith("-") else 1
    hours, _, minutes = text.lstrip("+-").partition(":")
    return timezone(sign * timedelta(hours=int(hours or 0), minutes=int(minutes or 0)))


class Dictionary:
    """The interface dictionary rows an HL7 message needs, looked up by sending app, then HL7, then '*'."""

    def __init__(self, sending_app: str | None) -> None:
        from sqlalchemy import select

        from app.db import db
        from app.loops.models import InterfaceMapping

        self.sources = [s for s in (sending_app, SOURCE_HL7, "*") if s]
        rows = db.session.scalars(select(InterfaceMapping).where(InterfaceMapping.source.in_(self.sources)))
        self.rows = {(m.source, m.kind, m.code): m.target for m in rows}

    def lookup(self, kinds: Iterable[str], code: str | None) -> tuple[str, str] | None:
        """(target, source matched) for the first kind/source that maps the code."""
        if not code:
            return None
        for kind in kinds:
            for source in self.sources:
                target = self.rows.get((source, kind, code))
                if target:
                    return target, source
        return None


def _groups(msg: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Message-level segments (MSH, PID, PV1) and the order groups (ORC and/or OBR)."""
    common: dict[str, Any] = {"MSH": None, "PID": None, "PV1": None}
    groups: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for seg in msg:
        name = str(seg[0]).strip()
        if name in common:
            if common[name] is None:
                common[name] = seg
        elif name == "ORC":
            current = {"ORC": seg, "OBR": None, "PID": common["PID"], "PV1": common["PV1"]}
            groups.append(current)
        elif name == "OBR":
            if current is None or current["OBR"] is not None:
                current = {"ORC": None, "OBR": seg, "PID": common["PID"], "PV1": common["PV1"]}
                groups.append(current)
            else:
                current["OBR"] = seg
    return common, groups


def message_type(msg: Any) -> str:
    msh = msg.segment("MSH")
    return f"{_f(msh, 9, 1) or ''}^{_f(msh, 9, 2) or ''}"


def to_events(msg: Any) -> list[dict[str, Any]]:
    """Loop events in the REST contract's shape, one per order group (needs the app context)."""
    common, groups = _groups(msg)
    msh = common["MSH"]
    mtype = message_type(msg)
    sending_app = _f(msh, 3)
    control_id = _f(msh, 10)
    tz = _default_tz()
    dictionary = Dictionary(sending_app)
    events = []
    for i, g in enumerate(groups, start=1):
        orc, obr, pid, pv1 = g["ORC"], g["OBR"], g["PID"], g["PV1"]
        # order type: OBR-4 service, ORC-29 order type, then the sending application
        loop_key = raw_type = None
        type_source = None
        for code in (_f(obr, 4, 1), _f(orc, 29, 1), sending_app):
            if not code:
                continue
            raw_type = raw_type or code
            from app.loops import services

            if services.type_info(code) is not None:
                loop_key, raw_type, type_source = code, code, "*"
                break
            hit = dictionary.lookup(["order_type"], code)
            if hit:
                loop_key, type_source = hit
                raw_type = code
                break
        # node: a cancelling ORC-1 wins; else result status (ORU), order status, order control
        orc1, orc5, obr25 = _f(orc, 1), _f(orc, 5), _f(obr, 25)
        kinds = ([f"node:{loop_key}"] if loop_key else []) + ["node"]
        candidates = [orc5, orc1] if not mtype.startswith("ORU") else [obr25, orc5, orc1]
        node = raw_node = node_source = None
        cancel = dictionary.lookup(kinds, orc1)
        if cancel and cancel[0] == "cancelled":
            node, node_source, raw_node = cancel[0], cancel[1], orc1
        else:
            for code in candidates:
                hit = dictionary.lookup(kinds, code)
                if hit:
                    node, node_source, raw_node = hit[0], hit[1], code
                    break
            if node is None:
                raw_node = next((c for c in candidates if c), None)
        # pass the raw code when intake resolves it itself (own source or '*'), else the mapped key
        order_type = raw_type if type_source in (sending_app, "*") else (loop_key or raw_type)
        node_out = raw_node if node_source in (sending_app, "*") else (node or raw_node)
        occurred = _time(_f(orc, 9) or (_f(obr, 22) if obr is not None else None) or _f(msh, 7), tz)
        op_seg, op_field = (orc, 10) if _f(orc, 10) else (orc, 12)
        data: dict[str, Any] = {"hl7": {"message_type": mtype, "control_id": control_id, "group": i,
                                        "order_control": orc1, "order_status": orc5, "result_status": obr25,
                                        "service": _f(obr, 4, 2) or _f(obr, 4, 1)}}
        filler = _f(orc, 3) or _f(obr, 3)
        if filler:
            data["filler_order_no"] = filler
        reason = _f(orc, 16, 2) or _f(orc, 16, 1)
        if reason:
            data["reason"] = reason
        events.append({
            "source": sending_app,
            "event_id": f"{control_id}-{i}" if control_id else None,
            "order_no": _f(orc, 2) or _f(obr, 2),
            "order_type": order_type,
            "node": node_out,
            "occurred_at": occurred,
            "operator": {"id": _f(op_seg, op_field, 1), "name": _name(op_seg, op_field, 2)},
            "patient": {"id": _f(pid, 3, 1), "name": _name(pid, 5, 1), "inpatient_no": _f(pv1, 19, 1)},
            "dept": _f(pv1, 3, 1),
            "campus": _f(pv1, 3, 4),
            "terminal": _f(orc, 18, 1) or (f"HL7:{sending_app}" if sending_app else None),
            "data": data,
        })
    return events


# ---------------------------------------------------------------- acknowledgements


def _ack(msg: Any, code: str, text: str, errors: list[tuple[int, str, str]] | None = None) -> str:
    try:
        ack = msg.create_ack(code, application="MEDLOOP")
        ack.segment("MSH").assign_field(_now_ts(), 7)  # the library writes UTC without an offset
        out = str(ack).rstrip("\r") + "|" + escape(text)[:500]
    except (IndexError, KeyError, TypeError):  # a sparse MSH: answer with a minimal header
        out = _bare_ack(code, text, _f(msg.segment("MSH"), 10) or "").rstrip("\r")
    for group, field, message in errors or []:
        seg, num = _ERR_LOCATION.get(field.split("/")[0], ("ORC", 0))
        location = f"{seg}^{group}^{num}" if num else f"{seg}^{group}"
        out += f"\rERR||{location}|207^Application internal error^HL70357|E||||{escape(message)[:250]}"
    return out + "\r"


def _now_ts() -> str:
    return datetime.now(timezone(timedelta(hours=8))).strftime("%Y%m%d%H%M%S%z")


def _bare_ack(code: str, text: str, control_id: str = "") -> str:
    now = _now_ts()
    return (f"MSH|^~\\&|MEDLOOP||||{now}||ACK|{now[:14]}|P|2.5\rMSA|{code}|{escape(control_id)}|{escape(text)[:500]}\r")


def handle(raw: bytes) -> tuple[bytes, list[dict[str, Any]]]:
    """Process one framed message inside the app context: store its events (committed) and build the ACK.
    Returns (ACK bytes, intake results)."""
    from app.db import db
    from app.errors import ValidationFailed
    from app.loops import services, tasks

    text, encoding = decode(raw)
    try:
        msg = hl7.parse(text)
        msg.segment("MSH")
    except Exception:  # noqa: BLE001 - anything unreadable is rejected, the connection stays open
        return _bare_ack("AR", "无法解析 HL7 消息：缺少 MSH 段或分隔符不正确").encode(encoding), []
    mtype = message_type(msg)
    if mtype not in SUPPORTED:
        supported = "、".join(sorted(SUPPORTED))
        return _ack(msg, "AR", f"不支持的消息类型 {mtype}（支持：{supported}）").encode(encoding), []
    try:
        events = to_events(msg)
        if not events:
            db.session.rollback()
            return _ack(msg, "AE", "消息中没有 ORC/OBR 医嘱段", [(1, "order_no", "消息中没有 ORC/OBR 医嘱段")]
                        ).encode(encoding), []
        try:
            results = services.intake(events=events, channel="hl7")
        except ValidationFailed as exc:
            db.session.rollback()
            return _ack(msg, "AE", exc.errors[0]["message"] if exc.errors else exc.message).encode(encoding), []
        db.session.commit()  # durable before the ACK
    except Exception:  # noqa: BLE001 - nothing stored: the sender resends
        db.session.rollback()
        log.exception("HL7 message %s could not be stored", _f(msg.segment("MSH"), 10))
        return _ack(msg, "AR", "系统内部错误，消息未入库，请稍后重发").encode(encoding), []
    tasks.wake()
    errors = []
    for i, res in enumerate(results, start=1):
        if res["status"] == "rejected":
            first = (res.get("errors") or [{"path": "", "message": res.get("reason", "")}])[0]
            field = first["path"].split("/", 2)[2] if first["path"].count("/") >= 2 else ""
            errors.append((i, field, f"医嘱组 {i}：{first['message']}"))
    accepted = sum(1 for r in results if r["status"] == "accepted")
    duplicate = sum(1 for r in results if r["status"] == "duplicate")
    if errors:
        text_out = "；".join(m for _g, _f2, m in errors)
        if accepted or duplicate:
            text_out += f"（其余 {accepted + duplicate} 条已接收）"
        return _ack(msg, "AE", text_out, errors).encode(encoding), results
    summary = f"已接收 {accepted} 条" + (f"，重复 {duplicate} 条（已忽略）" if duplicate else "")
    return _ack(msg, "AA", summary).encode(encoding), results


# ---------------------------------------------------------------- the TCP listener


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        app = self.server.flask_app  # type: ignore[attr-defined]
        sock = self.request
        sock.settimeout(self.server.idle_timeout)  # type: ignore[attr-defined]
        buffer = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer.extend(chunk)
            if len(buffer) > MAX_FRAME:
                log.warning("HL7 frame from %s larger than %d bytes dropped", self.client_address, MAX_FRAME)
                buffer.clear()
                continue
            for raw in extract_frames(buffer):
                with app.app_context():
                    try:
                        ack, _results = handle(raw)
                    finally:
                        from app.db import db

                        db.session.remove()
                try:
                    sock.sendall(frame(ack))
                except OSError:
                    return


class MLLPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, flask_app, host: str, port: int, idle_timeout: float = 600.0) -> None:
        self.flask_app = flask_app
        self.idle_timeout = idle_timeout
        super().__init__((host, port), _Handler)


def make_server(flask_app, host: str = "0.0.0.0", port: int = 2575) -> MLLPServer:
    """A listener bound to host:port (port 0 = any free port: see server.server_address)."""
    return MLLPServer(flask_app, host, port)


def serve_in_thread(flask_app, host: str = "127.0.0.1", port: int = 0) -> tuple[MLLPServer, threading.Thread]:
    server = make_server(flask_app, host, port)
    thread = threading.Thread(target=server.serve_forever, name="medloop-hl7", daemon=True)
    thread.start()
    return server, thread


def send(host: str, port: int, message: str, *, encoding: str = "utf-8", timeout: float = 10.0) -> str:
    """A minimal MLLP client (used by tests and for checking a listener by hand): returns the ACK text."""
    import socket

    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(frame(message.replace("\n", "\r").encode(encoding)))
        buffer = bytearray()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer.extend(chunk)
            frames = extract_frames(buffer)
            if frames:
                return frames[0].decode(encoding)
    raise ConnectionError("连接已关闭，未收到 ACK")
