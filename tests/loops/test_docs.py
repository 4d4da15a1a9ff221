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
                declared = {p["name"] for p in op.get("parameters", [])}
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
