"""What a form is once loaded (FormDef), and how a property schema maps to a kind of field.

Shared by rendering, parsing of submissions and the admin editor, so that all three agree on which input a
property gets and how its submitted text becomes typed data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCALAR_TYPES = ("string", "integer", "number", "boolean")

# input widgets the UI schema may ask for
WIDGETS = ("text", "textarea", "select", "radio", "checkbox", "checkboxes", "date", "hidden", "readonly")

# strings longer than this get a textarea even without ui:widget
TEXTAREA_OVER = 200


@dataclass
class FormDef:
    key: str
    version: int
    schema: dict[str, Any]
    ui: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return str(self.schema.get("title") or self.key)

    @property
    def description(self) -> str:
        return str(self.schema.get("description") or "")


def json_type(schema: dict[str, Any]) -> str:
    """The main JSON type of a property schema (first non-null of a type list; inferred from enum/const)."""
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    if isinstance(t, str):
        return t
    values = list(schema.get("enum") or [])
    values += [o.get("const") for o in choice_branches(schema)]
    if "const" in schema:
        values.append(schema["const"])
    for v in values:
        if isinstance(v, bool):
            return "boolean"
        if isinstance(v, int):
            return "integer"
        if isinstance(v, float):
            return "number"
        if isinstance(v, str):
            return "string"
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def choice_branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """oneOf/anyOf branches that are all `{"const": …, "title": …}`: the labelled-choice idiom."""
    for keyword in ("oneOf", "anyOf"):
        branches = schema.get(keyword)
        if isinstance(branches, list) and branches and all(isinstance(b, dict) and "const" in b for b in branches):
            return branches
    return []


def options(schema: dict[str, Any]) -> list[tuple[Any, str]]:
    """(value, Chinese label) pairs of a choice property: enum (+ enumNames) or oneOf/anyOf const+title."""
    if isinstance(schema.get("enum"), list):
        values = schema["enum"]
        names = schema.get("enumNames")
        if not isinstance(names, list) or len(names) != len(values):
            names = [None] * len(values)
        return [(v, str(n) if n is not None else display(v)) for v, n in zip(values, names, strict=True)]
    return [(b["const"], str(b.get("title") or display(b["const"]))) for b in choice_branches(schema)]


def display(value: Any) -> str:
    if value is True:
        return "是"
    if value is False:
        return "否"
    if value is None:
        return ""
    return str(value)


def is_choice(schema: dict[str, Any]) -> bool:
    return bool(options(schema))


def field_kind(schema: dict[str, Any], ui: dict[str, Any] | None = None) -> str:
    """The kind of input a property gets.

    One of: hidden, readonly, select, radio, multi, boolean, integer, number, date, datetime, time, email,
    textarea, text, object (one nested level), json (anything deeper, edited as JSON text).
    """
    ui = ui or {}
    widget = ui.get("ui:widget")
    if widget in ("hidden", "readonly"):
        return str(widget)
    t = json_type(schema)
    if t == "array":
        items = schema.get("items")
        if isinstance(items, dict) and is_choice(items) and json_type(items) in SCALAR_TYPES:
            return "multi"
        return "json"
    if t == "object":
        return "object"
    if is_choice(schema) and t in SCALAR_TYPES:
        return "radio" if widget == "radio" else "select"
    if t == "boolean":
        return "boolean"
    if t in ("integer", "number"):
        return t
    if t == "string":
        fmt = schema.get("format")
        if widget == "date" or fmt == "date":
            return "date"
        if fmt == "date-time":
            return "datetime"
        if fmt == "time":
            return "time"
        if widget == "textarea":
            return "textarea"
        if fmt == "email":
            return "email"
        if isinstance(schema.get("maxLength"), int) and schema["maxLength"] > TEXTAREA_OVER:
            return "textarea"
        return "text"
    return "json"


def ordered(properties: dict[str, Any], ui: dict[str, Any] | None) -> list[str]:
    """Property names in ui:order order; "*" stands for the rest, which otherwise go last."""
    names = list(properties)
    order = (ui or {}).get("ui:order")
    if not isinstance(order, list):
        return names
    picked = [n for n in order if isinstance(n, str) and n in properties]
    rest = [n for n in names if n not in picked]
    if "*" in order:
        out: list[str] = []
        for n in order:
            if n == "*":
                out += rest
            elif n in properties and n not in out:
                out.append(n)
        return out
    seen: list[str] = []
    for n in picked:
        if n not in seen:
            seen.append(n)
    return seen + rest


def sub_ui(ui: dict[str, Any] | None, name: str) -> dict[str, Any]:
    value = (ui or {}).get(name)
    return value if isinstance(value, dict) else {}


def required_names(schema: dict[str, Any]) -> set[str]:
    req = schema.get("required")
    return {r for r in req if isinstance(r, str)} if isinstance(req, list) else set()


def properties(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    props = schema.get("properties")
    if not isinstance(props, dict):
        return {}
    return {k: v for k, v in props.items() if isinstance(v, dict)}
