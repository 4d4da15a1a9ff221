"""Generate a loop type's BPMN: a chain of message catch events, one per node, inside an embedded
subprocess whose interrupting message boundary event `cancelled` leads to the `interrupted` end.

The applier delivers a node's message (with {"skipped": true} when its grace period ran out), so the
chain needs no alternative paths; `abnormal` is recorded in the node projection, outside the diagram.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from app.loops.catalog import NodeDef

NODE_W, GAP, Y = 36, 110, 160


def node_id(key: str) -> str:
    return f"n_{key}"


def process_key(loop_key: str, campus_code: str | None = None) -> str:
    return f"loop_{loop_key}" + (f"__{campus_code.lower()}" if campus_code else "")


def generate(*, loop_key: str, name: str, nodes: list[NodeDef] | tuple[NodeDef, ...], campus_code: str | None = None,
             campus_name: str | None = None) -> str:
    """BPMN XML (with diagram layout) for a loop's node chain."""
    if not nodes:
        raise ValueError("闭环至少需要一个节点")
    pkey = process_key(loop_key, campus_code)
    title = f"{name}闭环" + (f"（{campus_name}）" if campus_name else "")
    messages = [f'  <bpmn:message id="Msg_{n.key}" name="{n.key}" />' for n in nodes]
    messages.append('  <bpmn:message id="Msg_cancelled" name="cancelled" />')
    inner, flows, shapes, edges = [], [], [], []
    prev = "chain_start"
    sub_x = 220
    x = sub_x + 40
    shapes.append(_shape("chain_start", x, Y + 2, 36, 36))
    prev_x = x + 36
    for i, n in enumerate(nodes):
        nid = node_id(n.key)
        fid = f"cf_{i}"
        inner.append(
            f'      <bpmn:intermediateCatchEvent id="{nid}" name={quoteattr(n.name)}>\n'
            f'        <bpmn:incoming>{fid}</bpmn:incoming>\n'
            f'        <bpmn:outgoing>cf_{i + 1}</bpmn:outgoing>\n'
            f'        <bpmn:messageEventDefinition id="med_{n.key}" messageRef="Msg_{n.key}" />\n'
            f'      </bpmn:intermediateCatchEvent>')
        flows.append(f'      <bpmn:sequenceFlow id="{fid}" sourceRef="{prev}" targetRef="{nid}" />')
        nx = prev_x + GAP - NODE_W
        shapes.append(_shape(nid, nx, Y + 2, 36, 36, label=True))
        edges.append(_edge(fid, [(prev_x, Y + 20), (nx, Y + 20)]))
        prev, prev_x = nid, nx + 36
    last = f"cf_{len(nodes)}"
    flows.append(f'      <bpmn:sequenceFlow id="{last}" sourceRef="{prev}" targetRef="chain_end" />')
    end_x = prev_x + 60
    shapes.append(_shape("chain_end", end_x, Y + 2, 36, 36))
    edges.append(_edge(last, [(prev_x, Y + 20), (end_x, Y + 20)]))
    sub_w = end_x + 36 + 40 - sub_x
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:bpmndi="http://www.omg.org/spec/BPMN/20100524/DI" xmlns:dc="http://www.omg.org/spec/DD/20100524/DC" xmlns:di="http://www.omg.org/spec/DD/20100524/DI" id="Defs_{pkey}" targetNamespace="http://medloop/loops">
{chr(10).join(messages)}
  <bpmn:process id="{pkey}" name={quoteattr(title)} isExecutable="true">
    <bpmn:startEvent id="start" name="医嘱进入闭环">
      <bpmn:outgoing>f_start</bpmn:outgoing>
    </bpmn:startEvent>
    <bpmn:subProcess id="chain" name={quoteattr(name + "闭环环节")}>
      <bpmn:incoming>f_start</bpmn:incoming>
      <bpmn:outgoing>f_closed</bpmn:outgoing>
      <bpmn:startEvent id="chain_start">
        <bpmn:outgoing>cf_0</bpmn:outgoing>
      </bpmn:startEvent>
{chr(10).join(inner)}
      <bpmn:endEvent id="chain_end">
        <bpmn:incoming>{last}</bpmn:incoming>
      </bpmn:endEvent>
{chr(10).join(flows)}
    </bpmn:subProcess>
    <bpmn:boundaryEvent id="cancel" name="医嘱取消/停止" attachedToRef="chain">
      <bpmn:outgoing>f_cancel</bpmn:outgoing>
      <bpmn:messageEventDefinition id="med_cancelled" messageRef="Msg_cancelled" />
    </bpmn:boundaryEvent>
    <bpmn:endEvent id="closed" name="闭环完成">
      <bpmn:incoming>f_closed</bpmn:incoming>
    </bpmn:endEvent>
    <bpmn:endEvent id="interrupted" name="闭环中断">
      <bpmn:incoming>f_cancel</bpmn:incoming>
    </bpmn:endEvent>
    <bpmn:sequenceFlow id="f_start" sourceRef="start" targetRef="chain" />
    <bpmn:sequenceFlow id="f_closed" sourceRef="chain" targetRef="closed" />
    <bpmn:sequenceFlow id="f_cancel" sourceRef="cancel" targetRef="interrupted" />
  </bpmn:process>
  <bpmndi:BPMNDiagram id="BPMNDiagram_1">
    <bpmndi:BPMNPlane id="BPMNPlane_1" bpmnElement="{pkey}">
{_shape("start", 140, Y + 2, 36, 36)}
      <bpmndi:BPMNShape id="chain_di" bpmnElement="chain" isExpanded="true">
        <dc:Bounds x="{sub_x}" y="{Y - 60}" width="{sub_w}" height="160" />
      </bpmndi:BPMNShape>
{chr(10).join(shapes)}
{_shape("cancel", sub_x + sub_w // 2, Y + 82, 36, 36)}
{_shape("closed", sub_x + sub_w + 60, Y + 2, 36, 36, label=True)}
{_shape("interrupted", sub_x + sub_w // 2 + 100, Y + 170, 36, 36, label=True)}
{_edge("f_start", [(176, Y + 20), (sub_x, Y + 20)])}
{_edge("f_closed", [(sub_x + sub_w, Y + 20), (sub_x + sub_w + 60, Y + 20)])}
{_edge("f_cancel", [(sub_x + sub_w // 2 + 18, Y + 118), (sub_x + sub_w // 2 + 18, Y + 188), (sub_x + sub_w // 2 + 100, Y + 188)])}
{chr(10).join(edges)}
    </bpmndi:BPMNPlane>
  </bpmndi:BPMNDiagram>
</bpmn:definitions>
"""
    return xml


def _shape(el: str, x: int, y: int, w: int, h: int, label: bool = False) -> str:
    extra = ""
    if label:
        extra = (f'\n        <bpmndi:BPMNLabel><dc:Bounds x="{x - 32}" y="{y + h + 4}" width="100" height="28" />'
                 f"</bpmndi:BPMNLabel>")
    return (f'      <bpmndi:BPMNShape id="{el}_di" bpmnElement="{el}">\n'
            f'        <dc:Bounds x="{x}" y="{y}" width="{w}" height="{h}" />{extra}\n'
            f"      </bpmndi:BPMNShape>")


def _edge(el: str, points: list[tuple[int, int]]) -> str:
    wps = "\n".join(f'        <di:waypoint x="{px}" y="{py}" />' for px, py in points)
    return f'      <bpmndi:BPMNEdge id="{el}_di" bpmnElement="{el}">\n{wps}\n      </bpmndi:BPMNEdge>'
