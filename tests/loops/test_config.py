"""闭环配置 (seed 003 §二.3): per-campus node editing with BPMN versions, validation, running orders keeping
their nodes, typical-loop copies accepted by intake, the interface dictionary with Excel import/export."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import BytesIO

import pytest
from openpyxl import Workbook, load_workbook
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.auth.models import Campus
from app.errors import ValidationFailed
from app.loops import config, services
from app.loops.catalog import LOOPS
from app.loops.models import InterfaceMapping, LoopEvent, LoopNode, LoopOrder, LoopType
from app.workflow import services as wf
from app.workflow.models import ProcessInstance, ProcessVersion

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
LAB = [n.key for n in next(d for d in LOOPS if d.key == "lab").nodes]


@pytest.fixture(autouse=True)
def fresh_caches():
    services.invalidate_types()
    yield
    services.invalidate_types()


def ev(order_no: str, loop: str, node: str, minute: int, **extra):
    body = {"source": "HIS", "event_id": f"{order_no}-{node}-{minute}", "order_no": order_no, "order_type": loop,
            "node": node, "occurred_at": (T0 + timedelta(minutes=minute)).isoformat(),
            "operator": {"id": "N1001", "name": "吴护士"}, "patient": {"id": "P001", "name": "张三"},
            "dept": "2001", "terminal": "护士站-1"}
    body.update(extra)
    return body


@pytest.fixture
def his(client, db_session):
    from app.auth.services import create_api_token

    token = create_api_token(system="HIS")
    db_session.commit()

    def post(events):
        return client.post("/api/v1/loop-events", json={"events": events},
                           headers={"Authorization": f"Bearer {token}"})

    post.token = token
    return post


def apply_all(now: datetime | None = None) -> None:
    for _ in range(50):
        stats = services.apply_pending(now=now)
        if stats.orders == 0 or stats.applied == 0:
            break


def east(db_session) -> Campus:
    return db_session.scalar(select(Campus).where(Campus.code == "EAST"))


def lab_spec(db_session) -> dict:
    return config.node_spec(config.group_type("lab"))


def edited_lab(db_session) -> dict:
    """The lab loop as 东院区 runs it: 接转标本 removed, a sample check added after collection, fields and QC."""
    spec = lab_spec(db_session)
    nodes = [n for n in spec["nodes"] if n["key"] != "transfer"]
    collect = next(i for i, n in enumerate(nodes) if n["key"] == "collect")
    nodes.insert(collect + 1, {"key": "sample_check", "name": "标本核对", "standard_minutes": 10,
                               "responsible_role": "nurse",
                               "required_fields": [{"name": "sample_no", "label": "检验样本编号", "type": "string",
                                                    "required": True},
                                                   {"name": "remark", "label": "医嘱执行备注", "type": "string",
                                                    "required": False}],
                               "qc_rules": {"max_minutes": 45, "require_fields": True}})
    next(n for n in nodes if n["key"] == "identify")["name"] = "核对患者身份（腕带）"
    return {**spec, "grace_minutes": 3, "nodes": nodes}


def form_data(spec: dict, token: str, *, campus: str = "", op: str = "save") -> dict:
    data = {"csrf_token": token, "campus": campus, "op": op, "grace_minutes": spec["grace_minutes"],
            "stall_minutes": spec["stall_minutes"]}
    for i, n in enumerate(spec["nodes"]):
        p = f"nodes-{i}-"
        data.update({p + "key": n["key"], p + "name": n["name"], p + "standard_minutes": n["standard_minutes"],
                     p + "responsible_role": n.get("responsible_role") or "", p + "is_new": "0"})
        qc = n.get("qc_rules") or {}
        if qc.get("max_minutes"):
            data[p + "qc_max_minutes"] = qc["max_minutes"]
        if qc.get("require_fields"):
            data[p + "qc_require_fields"] = "1"
        for j, f in enumerate(n.get("required_fields") or []):
            fp = f"{p}fields-{j}-"
            data.update({fp + "name": f["name"], fp + "label": f.get("label") or "", fp + "type": f["type"],
                         fp + "required": "required" if f["required"] else "optional"})
    return data


def versions_of(db_session, key: str) -> int:
    return db_session.scalar(select(func.count()).select_from(ProcessVersion).where(ProcessVersion.key == key))


# ---------------------------------------------------------------- permissions and the list


def test_nurse_sees_the_list_but_is_refused_every_edit_page(client, login):
    token = login("nurse")
    assert client.get("/loops/config/").status_code == 200
    for url in ("/loops/config/types/lab/nodes", "/loops/config/types/lab/nodes?campus=EAST",
                "/loops/config/templates", "/loops/config/mappings", "/loops/config/mappings/new",
                "/loops/config/mappings/import", "/loops/config/mappings/export.xlsx"):
        assert client.get(url).status_code == 403, url
    assert client.post("/loops/config/types/lab/nodes", data={"csrf_token": token}).status_code == 403
    assert client.post("/loops/config/templates", data={"csrf_token": token}).status_code == 403


def test_list_groups_standard_and_campus_versions_with_their_bpmn_version(client, login, db_session, user):
    config.save_loop_nodes(key="lab", campus=east(db_session), spec=edited_lab(db_session), actor=user("admin"))
    login("admin")
    html = client.get("/loops/config/").get_data(as_text=True)
    assert "输血" in html and "集团标准" in html and "东院区版本" in html
    assert "/workflow/processes/loop_lab__east" in html and "/workflow/processes/loop_transfusion" in html
    assert "第 1 版" in html and "新建院区版本" in html


def test_editor_shows_nodes_fields_and_keeps_existing_keys_read_only(client, login):
    login("admin")
    html = client.get("/loops/config/types/lab/nodes?campus=EAST").get_data(as_text=True)
    assert "东院区尚无院区版本" in html and "核对患者身份" in html and 'name="csrf_token"' in html
    assert 'name="nodes-0-key" value="request" readonly' in html
    assert client.get("/loops/config/types/nope/nodes").status_code == 404
    assert client.get("/loops/config/types/lab/nodes?campus=MARS").status_code == 404


# ---------------------------------------------------------------- node editing


def test_campus_edit_creates_the_campus_version_and_deploys_a_new_bpmn(client, login, db_session):
    token = login("admin")
    group_before = [n.key for n in config.group_type("lab").nodes]
    resp = client.post("/loops/config/types/lab/nodes", data=form_data(edited_lab(db_session), token, campus="EAST"))
    assert resp.status_code == 302, resp.get_data(as_text=True)[:2000]
    lt = db_session.scalar(select(LoopType).where(LoopType.key == "lab", LoopType.campus_id == east(db_session).id))
    assert lt.process_key == "loop_lab__east" and lt.grace_minutes == 3
    keys = [n.key for n in lt.nodes]
    assert "transfer" not in keys and keys[keys.index("collect") + 1] == "sample_check"
    check = lt.nodes[keys.index("sample_check")]
    assert check.required_fields[0] == {"name": "sample_no", "label": "检验样本编号", "type": "string", "required": True}
    assert check.required_fields[1]["required"] is False
    assert check.qc_rules == {"max_minutes": 45, "require_fields": True} and check.responsible_role == "nurse"
    assert next(n.name for n in lt.nodes if n.key == "identify") == "核对患者身份（腕带）"
    version = wf.active_version("loop_lab__east")
    assert version.version == 1 and "闭环节点配置" in version.note and "东院区" in version.name
    assert 'name="标本核对"' in version.bpmn_xml
    assert [n.key for n in config.group_type("lab").nodes] == group_before  # the group standard is untouched
    log = db_session.scalar(select(AuditLog).where(AuditLog.action == "loop_type.nodes_changed")
                            .order_by(AuditLog.id.desc()))
    assert "transfer" in [n["key"] for n in log.before["nodes"]]
    assert "sample_check" in [n["key"] for n in log.after["nodes"]] and log.after["process_version"] == 1
    # a rename is a new version of the same process; the key stays
    spec = config.node_spec(lt)
    spec["nodes"][0]["name"] = "检验申请（电子）"
    client.post("/loops/config/types/lab/nodes", data=form_data(spec, token, campus="EAST"))
    assert wf.active_version("loop_lab__east").version == 2
    db_session.expire_all()
    assert lt.nodes[0].key == "request" and lt.nodes[0].name == "检验申请（电子）"


def test_changing_only_durations_keeps_the_diagram_version(db_session, user):
    before = versions_of(db_session, "loop_lab")
    spec = lab_spec(db_session)
    spec["nodes"][3]["standard_minutes"] = 25
    lt = config.save_loop_nodes(key="lab", campus=None, spec=spec, actor=user("admin"))
    assert lt.nodes[3].standard_minutes == 25 and versions_of(db_session, "loop_lab") == before
    assert services.type_info("lab").nodes[3][2] == 25


def test_bad_edit_is_400_with_field_paths_and_changes_nothing(client, login, db_session):
    token = login("admin")
    before_versions = db_session.scalar(select(func.count()).select_from(ProcessVersion))
    spec = lab_spec(db_session)
    spec["nodes"][1]["key"] = "request"                    # duplicate key
    spec["nodes"][2]["name"] = spec["nodes"][3]["name"]     # duplicate name
    spec["nodes"][4]["standard_minutes"] = 200000
    spec["nodes"][5]["key"] = "Bad-Key"
    spec["nodes"][6]["required_fields"] = [{"name": "x", "type": "blob", "required": True}]
    spec["stall_minutes"] = ""
    resp = client.post("/loops/config/types/lab/nodes", data=form_data(spec, token, campus="EAST"))
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    for path in ("nodes/1/key", "nodes/3/name", "nodes/4/standard_minutes", "nodes/5/key",
                 "nodes/6/required_fields/0/type", "stall_minutes"):
        assert f'data-path="{path}"' in html, path
    assert "与第 1 个节点重复" in html and "小写英文字母" in html and "0–100000" in html
    assert db_session.scalar(select(LoopType.id).where(LoopType.campus_id == east(db_session).id)) is None
    assert db_session.scalar(select(func.count()).select_from(ProcessVersion)) == before_versions
    one = {**lab_spec(db_session), "nodes": lab_spec(db_session)["nodes"][:1]}
    with pytest.raises(ValidationFailed) as exc:
        config.validate_node_spec(one)
    assert exc.value.errors == [{"path": "nodes", "message": "闭环至少需要 2 个节点"}]
    reserved = lab_spec(db_session)
    reserved["nodes"][2]["key"] = "cancelled"
    with pytest.raises(ValidationFailed) as exc:
        config.validate_node_spec(reserved)
    assert exc.value.errors[0]["path"] == "nodes/2/key" and "保留" in exc.value.errors[0]["message"]


def test_editor_buttons_reorder_add_and_remove_without_saving(client, login, db_session):
    token = login("admin")
    spec = lab_spec(db_session)
    html = client.post("/loops/config/types/lab/nodes", data=form_data(spec, token, op="up-2")).get_data(as_text=True)
    assert html.index('value="nurse_check"') < html.index('value="senior_review"')
    html = client.post("/loops/config/types/lab/nodes", data=form_data(spec, token, op="add")).get_data(as_text=True)
    assert f'name="nodes-{len(spec["nodes"])}-key" value="" placeholder' in html and "新节点" in html
    html = client.post("/loops/config/types/lab/nodes", data=form_data(spec, token, op="remove-4")).get_data(as_text=True)
    assert 'value="identify"' not in html and "尚未保存" in html
    assert [n.key for n in config.group_type("lab").nodes] == LAB


def added_node_lab(db_session) -> dict:
    """东院区 adds a sample check after collection and renames a node; nothing is removed."""
    spec = edited_lab(db_session)
    group = lab_spec(db_session)["nodes"]
    spec["nodes"].insert(next(i for i, n in enumerate(spec["nodes"]) if n["key"] == "receive_specimen"),
                         next(n for n in group if n["key"] == "transfer"))
    return spec


def test_running_order_keeps_its_nodes_and_new_orders_use_the_campus_version(his, db_session, user):
    his([ev("R-1", "lab", n, i * 5) for i, n in enumerate(LAB[:3])])
    apply_all()
    running = db_session.scalar(select(LoopOrder).where(LoopOrder.order_no == "R-1"))
    assert running.campus_id == east(db_session).id  # resolved from dept 2001 (骨科, 东院区)

    config.save_loop_nodes(key="lab", campus=east(db_session), spec=added_node_lab(db_session), actor=user("admin"))
    db_session.commit()
    new_keys = [n["key"] for n in added_node_lab(db_session)["nodes"]]
    assert len(new_keys) == len(LAB) + 1 and "sample_check" in new_keys

    # the running order gets the rest of its own nodes, plus a stray event for the node it does not have
    resp = his([ev("R-1", "lab", n, 20 + i * 5) for i, n in enumerate(LAB[3:])] + [ev("R-1", "lab", "sample_check", 31)])
    assert resp.get_json()["accepted"] == len(LAB) - 2
    resp = his([ev("N-1", "lab", n, i * 5, dept=None, campus="EAST") for i, n in enumerate(new_keys)])
    assert resp.get_json()["accepted"] == len(new_keys), resp.get_json()
    apply_all()

    old = services.order_loop("R-1")
    assert old["status"] == "closed" and [n["key"] for n in old["nodes"]] == LAB
    assert all(n["status"] == "done" for n in old["nodes"])
    assert next(n["name"] for n in old["nodes"] if n["key"] == "identify") == "核对患者身份"
    stray = db_session.scalar(select(LoopEvent).where(LoopEvent.order_no == "R-1", LoopEvent.node == "sample_check"))
    assert stray.status == "ignored"  # kept, changes nothing
    new = services.order_loop("N-1")
    assert new["status"] == "closed" and [n["key"] for n in new["nodes"]] == new_keys
    assert all(n["status"] == "done" for n in new["nodes"])
    assert next(n["name"] for n in new["nodes"] if n["key"] == "identify") == "核对患者身份（腕带）"
    assert db_session.scalar(select(func.count()).select_from(LoopEvent).where(
        LoopEvent.order_no.in_(["R-1", "N-1"]), LoopEvent.status.notin_(["applied", "ignored"]))) == 0
    instances = {o.order_no: db_session.get(ProcessInstance, o.instance_id)
                 for o in db_session.scalars(select(LoopOrder).where(LoopOrder.order_no.in_(["R-1", "N-1"])))}
    assert instances["R-1"].key == "loop_lab" and instances["N-1"].key == "loop_lab__east"
    assert {i.status for i in instances.values()} == {"completed"}


def test_a_running_order_can_still_report_a_node_removed_from_its_campus_version(his, db_session, user):
    his([ev("R-2", "lab", n, i * 5) for i, n in enumerate(LAB[:3])])
    apply_all()
    config.save_loop_nodes(key="lab", campus=east(db_session), spec=edited_lab(db_session), actor=user("admin"))
    db_session.commit()
    resp = his([ev("R-2", "lab", "transfer", 40)])
    assert resp.get_json()["accepted"] == 1, resp.get_json()


def test_disabling_a_campus_version_falls_back_to_the_group_standard(client, login, db_session, user):
    lt = config.save_loop_nodes(key="lab", campus=east(db_session), spec=edited_lab(db_session), actor=user("admin"))
    assert "sample_check" in services.type_info("lab", east(db_session).id).index
    token = login("admin")
    resp = client.post(f"/loops/config/types/{lt.id}/active", data={"csrf_token": token, "active": "0"})
    assert resp.status_code == 302
    assert "sample_check" not in services.type_info("lab", east(db_session).id).index
    assert db_session.scalar(select(AuditLog.id).where(AuditLog.action == "loop_type.deactivated"))


def test_a_campus_scoped_administrator_edits_only_their_campus(db_session, user):
    from app.auth.models import Role, RolePermission
    from app.auth.services import create_user

    role = Role(code="loop_cfg_campus", name="院区闭环配置员")
    role.permissions.append(RolePermission(permission="loops.admin"))
    db_session.add(role)
    db_session.flush()
    orth = user("orth_doc").dept
    cfg = create_user(username="east_cfg", name="东院配置员", password=None, dept=orth, roles=["loop_cfg_campus"],
                      scopes={"loop_cfg_campus": "campus"})
    config.save_loop_nodes(key="lab", campus=east(db_session), spec=edited_lab(db_session), actor=cfg)
    hq = db_session.scalar(select(Campus).where(Campus.code == "HQ"))
    from app.errors import Forbidden

    for campus in (None, hq):
        with pytest.raises(Forbidden):
            config.save_loop_nodes(key="lab", campus=campus, spec=lab_spec(db_session), actor=cfg)


# ---------------------------------------------------------------- typical-loop templates


def test_template_copy_is_a_new_group_type_accepted_by_intake(client, login, db_session, his):
    token = login("admin")
    source = config.group_type("transfusion")
    resp = client.post("/loops/config/templates", data={
        "csrf_token": token, "source_id": source.id, "key": "day_transfusion", "name": "日间输血",
        "order_category": "输血"})
    assert resp.status_code == 302, resp.get_data(as_text=True)[:2000]
    lt = config.group_type("day_transfusion")
    assert lt.template_of == "transfusion" and lt.campus_id is None and lt.process_key == "loop_day_transfusion"
    assert [n.key for n in lt.nodes] == [n.key for n in source.nodes]
    assert wf.active_version("loop_day_transfusion").version == 1
    types = client.get("/api/v1/loop-types", headers={"Authorization": f"Bearer {his.token}"}).get_json()["loop_types"]
    assert "day_transfusion" in {t["key"] for t in types}
    keys = [n.key for n in lt.nodes]
    out = his([ev("DT-1", "day_transfusion", k, i * 10) for i, k in enumerate(keys)]).get_json()
    assert out["accepted"] == len(keys)
    apply_all()
    assert services.order_loop("DT-1")["status"] == "closed"
    assert db_session.scalar(select(AuditLog.id).where(AuditLog.action == "loop_type.copied"))


def test_bad_template_copy_is_400_and_creates_nothing(client, login, db_session):
    token = login("admin")
    count = db_session.scalar(select(func.count()).select_from(LoopType))
    resp = client.post("/loops/config/templates", data={
        "csrf_token": token, "source_id": config.group_type("lab").id, "key": "lab", "name": "输血",
        "order_category": ""})
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert "「lab」已存在" in html and "「输血」已被其他闭环类型使用" in html and "请填写医嘱类别" in html
    resp = client.post("/loops/config/templates", data={"csrf_token": token, "source_id": "", "key": "Day-X",
                                                         "name": "x", "order_category": "药品"})
    assert resp.status_code == 400 and 'data-path="source_id"' in resp.get_data(as_text=True)
    assert db_session.scalar(select(func.count()).select_from(LoopType)) == count


# ---------------------------------------------------------------- interface dictionary


def test_mapping_crud_validates_targets_and_audits_every_change(client, login, db_session, his):
    token = login("admin")
    resp = client.post("/loops/config/mappings/new", data={"csrf_token": token, "source": "LIS", "kind": "order_type",
                                                           "code": "JY", "target": "nope"})
    assert resp.status_code == 400 and "闭环类型「nope」不存在" in resp.get_data(as_text=True)
    resp = client.post("/loops/config/mappings/new", data={"csrf_token": token, "source": "LIS", "kind": "node:lab",
                                                           "code": "SC", "target": "fly"})
    assert resp.status_code == 400 and "闭环「lab」没有节点「fly」" in resp.get_data(as_text=True)
    assert db_session.scalar(select(func.count()).select_from(InterfaceMapping)
                             .where(InterfaceMapping.source == "LIS")) == 0
    for kind, code, target in (("order_type", "JY", "lab"), ("node:lab", "SC", "collect"), ("node", "CA", "cancelled")):
        resp = client.post("/loops/config/mappings/new", data={"csrf_token": token, "source": "LIS", "kind": kind,
                                                               "code": code, "target": target, "note": "检验系统"})
        assert resp.status_code == 302, resp.get_data(as_text=True)[:1500]
    dup = client.post("/loops/config/mappings/new", data={"csrf_token": token, "source": "LIS", "kind": "order_type",
                                                          "code": "JY", "target": "exam"})
    assert dup.status_code == 400 and "已有外部编码「JY」" in dup.get_data(as_text=True)
    out = his([ev("M-1", "JY", "request", 0, source="LIS"), ev("M-1", "JY", "SC", 5, source="LIS")]).get_json()
    assert out["accepted"] == 2  # the dictionary is in force at once

    m = db_session.scalar(select(InterfaceMapping).where(InterfaceMapping.source == "LIS", InterfaceMapping.code == "SC"))
    resp = client.post(f"/loops/config/mappings/{m.id}/edit", data={"csrf_token": token, "source": "LIS",
                                                                    "kind": "node:lab", "code": "SC",
                                                                    "target": "receive_specimen"})
    assert resp.status_code == 302
    upd = db_session.scalar(select(AuditLog).where(AuditLog.action == "interface_mapping.updated"))
    assert upd.before["target"] == "collect" and upd.after["target"] == "receive_specimen"
    listing = client.get("/loops/config/mappings?source=LIS&kind=node:lab").get_data(as_text=True)
    assert "receive_specimen" in listing and "JY" not in listing
    assert "JY" in client.get("/loops/config/mappings?q=JY").get_data(as_text=True)
    mapping_id = m.id
    resp = client.post(f"/loops/config/mappings/{mapping_id}/delete", data={"csrf_token": token})
    db_session.expire_all()
    assert resp.status_code == 302 and db_session.get(InterfaceMapping, mapping_id) is None
    gone = db_session.scalar(select(AuditLog).where(AuditLog.action == "interface_mapping.deleted"))
    assert gone.before["code"] == "SC" and gone.after is None
    assert db_session.scalar(select(func.count()).select_from(AuditLog)
                             .where(AuditLog.action == "interface_mapping.created")) == 3


def _xlsx(rows: list[list]) -> BytesIO:
    wb = Workbook()
    ws = wb.active
    for r in rows:
        ws.append(r)
    buf = BytesIO()
    wb.save(buf)
    buf.seek(0)
    return buf


def test_excel_import_reports_bad_rows_imports_nothing_then_imports_a_good_file(client, login, db_session):
    token = login("admin")
    header = ["来源系统", "类别", "外部编码", "对应编码", "说明"]
    bad = _xlsx([header, ["PACS", "order_type", "JC", "exam", "检查"], ["PACS", "node:exam", "BK", "fly", ""],
                 ["PACS", "weird", "X", "exam", ""], ["PACS", "order_type", "JC", "exam", "重复"]])
    resp = client.post("/loops/config/mappings/import", data={"csrf_token": token, "file": (bad, "m.xlsx")},
                       content_type="multipart/form-data")
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert "第 3 行：闭环「exam」没有节点「fly」" in html and 'data-path="rows/4/kind"' in html
    assert "与第 2 行重复" in html and "未导入任何数据" in html
    assert db_session.scalar(select(func.count()).select_from(InterfaceMapping)
                             .where(InterfaceMapping.source == "PACS")) == 0

    db_session.add(InterfaceMapping(source="PACS", kind="order_type", code="JC", target="lab"))
    db_session.commit()
    good = _xlsx([header, ["PACS", "医嘱类型", "JC", "exam", "检查"], ["PACS", "node:exam", "BK", "booking", "预约"],
                  [None, None, None, None, None], ["*", "node", "STOP", "cancelled", None]])
    resp = client.post("/loops/config/mappings/import", data={"csrf_token": token, "file": (good, "m.xlsx")},
                       content_type="multipart/form-data")
    assert resp.status_code == 302, resp.get_data(as_text=True)[:2000]
    rows = {(m.kind, m.code): m.target for m in db_session.scalars(select(InterfaceMapping)
                                                                   .where(InterfaceMapping.source.in_(["PACS", "*"])))}
    assert rows == {("order_type", "JC"): "exam", ("node:exam", "BK"): "booking", ("node", "STOP"): "cancelled"}
    log = db_session.scalar(select(AuditLog).where(AuditLog.action == "interface_mapping.imported"))
    assert log.after["created"] == 2 and log.after["updated"] == 1
    assert log.after["changes"][0]["before"]["target"] == "lab"

    export = client.get("/loops/config/mappings/export.xlsx?source=PACS")
    assert export.status_code == 200
    ws = load_workbook(BytesIO(export.data)).active
    values = [list(r) for r in ws.iter_rows(values_only=True)]
    assert values[0][:5] == header and len(values) == 3
    not_excel = client.post("/loops/config/mappings/import",
                            data={"csrf_token": token, "file": (BytesIO(b"hello"), "m.xlsx")},
                            content_type="multipart/form-data")
    assert not_excel.status_code == 400 and "无法读取" in not_excel.get_data(as_text=True)


# ---------------------------------------------------------------- QC rules


def test_qc_rules_report_late_nodes_missing_operator_and_fields():
    node = LoopNode(key="sample_check", name="标本核对", seq=0, standard_minutes=10,
                    required_fields=[{"name": "sample_no", "label": "检验样本编号", "type": "string", "required": True},
                                     {"name": "volume", "label": "标本量", "type": "number", "required": False}],
                    qc_rules={"max_minutes": 45, "require_fields": True, "operator_required": True})
    found = config.evaluate_qc(node=node, data={"volume": "很多"}, operator_id=None, minutes_since_previous=50)
    assert found == ["标本核对距上一节点 50 分钟，超过质控上限 45 分钟", "标本核对未记录操作人",
                     "标本核对缺少必填字段「检验样本编号」", "标本核对字段「标本量」不是数值格式"]
    assert config.evaluate_qc(node=node, data={"sample_no": "S1", "volume": 2.5}, operator_id="N1",
                              minutes_since_previous=10) == []
