"""Integration documentation and connectors wiring (seed 003 集成要求: 接口字典与映射, REST/JSON, WebService).

- GET /api/v1/openapi.json: OpenAPI 3.1 for the loop API (full request/response schemas with Chinese
  descriptions and examples) plus every other /api/v1 endpoint found in the URL map;
- GET /integration/docs: the same rendered as a Chinese page on the server (no CDN, no script);
- GET /integration/interface-dictionary.docx: the Word interface dictionary (reports/interface_dictionary.py);
- the SOAP WebService mounted at /soap/loops (connectors/soap_loops.py);
- the `medloop connectors ...` commands: hl7 listener, database-view pulls, cursors, dictionary defaults;
- the periodic database-view pull job when LOOP_DB_SOURCES is configured (connectors/db_pull.py).
All pages need loops.view; the OpenAPI JSON also accepts a hospital system's API token.
"""

from __future__ import annotations

import json
import re
from io import BytesIO
from typing import Any

import click
from flask import Blueprint, current_app, render_template_string, request, send_file
from flask.cli import AppGroup
from sqlalchemy import select

from app.auth.access import api_auth, require
from app.db import db, utcnow
from app.loops.qc import FIELD_TYPES

bp = Blueprint("loops_docs", __name__)

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0"

# what `required` of a node's data field means to a source system (API, docs page and Word dictionary)
FIELD_REQUIRED_NOTE = ("是否必填：必填字段应随完成该节点的事件在 data 中提交；节点开启质控规则「必填字段须齐全」时，"
                       "缺少必填字段或格式不符会记为质控问题并告警，事件仍照常应用")

# ---------------------------------------------------------------- the event contract (single source)

# (name, type, required, description, example, max length); dotted names are nested objects
EVENT_FIELDS: list[tuple[str, str, bool, str, Any, int | None]] = [
    ("source", "string", True, "来源系统编码（HIS/LIS/PACS/输血/手麻…）；与 event_id 一起唯一标识事件", "LIS", 32),
    ("event_id", "string", True, "来源系统内唯一的事件 ID；同一事件重发返回 duplicate，不会重复计入", "LIS-20261120-000123", 128),
    ("order_no", "string", True, "医嘱号（闭环主索引）", "O202611200001", 64),
    ("order_type", "string", True, "医嘱类型：闭环类型标识（见 GET /api/v1/loop-types），或接口字典中 order_type 映射的来源编码",
     "lab", 64),
    ("node", "string", True, "节点标识，或接口字典中 node:<闭环>/node 映射的来源状态码；保留值 cancelled=医嘱取消/停止（闭环中断），"
     "abnormal=当前环节异常", "collect", 64),
    ("occurred_at", "string", True, "发生时间：带时区偏移的 ISO 8601（如 2026-11-20T08:30:00+08:00），不得晚于当前时间 10 分钟以上",
     "2026-11-20T08:30:00+08:00", None),
    ("operator.id", "string", False, "操作人工号", "N1001", 64),
    ("operator.name", "string", False, "操作人姓名", "吴护士", 64),
    ("patient.id", "string", False, "患者 ID", "P000123", 64),
    ("patient.name", "string", False, "患者姓名", "张三", 64),
    ("patient.inpatient_no", "string", False, "住院号/就诊号", "ZY2026001", 64),
    ("dept", "string", False, "科室编码（来源系统编码，按科室 HIS 编码对应到本系统科室）", "1001", 32),
    ("campus", "string", False, "院区编码", "HQ", 32),
    ("terminal", "string", False, "终端（工作站/PDA 标识），用于按终端追溯", "PDA-GS-03", 128),
    ("data", "object", False, "节点数据（JSON 对象）：节点要求的采集字段（如 sample_no 标本号；各节点的字段见 GET "
     "/api/v1/loop-types 的 nodes[].fields 与接口字典第三节）；cancelled/abnormal 时 reason 为原因",
     {"sample_no": "S20261120001"}, None),
]

RESULT_CODES: list[tuple[str, str]] = [
    ("accepted", "已接收：事件已持久化，稍后按医嘱顺序应用到闭环"),
    ("duplicate", "重复：相同（source, event_id）的事件已存在，本次忽略（幂等，可安全重发）"),
    ("rejected", "已拒绝：事件不合法，未入库；reason 为中文原因，errors 列出字段路径（如 events/3/occurred_at）与原因"),
]

HTTP_CODES: list[tuple[str, str]] = [
    ("200", "请求已处理（批量提交时逐条查看 results 中的 status）"),
    ("400", "请求整体不合法（如 events 不是数组、为空或超过 1000 个），error.errors 给出字段路径与中文原因"),
    ("401", "未提供接口令牌或令牌无效/已吊销"),
    ("403", "无权访问（登录用户缺少所需权限）"),
    ("404", "资源不存在（如医嘱无闭环记录）"),
]

DB_OPTIONS: list[tuple[str, str]] = [
    ("name", "数据源名称（唯一），高水位按此名称保存在 pull_cursors 表"),
    ("url", "SQLAlchemy 连接串，如 mysql+pymysql://user:***@his-db:3306/his、oracle+oracledb://…"),
    ("view / query", "视图或表名（可带模式名），或一条 SELECT 查询（二选一）"),
    ("watermark", "高水位列：自增 ID 或更新时间，只拉取大于上次水位的行，按该列升序"),
    ("watermark_inclusive", "true 时按 >= 拉取（更新时间可能相同的情况），重读的行按重复忽略"),
    ("columns", "事件字段→列名映射，如 {\"event_id\": \"EVT_ID\"}；未列出的字段按同名列取值；缺事件 ID 列时用水位值"),
    ("constants", "列中没有的字段的固定值，如 {\"source\": \"HIS\"}"),
    ("data_columns", "额外复制到事件 data 中的列，如 [\"SAMPLE_NO\"]"),
    ("timezone", "无时区的时间按此偏移解释，默认 +08:00"),
    ("batch / max_batches", "每批行数（≤1000，默认 500）/ 每次运行最多批数（默认 20）"),
    ("enabled", "false 时暂停该数据源"),
]

MAPPING_KINDS = {"order_type": "医嘱类型→闭环类型", "node:<闭环>": "该闭环的状态码→节点", "node": "所有闭环通用的状态码→节点",
                 "dept": "科室编码"}

# ---------------------------------------------------------------- OpenAPI


def _event_schema() -> dict[str, Any]:
    props: dict[str, Any] = {}
    required: list[str] = []
    for name, typ, req, desc, example, max_len in EVENT_FIELDS:
        target = props
        parts = name.split(".")
        for part in parts[:-1]:
            obj = target.setdefault(part, {"type": "object", "description": {"operator": "操作人",
                                                                              "patient": "患者"}.get(part, part),
                                           "properties": {}})
            target = obj["properties"]
        leaf: dict[str, Any] = {"type": typ, "description": desc, "examples": [example]}
        if max_len:
            leaf["maxLength"] = max_len
        if name == "occurred_at":
            leaf["format"] = "date-time"
        if typ == "object":
            leaf["additionalProperties"] = True
        target[parts[-1]] = leaf
        if req and len(parts) == 1:
            required.append(name)
    return {"type": "object", "title": "闭环事件", "description": "来源系统推送的一个闭环节点事件（REST/JSON 契约）",
            "required": required, "properties": props}


def _example_event(**over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {}
    for name, _t, _r, _d, example, _m in EVENT_FIELDS:
        parts = name.split(".")
        target = ev
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = example
    ev.update(over)
    return ev


def _nullable(typ: str, desc: str, **extra: Any) -> dict[str, Any]:
    return {"type": [typ, "null"], "description": desc, **extra}


def components() -> dict[str, Any]:
    person = {"type": ["object", "null"], "properties": {"id": _nullable("string", "工号"),
                                                          "name": _nullable("string", "姓名")}}
    return {
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "医院业务系统的接口令牌（由系统管理员签发，只显示一次）：Authorization: Bearer ml_…"},
            "session": {"type": "apiKey", "in": "cookie", "name": "session", "description": "已登录用户的会话（浏览器）"},
        },
        "schemas": {
            "LoopEventIn": _event_schema(),
            "LoopEventsRequest": {
                "type": "object", "required": ["events"], "description": "批量提交闭环事件",
                "properties": {"events": {"type": "array", "minItems": 1, "maxItems": 1000,
                                          "description": "事件数组（一次最多 1000 个），每个事件独立受理",
                                          "items": {"$ref": "#/components/schemas/LoopEventIn"}}}},
            "FieldError": {"type": "object", "description": "字段错误",
                           "properties": {"path": {"type": "string", "description": "字段路径，如 events/0/occurred_at"},
                                          "message": {"type": "string", "description": "中文原因"}}},
            "LoopEventResult": {
                "type": "object", "description": "单个事件的受理结果（顺序与提交顺序一致）", "required": ["status"],
                "properties": {
                    "status": {"type": "string", "enum": [c for c, _ in RESULT_CODES],
                               "description": "；".join(f"{c}={d.split('：')[0]}" for c, d in RESULT_CODES)},
                    "event_id": {"type": "string", "description": "事件 ID（accepted/duplicate 时返回）"},
                    "reason": {"type": "string", "description": "拒绝原因（rejected 时返回，中文）"},
                    "errors": {"type": "array", "description": "全部字段错误（rejected 时返回）",
                               "items": {"$ref": "#/components/schemas/FieldError"}}}},
            "LoopEventsResponse": {
                "type": "object", "description": "批量受理结果",
                "properties": {"results": {"type": "array", "description": "逐条结果",
                                           "items": {"$ref": "#/components/schemas/LoopEventResult"}},
                               "accepted": {"type": "integer", "description": "已接收条数"},
                               "duplicate": {"type": "integer", "description": "重复条数"},
                               "rejected": {"type": "integer", "description": "拒绝条数"}}},
            "LoopFieldDef": {
                "type": "object", "description": "节点数据字段（事件 data 中应携带的采集字段，按院区/闭环版本配置）",
                "required": ["key", "name", "type", "required"],
                "properties": {"key": {"type": "string", "description": "字段名：事件 data 中的键"},
                               "name": {"type": "string", "description": "字段中文名称"},
                               "type": {"type": "string", "enum": list(FIELD_TYPES),
                                        "description": "数据格式：" + " / ".join(f"{k} {v}" for k, v in
                                                                            FIELD_TYPES.items())},
                               "required": {"type": "boolean", "description": FIELD_REQUIRED_NOTE}}},
            "LoopNodeDef": {"type": "object", "description": "闭环节点定义",
                            "required": ["key", "name", "standard_minutes", "fields"],
                            "properties": {"key": {"type": "string", "description": "节点标识（事件 node 取值）"},
                                           "name": {"type": "string", "description": "节点名称"},
                                           "standard_minutes": {"type": "integer",
                                                                "description": "标准用时（分钟，自上一节点起）"},
                                           "fields": {"type": "array", "description": "该节点的数据字段（未配置时为空数组）",
                                                      "items": {"$ref": "#/components/schemas/LoopFieldDef"}}}},
            "LoopType": {"type": "object", "description": "闭环类型（集团标准，或指定院区时该院区在用的版本）",
                         "required": ["key", "name", "nodes"],
                         "properties": {"key": {"type": "string", "description": "闭环类型标识（事件 order_type 取值）"},
                                        "name": {"type": "string", "description": "闭环名称"},
                                        "order_category": {"type": "string", "description": "医嘱类别（药品/检验/检查/手术…）"},
                                        "campus": _nullable("string", "院区版本所属院区编码；空为集团标准"),
                                        "grace_minutes": {"type": "integer", "description": "缺环等待时长（分钟）"},
                                        "nodes": {"type": "array", "description": "节点（按顺序）",
                                                  "items": {"$ref": "#/components/schemas/LoopNodeDef"}}}},
            "LoopTypesResponse": {"type": "object", "description": "闭环类型列表",
                                  "properties": {"loop_types": {"type": "array", "description": "闭环类型",
                                                                "items": {"$ref": "#/components/schemas/LoopType"}}}},
            "OrderLoopNode": {
                "type": "object", "description": "医嘱闭环中的一个节点",
                "required": ["key", "name", "status", "occurred_at", "operator", "minutes_since_previous",
                             "standard_minutes"],
                "properties": {
                    "key": {"type": "string", "description": "节点标识"},
                    "name": {"type": "string", "description": "节点名称"},
                    "status": {"type": "string", "enum": ["done", "current", "pending", "late", "skipped", "abnormal"],
                               "description": "done 已完成 / current 进行中 / pending 未开始 / late 补录（迟到） / "
                                              "skipped 缺环 / abnormal 异常"},
                    "occurred_at": _nullable("string", "发生时间（ISO 8601，UTC）", format="date-time"),
                    "operator": {**person, "description": "操作人"},
                    "minutes_since_previous": _nullable("integer", "距上一节点用时（分钟）"),
                    "standard_minutes": _nullable("integer", "标准用时（分钟）"),
                    "deviation_minutes": _nullable("integer", "偏差（实际-标准，分钟；正数为超时）"),
                    "note": _nullable("string", "说明（异常原因、缺环说明）"),
                    "qc": {"type": "array", "items": {"type": "string"},
                           "description": "质控问题（仅在节点完成时不符合配置的数据字段或质控规则时出现）：缺少必填字段、"
                                          "字段格式不符、未记录操作人、距上一节点超过质控上限等，每条一句中文说明。"
                                          "事件照常应用，同时产生「质控不合格」告警"}}},
            "OrderLoop": {
                "type": "object", "description": "一条医嘱的闭环",
                "required": ["order_no", "loop_type", "status", "nodes"],
                "properties": {
                    "order_no": {"type": "string", "description": "医嘱号"},
                    "loop_type": {"type": "string", "description": "闭环类型标识"},
                    "loop_name": {"type": "string", "description": "闭环名称"},
                    "status": {"type": "string", "enum": ["in_progress", "closed", "interrupted"],
                               "description": "in_progress 进行中 / closed 已闭环 / interrupted 已中断"},
                    "patient": {"type": "object", "description": "患者",
                                "properties": {"id": _nullable("string", "患者 ID"),
                                               "name": _nullable("string", "患者姓名"),
                                               "inpatient_no": _nullable("string", "住院号")}},
                    "dept": _nullable("string", "科室编码"),
                    "started_at": _nullable("string", "首个节点时间", format="date-time"),
                    "ended_at": _nullable("string", "闭环或中断时间", format="date-time"),
                    "interrupted_node": _nullable("string", "中断时所在节点"),
                    "pending_events": {"type": "boolean", "description": "是否还有待应用的事件"},
                    "nodes": {"type": "array", "description": "节点（按闭环顺序）",
                              "items": {"$ref": "#/components/schemas/OrderLoopNode"}}}},
            "Error": {"type": "object", "description": "错误",
                      "properties": {"error": {"type": "object", "description": "错误信息", "properties": {
                          "code": {"type": "string", "description": "错误码：validation_failed/unauthorized/forbidden/not_found…"},
                          "message": {"type": "string", "description": "中文说明"},
                          "errors": {"type": "array", "description": "字段错误",
                                     "items": {"$ref": "#/components/schemas/FieldError"}}}}}},
        },
    }


def _err(desc: str) -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"session": []}]


def loop_paths() -> dict[str, Any]:
    bad = _example_event(event_id="LIS-20261120-000125", occurred_at="2026-11-20 08:40")
    return {
        "/api/v1/loop-types": {"get": {
            "operationId": "listLoopTypes", "tags": ["闭环"], "summary": "闭环类型与节点",
            "description": "返回启用的闭环类型及其节点（按闭环顺序：节点标识、名称、标准用时、数据字段），供来源系统对照 "
                           "order_type、node 与事件 data 的取值。节点的数据字段（字段名、中文名称、数据格式、是否必填）"
                           "按院区/闭环版本配置：不带参数返回集团标准，带 campus 返回该院区在用的版本（有院区版本的用院区版本，"
                           "其余为集团标准），与事件受理时使用的版本一致。登录用户需权限「查看闭环」。",
            "security": SECURITY,
            "parameters": [{"name": "campus", "in": "query", "required": False,
                            "description": "院区编码（事件的 campus 取值）；不填返回集团标准",
                            "schema": {"type": "string"}, "example": "HQ"}],
            "responses": {"200": {"description": "闭环类型列表", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/LoopTypesResponse"},
                "example": {"loop_types": [{
                    "key": "lab", "name": "检验", "order_category": "检验", "campus": None, "grace_minutes": 5,
                    "nodes": [{"key": "request", "name": "检验申请", "standard_minutes": 0, "fields": []},
                              {"key": "collect", "name": "采集标本", "standard_minutes": 30,
                               "fields": [{"key": "sample_no", "name": "检验样本编号", "type": "string",
                                           "required": True},
                                          {"key": "volume", "name": "标本量（ml）", "type": "number",
                                           "required": False}]}]}]}}}},
                          "400": _err("院区编码不存在（error.errors[0].path 为 campus）"),
                          "401": _err("未提供或无效的接口令牌")}}},
        "/api/v1/loop-events": {"post": {
            "operationId": "submitLoopEvents", "tags": ["闭环"], "summary": "批量提交闭环事件",
            "description": "来源系统推送医嘱各节点事件。每个事件独立受理：合法的在应答前持久化（accepted），"
                           "重复的确认并忽略（duplicate），不合法的拒绝并给出中文原因与字段路径（rejected）。"
                           "应答超时可原样重发。登录用户需权限「闭环配置」。",
            "security": SECURITY,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/LoopEventsRequest"},
                "example": {"events": [_example_event(), _example_event(
                    event_id="LIS-20261120-000124", node="receive_specimen", occurred_at="2026-11-20T09:05:00+08:00",
                    operator={"id": "L2001", "name": "检验科收样员"}, terminal="LIS-RECV-01"), bad]}}}},
            "responses": {"200": {"description": "逐条受理结果", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/LoopEventsResponse"},
                "example": {"results": [
                    {"status": "accepted", "event_id": "LIS-20261120-000123"},
                    {"status": "duplicate", "event_id": "LIS-20261120-000124"},
                    {"status": "rejected",
                     "reason": "发生时间应为带时区偏移的 ISO 8601 时间，如 2026-11-23T10:00:00+08:00",
                     "errors": [{"path": "events/2/occurred_at",
                                 "message": "发生时间应为带时区偏移的 ISO 8601 时间，如 2026-11-23T10:00:00+08:00"}]}],
                    "accepted": 1, "duplicate": 1, "rejected": 1}}}},
                "400": _err("请求整体不合法（events 不是非空数组或超过 1000 个）"),
                "401": _err("未提供或无效的接口令牌"), "403": _err("登录用户无「闭环配置」权限")}}},
        "/api/v1/orders/{order_no}/loop": {"get": {
            "operationId": "getOrderLoop", "tags": ["闭环"], "summary": "查询医嘱闭环",
            "description": "返回一条医嘱的闭环：状态、各节点状态、时间、操作人、距上一节点用时、标准用时与偏差；"
                           "节点不符合其数据字段或质控规则时另含 qc（质控问题列表）。",
            "security": SECURITY,
            "parameters": [{"name": "order_no", "in": "path", "required": True, "description": "医嘱号",
                            "schema": {"type": "string"}, "example": "O202611200001"}],
            "responses": {"200": {"description": "医嘱闭环", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/OrderLoop"},
                "example": {"order_no": "O202611200001", "loop_type": "lab", "loop_name": "检验",
                            "status": "in_progress", "patient": {"id": "P000123", "name": "张三",
                                                                 "inpatient_no": "ZY2026001"},
                            "dept": "1001", "started_at": "2026-11-20T00:00:00+00:00", "ended_at": None,
                            "interrupted_node": None, "pending_events": False,
                            "nodes": [{"key": "request", "name": "检验申请", "status": "done",
                                       "occurred_at": "2026-11-20T00:00:00+00:00",
                                       "operator": {"id": "D1002", "name": "陈医生"}, "minutes_since_previous": None,
                                       "standard_minutes": 0, "deviation_minutes": None, "note": None},
                                      {"key": "senior_review", "name": "上级医师审核", "status": "done",
                                       "occurred_at": "2026-11-20T00:50:00+00:00",
                                       "operator": {"id": "D1001", "name": "王主任"}, "minutes_since_previous": 50,
                                       "standard_minutes": 30, "deviation_minutes": 20, "note": None,
                                       "qc": ["上级医师审核距上一节点 50 分钟，超过质控上限 45 分钟"]},
                                      {"key": "nurse_check", "name": "护士核对执行医嘱", "status": "current",
                                       "occurred_at": None, "operator": None, "minutes_since_previous": None,
                                       "standard_minutes": 30, "deviation_minutes": None, "note": None}]}}}},
                "401": _err("未提供或无效的接口令牌"), "404": _err("未找到该医嘱的闭环记录")}}},
        "/api/v1/openapi.json": {"get": {
            "operationId": "openapi", "tags": ["文档"], "summary": "本接口描述（OpenAPI 3.1）",
            "description": "机器可读的接口描述；中文说明页见 /integration/docs，Word 接口字典见 /integration/interface-dictionary.docx。",
            "security": SECURITY,
            "responses": {"200": {"description": "OpenAPI 3.1 JSON", "content": {"application/json": {
                "schema": {"type": "object"}}}}}}},
    }


# Chinese summaries for routes other packages register (their docstrings, when present, go to the description)
KNOWN_SUMMARIES = {
    "auth_api.me": "当前用户信息",
    "workflow_api.processes": "流程定义列表",
    "workflow_api.deliver": "投递流程消息（按消息名与关联键）",
    "workflow_api.complete": "完成待办任务",
    "privileges_api.check_one": "医疗权限校验（单项）",
    "privileges_api.check_batch": "医疗权限校验（批量）",
    "archives_api.hr_staff": "人事系统同步人员",
    "archives_api.archive": "查询医师技术档案",
    "archives_api.add_record": "新增档案记录",
    "archives_api.update_record": "修改档案记录",
    "technology_api.post_cases": "提交日间手术病例",
    "technology_api.get_indicators": "日间手术指标",
    "loop_embed.launch_token": "申请闭环嵌入页启动令牌",
}

_CONVERTER = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_PARAM_TYPES = {"int": "integer", "float": "number"}


def _first_line(fn: Any) -> str | None:
    doc = (getattr(fn, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else None


def discovered_paths(app) -> dict[str, Any]:
    """Every other /api/v1 endpoint in the URL map, with its path parameters and the view's docstring."""
    paths: dict[str, Any] = {}
    documented = set(loop_paths())
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith("/api/v1/"):
            continue
        path = _CONVERTER.sub(lambda m: "{" + m.group(2) + "}", rule.rule)
        if path in documented:
            continue
        params = [{"name": name, "in": "path", "required": True, "description": name,
                   "schema": {"type": _PARAM_TYPES.get(conv or "", "string")}}
                  for conv, name in _CONVERTER.findall(rule.rule)]
        view = app.view_functions.get(rule.endpoint)
        doc = (getattr(view, "__doc__", None) or "").strip()
        summary = KNOWN_SUMMARIES.get(rule.endpoint) or _first_line(view) or rule.endpoint
        module = getattr(view, "__module__", "") or ""
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {
                "operationId": f"{rule.endpoint}.{method.lower()}", "tags": [_tag(module)], "summary": summary,
                "description": (f"{doc}\n\n" if doc and doc != summary else "")
                + f"由路由表自动收录（{module}）。认证：接口令牌或已登录会话；字段说明见该模块文档。",
                "security": SECURITY,
                "responses": {"200": {"description": "成功", "content": {"application/json": {
                    "schema": {"type": "object"}}}},
                    "400": _err("参数不合法"), "401": _err("未认证"), "403": _err("无权限")}}
            if params:
                op["parameters"] = params
            if method in ("POST", "PUT", "PATCH"):
                op["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
            paths.setdefault(path, {})[method.lower()] = op
    return paths


_TAGS = {"loops": "闭环", "privileges": "医疗权限", "auth": "用户与认证", "archives": "医师档案", "technology": "医疗技术",
         "workflow": "流程", "outbox": "接口发件箱", "notify": "消息", "audit": "审计"}


def _tag(module: str) -> str:
    parts = module.split(".")
    return _TAGS.get(parts[1] if len(parts) > 1 else "", "其他")


def openapi_spec(app, server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for /api/v1."""
    paths = {**loop_paths(), **discovered_paths(app)}
    tags = sorted({t for item in paths.values() for op in item.values() for t in op.get("tags", [])},
                  key=lambda t: (t != "闭环", t))
    spec: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "MedLoop 医疗流程闭环接口", "version": API_VERSION,
                 "description": "医疗流程闭环管理系统对外接口（REST/JSON）。来源系统以接口令牌认证，批量推送医嘱节点事件，"
                                "查询医嘱闭环。另有 WebService（SOAP，/soap/loops?wsdl）、HL7 v2（MLLP）与数据库视图拉取，"
                                "字段契约相同。时间一律为带时区偏移的 ISO 8601。"},
        "servers": [{"url": server_url or "/", "description": "当前服务器"}],
        "tags": [{"name": t} for t in tags],
        "security": SECURITY,
        "paths": paths,
        "components": components(),
    }
    return spec


# ---------------------------------------------------------------- readable page


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref:
        node: Any = spec
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
        return node
    return schema


def _type_label(schema: dict[str, Any]) -> str:
    typ = schema.get("type", "object" if "$ref" in schema else "")
    if isinstance(typ, list):
        label = " | ".join(t for t in typ if t != "null") + ("（可空）" if "null" in typ else "")
    else:
        label = str(typ)
    if schema.get("format"):
        label += f"（{schema['format']}）"
    if schema.get("enum"):
        label += "：" + " / ".join(schema["enum"])
    if schema.get("maxLength"):
        label += f"，≤{schema['maxLength']} 字符"
    return label


def flatten(spec: dict[str, Any], schema: dict[str, Any], prefix: str = "", required: bool = False,
            depth: int = 0) -> list[dict[str, Any]]:
    """Schema properties as rows (dotted names; array items as name[])."""
    schema = _resolve(spec, schema)
    rows: list[dict[str, Any]] = []
    if depth > 6:
        return rows
    req = set(schema.get("required", []))
    for name, prop in (schema.get("properties") or {}).items():
        full = f"{prefix}{name}"
        resolved = _resolve(spec, prop)
        example = prop.get("examples", [None])[0] if prop.get("examples") else None
        rows.append({"name": full, "type": _type_label(resolved if "$ref" in prop else prop),
                     "required": name in req, "description": resolved.get("description") or prop.get("description", ""),
                     "example": json.dumps(example, ensure_ascii=False) if isinstance(example, dict) else example})
        if resolved.get("type") == "array" or (isinstance(resolved.get("type"), list)
                                               and "array" in resolved["type"]):
            items = resolved.get("items") or {}
            rows += flatten(spec, items, f"{full}[].", depth=depth + 1)
        elif resolved.get("properties"):
            rows += flatten(spec, resolved, f"{full}.", depth=depth + 1)
    return rows


def page_sections(spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            body = (op.get("requestBody") or {}).get("content", {}).get("application/json", {})
            responses = []
            ok_fields: list[dict[str, Any]] = []
            ok_example = None
            for code, resp in op.get("responses", {}).items():
                responses.append((code, resp.get("description", "")))
                content = (resp.get("content") or {}).get("application/json", {})
                if code == "200":
                    ok_fields = flatten(spec, content.get("schema") or {})
                    ok_example = content.get("example")
            out.append({
                "id": op["operationId"].replace(".", "-"), "method": method.upper(), "path": path,
                "summary": op.get("summary", ""), "description": op.get("description", ""),
                "tag": (op.get("tags") or ["其他"])[0], "params": op.get("parameters", []),
                "body_fields": flatten(spec, body.get("schema") or {}) if body else [],
                "body_example": json.dumps(body["example"], ensure_ascii=False, indent=2) if body.get("example") else None,
                "responses": responses, "ok_fields": ok_fields,
                "ok_example": json.dumps(ok_example, ensure_ascii=False, indent=2) if ok_example else None,
            })
    return out


PAGE = """{% extends "base.html" %}
{% block title %}接口文档{% endblock %}
{% block content %}
<h1>闭环集成接口文档</h1>
<div class="card">
  <p>来源系统（HIS/EMR、LIS、PACS/RIS、输血、手麻、移动护理、集成平台/ESB 等）按同一事件契约推送医嘱节点事件，四种接入方式任选：</p>
  <table class="grid">
    <tr><th>方式</th><th>地址</th><th>说明</th></tr>
    <tr><td>REST/JSON</td><td><code>POST {{ base }}api/v1/loop-events</code></td><td>认证头 <code>Authorization: Bearer &lt;接口令牌&gt;</code>；一次最多 1000 个事件</td></tr>
    <tr><td>WebService（SOAP 1.1）</td><td><code>{{ soap_url }}</code>（<a href="{{ soap_url }}?wsdl">WSDL</a>）</td><td>令牌放在 token 元素；操作 {% for o in soap_ops %}<code>{{ o.name }}</code>{% if not loop.last %}、{% endif %}{% endfor %}</td></tr>
    <tr><td>HL7 v2（MLLP）</td><td>TCP 端口（默认 2575，<code>medloop connectors hl7 --port 2575</code>）</td><td>ORM^O01、OML^O21/O33、ORU^R01，逐条回 ACK（AA/AE/AR）</td></tr>
    <tr><td>数据库视图（ETL）</td><td>配置 LOOP_DB_SOURCES</td><td>按高水位列增量拉取 HIS/LIS 视图（<code>medloop connectors pull</code>）</td></tr>
  </table>
  <p class="hint">幂等：事件以（source, event_id）唯一，重复提交返回 duplicate；事件在应答前已持久化，超时可原样重发。
  下载：<a href="{{ url_for('loops_docs.openapi') }}">OpenAPI 3.1 JSON</a> ·
  <a href="{{ url_for('loops_docs.interface_dictionary') }}">Word 接口字典</a></p>
</div>

<h2>目录</h2>
<ul>
{% for s in sections %}<li><a href="#{{ s.id }}"><span class="status">{{ s.method }}</span> {{ s.path }}</a> — {{ s.summary }}</li>{% endfor %}
<li><a href="#result-codes">结果码与 HTTP 状态</a></li>
<li><a href="#loop-types">闭环类型与节点</a></li>
<li><a href="#soap">WebService（SOAP）</a></li>
<li><a href="#hl7">HL7 v2 字段映射</a></li>
<li><a href="#db">数据库视图拉取</a></li>
</ul>

{% for s in sections %}
<div class="card" id="{{ s.id }}">
  <h2><span class="status">{{ s.method }}</span> <code>{{ s.path }}</code> · {{ s.summary }}</h2>
  <p>{{ s.description }}</p>
  {% if s.params %}
  <h3>参数</h3>
  <table class="grid"><tr><th>参数</th><th>位置</th><th>类型</th><th>必填</th><th>说明</th></tr>
  {% for p in s.params %}<tr><td><code>{{ p.name }}</code></td><td>{{ p['in'] }}</td><td>{{ p.schema.type }}</td><td>{{ '是' if p.required else '否' }}</td><td>{{ p.description }}</td></tr>{% endfor %}
  </table>
  {% endif %}
  {% if s.body_fields %}
  <h3>请求体字段</h3>
  <table class="grid"><tr><th>字段</th><th>类型</th><th>必填</th><th>说明</th><th>示例</th></tr>
  {% for f in s.body_fields %}<tr><td><code>{{ f.name }}</code></td><td>{{ f.type }}</td><td>{{ '是' if f.required else '否' }}</td><td>{{ f.description }}</td><td>{% if f.example is not none %}<code>{{ f.example }}</code>{% endif %}</td></tr>{% endfor %}
  </table>
  {% endif %}
  {% if s.body_example %}<h3>请求示例</h3><pre>{{ s.body_example }}</pre>{% endif %}
  {% if s.ok_fields %}
  <h3>应答字段（200）</h3>
  <table class="grid"><tr><th>字段</th><th>类型</th><th>说明</th></tr>
  {% for f in s.ok_fields %}<tr><td><code>{{ f.name }}</code></td><td>{{ f.type }}</td><td>{{ f.description }}</td></tr>{% endfor %}
  </table>
  {% endif %}
  {% if s.ok_example %}<h3>应答示例</h3><pre>{{ s.ok_example }}</pre>{% endif %}
  <h3>状态码</h3>
  <table class="grid"><tr><th>HTTP</th><th>说明</th></tr>
  {% for code, desc in s.responses %}<tr><td>{{ code }}</td><td>{{ desc }}</td></tr>{% endfor %}
  </table>
</div>
{% endfor %}

<div class="card" id="result-codes">
  <h2>结果码</h2>
  <table class="grid"><tr><th>status</th><th>含义</th></tr>
  {% for code, desc in result_codes %}<tr><td><code>{{ code }}</code></td><td>{{ desc }}</td></tr>{% endfor %}
  </table>
  <h3>HTTP 状态</h3>
  <table class="grid"><tr><th>HTTP</th><th>含义</th></tr>
  {% for code, desc in http_codes %}<tr><td>{{ code }}</td><td>{{ desc }}</td></tr>{% endfor %}
  </table>
</div>

<div class="card" id="loop-types">
  <h2>闭环类型与节点</h2>
  {% if not loop_types %}<div class="empty">尚未配置闭环类型</div>{% endif %}
  {% for lt in loop_types + campus_versions %}
  <h3>{{ lt.name }}闭环 <code>{{ lt.key }}</code>{% if lt.campus %}（{{ lt.campus_name }}版本，<code>campus={{ lt.campus }}</code>）{% endif %} <span class="muted">{{ lt.order_category }} · 缺环等待 {{ lt.grace_minutes }} 分钟</span></h3>
  <table class="grid"><tr><th>序号</th><th>节点标识（node）</th><th>节点名称</th><th>标准用时（分钟）</th><th>数据字段（data）</th></tr>
  {% for n in lt.nodes %}<tr><td>{{ loop.index }}</td><td><code>{{ n.key }}</code></td><td>{{ n.name }}</td><td>{{ n.standard_minutes }}</td>
    <td>{% for f in n.fields %}<code>{{ f.key }}</code> {{ f.name }}（{{ field_types.get(f.type, f.type) }}，{{ '必填' if f.required else '可选' }}）{% if not loop.last %}<br>{% endif %}{% else %}—{% endfor %}</td></tr>{% endfor %}
  </table>
  {% endfor %}
  <p class="hint">数据字段随完成该节点的事件放在 <code>data</code> 中提交。{{ field_required_note }}。各院区可有自己的版本：
  <code>GET /api/v1/loop-types?campus=院区编码</code> 返回该院区在用的节点与字段。</p>
  <p class="hint">保留节点：{% for k, v in reserved.items() %}<code>{{ k }}</code> {{ v }}{% if not loop.last %}；{% endif %}{% endfor %}。来源编码的映射见「闭环配置 → 接口字典」。</p>
</div>

<div class="card" id="soap">
  <h2>WebService（SOAP）</h2>
  <p>地址 <code>{{ soap_url }}</code>，WSDL <a href="{{ soap_url }}?wsdl"><code>{{ soap_url }}?wsdl</code></a>，命名空间 <code>urn:medloop:loops</code>。</p>
  <table class="grid"><tr><th>操作</th><th>说明</th><th>输入</th><th>输出</th></tr>
  {% for o in soap_ops %}<tr><td><code>{{ o.name }}</code></td><td>{{ o.summary }}</td><td>{{ o.input }}</td><td>{{ o.output }}</td></tr>{% endfor %}
  </table>
  <h3>LoopEventIn 元素（均为字符串）</h3>
  <table class="grid"><tr><th>元素</th><th>必填</th><th>说明</th></tr>
  {% for name, desc, req in soap_fields %}<tr><td><code>{{ name }}</code></td><td>{{ '是' if req else '否' }}</td><td>{{ desc }}</td></tr>{% endfor %}
  </table>
  <h3>SOAP Fault</h3>
  <table class="grid"><tr><th>faultcode</th><th>说明</th></tr>
  {% for code, desc in soap_faults.items() %}<tr><td><code>{{ code }}</code></td><td>{{ desc }}</td></tr>{% endfor %}
  </table>
</div>

<div class="card" id="hl7">
  <h2>HL7 v2 字段映射</h2>
  <p>MLLP 帧 <code>0x0B 消息 0x1C 0x0D</code>；每个 ORC（或不带 ORC 的 OBR）医嘱组生成一个事件。ACK：全部接收或重复为 AA；
  有事件被拒绝为 AE（原因在 MSA-3 与 ERR-8，其余已入库）；无法处理为 AR（未入库，请重发）。</p>
  <table class="grid"><tr><th>HL7 字段</th><th>事件字段</th><th>说明</th></tr>
  {% for f, target, desc in hl7_fields %}<tr><td><code>{{ f }}</code></td><td>{{ target }}</td><td>{{ desc }}</td></tr>{% endfor %}
  </table>
</div>

<div class="card" id="db">
  <h2>数据库视图拉取</h2>
  <p>配置项 <code>LOOP_DB_SOURCES</code>（或环境变量 <code>MEDLOOP_LOOP_DB_SOURCES</code>，JSON 数组）。</p>
  <table class="grid"><tr><th>配置键</th><th>说明</th></tr>
  {% for k, d in db_options %}<tr><td><code>{{ k }}</code></td><td>{{ d }}</td></tr>{% endfor %}
  </table>
  {% if cursors %}
  <h3>当前数据源状态</h3>
  <table class="grid"><tr><th>数据源</th><th>高水位</th><th>最近拉取</th><th>最近行数</th><th>最近拒绝</th><th>累计行数</th><th>最近错误</th></tr>
  {% for c in cursors %}<tr><td>{{ c.source_name }}</td><td>{{ c.last_value or '—' }}</td><td>{{ c.last_run_at|local }}</td><td>{{ c.last_rows }}</td><td>{{ c.last_rejected }}</td><td>{{ c.total_rows }}</td><td>{{ c.last_error or '' }}</td></tr>{% endfor %}
  </table>
  {% endif %}
</div>
{% endblock %}
"""


@bp.get("/api/v1/openapi.json")
@api_auth("loops.view")
def openapi():
    """本接口描述（OpenAPI 3.1）"""
    spec = openapi_spec(current_app, request.host_url.rstrip("/"))
    db.session.commit()  # the token's last-used time
    return current_app.response_class(json.dumps(spec, ensure_ascii=False, indent=1),
                                      mimetype="application/json")


@bp.get("/integration/docs")
@require("loops.view")
def page():
    from app.loops import services
    from app.loops.catalog import RESERVED_NODES
    from connectors import db_pull, hl7_mllp, soap_loops

    spec = openapi_spec(current_app, request.host_url.rstrip("/"))
    return render_template_string(
        PAGE, sections=page_sections(spec), base=request.host_url, soap_url=request.host_url.rstrip("/") + soap_loops.MOUNT,
        soap_ops=soap_loops.OPERATIONS, soap_fields=soap_loops.EVENT_FIELDS, soap_faults=soap_loops.FAULTS,
        hl7_fields=hl7_mllp.FIELD_MAP, db_options=DB_OPTIONS, result_codes=RESULT_CODES, http_codes=HTTP_CODES,
        loop_types=services.loop_types_out(), campus_versions=campus_versions(), field_types=FIELD_TYPES,
        field_required_note=FIELD_REQUIRED_NOTE, reserved=RESERVED_NODES, cursors=db_pull.cursors())


def campus_versions() -> list[dict[str, Any]]:
    """The campus versions in force (loop_types_out(campus) entries that are not the group standard), each
    with campus_name, by campus code then loop type."""
    from app.auth.models import Campus
    from app.loops import services
    from app.loops.models import LoopType

    campuses = db.session.execute(select(Campus.code, Campus.name).join(LoopType, LoopType.campus_id == Campus.id)
                                  .where(LoopType.is_active.is_(True)).distinct().order_by(Campus.code)).all()
    return [{**lt, "campus_name": name} for code, name in campuses
            for lt in services.loop_types_out(code) if lt["campus"]]


def dictionary_docx(*, soap_url: str) -> bytes:
    """Gather the current configuration and render the Word interface dictionary."""
    from app.core.timefmt import SHANGHAI
    from app.loops import services
    from app.loops.catalog import RESERVED_NODES
    from app.loops.models import InterfaceMapping
    from connectors import hl7_mllp, soap_loops
    from reports.interface_dictionary import build

    mappings = [{"source": m.source, "kind": m.kind, "code": m.code, "target": m.target, "note": m.note}
                for m in db.session.scalars(select(InterfaceMapping).order_by(InterfaceMapping.source,
                                                                              InterfaceMapping.kind,
                                                                              InterfaceMapping.code))]
    fields = []
    for name, typ, req, desc, example, max_len in EVENT_FIELDS:
        fields.append({"name": name, "type": typ + (f"({max_len})" if max_len else ""), "required": req,
                       "description": desc,
                       "example": json.dumps(example, ensure_ascii=False) if isinstance(example, dict) else example})
    rest = [("GET", "/api/v1/loop-types", "令牌 / 查看闭环", "闭环类型、节点与数据字段（?campus=院区编码 取该院区版本）"),
            ("POST", "/api/v1/loop-events", "令牌 / 闭环配置", "批量提交闭环事件（≤1000）"),
            ("GET", "/api/v1/orders/{order_no}/loop", "令牌 / 查看闭环", "查询医嘱闭环"),
            ("GET", "/api/v1/openapi.json", "令牌 / 查看闭环", "OpenAPI 3.1 接口描述")]
    return build(loop_types=services.loop_types_out(), campus_versions=campus_versions(), field_types=FIELD_TYPES,
                 field_required_note=FIELD_REQUIRED_NOTE, event_fields=fields, result_codes=RESULT_CODES,
                 http_codes=HTTP_CODES, mappings=mappings, mapping_kinds=MAPPING_KINDS, rest_endpoints=rest,
                 soap_operations=soap_loops.OPERATIONS, soap_fields=soap_loops.EVENT_FIELDS,
                 soap_faults=soap_loops.FAULTS, soap_url=soap_url, hl7_fields=hl7_mllp.FIELD_MAP,
                 db_options=DB_OPTIONS, reserved_nodes=RESERVED_NODES,
                 generated_at=utcnow().astimezone(SHANGHAI))


@bp.get("/integration/interface-dictionary.docx")
@require("loops.view")
def interface_dictionary():
    from connectors import soap_loops

    data = dictionary_docx(soap_url=request.host_url.rstrip("/") + soap_loops.MOUNT)
    return send_file(BytesIO(data), as_attachment=True, mimetype=DOCX, download_name="闭环接口字典.docx")


# ---------------------------------------------------------------- CLI: medloop connectors ...

cli = AppGroup("connectors", help="外部系统接入：HL7 监听、数据库视图拉取、接口字典默认值。")


@cli.command("hl7")
@click.option("--host", default="0.0.0.0", show_default=True, help="监听地址")
@click.option("--port", default=2575, show_default=True, type=int, help="MLLP 端口")
def hl7_cmd(host: str, port: int) -> None:
    """启动 HL7 v2 MLLP 监听（ORM/OML/ORU → 闭环事件，逐条回 ACK）。"""
    from app.loops import tasks
    from connectors import hl7_mllp

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if app.config.get("CELERY_ALWAYS_EAGER", True):
        tasks.start_in_process_applier(app)
    server = hl7_mllp.make_server(app, host, port)
    click.echo(f"HL7 MLLP 监听 {host}:{server.server_address[1]}（Ctrl+C 退出）")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@cli.command("pull")
@click.option("--source", "name", default=None, help="只拉取该数据源（默认全部已启用的）")
def pull_cmd(name: str | None) -> None:
    """按高水位从数据库视图拉取一次闭环事件。"""
    from connectors import db_pull

    sources = [s for s in db_pull.configured_sources() if name in (None, s.name) and (s.enabled or name)]
    if not sources:
        raise click.ClickException("未配置数据源（LOOP_DB_SOURCES）" if name is None else f"未找到数据源 {name}")
    for src in sources:
        try:
            r = db_pull.pull(src)
        except Exception as exc:  # noqa: BLE001 - report every source; the cursor keeps the error too
            click.echo(f"{src.name}: 拉取失败：{type(exc).__name__}: {exc}", err=True)
            continue
        state = "（其他进程正在拉取，已跳过）" if r.skipped else ""
        click.echo(f"{src.name}: 行 {r.rows}，接收 {r.accepted}，重复 {r.duplicate}，拒绝 {r.rejected}，"
                   f"高水位 {r.last_value or '—'}{state}")
        for reason in r.reasons[:10]:
            click.echo(f"  拒绝 {reason}")


@cli.command("cursors")
def cursors_cmd() -> None:
    """列出各数据源的高水位与最近拉取情况。"""
    from app.core.timefmt import local
    from connectors import db_pull

    rows = db_pull.cursors()
    if not rows:
        click.echo("尚无拉取记录")
    for c in rows:
        click.echo(f"{c.source_name}: 高水位 {c.last_value or '—'}（{c.value_type or '—'}），最近 {local(c.last_run_at)}，"
                   f"行 {c.last_rows}，拒绝 {c.last_rejected}，累计 {c.total_rows}"
                   + (f"，错误：{c.last_error}" if c.last_error else ""))


@cli.command("reset")
@click.argument("name")
@click.option("--value", default=None, help="新的高水位（不填则从头重新拉取；已入库的事件按重复忽略）")
@click.option("--type", "value_type", type=click.Choice(["int", "datetime", "str"]), default=None)
def reset_cmd(name: str, value: str | None, value_type: str | None) -> None:
    """回拨数据源的高水位（记审计日志）。"""
    from connectors import db_pull

    db_pull.reset(name=name, value=value, value_type=value_type)
    db.session.commit()
    click.echo(f"{name} 高水位已设为 {value or '（空，从头拉取）'}")


@cli.command("seed-mappings")
def seed_mappings_cmd() -> None:
    """写入 HL7 默认接口字典（已存在的不覆盖）。"""
    from connectors import hl7_mllp

    added = hl7_mllp.seed_mappings()
    db.session.commit()
    click.echo(f"新增 {added} 条 HL7 接口字典映射")


# ---------------------------------------------------------------- wiring


def register(app) -> None:
    from app.audit import services as audit
    from app.demo import EXTRA_LOADERS
    from app.web import add_nav
    from connectors import hl7_mllp, soap_loops

    app.register_blueprint(bp)
    soap_loops.mount(app)
    app.cli.add_command(cli)
    EXTRA_LOADERS.setdefault("HL7 接口字典", hl7_mllp.seed_mappings)
    audit.ACTION_LABELS["connectors.pull_cursor_reset"] = "回拨数据库拉取高水位"
    add_nav("loops_docs.page", "接口文档", "loops.view", order=70)
    register_jobs(app)


def register_jobs(app) -> None:
    """The periodic database-view pull, when LOOP_DB_SOURCES (or MEDLOOP_LOOP_DB_SOURCES) names sources.
    Importing connectors.db_pull also registers its PullCursor table at start-up."""
    from app.jobs import register_job
    from connectors import db_pull

    if db_pull.configured_sources(app.config):
        register_job("connectors.db_pull", db_pull.pull_all)
