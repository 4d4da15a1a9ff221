"""接口字典 (Word): the closed-loop integration contract for hospital-system vendors.

`build(...)` only renders what it is given (no database access), so the caller decides what goes in:
loop types (group standards and campus versions) with one table each of their nodes, standard minutes and
the data fields each node expects in the event's `data`, the event fields, result codes, the current
interface dictionary rows, the SOAP operations and the HL7 / database-view field mappings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from io import BytesIO
from typing import Any

from docx import Document
from docx.enum.table import WD_TABLE_ALIGNMENT
from docx.oxml.ns import qn
from docx.shared import Pt, RGBColor

FONT = "宋体"
HEADING_FONT = "黑体"


def _east_asian(style_or_run: Any, font: str) -> None:
    """python-docx sets only the western font; Chinese text needs w:eastAsia too."""
    element = style_or_run.element
    rpr = element.get_or_add_rPr()
    rfonts = rpr.find(qn("w:rFonts"))
    if rfonts is None:
        rfonts = rpr.makeelement(qn("w:rFonts"), {})
        rpr.append(rfonts)
    rfonts.set(qn("w:eastAsia"), font)


def _setup(doc: Any) -> None:
    normal = doc.styles["Normal"]
    normal.font.name = FONT
    normal.font.size = Pt(10.5)
    _east_asian(normal, FONT)
    for level in (0, 1, 2):
        style = doc.styles["Title" if level == 0 else f"Heading {level}"]
        style.font.name = HEADING_FONT
        style.font.color.rgb = RGBColor(0x12, 0x3A, 0x6B)
        _east_asian(style, HEADING_FONT)


def _table(doc: Any, header: Sequence[str], rows: Iterable[Sequence[Any]], widths: Sequence[float] | None = None):
    rows = list(rows)
    table = doc.add_table(rows=1, cols=len(header))
    table.style = "Table Grid"
    table.alignment = WD_TABLE_ALIGNMENT.CENTER
    for cell, text in zip(table.rows[0].cells, header, strict=True):
        cell.text = ""
        run = cell.paragraphs[0].add_run(str(text))
        run.bold = True
        _shade(cell, "EEF2F7")
    for row in rows:
        cells = table.add_row().cells
        for cell, value in zip(cells, row, strict=True):
            cell.text = "" if value is None else str(value)
    if widths:
        from docx.shared import Cm

        for row in table.rows:
            for cell, width in zip(row.cells, widths, strict=False):
                cell.width = Cm(width)
    if not rows:
        cells = table.add_row().cells
        cells[0].text = "（无）"
    doc.add_paragraph()
    return table


def _shade(cell: Any, color: str) -> None:
    tc_pr = cell._tc.get_or_add_tcPr()
    shd = tc_pr.makeelement(qn("w:shd"), {qn("w:val"): "clear", qn("w:color"): "auto", qn("w:fill"): color})
    tc_pr.append(shd)


NODE_HEADER = ("序号", "节点标识", "节点名称", "标准用时（分钟）", "数据字段（data 键）", "字段名称", "数据格式", "必填")


def _node_table(doc: Any, nodes: list[dict[str, Any]], field_types: dict[str, str]):
    """One row per data field of each node (a node without fields gets one row of "—"); the node's own
    columns are merged down its field rows."""
    rows: list[tuple[Any, ...]] = []
    spans: list[tuple[int, int]] = []  # (first row, last row) of each node, 1-based under the header
    for j, n in enumerate(nodes, start=1):
        first = len(rows) + 1
        node = (j, n["key"], n["name"], n["standard_minutes"])
        fields = n.get("fields") or []
        if not fields:
            rows.append((*node, "—", "—", "—", "—"))
        for k, f in enumerate(fields):
            rows.append((*(node if k == 0 else ("", "", "", "")), f["key"], f["name"],
                         field_types.get(f["type"], f["type"]), "是" if f["required"] else "否"))
        spans.append((first, len(rows)))
    table = _table(doc, NODE_HEADER, rows, (1.1, 2.6, 2.8, 1.7, 2.6, 2.6, 1.5, 1.1))
    for first, last in spans:
        if last > first:
            for col in range(4):
                merged = table.cell(first, col).merge(table.cell(last, col))
                for extra in merged.paragraphs[1:]:  # the blank cells' paragraphs that merging appends
                    if not extra.text:
                        extra._element.getparent().remove(extra._element)
    return table


def build(*, loop_types: list[dict[str, Any]], event_fields: list[dict[str, Any]],
          result_codes: list[tuple[str, str]], http_codes: list[tuple[str, str]],
          mappings: list[dict[str, Any]], mapping_kinds: dict[str, str] | None = None,
          rest_endpoints: list[tuple[str, str, str, str]],
          soap_operations: list[dict[str, Any]], soap_fields: list[tuple[str, str, bool]],
          soap_faults: dict[str, str], soap_url: str,
          hl7_fields: list[tuple[str, str, str]], db_options: list[tuple[str, str]],
          reserved_nodes: dict[str, str], generated_at: datetime, hospital: str = "",
          campus_versions: list[dict[str, Any]] | None = None, field_types: dict[str, str] | None = None,
          field_required_note: str = "") -> bytes:
    """The interface dictionary as a .docx file (bytes). `loop_types` are the group standards and
    `campus_versions` the campus versions in force (with `campus` and `campus_name`), both shaped like
    GET /api/v1/loop-types (nodes with `fields`); `field_types` gives the Chinese name of each data format."""
    doc = Document()
    _setup(doc)
    doc.add_heading(f"{hospital}医疗流程闭环管理系统 接口字典".strip(), level=0)
    doc.add_paragraph(f"生成时间：{generated_at:%Y-%m-%d %H:%M}（北京时间）。本字典由系统按当前配置生成，"
                      "闭环节点、标准用时与编码映射以系统中的最新配置为准。")

    doc.add_heading("一、接入方式", level=1)
    for line in (
        "REST/JSON：POST /api/v1/loop-events 批量提交事件（一次最多 1000 个），GET /api/v1/orders/{order_no}/loop "
        "查询医嘱闭环；认证头 Authorization: Bearer <接口令牌>。OpenAPI 3.1 描述见 /api/v1/openapi.json。",
        f"WebService（SOAP 1.1）：{soap_url}，WSDL 为 {soap_url}?wsdl；令牌放在 token 元素中。",
        "HL7 v2（MLLP）：TCP 监听（默认端口 2575），支持 ORM^O01、OML^O21/O33、ORU^R01，逐条回 ACK。",
        "数据库视图（ETL）：系统定时从 HIS/LIS 视图按高水位列增量拉取，配置见第九节。",
        "幂等：事件以（来源系统 source, 事件 ID event_id）唯一；重复提交返回 duplicate，不会重复计入。",
        "顺序：同一医嘱的事件按发生时间应用；前序节点未到时等待缺环等待时长，超时标记缺环，迟到节点记为补录，不回滚。",
        "可靠性：事件在应答前已持久化；应答超时或网络错误时可原样重发（幂等）。",
    ):
        doc.add_paragraph(line, style="List Bullet")

    doc.add_heading("二、REST 接口", level=1)
    _table(doc, ("方法", "路径", "权限/认证", "说明"), rest_endpoints, (2, 6, 3.5, 6))

    doc.add_heading("三、闭环类型与节点", level=1)
    doc.add_paragraph("order_type 填闭环类型标识（或接口字典中映射的来源编码），node 填节点标识（或映射的状态码）。"
                      "标准用时为自上一节点起的分钟数，用于计算偏差与及时率。")
    doc.add_paragraph("数据字段：完成该节点的事件在 data 中携带的采集字段，数据格式为"
                      + "、".join(f"{k}（{v}）" for k, v in (field_types or {}).items())
                      + (f"。{field_required_note}。" if field_required_note else "。")
                      + "各院区可有自己的版本" + ("（见本节末尾）" if campus_versions else "")
                      + "，GET /api/v1/loop-types?campus=院区编码 返回该院区在用的节点与字段。")
    doc.add_paragraph("保留节点：" + "；".join(f"{k}（{v}）" for k, v in reserved_nodes.items()))
    numbered = [(lt, "") for lt in loop_types] + [
        (lt, f" · {lt.get('campus_name') or lt['campus']}版本（campus={lt['campus']}）") for lt in campus_versions or []]
    for i, (lt, where) in enumerate(numbered, start=1):
        doc.add_heading(f"3.{i} {lt['name']}闭环（{lt['key']}）{where}", level=2)
        doc.add_paragraph(f"医嘱类别：{lt.get('order_category') or '—'}；缺环等待时长：{lt.get('grace_minutes')} 分钟；"
                          f"节点数：{len(lt['nodes'])}")
        _node_table(doc, lt["nodes"], field_types or {})

    doc.add_heading("四、事件字段（REST/JSON）", level=1)
    _table(doc, ("字段", "类型", "必填", "说明", "示例"),
           [(f["name"], f["type"], "是" if f["required"] else "否", f["description"], f.get("example", ""))
            for f in event_fields], (3.2, 1.8, 1.2, 7, 3.5))

    doc.add_heading("五、结果码", level=1)
    doc.add_paragraph("每个事件一条结果，顺序与提交顺序一致：")
    _table(doc, ("status", "含义"), result_codes, (3, 13))
    doc.add_paragraph("HTTP 状态码：")
    _table(doc, ("HTTP 状态", "含义"), http_codes, (3, 13))

    doc.add_heading("六、接口字典映射（当前配置）", level=1)
    kinds = mapping_kinds or {}
    doc.add_paragraph("来源系统的编码经下列映射转换为闭环类型/节点；来源为 * 的映射适用于所有来源。"
                      "类别：" + "；".join(f"{k} {v}" for k, v in kinds.items()))
    _table(doc, ("来源", "类别", "外部编码", "对应闭环编码", "说明"),
           [(m["source"], m["kind"], m["code"], m["target"], m.get("note") or "") for m in mappings],
           (2, 4, 2.5, 3.5, 5))

    doc.add_heading("七、WebService（SOAP）", level=1)
    doc.add_paragraph(f"地址：{soap_url}；WSDL：{soap_url}?wsdl；命名空间 urn:medloop:loops。")
    _table(doc, ("操作", "说明", "输入", "输出"),
           [(o["name"], o["summary"], o["input"], o["output"]) for o in soap_operations], (3, 5, 4, 5))
    doc.add_paragraph("LoopEventIn 字段（均为字符串）：")
    _table(doc, ("元素", "必填", "说明"), [(n, "是" if r else "否", d) for n, d, r in soap_fields], (3.5, 1.5, 11))
    doc.add_paragraph("SOAP Fault：")
    _table(doc, ("faultcode", "说明"), list(soap_faults.items()), (5, 11))

    doc.add_heading("八、HL7 v2 字段映射", level=1)
    doc.add_paragraph("MLLP 帧：0x0B + 消息 + 0x1C 0x0D。每个 ORC（或不带 ORC 的 OBR）医嘱组生成一个事件。"
                      "ACK：全部接收或重复为 AA；有事件被拒绝为 AE，原因写入 MSA-3 与 ERR-8；无法处理为 AR（未入库，请重发）。")
    _table(doc, ("HL7 字段", "事件字段", "说明"), hl7_fields, (4, 4, 8))

    doc.add_heading("九、数据库视图拉取配置", level=1)
    doc.add_paragraph("配置项 LOOP_DB_SOURCES（或环境变量 MEDLOOP_LOOP_DB_SOURCES，JSON 数组），每个数据源：")
    _table(doc, ("配置键", "说明"), db_options, (4, 12))

    out = BytesIO()
    doc.save(out)
    return out.getvalue()
