"""闭环管理的流程配置（seed 003 §二.3 维护端）: the loop types list, the per-campus node editor
(闭环节点配置, 字段配置, 质控规则), typical-loop templates (典型闭环) and the interface dictionary
(接口字典与映射, seed 003 集成要求 2).

Invariants:
- a node key is a stable identifier used by the integration contract: renaming a node changes only its
  name; a new node gets a key the administrator types (lowercase letters, digits, `_`), unique in its loop;
- editing a loop for a campus creates that campus's own LoopType row the first time (same key, own
  process key); the group standard stays as it was;
- every saved node list is validated as a whole before anything is written; the loop's BPMN is then
  regenerated and deployed as a new process version when the diagram changed; running orders keep the
  version (and the node states) they started with, new orders use the new one;
- every change (nodes, activation, copies, dictionary rows) leaves an audit record with before/after;
  dictionary rows are configuration and may be deleted, never without that record;
- after any change the loop-type and dictionary caches of app.loops.services are dropped;
- a node's data fields and QC rules take effect on the events applied after the change (compiled by
  app.loops.qc, checked by the applier when the node is completed; other processes within the cache TTL).

The first half holds the services (keyword-only, flush, never commit); the pages follow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, send_file, url_for
from flask_login import current_user
from openpyxl import Workbook, load_workbook
from sqlalchemy import func, or_, select

from app.audit import services as audit
from app.auth.access import require
from app.auth.models import Campus, Department, Role, Scope, User
from app.auth.services import scope_of
from app.core.paging import paginate
from app.db import db, utcnow
from app.errors import Forbidden, NotFound, ValidationFailed
from app.loops import bpmn
from app.loops import services as loops
from app.loops.catalog import RESERVED_NODES, NodeDef
from app.loops.models import InterfaceMapping, LoopNode, LoopOrder, LoopType, OrderStatus
from app.loops.qc import FIELD_TYPES, compile_node
from app.workflow import services as wf

AUDIT_LABELS = {
    "loop_type.nodes_changed": "闭环节点配置",
    "loop_type.copied": "复制典型闭环",
    "loop_type.activated": "启用闭环类型",
    "loop_type.deactivated": "停用闭环类型",
    "interface_mapping.created": "新增接口字典",
    "interface_mapping.updated": "修改接口字典",
    "interface_mapping.deleted": "删除接口字典",
    "interface_mapping.imported": "导入接口字典",
}

NOTE = "闭环节点配置"
KEY_RE = re.compile(r"^[a-z][a-z0-9_]*$")
LOOP_KEY_MAX = 40  # loop_<key>__<campus> must fit the 80-character process key
NODE_KEY_MAX = 64
MAX_NODES = 60
MAX_FIELDS = 30
MAX_MINUTES = 100000
MAX_GRACE = 10080  # a week

KIND_LABELS = {"order_type": "医嘱类型", "node": "节点状态码（所有闭环）", "dept": "科室编码"}
MAPPING_COLUMNS = [("source", "来源系统"), ("kind", "类别"), ("code", "外部编码"), ("target", "对应编码"),
                   ("note", "说明")]
MAX_IMPORT_ROWS = 5000


# ================================================================ services: reading


def kind_label(kind: str) -> str:
    if kind.startswith("node:"):
        info = loops.type_info(kind[5:])
        return f"节点状态码（{info.name if info else kind[5:]}）"
    return KIND_LABELS.get(kind, kind)


def group_type(key: str) -> LoopType:
    """The group standard of a loop type (active or not). Raises NotFound."""
    lt = db.session.scalar(select(LoopType).where(LoopType.key == key, LoopType.campus_id.is_(None)))
    if lt is None:
        raise NotFound(f"闭环类型「{key}」不存在", key=key)
    return lt


def campus_type(key: str, campus: Campus) -> LoopType | None:
    return db.session.scalar(select(LoopType).where(LoopType.key == key, LoopType.campus_id == campus.id))


def campus_by_code(code: str | None) -> Campus | None:
    """The campus for a code ('' or None = the group standard). Raises NotFound for an unknown code."""
    if not code:
        return None
    campus = db.session.scalar(select(Campus).where(Campus.code == code))
    if campus is None:
        raise NotFound(f"院区「{code}」不存在", campus=code)
    return campus


def loop_type_rows() -> list[dict[str, Any]]:
    """The loop types list: each group standard followed by its campus versions, with node counts, timings,
    the BPMN version in force and the number of running orders."""
    campuses = {c.id: c for c in db.session.scalars(select(Campus))}
    types = list(db.session.scalars(select(LoopType).order_by(LoopType.id)))
    running = dict(db.session.execute(  # type: ignore[arg-type]
        select(LoopOrder.loop_type_id, func.count()).where(LoopOrder.status == OrderStatus.IN_PROGRESS)
        .group_by(LoopOrder.loop_type_id)).all())
    by_key: dict[str, list[LoopType]] = {}
    for lt in types:
        by_key.setdefault(lt.key, []).append(lt)

    def row(lt: LoopType) -> dict[str, Any]:
        version = wf.active_version(lt.process_key, required=False)
        campus = campuses.get(lt.campus_id) if lt.campus_id else None
        return {"type": lt, "campus": campus, "node_count": len(lt.nodes),
                "nodes": [n.name for n in lt.nodes], "version": version.version if version else None,
                "running": running.get(lt.id, 0)}

    out = []
    for lt in types:
        if lt.campus_id is not None:
            continue
        versions = sorted((t for t in by_key[lt.key] if t.campus_id is not None),
                          key=lambda t: campuses[t.campus_id].code if t.campus_id in campuses else "")
        have = {t.campus_id for t in versions}
        out.append({**row(lt), "campus_versions": [row(t) for t in versions],
                    "campuses_without": [c for c in sorted(campuses.values(), key=lambda c: c.code)
                                         if c.id not in have and c.is_active]})
    return out


def node_spec(lt: LoopType) -> dict[str, Any]:
    """A loop type's editable definition in the shape save_loop_nodes() takes."""
    return {
        "grace_minutes": lt.grace_minutes, "stall_minutes": lt.stall_minutes,
        "nodes": [{"key": n.key, "name": n.name, "standard_minutes": n.standard_minutes,
                   "responsible_role": n.responsible_role or "",
                   "required_fields": [dict(f) for f in (n.required_fields or [])],
                   "qc_rules": dict(n.qc_rules or {})} for n in lt.nodes],
    }


def _nodes_snapshot(lt: LoopType) -> dict[str, Any]:
    spec = node_spec(lt)
    return {"id": lt.id, "key": lt.key, "campus_id": lt.campus_id, "process_key": lt.process_key, **spec}


# ================================================================ services: validation


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ("" if value is None else str(value).strip())


def _int(value: Any, path: str, label: str, errors: dict[str, str], *, lo: int, hi: int,
         required: bool = True) -> int | None:
    if isinstance(value, bool):
        value = None
    if isinstance(value, int):
        number = value
    else:
        text = _text(value)
        if text == "":
            if required:
                errors[path] = f"请填写{label}"
            return None
        if not re.fullmatch(r"-?\d+", text):
            errors[path] = f"{label}应为整数（分钟）"
            return None
        number = int(text)
    if not lo <= number <= hi:
        errors[path] = f"{label}应在 {lo}–{hi} 分钟之间"
        return None
    return number


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "on", "yes", "required", "必填", "是")
    return bool(value)


def _role_codes() -> set[str]:
    return set(db.session.scalars(select(Role.code)))


def validate_node_spec(spec: Any) -> dict[str, Any]:
    """Check a whole node list (names, keys, durations, fields, QC rules, grace/stall). Returns the cleaned
    spec. Raises ValidationFailed with one Chinese message per field path (nodes/2/key, …)."""
    errors: dict[str, str] = {}
    if not isinstance(spec, dict):
        raise ValidationFailed({"": "配置应为对象"})
    grace = _int(spec.get("grace_minutes"), "grace_minutes", "缺环等待时长", errors, lo=0, hi=MAX_GRACE)
    stall = _int(spec.get("stall_minutes"), "stall_minutes", "停滞告警阈值", errors, lo=1, hi=MAX_MINUTES)
    raw_nodes = spec.get("nodes")
    if not isinstance(raw_nodes, list):
        raw_nodes = []
    if len(raw_nodes) < 2:
        errors["nodes"] = "闭环至少需要 2 个节点"
    elif len(raw_nodes) > MAX_NODES:
        errors["nodes"] = f"闭环最多 {MAX_NODES} 个节点"
    roles = _role_codes()
    keys: dict[str, int] = {}
    names: dict[str, int] = {}
    nodes = []
    for i, raw in enumerate(raw_nodes):
        p = f"nodes/{i}"
        where = f"第 {i + 1} 个节点"
        if not isinstance(raw, dict):
            errors[p] = f"{where}：格式有误"
            continue
        key = _text(raw.get("key"))
        name = _text(raw.get("name"))
        if not key:
            errors[f"{p}/key"] = f"{where}：请填写节点标识"
        elif len(key) > NODE_KEY_MAX:
            errors[f"{p}/key"] = f"{where}：节点标识不能超过 {NODE_KEY_MAX} 个字符"
        elif not KEY_RE.match(key):
            errors[f"{p}/key"] = f"{where}：节点标识只能包含小写英文字母、数字和下划线，且以字母开头"
        elif key in RESERVED_NODES:
            errors[f"{p}/key"] = f"{where}：「{key}」是保留标识（{RESERVED_NODES[key]}），不能用作节点"
        elif key in keys:
            errors[f"{p}/key"] = f"{where}：节点标识「{key}」与第 {keys[key] + 1} 个节点重复"
        else:
            keys[key] = i
        if not name:
            errors[f"{p}/name"] = f"{where}：请填写节点名称"
        elif len(name) > 64:
            errors[f"{p}/name"] = f"{where}：节点名称不能超过 64 个字符"
        elif name in names:
            errors[f"{p}/name"] = f"{where}：节点名称「{name}」与第 {names[name] + 1} 个节点重复"
        else:
            names[name] = i
        minutes = _int(raw.get("standard_minutes"), f"{p}/standard_minutes", f"{where}的标准用时", errors,
                       lo=0, hi=MAX_MINUTES)
        role = _text(raw.get("responsible_role")) or None
        if role is not None and role not in roles:
            errors[f"{p}/responsible_role"] = f"{where}：责任角色「{role}」不存在"
        fields = _clean_fields(raw.get("required_fields"), p, where, errors)
        qc = _clean_qc(raw.get("qc_rules"), p, where, errors)
        if qc.get("require_fields") and not fields:
            errors[f"{p}/qc_rules/require_fields"] = f"{where}：要求字段齐全，但没有定义数据字段"
        nodes.append({"key": key, "name": name, "standard_minutes": minutes, "responsible_role": role,
                      "required_fields": fields, "qc_rules": qc})
    if errors:
        raise ValidationFailed(errors, message="闭环节点配置有误，未保存")
    return {"grace_minutes": grace, "stall_minutes": stall, "nodes": nodes}


def _clean_fields(raw: Any, p: str, where: str, errors: dict[str, str]) -> list[dict[str, Any]]:
    if raw in (None, ""):
        return []
    if not isinstance(raw, list):
        errors[f"{p}/required_fields"] = f"{where}：数据字段格式有误"
        return []
    if len(raw) > MAX_FIELDS:
        errors[f"{p}/required_fields"] = f"{where}：数据字段最多 {MAX_FIELDS} 个"
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for j, f in enumerate(raw):
        fp = f"{p}/required_fields/{j}"
        if not isinstance(f, dict):
            errors[fp] = f"{where}：第 {j + 1} 个数据字段格式有误"
            continue
        name = _text(f.get("name"))
        label = _text(f.get("label"))
        ftype = _text(f.get("type")) or "string"
        if not name:
            errors[f"{fp}/name"] = f"{where}：第 {j + 1} 个数据字段请填写字段名"
        elif len(name) > 64:
            errors[f"{fp}/name"] = f"{where}：字段名不能超过 64 个字符"
        elif any(c in name for c in " \t\r\n/\\\"'<>"):
            errors[f"{fp}/name"] = f"{where}：字段名「{name}」不能包含空格、引号、斜杠或尖括号"
        elif name in seen:
            errors[f"{fp}/name"] = f"{where}：字段名「{name}」重复"
        else:
            seen[name] = j
        if len(label) > 64:
            errors[f"{fp}/label"] = f"{where}：字段说明不能超过 64 个字符"
        if ftype not in FIELD_TYPES:
            errors[f"{fp}/type"] = f"{where}：字段「{name or j + 1}」的数据格式应为 " + "、".join(FIELD_TYPES.values())
        out.append({"name": name, "label": label or None, "type": ftype, "required": _flag(f.get("required"))})
    return out


def _clean_qc(raw: Any, p: str, where: str, errors: dict[str, str]) -> dict[str, Any]:
    if raw in (None, ""):
        return {}
    if not isinstance(raw, dict):
        errors[f"{p}/qc_rules"] = f"{where}：质控规则格式有误"
        return {}
    qc: dict[str, Any] = {}
    limit = _int(raw.get("max_minutes"), f"{p}/qc_rules/max_minutes", f"{where}的最长间隔", errors,
                 lo=1, hi=MAX_MINUTES, required=False)
    if limit is not None:
        qc["max_minutes"] = limit
    if _flag(raw.get("require_fields")):
        qc["require_fields"] = True
    if _flag(raw.get("operator_required")):
        qc["operator_required"] = True
    return qc


def evaluate_qc(*, node: LoopNode, data: dict[str, Any] | None, operator_id: str | None,
                minutes_since_previous: int | None) -> list[str]:
    """Quality findings (Chinese, one per broken rule) for one node occurrence against its configured data
    fields and QC rules. Pure. The applier uses the same rules precompiled per loop-type version
    (app.loops.services.node_qc)."""
    compiled = compile_node(name=node.name, required_fields=node.required_fields, qc_rules=node.qc_rules)
    if compiled is None:
        return []
    return compiled.findings(data=data, operator_id=operator_id, minutes_since_previous=minutes_since_previous)


# ================================================================ services: changing loop types


def _admin_scope(user: User, campus_id: int | None) -> None:
    """Group standard, templates and the dictionary need loops.admin at group scope; a campus version
    needs it for that campus."""
    level = scope_of(user, "loops.admin")
    if level is None:
        raise Forbidden("没有权限：闭环配置")
    if level is Scope.GROUP:
        return
    if campus_id is not None and level is Scope.CAMPUS and campus_id == user.campus_id:
        return
    raise Forbidden("只能配置本院区的闭环版本；集团标准、典型闭环和接口字典需全集团范围的闭环配置权限")


def may_edit(user: User, campus_id: int | None) -> bool:
    try:
        _admin_scope(user, campus_id)
    except Forbidden:
        return False
    return True


def _dictionary_scope(user: User) -> None:
    """The interface dictionary is edited by loop administrators or interface administrators (信息科), group-wide."""
    if Scope.GROUP in (scope_of(user, "loops.admin"), scope_of(user, "integration.admin")):
        return
    raise Forbidden("维护接口字典需要全集团范围的闭环配置或接口管理权限")


def may_edit_dictionary(user: User) -> bool:
    try:
        _dictionary_scope(user)
    except Forbidden:
        return False
    return True


def _deploy(lt: LoopType, nodes: list[dict[str, Any]], campus: Campus | None, actor: User,
            detail: str) -> int | None:
    """Generate the loop's BPMN and deploy it when it differs from the active version. Returns the version."""
    xml = bpmn.generate(loop_key=lt.key, name=lt.name,
                        nodes=[NodeDef(n["key"], n["name"], n["standard_minutes"]) for n in nodes],
                        campus_code=campus.code if campus else None, campus_name=campus.name if campus else None)
    current = wf.active_version(lt.process_key, required=False)
    if current is not None and current.bpmn_xml == xml:
        return current.version
    version = wf.upload_version(bpmn_xml=xml, actor=actor, note=f"{NOTE}：{detail}", expected_key=lt.process_key)
    return version.version


def _write_nodes(lt: LoopType, nodes: list[dict[str, Any]]) -> None:
    lt.nodes.clear()
    db.session.flush()  # old rows go first: (loop_type_id, key) is unique
    for i, n in enumerate(nodes):
        lt.nodes.append(LoopNode(seq=i, key=n["key"], name=n["name"], standard_minutes=n["standard_minutes"],
                                 responsible_role=n["responsible_role"], required_fields=n["required_fields"],
                                 qc_rules=n["qc_rules"]))


def save_loop_nodes(*, key: str, campus: Campus | None, spec: dict[str, Any], actor: User) -> LoopType:
    """Validate and save a loop's node list for the group standard (campus None) or one campus (creating the
    campus version the first time), deploy the regenerated BPMN, audit before/after and drop the caches.
    Raises NotFound, Forbidden, ValidationFailed (nothing written)."""
    group = group_type(key)
    _admin_scope(actor, campus.id if campus else None)
    clean = validate_node_spec(spec)
    target = campus_type(key, campus) if campus else group
    if target is None:
        assert campus is not None
        before: dict[str, Any] = {"based_on": "集团标准", **_nodes_snapshot(group)}
        target = LoopType(key=group.key, name=group.name, order_category=group.order_category, campus_id=campus.id,
                          process_key=bpmn.process_key(group.key, campus.code), grace_minutes=group.grace_minutes,
                          stall_minutes=group.stall_minutes, is_active=True,
                          source_url_template=group.source_url_template)
        db.session.add(target)
        db.session.flush()
    else:
        before = _nodes_snapshot(target)
    where = campus.name if campus else "集团标准"
    version = _deploy(target, clean["nodes"], campus, actor, f"{target.name}（{where}）")
    target.grace_minutes = clean["grace_minutes"]
    target.stall_minutes = clean["stall_minutes"]
    target.updated_at = utcnow()
    _write_nodes(target, clean["nodes"])
    db.session.flush()
    after = {**_nodes_snapshot(target), "process_version": version}
    audit.record(actor, "loop_type.nodes_changed", target, before=before, after=after)
    loops.invalidate_types()
    return target


def set_active(*, lt: LoopType, active: bool, actor: User) -> LoopType:
    """Enable or disable a loop type version (a disabled campus version falls back to the group standard;
    a disabled group standard is refused by intake). Audited."""
    _admin_scope(actor, lt.campus_id)
    if lt.is_active == active:
        return lt
    before = audit.snapshot(lt)
    lt.is_active = active
    db.session.flush()
    audit.record(actor, "loop_type.activated" if active else "loop_type.deactivated", lt, before=before,
                 after=audit.snapshot(lt))
    loops.invalidate_types()
    return lt


def _loop_key_errors(key: str, errors: dict[str, str]) -> None:
    if not key:
        errors["key"] = "请填写闭环类型标识"
    elif len(key) > LOOP_KEY_MAX:
        errors["key"] = f"闭环类型标识不能超过 {LOOP_KEY_MAX} 个字符"
    elif not KEY_RE.match(key) or "__" in key:
        errors["key"] = "闭环类型标识只能包含小写英文字母、数字和单个下划线，且以字母开头"
    elif db.session.scalar(select(LoopType.id).where(LoopType.key == key).limit(1)):
        errors["key"] = f"闭环类型标识「{key}」已存在"
    elif wf.active_version(bpmn.process_key(key), required=False) is not None:
        errors["key"] = f"流程标识「{bpmn.process_key(key)}」已被占用，请换一个标识"


def copy_loop_type(*, source: LoopType, key: str, name: str, order_category: str, actor: User) -> LoopType:
    """Create a new group-standard loop type from a typical loop (same nodes, fields, QC rules and timings,
    template_of = the source key) and deploy its BPMN. Raises Forbidden, ValidationFailed (nothing written)."""
    _admin_scope(actor, None)
    key, name, order_category = _text(key), _text(name), _text(order_category)
    errors: dict[str, str] = {}
    _loop_key_errors(key, errors)
    if not name:
        errors["name"] = "请填写闭环名称"
    elif len(name) > 64:
        errors["name"] = "闭环名称不能超过 64 个字符"
    elif db.session.scalar(select(LoopType.id).where(LoopType.name == name, LoopType.campus_id.is_(None)).limit(1)):
        errors["name"] = f"闭环名称「{name}」已被其他闭环类型使用"
    if not order_category:
        errors["order_category"] = "请填写医嘱类别（如 药品、检验、检查、手术）"
    elif len(order_category) > 16:
        errors["order_category"] = "医嘱类别不能超过 16 个字符"
    if errors:
        raise ValidationFailed(errors, message="复制典型闭环的信息有误，未创建")
    spec = node_spec(source)
    lt = LoopType(key=key, name=name, order_category=order_category, campus_id=None,
                  process_key=bpmn.process_key(key), grace_minutes=source.grace_minutes,
                  stall_minutes=source.stall_minutes, template_of=source.key, is_active=True)
    db.session.add(lt)
    db.session.flush()
    nodes = [{**n, "responsible_role": n["responsible_role"] or None} for n in spec["nodes"]]
    version = _deploy(lt, nodes, None, actor, f"由「{source.name}」复制为「{name}」")
    _write_nodes(lt, nodes)
    db.session.flush()
    audit.record(actor, "loop_type.copied", lt, before={"template": _nodes_snapshot(source)},
                 after={**_nodes_snapshot(lt), "name": name, "order_category": order_category,
                        "process_version": version})
    loops.invalidate_types()
    return lt


# ================================================================ services: interface dictionary


@dataclass
class MappingFilter:
    source: str | None = None
    kind: str | None = None
    q: str | None = None


def mapping_query(filters: MappingFilter):
    stmt = select(InterfaceMapping)
    if filters.source:
        stmt = stmt.where(InterfaceMapping.source == filters.source)
    if filters.kind:
        stmt = stmt.where(InterfaceMapping.kind == filters.kind)
    if filters.q:
        like = f"%{filters.q}%"
        stmt = stmt.where(or_(InterfaceMapping.code.ilike(like), InterfaceMapping.target.ilike(like),
                              InterfaceMapping.note.ilike(like)))
    return stmt.order_by(InterfaceMapping.source, InterfaceMapping.kind, InterfaceMapping.code)


def mapping_sources() -> list[str]:
    return list(db.session.scalars(select(InterfaceMapping.source).distinct().order_by(InterfaceMapping.source)))


def mapping_kinds() -> list[tuple[str, str]]:
    """Every kind a dictionary row may have: order types, status codes for all loops or one loop, departments."""
    out = [("order_type", KIND_LABELS["order_type"]), ("node", KIND_LABELS["node"])]
    for key, name in db.session.execute(select(LoopType.key, LoopType.name).where(LoopType.campus_id.is_(None))
                                        .order_by(LoopType.id)):
        out.append((f"node:{key}", f"节点状态码（{name}）"))
    out.append(("dept", KIND_LABELS["dept"]))
    return out


@dataclass
class _Targets:
    """Lookup sets for validating many rows (an import) with a handful of queries."""

    loop_keys: set[str] = field(default_factory=set)
    nodes_by_loop: dict[str, set[str]] = field(default_factory=dict)
    dept_codes: set[str] = field(default_factory=set)

    @classmethod
    def load(cls) -> _Targets:
        t = cls(loop_keys=set(db.session.scalars(select(LoopType.key).distinct())),
                dept_codes=set(db.session.scalars(select(Department.code))))
        for loop_key, node_key in db.session.execute(
                select(LoopType.key, LoopNode.key).join(LoopNode, LoopNode.loop_type_id == LoopType.id)):
            t.nodes_by_loop.setdefault(loop_key, set()).add(node_key)
        return t


def _mapping_errors(data: dict[str, Any], targets: _Targets, *, prefix: str = "") -> tuple[dict[str, Any], dict[str, str]]:
    errors: dict[str, str] = {}
    clean: dict[str, Any] = {k: _text(data.get(k)) for k in ("source", "kind", "code", "target", "note")}
    if not clean["source"]:
        errors[prefix + "source"] = "请填写来源系统（如 HIS、LIS，* 表示全部来源）"
    elif len(clean["source"]) > 32 or not re.fullmatch(r"\*|[A-Za-z0-9_\-]+", clean["source"]):
        errors[prefix + "source"] = "来源系统应为不超过 32 位的英文字母、数字、-、_，或 *"
    kind, target = clean["kind"], clean["target"]
    if not kind:
        errors[prefix + "kind"] = "请选择类别"
    elif kind not in ("order_type", "node", "dept") and not (kind.startswith("node:") and kind[5:] in targets.loop_keys):
        errors[prefix + "kind"] = (f"类别「{kind}」不存在（应为 order_type、node、node:<闭环类型标识> 或 dept）")
    if not clean["code"]:
        errors[prefix + "code"] = "请填写外部编码"
    elif len(clean["code"]) > 64:
        errors[prefix + "code"] = "外部编码不能超过 64 个字符"
    if not target:
        errors[prefix + "target"] = "请填写对应编码"
    elif len(target) > 64:
        errors[prefix + "target"] = "对应编码不能超过 64 个字符"
    elif prefix + "kind" not in errors:
        if kind == "order_type" and target not in targets.loop_keys:
            errors[prefix + "target"] = f"闭环类型「{target}」不存在"
        elif kind == "node" and target not in RESERVED_NODES and not any(
                target in keys for keys in targets.nodes_by_loop.values()):
            errors[prefix + "target"] = f"没有任何闭环有节点「{target}」（也不是 cancelled/abnormal）"
        elif kind.startswith("node:") and target not in RESERVED_NODES and target not in targets.nodes_by_loop.get(kind[5:], set()):
            errors[prefix + "target"] = f"闭环「{kind[5:]}」没有节点「{target}」（也不是 cancelled/abnormal）"
        elif kind == "dept" and target not in targets.dept_codes:
            errors[prefix + "target"] = f"科室编码「{target}」不存在"
    if len(clean["note"]) > 200:
        errors[prefix + "note"] = "说明不能超过 200 个字符"
    clean["note"] = clean["note"] or None
    return clean, errors


def save_mapping(*, mapping: InterfaceMapping | None, data: dict[str, Any], actor: User) -> InterfaceMapping:
    """Create (mapping None) or change one dictionary row; the target must exist. Audited; caches dropped.
    Raises Forbidden, ValidationFailed (nothing written)."""
    _dictionary_scope(actor)
    clean, errors = _mapping_errors(data, _Targets.load())
    if not errors:
        clash = db.session.scalar(select(InterfaceMapping.id).where(
            InterfaceMapping.source == clean["source"], InterfaceMapping.kind == clean["kind"],
            InterfaceMapping.code == clean["code"]))
        if clash is not None and (mapping is None or clash != mapping.id):
            errors["code"] = f"来源「{clean['source']}」类别「{clean['kind']}」下已有外部编码「{clean['code']}」"
    if errors:
        raise ValidationFailed(errors, message="接口字典有误，未保存")
    before = audit.snapshot(mapping) if mapping is not None else None
    if mapping is None:
        mapping = InterfaceMapping(**clean)
        db.session.add(mapping)
    else:
        for k, v in clean.items():
            setattr(mapping, k, v)
    db.session.flush()
    audit.record(actor, "interface_mapping.updated" if before else "interface_mapping.created", mapping,
                 before=before, after=audit.snapshot(mapping))
    loops.invalidate_types()
    return mapping


def delete_mapping(*, mapping: InterfaceMapping, actor: User) -> None:
    """Delete a dictionary row (configuration, not business data); the audit record keeps what it was."""
    _dictionary_scope(actor)
    before = audit.snapshot(mapping)
    audit.record(actor, "interface_mapping.deleted", mapping, before=before, after=None)
    db.session.delete(mapping)
    db.session.flush()
    loops.invalidate_types()


def mappings_workbook(rows) -> bytes:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "接口字典"
    ws.append([label for _k, label in MAPPING_COLUMNS] + ["类别说明"])
    for m in rows:
        ws.append([m.source, m.kind, m.code, m.target, m.note or "", kind_label(m.kind)])
    for col, width in zip("ABCDEF", (12, 28, 20, 24, 40, 28), strict=True):
        ws.column_dimensions[col].width = width
    buf = BytesIO()
    wb.save(buf)
    return buf.getvalue()


HEADER_ALIASES = {label: key for key, label in MAPPING_COLUMNS} | {key: key for key, _l in MAPPING_COLUMNS}
KIND_ALIASES = {"医嘱类型": "order_type", "节点状态码": "node", "状态码": "node", "科室": "dept", "科室编码": "dept"}


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rows: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # {"row": n, "path": ..., "message": ...}


def import_mappings(*, content: bytes, actor: User) -> ImportReport:
    """Import dictionary rows from an .xlsx sheet (the export's columns). All or nothing: any bad row raises
    ValidationFailed listing every error by row (path rows/<excel row>/<column>); otherwise rows are created
    or updated by (source, kind, code), audited, and the caches dropped."""
    _dictionary_scope(actor)
    try:
        wb = load_workbook(BytesIO(content), read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds for a non-xlsx upload
        raise ValidationFailed({"file": "无法读取该文件，请上传由“导出 Excel”得到的 .xlsx 文件"}) from exc
    ws = wb.worksheets[0]
    lines = ws.iter_rows(values_only=True)
    header = next(lines, None) or ()
    columns: dict[int, str] = {}
    for i, h in enumerate(header):
        key = HEADER_ALIASES.get(_text(h))
        if key:
            columns[i] = key
    missing = [label for key, label in MAPPING_COLUMNS if key != "note" and key not in columns.values()]
    if missing:
        raise ValidationFailed({"file": "表头缺少列：" + "、".join(missing) + "（请使用导出的模板）"})
    targets = _Targets.load()
    report = ImportReport()
    parsed: list[tuple[int, dict[str, Any]]] = []
    seen: dict[tuple[str, str, str], int] = {}
    for number, values in enumerate(lines, start=2):
        data = {key: values[i] if i < len(values) else None for i, key in columns.items()}
        if all(_text(v) == "" for v in data.values()):
            continue
        report.rows += 1
        if report.rows > MAX_IMPORT_ROWS:
            raise ValidationFailed({"file": f"一次最多导入 {MAX_IMPORT_ROWS} 行"})
        kind = _text(data.get("kind"))
        data["kind"] = KIND_ALIASES.get(kind, kind)
        clean, errors = _mapping_errors(data, targets, prefix=f"rows/{number}/")
        ident = (clean["source"], clean["kind"], clean["code"])
        if not errors and ident in seen:
            errors[f"rows/{number}/code"] = f"与第 {seen[ident]} 行重复（同一来源、类别、外部编码）"
        seen.setdefault(ident, number)
        for path, message in errors.items():
            report.errors.append({"row": number, "path": path, "message": f"第 {number} 行：{message}"})
        parsed.append((number, clean))
    if report.errors:
        raise ValidationFailed([{"path": e["path"], "message": e["message"]} for e in report.errors],
                               message=f"导入文件有 {len({e['row'] for e in report.errors})} 行错误，未导入任何数据")
    if not parsed:
        raise ValidationFailed({"file": "文件中没有数据行"})
    existing = {(m.source, m.kind, m.code): m for m in db.session.scalars(select(InterfaceMapping))}
    changes = []
    for _number, clean in parsed:
        m = existing.get((clean["source"], clean["kind"], clean["code"]))
        if m is None:
            m = InterfaceMapping(**clean)
            db.session.add(m)
            report.created += 1
            changes.append({"before": None, "after": clean})
        elif (m.target, m.note) != (clean["target"], clean["note"]):
            changes.append({"before": audit.snapshot(m), "after": clean})
            m.target, m.note = clean["target"], clean["note"]
            report.updated += 1
        else:
            report.unchanged += 1
    db.session.flush()
    audit.record(actor, "interface_mapping.imported", entity_type="interface_mappings", entity_id=None,
                 before=None, after={"created": report.created, "updated": report.updated,
                                     "unchanged": report.unchanged, "changes": changes})
    loops.invalidate_types()
    return report


# ================================================================ pages

bp = Blueprint("loops_config", __name__, url_prefix="/loops/config")


def register(app):
    from app.web import add_nav

    app.register_blueprint(bp)
    audit.ACTION_LABELS.update(AUDIT_LABELS)
    add_nav("loops_config.types", "闭环配置", "loops.admin", order=62)


def _form_nodes() -> list[dict[str, Any]]:
    """The node rows of the editor form (nodes-<i>-…, nodes-<i>-fields-<j>-…) in row order, as typed."""
    form = request.form
    index: set[int] = set()
    for name in form:
        m = re.match(r"nodes-(\d+)-", name)
        if m:
            index.add(int(m.group(1)))
    nodes = []
    for i in sorted(index):
        p = f"nodes-{i}-"
        fields_index = sorted({int(m.group(1)) for n in form if (m := re.match(rf"{p}fields-(\d+)-", n))})
        fields = []
        for j in fields_index:
            fp = f"{p}fields-{j}-"
            f = {"name": form.get(fp + "name", ""), "label": form.get(fp + "label", ""),
                 "type": form.get(fp + "type", "string"), "required": form.get(fp + "required") == "required"}
            if _text(f["name"]) or _text(f["label"]):
                fields.append(f)
        nodes.append({
            "key": form.get(p + "key", ""), "name": form.get(p + "name", ""),
            "standard_minutes": form.get(p + "standard_minutes", ""),
            "responsible_role": form.get(p + "responsible_role", ""),
            "is_new": form.get(p + "is_new") == "1",
            "required_fields": fields,
            "qc_rules": {"max_minutes": form.get(p + "qc_max_minutes", ""),
                         "require_fields": bool(form.get(p + "qc_require_fields")),
                         "operator_required": bool(form.get(p + "qc_operator_required"))},
        })
    return nodes


def _apply_op(op: str, nodes: list[dict[str, Any]]) -> str | None:
    """Editor buttons that only rearrange the unsaved form: add, remove-<i>, up-<i>, down-<i>."""
    if op == "add":
        nodes.append({"key": "", "name": "", "standard_minutes": 30, "responsible_role": "", "is_new": True,
                      "required_fields": [], "qc_rules": {}})
        return "已添加一个新节点（尚未保存）：请填写节点标识和名称"
    m = re.fullmatch(r"(remove|up|down)-(\d+)", op)
    if not m or int(m.group(2)) >= len(nodes):
        return None
    action, i = m.group(1), int(m.group(2))
    if action == "remove":
        gone = nodes.pop(i)
        return f"已移除节点「{_text(gone.get('name')) or _text(gone.get('key'))}」（尚未保存）"
    j = i - 1 if action == "up" else i + 1
    if 0 <= j < len(nodes):
        nodes[i], nodes[j] = nodes[j], nodes[i]
    return "已调整节点顺序（尚未保存）"


def _render_editor(*, key: str, campus: Campus | None, spec: dict[str, Any], errors: dict[str, str] | None = None,
                   notice: str | None = None, status: int = 200):
    group = group_type(key)
    own = campus_type(key, campus) if campus else group
    existing = {n.key for n in (own or group).nodes}
    for n in spec["nodes"]:
        n.setdefault("is_new", _text(n.get("key")) not in existing)
    edited = own or group
    version = wf.active_version(edited.process_key, required=False)
    return render_template(
        "loops/config_nodes.html", group=group, own=own, campus=campus, spec=spec, errors=errors or {},
        notice=notice, field_types=FIELD_TYPES, roles=db.session.scalars(select(Role).order_by(Role.id)).all(),
        campuses=db.session.scalars(select(Campus).order_by(Campus.code)).all(), version=version,
        running=db.session.scalar(select(func.count()).select_from(LoopOrder).where(
            LoopOrder.loop_type_id == edited.id, LoopOrder.status == OrderStatus.IN_PROGRESS)) or 0,
    ), status


@bp.get("/")
@require("loops.view", "loops.admin")
def types():
    rows = loop_type_rows()
    editable = {None: may_edit(current_user, None)}
    for c in db.session.scalars(select(Campus)):
        editable[c.id] = may_edit(current_user, c.id)
    return render_template("loops/config_types.html", rows=rows, editable=editable)


@bp.get("/types/<key>/nodes")
@require("loops.admin")
def nodes(key: str):
    campus = campus_by_code(request.args.get("campus"))
    _admin_scope(current_user, campus.id if campus else None)
    group = group_type(key)
    own = campus_type(key, campus) if campus else group
    return _render_editor(key=key, campus=campus, spec=node_spec(own or group))


@bp.post("/types/<key>/nodes")
@require("loops.admin")
def save_nodes(key: str):
    campus = campus_by_code(request.form.get("campus"))
    _admin_scope(current_user, campus.id if campus else None)
    nodes = _form_nodes()
    spec: dict[str, Any] = {"grace_minutes": request.form.get("grace_minutes", ""),
                            "stall_minutes": request.form.get("stall_minutes", ""), "nodes": nodes}
    op = request.form.get("op", "save")
    if op != "save":
        notice = _apply_op(op, nodes)
        return _render_editor(key=key, campus=campus, spec=spec, notice=notice)
    try:
        lt = save_loop_nodes(key=key, campus=campus, spec=spec, actor=current_user)
    except ValidationFailed as exc:
        db.session.rollback()
        errors = {e["path"]: e["message"] for e in exc.errors}
        return _render_editor(key=key, campus=campus, spec=spec, errors=errors, status=400)
    db.session.commit()
    version = wf.active_version(lt.process_key, required=False)
    flash(f"已保存「{lt.name}」（{campus.name if campus else '集团标准'}）的节点配置，"
          f"流程 {lt.process_key} 当前为第 {version.version if version else '-'} 版；进行中的医嘱沿用原版本", "success")
    return redirect(url_for("loops_config.types"))


@bp.post("/types/<int:type_id>/active")
@require("loops.admin")
def toggle_active(type_id: int):
    lt = db.session.get(LoopType, type_id)
    if lt is None:
        raise NotFound("闭环类型不存在")
    set_active(lt=lt, active=request.form.get("active") == "1", actor=current_user)
    db.session.commit()
    flash(f"已{'启用' if lt.is_active else '停用'}「{lt.name}」" + ("院区版本" if lt.campus_id else "集团标准"), "success")
    return redirect(url_for("loops_config.types"))


@bp.route("/templates", methods=["GET", "POST"])
@require("loops.admin")
def templates():
    _admin_scope(current_user, None)
    errors: dict[str, str] = {}
    form = {"source_id": "", "key": "", "name": "", "order_category": ""}
    if request.method == "POST":
        form = {k: request.form.get(k, "") for k in form}
        source = db.session.get(LoopType, int(form["source_id"])) if form["source_id"].isdigit() else None
        try:
            if source is None:
                raise ValidationFailed({"source_id": "请选择作为模板的闭环"})
            lt = copy_loop_type(source=source, key=form["key"], name=form["name"],
                                order_category=form["order_category"], actor=current_user)
        except ValidationFailed as exc:
            db.session.rollback()
            errors = {e["path"]: e["message"] for e in exc.errors}
        else:
            db.session.commit()
            flash(f"已由典型闭环创建「{lt.name}」（{lt.key}），接口可立即按此类型上报事件", "success")
            return redirect(url_for("loops_config.nodes", key=lt.key))
    campuses = {c.id: c for c in db.session.scalars(select(Campus))}
    sources = db.session.scalars(select(LoopType).order_by(LoopType.campus_id.nulls_first(), LoopType.id)).all()
    categories = sorted(set(db.session.scalars(select(LoopType.order_category).distinct())))
    return render_template("loops/config_templates.html", sources=sources, campuses=campuses, errors=errors,
                           form=form, categories=categories), (400 if errors else 200)


def _mapping_filter() -> MappingFilter:
    return MappingFilter(source=request.args.get("source") or None, kind=request.args.get("kind") or None,
                         q=(request.args.get("q") or "").strip() or None)


@bp.get("/mappings")
@require("loops.admin", "integration.admin")
def mappings():
    page = paginate(mapping_query(_mapping_filter()))
    return render_template("loops/mapping_list.html", page=page, sources=mapping_sources(), kinds=mapping_kinds(),
                           kind_label=kind_label, editable=may_edit_dictionary(current_user))


@bp.get("/mappings/export.xlsx")
@require("loops.admin", "integration.admin")
def export_mappings():
    rows = db.session.scalars(mapping_query(_mapping_filter()).limit(50000))
    return send_file(BytesIO(mappings_workbook(rows)), as_attachment=True, download_name="接口字典.xlsx",
                     mimetype="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")


def _mapping_or_404(mapping_id: int) -> InterfaceMapping:
    m = db.session.get(InterfaceMapping, mapping_id)
    if m is None:
        raise NotFound("接口字典条目不存在")
    return m


@bp.route("/mappings/new", methods=["GET", "POST"], defaults={"mapping_id": None})
@bp.route("/mappings/<int:mapping_id>/edit", methods=["GET", "POST"])
@require("loops.admin", "integration.admin")
def mapping_form(mapping_id: int | None):
    _dictionary_scope(current_user)
    mapping = _mapping_or_404(mapping_id) if mapping_id else None
    errors: dict[str, str] = {}
    keys = ("source", "kind", "code", "target", "note")
    data = {k: (getattr(mapping, k) or "") if mapping else "" for k in keys}
    if request.method == "POST":
        data = {k: request.form.get(k, "") for k in keys}
        try:
            saved = save_mapping(mapping=mapping, data=data, actor=current_user)
        except ValidationFailed as exc:
            db.session.rollback()
            errors = {e["path"]: e["message"] for e in exc.errors}
        else:
            db.session.commit()
            flash(f"已保存接口字典：{saved.source} {saved.kind} {saved.code} → {saved.target}", "success")
            return redirect(url_for("loops_config.mappings"))
    return render_template("loops/mapping_form.html", mapping=mapping, data=data, errors=errors,
                           kinds=mapping_kinds()), (400 if errors else 200)


@bp.post("/mappings/<int:mapping_id>/delete")
@require("loops.admin", "integration.admin")
def mapping_delete(mapping_id: int):
    mapping = _mapping_or_404(mapping_id)
    label = f"{mapping.source} {mapping.kind} {mapping.code}"
    delete_mapping(mapping=mapping, actor=current_user)
    db.session.commit()
    flash(f"已删除接口字典：{label}（删除前内容已记入审计日志）", "success")
    return redirect(url_for("loops_config.mappings"))


@bp.route("/mappings/import", methods=["GET", "POST"])
@require("loops.admin", "integration.admin")
def mapping_import():
    _dictionary_scope(current_user)
    errors: list[dict[str, str]] = []
    message = None
    if request.method == "POST":
        file = request.files.get("file")
        content = file.read() if file and file.filename else b""
        try:
            if not content:
                raise ValidationFailed({"file": "请选择要导入的 Excel 文件"})
            report = import_mappings(content=content, actor=current_user)
        except ValidationFailed as exc:
            db.session.rollback()
            errors, message = exc.errors, exc.message
        else:
            db.session.commit()
            flash(f"已导入接口字典 {report.rows} 行：新增 {report.created}，更新 {report.updated}，"
                  f"未变 {report.unchanged}", "success")
            return redirect(url_for("loops_config.mappings"))
    return render_template("loops/mapping_import.html", errors=errors, message=message,
                           columns=MAPPING_COLUMNS), (400 if errors else 200)
