"""The admin form editor's field table: schema -> rows for display, posted rows -> schema + UI schema.

The table covers the common field types. A property the table cannot express without losing something
(nested groups, custom patterns, exclusive bounds, ...) becomes a "保留原定义" row that carries its JSON
unchanged, so editing a shipped form never silently drops a rule. Keys the table does not manage but that
are safe to keep (description, default, errorMessage, placeholder, radio/hidden/readonly widgets) ride along
in a hidden per-row JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.errors import Conflict, NotFound, ValidationFailed
from app.forms import services
from app.forms.models import FormTemplate
from app.forms.schema import field_kind, options, ordered, properties, required_names, sub_ui

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"

FIELD_TYPES: dict[str, str] = {
    "text": "文本",
    "textarea": "多行文本",
    "number": "数字",
    "integer": "整数",
    "date": "日期",
    "radio": "单选",
    "multi": "多选",
    "boolean": "是否",
    "raw": "保留原定义（JSON）",
}

FORMATS: dict[str, str] = {"": "无", "date": "日期", "email": "电子邮箱", "idcard": "身份证号", "mobile": "手机号"}

# 18-digit resident identity number (GB 11643-1999) and mainland mobile numbers
PATTERNS = {
    "idcard": r"^[1-9]\d{5}(18|19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])\d{3}[\dXx]$",
    "mobile": r"^1[3-9]\d{9}$",
}
PATTERN_MESSAGES = {"idcard": "身份证号格式不正确（18 位，末位可为 X）", "mobile": "手机号格式不正确（11 位）"}

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
MAX_ROWS = 200

# schema keys kept per row without being table columns, and UI keys likewise
KEEP_SCHEMA = ("description", "default", "examples", "$comment")
KEEP_UI = ("ui:placeholder", "ui:options", "ui:locked")
KEEP_WIDGETS = ("radio", "hidden", "readonly", "checkbox", "select")

# what each row type may contain besides type/title and the kept keys; anything else makes the row "raw"
ALLOWED = {
    "text": {"minLength", "maxLength", "format", "pattern", "errorMessage"},
    "textarea": {"minLength", "maxLength", "errorMessage"},
    "number": {"minimum", "maximum"},
    "integer": {"minimum", "maximum"},
    "date": {"format"},
    "radio": {"enum", "enumNames", "oneOf"},
    "multi": {"items", "minItems", "maxItems", "uniqueItems"},
    "boolean": set(),
}


@dataclass
class FieldRow:
    name: str = ""
    title: str = ""
    type: str = "text"
    required: bool = False
    format: str = ""
    options: str = ""
    min: str = ""
    max: str = ""
    help: str = ""
    raw: str = ""
    keep: str = ""

    @property
    def locked(self) -> bool:
        """A field the system stores in its own column (ui:locked): it stays, stays required and keeps its type."""
        return bool((_load_keep(self.keep).get("ui") or {}).get("ui:locked"))

    def is_blank(self) -> bool:
        return not any(x.strip() for x in (self.name, self.title, self.options, self.min, self.max, self.help,
                                           self.raw))


@dataclass
class EditorState:
    title: str = ""
    description: str = ""
    rows: list[FieldRow] = field(default_factory=list)
    keep: str = ""  # top-level schema/UI keys the table does not manage, as JSON
    base_version: int = 0
    note: str = ""


# --------------------------------------------------------------------------------------------------------------
# schema -> rows
# --------------------------------------------------------------------------------------------------------------

def _num_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _options_text(schema: Mapping[str, Any]) -> str | None:
    """Options one per line ("值" or "值|显示名"); None when the values are not plain strings."""
    pairs = options(dict(schema))
    if not pairs or not all(isinstance(v, str) and "|" not in v and "\n" not in v for v, _ in pairs):
        return None
    return "\n".join(v if label == v else f"{v}|{label}" for v, label in pairs)


def _row_type(prop: Mapping[str, Any], ui: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The table type of a property and its column values, or ("raw", {}) when the table would lose something."""
    widget = ui.get("ui:widget")
    plain_ui = {k: v for k, v in ui.items() if k != "ui:widget"} if widget in ("hidden", "readonly") else ui
    kind = field_kind(dict(prop), dict(plain_ui))
    t = prop.get("type")
    extra: dict[str, str] = {}
    if kind in ("text", "email", "textarea") and t == "string":
        row_type = "textarea" if kind == "textarea" else "text"
        fmt = prop.get("format")
        pattern = prop.get("pattern")
        if fmt == "email" and pattern is None:
            extra["format"] = "email"
        elif fmt is None and pattern is not None:
            match = next((k for k, p in PATTERNS.items() if p == pattern), None)
            if match is None or row_type != "text":
                return "raw", {}
            extra["format"] = match
        elif fmt is not None or pattern is not None:
            return "raw", {}
        if "errorMessage" in prop and prop.get("errorMessage") != PATTERN_MESSAGES.get(extra.get("format", "")):
            return "raw", {}
        extra["min"], extra["max"] = _num_text(prop.get("minLength")), _num_text(prop.get("maxLength"))
    elif kind == "date" and t == "string" and prop.get("format") == "date":
        row_type = "date"
    elif kind in ("integer", "number") and t == kind:
        row_type = kind
        extra["min"], extra["max"] = _num_text(prop.get("minimum")), _num_text(prop.get("maximum"))
    elif kind in ("select", "radio") and t in ("string", None):
        text = _options_text(prop)
        if text is None:
            return "raw", {}
        row_type, extra["options"] = "radio", text
    elif kind == "multi" and t == "array":
        items = prop.get("items") or {}
        text = _options_text(items)
        if text is None or items.get("type") not in ("string", None) or set(items) - {"type", "enum", "enumNames",
                                                                                         "oneOf"}:
            return "raw", {}
        row_type, extra["options"] = "multi", text
        extra["min"], extra["max"] = _num_text(prop.get("minItems")), _num_text(prop.get("maxItems"))
    elif kind == "boolean" and t == "boolean":
        row_type = "boolean"
    else:
        return "raw", {}
    if set(prop) - {"type", "title", *KEEP_SCHEMA} - ALLOWED[row_type]:
        return "raw", {}
    return row_type, extra


def state_from_form(schema: Mapping[str, Any] | None, ui: Mapping[str, Any] | None, *, version: int = 0) -> EditorState:
    """The editor table for a stored form (empty for a new one)."""
    schema = dict(schema or {})
    ui = dict(ui or {})
    props = properties(schema)
    required = required_names(schema)
    rows = []
    for name in ordered(props, ui):
        prop, pui = props[name], sub_ui(ui, name)
        row_type, cols = _row_type(prop, pui)
        row = FieldRow(name=name, title=str(prop.get("title") or ""), type=row_type, required=name in required,
                       help=str(pui.get("ui:help") or ""))
        keep_ui = {k: v for k, v in pui.items() if k in KEEP_UI}
        if pui.get("ui:widget") in KEEP_WIDGETS:
            keep_ui["ui:widget"] = pui["ui:widget"]
        if row_type == "raw":
            row.raw = json.dumps(prop, ensure_ascii=False, indent=1)
            keep_ui.update({k: v for k, v in pui.items() if k not in ("ui:help",)})
            row.keep = json.dumps({"ui": keep_ui}, ensure_ascii=False) if keep_ui else ""
        else:
            row.format = cols.get("format", "")
            row.options = cols.get("options", "")
            row.min, row.max = cols.get("min", ""), cols.get("max", "")
            keep_schema = {k: prop[k] for k in KEEP_SCHEMA if k in prop}
            keep = {k: v for k, v in (("schema", keep_schema), ("ui", keep_ui)) if v}
            row.keep = json.dumps(keep, ensure_ascii=False) if keep else ""
        rows.append(row)
    top_schema = {k: v for k, v in schema.items()
                  if k not in ("title", "description", "type", "properties", "required", "$schema")}
    top_ui = {k: v for k, v in ui.items() if k.startswith("ui:") and k != "ui:order"}
    top = {k: v for k, v in (("schema", top_schema), ("ui", top_ui)) if v}
    return EditorState(title=str(schema.get("title") or ""), description=str(schema.get("description") or ""),
                       rows=rows, keep=json.dumps(top, ensure_ascii=False) if top else "", base_version=version)


# --------------------------------------------------------------------------------------------------------------
# posted table -> rows -> schema
# --------------------------------------------------------------------------------------------------------------

def state_from_formdata(formdata: Any) -> EditorState:
    """The editor table as posted (fields-<i>-<column>, rows in display order)."""
    def get(name: str) -> str:
        value = formdata.get(name)
        return "" if value is None else str(value)

    try:
        count = max(0, min(MAX_ROWS, int(get("row_count") or 0)))
    except ValueError:
        count = 0
    rows = []
    for i in range(count):
        p = f"fields-{i}-"
        rows.append(FieldRow(
            name=get(p + "name").strip(), title=get(p + "title").strip(), type=get(p + "type") or "text",
            required=get(p + "required") in ("1", "on", "true", "y"), format=get(p + "format"),
            options=get(p + "options").strip(), min=get(p + "min").strip(), max=get(p + "max").strip(),
            help=get(p + "help").strip(), raw=get(p + "raw").strip(), keep=get(p + "keep").strip(),
        ))
    try:
        base = int(get("base_version") or 0)
    except ValueError:
        base = 0
    return EditorState(title=get("title").strip(), description=get("description").strip(), rows=rows,
                       keep=get("keep").strip(), base_version=base, note=get("note").strip())


def apply_action(state: EditorState, action: str) -> EditorState:
    """Add / remove / move a row (the editor's buttons); nothing is stored.

    Raises ValidationFailed (on fields/<i>/name) when asked to remove a locked field."""
    verb, _, arg = action.partition(":")
    try:
        i = int(arg) if arg else -1
    except ValueError:
        i = -1
    rows = state.rows
    if verb == "add" and len(rows) < MAX_ROWS:
        rows.append(FieldRow())
    elif verb == "remove" and 0 <= i < len(rows):
        if rows[i].locked:
            row = rows[i]
            raise ValidationFailed({f"fields/{i}/name": services.locked_message(row.title or row.name, row.name,
                                                                                "remove")},
                                   message="系统必需的字段不能删除")
        rows.pop(i)
    elif verb == "up" and 0 < i < len(rows):
        rows[i - 1], rows[i] = rows[i], rows[i - 1]
    elif verb == "down" and 0 <= i < len(rows) - 1:
        rows[i + 1], rows[i] = rows[i], rows[i + 1]
    return state


def _load_keep(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _parse_options(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        value, _, label = line.partition("|")
        value, label = value.strip(), label.strip()
        out.append((value, label or value))
    return out


def _bound(text: str, *, whole: bool, non_negative: bool) -> int | float | None | str:
    """A min/max cell: None when empty, the number, or an error message."""
    if not text:
        return None
    try:
        number: int | float = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return "请填写数字"
        if whole:
            return "请填写整数"
    if non_negative and number < 0:
        return "不能为负数"
    return number


def build_schema(state: EditorState) -> tuple[dict[str, Any], dict[str, Any]]:
    """Schema + UI schema from the table. Raises ValidationFailed with errors on fields/<i>/<column>."""
    errors: dict[str, str] = {}
    if not state.title:
        errors["title"] = "请填写表单名称"
    rows = [(i, r) for i, r in enumerate(state.rows) if not r.is_blank()]
    if not rows:
        errors["fields"] = "表单至少需要一个字段"
    top = _load_keep(state.keep)
    schema: dict[str, Any] = {"$schema": SCHEMA_URI, "title": state.title}
    if state.description:
        schema["description"] = state.description
    schema["type"] = "object"
    schema.update({k: v for k, v in (top.get("schema") or {}).items()
                   if k not in ("title", "description", "type", "properties", "required", "$schema")})
    props: dict[str, Any] = {}
    required: list[str] = []
    ui: dict[str, Any] = {k: v for k, v in (top.get("ui") or {}).items() if k.startswith("ui:") and k != "ui:order"}
    order: list[str] = []
    seen: dict[str, int] = {}
    for i, row in rows:
        p = f"fields/{i}/"
        if not row.name:
            errors[p + "name"] = "请填写字段名"
        elif not NAME_RE.match(row.name):
            errors[p + "name"] = "字段名只能用英文字母、数字和下划线，以字母开头，最多 64 个字符"
        elif row.name in seen:
            errors[p + "name"] = f"字段名“{row.name}”与第 {seen[row.name] + 1} 行重复"
        else:
            seen[row.name] = i
        if not row.title:
            errors[p + "title"] = "请填写中文名称"
        elif len(row.title) > 64:
            errors[p + "title"] = "中文名称最多 64 个字符"
        if row.type not in FIELD_TYPES:
            errors[p + "type"] = "请选择字段类型"
            continue
        keep = _load_keep(row.keep)
        prop: dict[str, Any]
        if row.type == "raw":
            try:
                prop = json.loads(row.raw or "null")
            except json.JSONDecodeError as exc:
                errors[p + "raw"] = f"原定义不是合法的 JSON：{exc.msg}（第 {exc.lineno} 行）"
                continue
            if not isinstance(prop, dict):
                errors[p + "raw"] = "原定义应为 JSON 对象"
                continue
            prop["title"] = row.title
        else:
            prop = _typed_prop(row, p, errors)
            prop.update({k: v for k, v in (keep.get("schema") or {}).items() if k in KEEP_SCHEMA})
        field_ui: dict[str, Any] = {}
        if row.type == "textarea":
            field_ui["ui:widget"] = "textarea"
        for k, v in (keep.get("ui") or {}).items():
            if row.type == "raw" or k in KEEP_UI or (k == "ui:widget" and v in KEEP_WIDGETS):
                field_ui.setdefault(k, v)
        if row.help:
            field_ui["ui:help"] = row.help
        if row.name and row.name not in props:
            props[row.name] = prop
            order.append(row.name)
            if row.required:
                required.append(row.name)
            if field_ui:
                ui[row.name] = field_ui
    if errors:
        raise ValidationFailed(errors, message="字段表有误，未保存")
    schema["properties"] = props
    if required:
        schema["required"] = required
    ui["ui:order"] = order
    return schema, ui


def _typed_prop(row: FieldRow, p: str, errors: dict[str, str]) -> dict[str, Any]:
    prop: dict[str, Any] = {"title": row.title}
    lo_key, hi_key, whole, non_negative = {
        "text": ("minLength", "maxLength", True, True),
        "textarea": ("minLength", "maxLength", True, True),
        "number": ("minimum", "maximum", False, False),
        "integer": ("minimum", "maximum", True, False),
        "multi": ("minItems", "maxItems", True, True),
    }.get(row.type, ("", "", True, True))
    if row.type in ("text", "textarea"):
        prop["type"] = "string"
        if row.format == "date":
            prop["format"] = "date"
        elif row.format == "email":
            prop["format"] = "email"
        elif row.format in PATTERNS:
            prop["pattern"] = PATTERNS[row.format]
            prop["errorMessage"] = PATTERN_MESSAGES[row.format]
        elif row.format:
            errors[p + "format"] = "请选择列表中的格式"
    elif row.type in ("number", "integer"):
        prop["type"] = row.type
    elif row.type == "date":
        prop.update({"type": "string", "format": "date"})
    elif row.type == "boolean":
        prop["type"] = "boolean"
    elif row.type in ("radio", "multi"):
        pairs = _parse_options(row.options)
        values = [v for v, _ in pairs]
        if not pairs:
            errors[p + "options"] = "请填写选项，每行一个（可写成“值|显示名”）"
        elif any(not v for v in values):
            errors[p + "options"] = "选项的值不能为空"
        elif len(set(values)) != len(values):
            dup = next(v for v in values if values.count(v) > 1)
            errors[p + "options"] = f"选项“{dup}”重复"
        if all(v == label for v, label in pairs):
            choice: dict[str, Any] = {"type": "string", "enum": values}
        else:
            choice = {"type": "string", "oneOf": [{"const": v, "title": label} for v, label in pairs]}
        if row.type == "radio":
            prop.update(choice)
        else:
            prop.update({"type": "array", "items": choice, "uniqueItems": True})
    if lo_key:
        lo = _bound(row.min, whole=whole, non_negative=non_negative)
        hi = _bound(row.max, whole=whole, non_negative=non_negative)
        if isinstance(lo, str):
            errors[p + "min"] = lo
        if isinstance(hi, str):
            errors[p + "max"] = hi
        if isinstance(lo, int | float) and isinstance(hi, int | float) and lo > hi:
            errors[p + "max"] = "最大值不能小于最小值"
        if isinstance(lo, int | float):
            prop[lo_key] = lo
        if isinstance(hi, int | float):
            prop[hi_key] = hi
    elif row.min or row.max:
        errors[p + "min"] = "该类型不设最小/最大"
    return prop


def save(*, key: str, state: EditorState, actor: Any) -> tuple[FormTemplate, bool]:
    """Build and store the edited form as a new version; (row, saved?) — False when nothing changed.

    Raises ValidationFailed (table or schema problems) or Conflict when someone saved a newer version after
    this editor was opened. Flushes; audited through services.save_admin_version.
    """
    schema, ui = build_schema(state)
    current = _current_version(key)
    if current != state.base_version:
        raise Conflict(f"该表单已有人保存为第 {current} 版，请重新打开编辑器后再修改", current=current)
    before = current
    row = services.save_admin_version(key=key, schema=schema, ui=ui, actor=actor, note=state.note or None)
    return row, row.version != before


def _current_version(key: str) -> int:
    try:
        return services.get_form(key).version
    except NotFound:  # a form that does not exist yet is at version 0
        return 0
