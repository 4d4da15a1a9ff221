"""SOAP WebService for closed-loop events (many hospital integration platforms / ESBs only speak SOAP).

Served by spyne at /soap/loops (WSDL at /soap/loops?wsdl), mounted beside the Flask app with werkzeug's
DispatcherMiddleware (see app/loops/docs.py register). Two operations:

- SubmitLoopEvents(token, events[LoopEventIn]) -> [LoopEventResult]: the REST contract of POST
  /api/v1/loop-events with flat fields (operator_id, patient_name ..., data_json as a JSON string).
  The events are stored durably (committed) before the answer, exactly like REST; a duplicate is
  acknowledged, a bad event is rejected alone with a Chinese reason and the field path.
- GetOrderLoop(token, order_no) -> OrderLoop: an order's loop with every node.

`token` is the hospital system's API token (the one used as a Bearer token on REST); a bad token is a
SOAP Fault "Client.Unauthorized" with a Chinese message.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from spyne import Application, Array, ComplexModel, Fault, Integer, ServiceBase, Unicode, rpc
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication

log = logging.getLogger(__name__)

NAMESPACE = "urn:medloop:loops"
SERVICE_NAME = "MedLoopLoopService"
MOUNT = "/soap/loops"

# flat SOAP field -> (description, required); the order is the order of the WSDL sequence
EVENT_FIELDS: list[tuple[str, str, bool]] = [
    ("source", "来源系统编码（HIS/LIS/PACS…），与 event_id 一起唯一标识事件", True),
    ("event_id", "来源系统内唯一的事件 ID（重复提交按重复处理，不会重复计入）", True),
    ("order_no", "医嘱号（闭环主索引）", True),
    ("order_type", "医嘱类型：闭环类型标识，或接口字典中映射的来源编码", True),
    ("node", "节点标识，或接口字典中映射的来源状态码；cancelled=取消/停止，abnormal=环节异常", True),
    ("occurred_at", "发生时间，带时区偏移的 ISO 8601 字符串，如 2026-11-20T08:30:00+08:00", True),
    ("operator_id", "操作人工号", False),
    ("operator_name", "操作人姓名", False),
    ("patient_id", "患者 ID", False),
    ("patient_name", "患者姓名", False),
    ("inpatient_no", "住院号", False),
    ("dept", "科室编码（来源系统）", False),
    ("campus", "院区编码", False),
    ("terminal", "终端（设备/工作站标识）", False),
    ("data_json", "节点数据，JSON 对象字符串，如 {\"reason\": \"患者拒绝\"}", False),
]

OPERATIONS: list[dict[str, Any]] = [
    {"name": "SubmitLoopEvents", "summary": "批量提交闭环事件（与 REST POST /api/v1/loop-events 相同的契约）",
     "input": "token（接口令牌）, events（LoopEventIn 数组，一次最多 1000 个）",
     "output": "LoopEventResult 数组：index 序号、status accepted/duplicate/rejected、reason 原因、path 字段路径、"
               "event_id"},
    {"name": "GetOrderLoop", "summary": "查询一条医嘱的闭环（各节点状态、时间、操作人、用时）",
     "input": "token（接口令牌）, order_no（医嘱号）",
     "output": "OrderLoop：order_no、loop_type、loop_name、status、started_at、ended_at、interrupted_node、"
               "nodes（LoopNodeOut 数组）"},
]

FAULTS = {
    "Client.Unauthorized": "接口令牌无效或已吊销",
    "Client.ValidationFailed": "请求整体不合法（如 events 为空或超过 1000 个）",
    "Client.NotFound": "未找到该医嘱的闭环记录",
    "Server": "系统内部错误，事件未入库，请稍后重试",
}


class LoopEventIn(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [(name, Unicode) for name, _d, _r in EVENT_FIELDS]


class LoopEventResult(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [
        ("index", Integer),
        ("status", Unicode),
        ("event_id", Unicode),
        ("reason", Unicode),
        ("path", Unicode),
    ]


class LoopNodeOut(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [
        ("key", Unicode),
        ("name", Unicode),
        ("status", Unicode),
        ("occurred_at", Unicode),
        ("operator_id", Unicode),
        ("operator_name", Unicode),
        ("minutes_since_previous", Integer),
        ("standard_minutes", Integer),
        ("deviation_minutes", Integer),
        ("note", Unicode),
    ]


class OrderLoop(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [
        ("order_no", Unicode),
        ("loop_type", Unicode),
        ("loop_name", Unicode),
        ("status", Unicode),
        ("patient_id", Unicode),
        ("patient_name", Unicode),
        ("inpatient_no", Unicode),
        ("dept", Unicode),
        ("started_at", Unicode),
        ("ended_at", Unicode),
        ("interrupted_node", Unicode),
        ("pending_events", Unicode),
        ("nodes", Array(LoopNodeOut)),
    ]


# REST field paths -> the flat SOAP field names, so a rejected event points at the element the caller sent
_PATHS = {"operator/id": "operator_id", "operator/name": "operator_name", "patient/id": "patient_id",
          "patient/name": "patient_name", "patient/inpatient_no": "inpatient_no", "data": "data_json"}
_PATH_RE = re.compile(r"^events/(\d+)(?:/(.*))?$")


def to_contract(ev: LoopEventIn | None, index: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A SOAP event as the REST contract's dict; or (None, rejection) when data_json is not a JSON object."""
    if ev is None:
        return None, {"status": "rejected", "reason": "事件为空", "path": f"events/{index}"}
    get = lambda name: getattr(ev, name, None)  # noqa: E731
    body: dict[str, Any] = {name: get(name) for name in ("source", "event_id", "order_no", "order_type", "node",
                                                         "occurred_at", "dept", "campus", "terminal")}
    body["operator"] = {"id": get("operator_id"), "name": get("operator_name")}
    body["patient"] = {"id": get("patient_id"), "name": get("patient_name"), "inpatient_no": get("inpatient_no")}
    raw = get("data_json")
    if raw not in (None, ""):
        try:
            data = json.loads(str(raw))
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return None, {"status": "rejected", "path": f"events/{index}/data_json",
                          "reason": "data_json 应为 JSON 对象字符串，如 {\"reason\": \"患者拒绝\"}"}
        body["data"] = data
    return body, None


def soap_path(path: str | None, index: int) -> str:
    """events/<j>/patient/id (position in the intake batch) -> events/<index>/patient_id."""
    m = _PATH_RE.match(path or "")
    if not m:
        return f"events/{index}"
    rest = m.group(2)
    return f"events/{index}/{_PATHS.get(rest, rest)}" if rest else f"events/{index}"


def _check_token(token: str | None):
    from app.auth.services import verify_api_token
    from app.db import utcnow

    row = verify_api_token(token.strip()) if token and token.strip() else None
    if row is None:
        raise Fault(faultcode="Client.Unauthorized", faultstring=FAULTS["Client.Unauthorized"])
    row.last_used_at = utcnow()
    return row


def submit(events: list[LoopEventIn | None] | None) -> list[dict[str, Any]]:
    """Convert, store (caller commits) and answer one result per submitted event, in order."""
    from app.errors import ValidationFailed
    from app.loops import services

    events = list(events or [])
    results: list[dict[str, Any]] = [{} for _ in events]
    batch: list[dict[str, Any]] = []
    where: list[int] = []
    for i, ev in enumerate(events):
        body, rejected = to_contract(ev, i)
        if rejected is not None:
            results[i] = rejected
        else:
            assert body is not None
            batch.append(body)
            where.append(i)
    if not events:
        raise Fault(faultcode="Client.ValidationFailed", faultstring="events 应为非空数组")
    if batch:
        try:
            out = services.intake(events=batch, channel="soap")
        except ValidationFailed as exc:
            msg = "；".join(e["message"] for e in exc.errors) or exc.message
            raise Fault(faultcode="Client.ValidationFailed", faultstring=msg) from exc
        for j, res in enumerate(out):
            i = where[j]
            item = {"status": res["status"], "event_id": res.get("event_id")}
            if res["status"] == "rejected":
                first = (res.get("errors") or [{}])[0]
                item["reason"] = res.get("reason") or first.get("message")
                item["path"] = soap_path(first.get("path"), i)
            results[i] = item
    for i, item in enumerate(results):
        item["index"] = i
    return results


def order_loop_out(out: dict[str, Any]) -> dict[str, Any]:
    patient = out.get("patient") or {}
    nodes = []
    for n in out.get("nodes", []):
        op = n.get("operator") or {}
        nodes.append({"key": n["key"], "name": n["name"], "status": n["status"], "occurred_at": n["occurred_at"],
                      "operator_id": op.get("id"), "operator_name": op.get("name"),
                      "minutes_since_previous": n.get("minutes_since_previous"),
                      "standard_minutes": n.get("standard_minutes"), "deviation_minutes": n.get("deviation_minutes"),
                      "note": n.get("note")})
    return {"order_no": out["order_no"], "loop_type": out["loop_type"], "loop_name": out["loop_name"],
            "status": str(out["status"]), "patient_id": patient.get("id"), "patient_name": patient.get("name"),
            "inpatient_no": patient.get("inpatient_no"), "dept": out.get("dept"),
            "started_at": out.get("started_at"), "ended_at": out.get("ended_at"),
            "interrupted_node": out.get("interrupted_node"),
            "pending_events": "true" if out.get("pending_events") else "false", "nodes": nodes}


def _run(ctx, work):
    """Run `work()` inside the Flask app context; unexpected errors become a Chinese Server fault."""
    from app.db import db

    flask_app = ctx.app.flask_app
    with flask_app.app_context():
        try:
            return work()
        except Fault:
            db.session.rollback()
            raise
        except Exception as exc:
            db.session.rollback()
            log.exception("SOAP %s failed", ctx.method_name)
            raise Fault(faultcode="Server", faultstring=FAULTS["Server"]) from exc


class LoopService(ServiceBase):
    @rpc(Unicode, Array(LoopEventIn), _returns=Array(LoopEventResult))
    def SubmitLoopEvents(ctx, token, events):  # noqa: N805 - spyne passes the method context first
        def work():
            from app.db import db
            from app.loops import tasks

            _check_token(token)
            results = submit(events)
            db.session.commit()  # durable before the answer
            tasks.wake()
            return [LoopEventResult(**r) for r in results]

        return _run(ctx, work)

    @rpc(Unicode, Unicode, _returns=OrderLoop)
    def GetOrderLoop(ctx, token, order_no):  # noqa: N805
        def work():
            from app.db import db
            from app.loops import services

            _check_token(token)
            out = services.order_loop((order_no or "").strip()) if order_no else None
            db.session.commit()  # token last-used time
            if out is None:
                raise Fault(faultcode="Client.NotFound", faultstring=f"未找到医嘱 {order_no or ''} 的闭环记录")
            data = order_loop_out(out)
            data["nodes"] = [LoopNodeOut(**n) for n in data["nodes"]]
            return OrderLoop(**data)

        return _run(ctx, work)


def make_wsgi_app(flask_app) -> WsgiApplication:
    """The spyne WSGI application bound to a Flask app (mounted at MOUNT)."""
    application = Application([LoopService], tns=NAMESPACE, name=SERVICE_NAME,
                              in_protocol=Soap11(validator=None), out_protocol=Soap11())
    application.flask_app = flask_app
    return WsgiApplication(application)


def mount(flask_app) -> None:
    """Serve the SOAP service at /soap/loops beside the Flask app (idempotent)."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    if flask_app.extensions.get("soap_loops"):
        return
    flask_app.wsgi_app = DispatcherMiddleware(flask_app.wsgi_app,  # type: ignore[method-assign]
                                              {MOUNT: make_wsgi_app(flask_app)})
    flask_app.extensions["soap_loops"] = True
