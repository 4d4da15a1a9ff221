#!/usr/bin/env python3
"""Add a simple diagram layout (BPMN DI) to a BPMN file that has none, so bpmn-js can draw it.

Usage: scripts/bpmn_layout.py FILE.bpmn [--in-place]
Nodes are placed in columns by their distance from the start event and in rows by lane;
boundary events sit on their host's lower edge. Good enough for review; refine in a modeler.
"""

from __future__ import annotations

import sys
from collections import defaultdict, deque

from lxml import etree

NS = {
    "bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
    "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI",
    "dc": "http://www.omg.org/spec/DD/20100524/DC",
    "di": "http://www.omg.org/spec/DD/20100524/DI",
}
SIZES = {"startEvent": (36, 36), "endEvent": (36, 36), "intermediateCatchEvent": (36, 36),
         "intermediateThrowEvent": (36, 36), "boundaryEvent": (36, 36), "exclusiveGateway": (50, 50),
         "parallelGateway": (50, 50), "inclusiveGateway": (50, 50), "eventBasedGateway": (50, 50)}
COL, ROW, LANE_H, X0, Y0 = 170, 110, 0, 200, 60


def q(tag: str) -> str:
    prefix, local = tag.split(":")
    return f"{{{NS[prefix]}}}{local}"


def layout(root) -> None:
    for old in root.findall(q("bpmndi:BPMNDiagram")):
        root.remove(old)
    process = root.find(q("bpmn:process"))
    nodes = {el.get("id"): el for el in process if el.get("id") and etree.QName(el).localname not in
             ("sequenceFlow", "laneSet", "extensionElements", "documentation", "dataObject")}
    flows = [el for el in process if etree.QName(el).localname == "sequenceFlow"]
    out = defaultdict(list)
    for f in flows:
        out[f.get("sourceRef")].append(f.get("targetRef"))
    boundaries = {nid: el.get("attachedToRef") for nid, el in nodes.items()
                  if etree.QName(el).localname == "boundaryEvent"}
    lane_of, lanes = {}, []
    for lane in process.iter(q("bpmn:lane")):
        lanes.append(lane)
        for ref in lane.findall(q("bpmn:flowNodeRef")):
            lane_of[ref.text] = lane.get("id")
    starts = [nid for nid, el in nodes.items() if etree.QName(el).localname == "startEvent"]
    col = {}
    queue = deque((s, 0) for s in starts)
    while queue:
        nid, c = queue.popleft()
        if nid in col and col[nid] >= c:
            continue
        if nid in col and c > col[nid] + len(nodes):
            continue
        if nid in col:
            continue
        col[nid] = c
        for t in out.get(nid, []):
            queue.append((t, c + 1))
        for b, host in boundaries.items():
            if host == nid:
                col.setdefault(b, c)
                for t in out.get(b, []):
                    queue.append((t, c + 1))
    for nid in nodes:
        col.setdefault(nid, 0)
    lane_ids = [lane.get("id") for lane in lanes] or [None]
    rows_used: dict[tuple, int] = defaultdict(int)
    lane_rows: dict[str | None, int] = defaultdict(lambda: 1)
    pos = {}
    for nid in sorted(nodes, key=lambda n: (col[n], n)):
        if nid in boundaries:
            continue
        lane = lane_of.get(nid)
        r = rows_used[(lane, col[nid])]
        rows_used[(lane, col[nid])] += 1
        lane_rows[lane] = max(lane_rows[lane], r + 1)
        pos[nid] = (lane, col[nid], r)
    lane_top, y = {}, Y0
    for lid in lane_ids:
        lane_top[lid] = y
        y += lane_rows[lid] * ROW + 30
    total_h = y - Y0
    max_col = max(col.values()) if col else 0
    bounds = {}
    for nid, (lane, c, r) in pos.items():
        w, h = SIZES.get(etree.QName(nodes[nid]).localname, (110, 70))
        cx, cy = X0 + 80 + c * COL, lane_top.get(lane, Y0) + 55 + r * ROW
        bounds[nid] = (cx - w / 2, cy - h / 2, w, h)
    for b, host in boundaries.items():
        hx, hy, hw, hh = bounds.get(host, (X0, Y0, 110, 70))
        bounds[b] = (hx + hw - 30, hy + hh - 18, 36, 36)
    diagram = etree.SubElement(root, q("bpmndi:BPMNDiagram"), id="BPMNDiagram_1")
    collab = root.find(q("bpmn:collaboration"))
    plane = etree.SubElement(diagram, q("bpmndi:BPMNPlane"), id="BPMNPlane_1",
                             bpmnElement=collab.get("id") if collab is not None else process.get("id"))

    def shape(el_id, x, yy, w, h, horizontal=False):
        s = etree.SubElement(plane, q("bpmndi:BPMNShape"), id=f"{el_id}_di", bpmnElement=el_id)
        if horizontal:
            s.set("isHorizontal", "true")
        etree.SubElement(s, q("dc:Bounds"), x=str(int(x)), y=str(int(yy)), width=str(int(w)), height=str(int(h)))

    width = (max_col + 1) * COL + 160
    if collab is not None:
        for part in collab.findall(q("bpmn:participant")):
            shape(part.get("id"), X0 - 40, Y0, width + 40, total_h, horizontal=True)
    for lid in lane_ids:
        if lid:
            shape(lid, X0 - 10, lane_top[lid], width + 10, lane_rows[lid] * ROW + 30, horizontal=True)
    for nid, (x, yy, w, h) in bounds.items():
        shape(nid, x, yy, w, h)
    for f in flows:
        s, t = bounds.get(f.get("sourceRef")), bounds.get(f.get("targetRef"))
        if not s or not t:
            continue
        e = etree.SubElement(plane, q("bpmndi:BPMNEdge"), id=f"{f.get('id')}_di", bpmnElement=f.get("id"))
        sx, sy = s[0] + s[2], s[1] + s[3] / 2
        tx, ty = t[0], t[1] + t[3] / 2
        if tx <= sx:  # a loop back: go below
            low = max(s[1] + s[3], t[1] + t[3]) + 25
            pts = [(s[0] + s[2] / 2, s[1] + s[3]), (s[0] + s[2] / 2, low), (t[0] + t[2] / 2, low),
                   (t[0] + t[2] / 2, t[1] + t[3])]
        elif abs(sy - ty) < 1:
            pts = [(sx, sy), (tx, ty)]
        else:
            mx = (sx + tx) / 2
            pts = [(sx, sy), (mx, sy), (mx, ty), (tx, ty)]
        for x, yy in pts:
            etree.SubElement(e, q("di:waypoint"), x=str(int(x)), y=str(int(yy)))


def main() -> None:
    path = sys.argv[1]
    tree = etree.parse(path)
    layout(tree.getroot())
    data = etree.tostring(tree, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    if "--in-place" in sys.argv:
        with open(path, "wb") as fh:
            fh.write(data)
    else:
        sys.stdout.write(data.decode())


if __name__ == "__main__":
    main()
