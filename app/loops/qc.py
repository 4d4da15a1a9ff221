"""Node quality control (seed 003 §二.3(1) 质控规则, §二.3(4) 字段配置: 必填、可选、数据格式), compiled once per
loop-type version so the applier only pays for nodes that have rules.

A node's configuration (its data fields and QC rules, edited in app/loops/config.py) becomes a NodeQc, or
None when there is nothing to check. NodeQc.findings() is pure: one Chinese message per broken rule. The
applier keeps the event whatever the findings say (a hospital feed must not lose a step); it records them on
the node state and raises a 质控不合格 alert.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

FIELD_TYPES = {"string": "文本", "integer": "整数", "number": "数值", "boolean": "是/否", "date": "日期",
               "datetime": "日期时间"}

_INT_RE = re.compile(r"-?\d+")


def _is_string(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and _INT_RE.fullmatch(value.strip()) is not None)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def _is_boolean(value: Any) -> bool:
    return isinstance(value, bool) or str(value).lower() in ("true", "false", "1", "0", "是", "否")


def _is_date_like(value: Any) -> bool:
    try:
        datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _is_date(value: Any) -> bool:
    return _is_date_like(value) and len(str(value)) == 10


CHECKS: dict[str, Callable[[Any], bool]] = {"string": _is_string, "integer": _is_integer, "number": _is_number,
                                            "boolean": _is_boolean, "date": _is_date, "datetime": _is_date_like}


def check_value(ftype: str, value: Any) -> bool:
    """Whether a (non-empty) value has the declared data format; unknown formats accept anything."""
    check = CHECKS.get(ftype)
    return check is None or check(value)


@dataclass(frozen=True, slots=True)
class FieldCheck:
    name: str
    label: str
    type_label: str
    check: Callable[[Any], bool] | None
    required: bool  # a finding when missing (the field is 必填 and the node's rule 必填字段须齐全 is on)


@dataclass(frozen=True, slots=True)
class NodeQc:
    name: str
    max_minutes: int | None
    operator_required: bool
    fields: tuple[FieldCheck, ...]

    def findings(self, *, data: dict[str, Any] | None, operator_id: str | None,
                 minutes_since_previous: int | None) -> list[str]:
        """One Chinese message per broken rule, in a fixed order: timing, operator, then each field."""
        out: list[str] = []
        limit = self.max_minutes
        if limit is not None and minutes_since_previous is not None and minutes_since_previous > limit:
            out.append(f"{self.name}距上一节点 {minutes_since_previous} 分钟，超过质控上限 {limit} 分钟")
        if self.operator_required and not operator_id:
            out.append(f"{self.name}未记录操作人")
        if self.fields:
            data = data if isinstance(data, dict) else {}
            for f in self.fields:
                value = data.get(f.name)
                if value is None or value == "":
                    if f.required:
                        out.append(f"{self.name}缺少必填字段「{f.label}」")
                elif f.check is not None and not f.check(value):
                    out.append(f"{self.name}字段「{f.label}」不是{f.type_label}格式")
        return out


def compile_node(*, name: str, required_fields: Iterable[dict[str, Any]] | None,
                 qc_rules: dict[str, Any] | None) -> NodeQc | None:
    """A node's fields and rules as a NodeQc; None when there is nothing to check (the applier's fast path)."""
    rules = qc_rules or {}
    require_fields = bool(rules.get("require_fields"))
    fields = []
    for f in required_fields or ():
        if not isinstance(f, dict) or not f.get("name"):
            continue
        ftype = f.get("type") or "string"
        fields.append(FieldCheck(name=str(f["name"]), label=str(f.get("label") or f["name"]),
                                 type_label=FIELD_TYPES.get(ftype, ""), check=CHECKS.get(ftype),
                                 required=bool(f.get("required")) and require_fields))
    limit = rules.get("max_minutes")
    max_minutes = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    operator_required = bool(rules.get("operator_required"))
    if max_minutes is None and not operator_required and not fields:
        return None
    return NodeQc(name=name, max_minutes=max_minutes, operator_required=operator_required, fields=tuple(fields))


def compile_nodes(nodes: Iterable[tuple[str, str, Any, Any]]) -> dict[str, NodeQc]:
    """{node key: NodeQc} for (key, name, required_fields, qc_rules) rows, leaving out nodes without rules."""
    out = {}
    for key, name, fields, rules in nodes:
        compiled = compile_node(name=name, required_fields=fields, qc_rules=rules)
        if compiled is not None:
            out[key] = compiled
    return out
