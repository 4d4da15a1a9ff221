"""Integration docs: the OpenAPI 3.1 JSON (loop paths with full schemas, every other /api/v1 route), the Chinese
docs page and the Word interface dictionary, each behind loops.view."""

from __future__ import annotations

import json
import re
from io import BytesIO

import pytest

from app.loops.catalog import LOOPS


@pytest.fixture
def token(db_session):
    from app.auth.services import create_api_token

    value = create_api_token(system="HIS")
    db_session.commit()
    return value


def _refs(node, found):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                found.append(v)
            else:
                _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)
    return found


def test_openapi_json_describes_the_loop_api_and_every_api_route(client, token, app):
    resp = client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    spec = json.loads(resp.get_data(as_text=True))
    assert spec["openapi"].startswith("3.1")
    assert spec["info"]["title"] and spec["servers"][0]["url"].startswith("http")
    paths = spec["paths"]
    for path in ("/api/v1/loop-types", "/api/v1/loop-events", "/api/v1/orders/{order_no}/loop"):
        assert path in paths
    post = paths["/api/v1/loop-events"]["post"]
    body = post["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/LoopEventsRequest"}
    assert len(body["example"]["events"]) == 3
    event = spec["components"]["schemas"]["LoopEventIn"]
    assert set(event["required"]) == {"source", "event_id", "order_no", "order_type", "node", "occurred_at"}
    for name in ("source", "event_id", "order_no", "order_type", "node", "occurred_at", "operator", "patient",
                 "dept", "campus", "terminal", "data"):
        assert name in event["properties"], name
        assert re.search(r"[\u4e00-\u9fff]", event["properties"][name]["description"]), name
    assert set(event["properties"]["patient"]["properties"]) == {"id", "name", "inpatient_no"}
    result = spec["components"]["schemas"]["LoopEventResult"]["properties"]["status"]
    assert result["enum"] == ["accepted", "duplicate", "rejected"]
    order = paths["/api/v1/orders/{order_no}/loop"]["get"]
    assert order["parameters"][0]["name"] == "order_no" and "404" in order["responses"]
    # every /api/v1 route of the app is described, with its path parameters
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
            assert path in paths, path
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                op = paths[path][method.lower()]
                assert op["responses"] and op["summary"]
                declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
                assert declared == set(re.findall(r"{(\w+)}", path)), path
    # every $ref resolves
    for ref in set(_refs(spec, [])):
        node = spec
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
    ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_openapi_needs_a_token_or_login(client, login):
    assert client.get("/api/v1/openapi.json").status_code == 401
    login("nurse")
    assert client.get("/api/v1/openapi.json").status_code == 200


def test_docs_page_is_chinese_and_server_rendered(client, login):
    login("nurse")
    resp = client.get("/integration/docs")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    for text in ("闭环集成接口文档", "批量提交闭环事件", "/api/v1/orders/{order_no}/loop", "events[].occurred_at",
                 "SubmitLoopEvents", "GetOrderLoop", "/soap/loops?wsdl", "MSH-10", "LOOP_DB_SOURCES", "duplicate",
                 "检验闭环", "上级医师审核"):
        assert text in html, text
    assert "<script src=\"http" not in html and "cdn" not in html.lower()


def test_docs_need_loops_view(client, login):
    assert client.get("/integration/docs").status_code == 302  # to the login page
    login("gs_doc")  # a physician without loops.view
    assert client.get("/integration/docs").status_code == 403
    assert client.get("/integration/interface-dictionary.docx").status_code == 403


def test_interface_dictionary_docx_opens_and_lists_the_loops(client, login):
    from docx import Document

    login("mao")
    resp = client.get("/integration/interface-dictionary.docx")
    assert resp.status_code == 200
    assert resp.mimetype == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert "attachment" in resp.headers["Content-Disposition"]
    doc = Document(BytesIO(resp.data))
    text = "\n".join(p.text for p in doc.paragraphs)
    cells = "\n".join(c.text for t in doc.tables for row in t.rows for c in row.cells)
    for d in LOOPS:
        assert f"{d.name}闭环（{d.key}）" in text
        for node in d.nodes:
            assert node.name in cells
    for item in ("occurred_at", "accepted", "duplicate", "rejected", "SubmitLoopEvents", "MSH-10", "ORC-2",
                 "watermark", "cancelled"):
        assert item in cells, item
    # current interface dictionary rows (the HL7 defaults are seeded)
    assert "node:lab" in cells and "receive_specimen" in cells


# ---------------------------------------------------------------- node data fields (per campus / version)

def _tables_by_heading(doc):
    """{heading text: the first table after it}."""
    from docx.oxml.ns import qn
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    out, heading = {}, None
    for element in doc.element.body.iterchildren():
        if element.tag == qn("w:p"):
            para = Paragraph(element, doc)
            if para.style is not None and para.style.name.startswith("Heading"):
                heading = para.text
        elif element.tag == qn("w:tbl") and heading is not None and heading not in out:
            out[heading] = Table(element, doc)
    return out


def _rows(table):
    return [[c.text for c in row.cells] for row in table.rows]


def test_interface_dictionary_has_a_node_table_with_data_fields_per_loop_type(client, login, lab_fields):
    from docx import Document

    from reports.interface_dictionary import NODE_HEADER

    login("mao")
    doc = Document(BytesIO(client.get("/integration/interface-dictionary.docx").data))
    tables = _tables_by_heading(doc)
    lab_nodes = next(d for d in LOOPS if d.key == "lab").nodes
    # one table per loop type (group standards), headed by the loop's name and key
    for d in LOOPS:
        heading = next(h for h in tables if h.startswith("3.") and h.endswith(f"{d.name}闭环（{d.key}）"))
        rows = _rows(tables[heading])
        assert tuple(rows[0]) == NODE_HEADER
        assert list(dict.fromkeys(r[1] for r in rows[1:])) == [n.key for n in d.nodes]
    lab = _rows(tables[next(h for h in tables if h.startswith("3.") and h.endswith("检验闭环（lab）"))])
    keys = [n.key for n in lab_nodes]
    collect = keys.index("collect")
    assert len(lab) == 1 + len(keys) + 1  # header, one row per node, a second field row for collect
    assert lab[1] == ["1", "request", "检验申请", "0", "—", "—", "—", "—"]
    assert lab[1 + collect] == [str(collect + 1), "collect", "采集标本", "30", "sample_no", "检验样本编号", "文本", "是"]
    # the node's columns are merged down its field rows
    assert lab[2 + collect] == [str(collect + 1), "collect", "采集标本", "30", "volume", "标本量（ml）", "数值", "否"]
    assert lab[3 + collect][1] == keys[collect + 1]
    # the campus version in force at EAST follows the group standards, with its own fields
    heading = next(h for h in tables if h.endswith("检验闭环（lab） · 东院区版本（campus=EAST）"))
    east = _rows(tables[heading])
    perform = keys.index("perform")
    assert [r[1] for r in east[1:]] == keys
    assert east[1 + collect][4:] == ["—", "—", "—", "—"]
    assert east[1 + perform][4:] == ["instrument", "检验仪器", "文本", "是"]
    text = "\n".join(p.text for p in doc.paragraphs)
    assert "GET /api/v1/loop-types?campus=院区编码" in text and "必填字段须齐全" in text


def test_openapi_documents_node_fields_and_the_campus_parameter(client, token):
    spec = json.loads(client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"})
                      .get_data(as_text=True))
    schemas = spec["components"]["schemas"]
    node = schemas["LoopNodeDef"]
    assert node["required"] == ["key", "name", "standard_minutes", "fields"]
    assert node["properties"]["fields"]["items"] == {"$ref": "#/components/schemas/LoopFieldDef"}
    field = schemas["LoopFieldDef"]
    assert set(field["properties"]) == {"key", "name", "type", "required"} == set(field["required"])
    assert field["properties"]["type"]["enum"] == ["string", "integer", "number", "boolean", "date", "datetime"]
    assert "必填字段须齐全" in field["properties"]["required"]["description"]
    op = spec["paths"]["/api/v1/loop-types"]["get"]
    assert op["parameters"] == [{"name": "campus", "in": "query", "required": False,
                                 "description": "院区编码（事件的 campus 取值）；不填返回集团标准",
                                 "schema": {"type": "string"}, "example": "HQ"}]
    example = op["responses"]["200"]["content"]["application/json"]["example"]["loop_types"][0]
    assert example["nodes"][1]["fields"][0] == {"key": "sample_no", "name": "检验样本编号", "type": "string",
                                                 "required": True}
    assert "400" in op["responses"]
    # the order loop contract of the issue, as required properties
    assert schemas["OrderLoop"]["required"] == ["order_no", "loop_type", "status", "nodes"]
    assert schemas["OrderLoopNode"]["required"] == ["key", "name", "status", "occurred_at", "operator",
                                                   "minutes_since_previous", "standard_minutes"]


def test_docs_page_shows_node_fields_and_campus_versions(client, login, lab_fields):
    login("nurse")
    html = client.get("/integration/docs").get_data(as_text=True)
    assert "<code>sample_no</code> 检验样本编号（文本，必填）" in html
    assert "<code>volume</code> 标本量（ml）（数值，可选）" in html
    assert "东院区版本" in html and "<code>instrument</code> 检验仪器（文本，必填）" in html
    assert "?campus=" in html
