"""Server-side HTML for a form's fields: Chinese labels, required stars, help text, one error list per field.

Every piece of text (titles, help, values, option labels, error messages) goes through `escape`; the output is
returned as Markup so templates insert it as is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from markupsafe import Markup, escape

from app.forms.schema import (
    FormDef,
    display,
    field_kind,
    json_type,
    options,
    ordered,
    properties,
    required_names,
    sub_ui,
)

_STAR = '<span class="required" title="必填">*</span>'

ErrorsIn = Mapping[str, Any] | Iterable[Mapping[str, Any]] | None


def _attrs(**attrs: Any) -> str:
    """HTML attributes; None/False are left out, True is written bare, names ending in _ lose it (class_)."""
    out = []
    for name, value in attrs.items():
        name = name.rstrip("_").replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(f" {name}")
        else:
            out.append(f' {name}="{escape(value)}"')
    return "".join(out)


def token(value: Any) -> str:
    """The form-encoded text of a value (what an <option value> or a text box carries)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _is_number_text(text: str) -> bool:
    if text == "":
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _beijing_minutes(text: str) -> str:
    """An RFC 3339 time as <input type=datetime-local> wants it: Beijing wall clock to the minute."""
    from datetime import datetime

    from app.core.timefmt import SHANGHAI

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if moment.tzinfo is not None:
        moment = moment.astimezone(SHANGHAI)
    return moment.strftime("%Y-%m-%dT%H:%M")


def errors_by_path(errors: ErrorsIn) -> dict[str, list[str]]:
    """Normalise errors (list of {"path", "message"} or {path: message}) to path -> messages."""
    out: dict[str, list[str]] = {}
    if not errors:
        return out
    items: Iterable[tuple[str, Any]]
    if isinstance(errors, Mapping):
        items = errors.items()
    else:
        items = ((str(e.get("path") or ""), e.get("message")) for e in errors)
    for path, message in items:
        messages = message if isinstance(message, list) else [message]
        out.setdefault(str(path or "").strip("/"), []).extend(str(m) for m in messages if m)
    return out


class _Renderer:
    def __init__(self, form: FormDef, data: Mapping[str, Any] | None, errors: ErrorsIn, readonly: bool) -> None:
        self.form = form
        self.use_defaults = data is None
        self.data = data or {}
        self.readonly = readonly
        self.errors = errors_by_path(errors)
        self.shown: set[str] = set()

    # error lookup -------------------------------------------------------------------------------------------
    def _claim(self, field_path: str, *, exact: bool = False) -> list[str]:
        """Messages for a field: its own path and (unless exact) anything below it (items/0, items/0/code)."""
        out = []
        for path, messages in self.errors.items():
            if path in self.shown:
                continue
            if path == field_path:
                out.extend(messages)
            elif not exact and path.startswith(field_path + "/"):
                # "items/0/code" under the items field: say which entry
                first = path[len(field_path) + 1:].split("/", 1)[0]
                where = f"第 {int(first) + 1} 项：" if first.isdigit() and "/" in path[len(field_path) + 1:] else ""
                out.extend(where + m for m in messages)
            else:
                continue
            self.shown.add(path)
        return out

    # entry --------------------------------------------------------------------------------------------------
    def render(self) -> Markup:
        schema, ui = self.form.schema, self.form.ui
        props = properties(schema)
        required = required_names(schema)
        parts: list[str] = []
        # nested fields claim their own errors before their fieldset claims the rest
        body = []
        for name in ordered(props, ui):
            prop, pui = props[name], sub_ui(ui, name)
            if field_kind(prop, pui) == "object":
                body.append(self._fieldset(name, prop, pui, name in required))
            else:
                value, present = self._value(self.data, name, prop)
                body.append(self._field(name, name, prop, pui, value, present, name in required))
        leftovers = [m for path, messages in self.errors.items() if path not in self.shown for m in messages]
        if leftovers:
            parts.append('<div class="form-errors errors" role="alert"><ul>')
            parts += [f"<li>{escape(m)}</li>" for m in leftovers]
            parts.append("</ul></div>")
        parts += body
        cls = "form-fields readonly" if self.readonly else "form-fields"
        return Markup(f'<div class="{cls}"{_attrs(data_form=self.form.key)}>' + "".join(parts) + "</div>")

    def _value(self, data: Mapping[str, Any], name: str, prop: dict[str, Any]) -> tuple[Any, bool]:
        if isinstance(data, Mapping) and name in data:
            return data[name], True
        if self.use_defaults and "default" in prop:
            return prop["default"], True
        return None, False

    # pieces -------------------------------------------------------------------------------------------------
    @staticmethod
    def _label(title: str, required: bool, *, for_: str | None = None, id_: str | None = None,
               tag: str = "label") -> str:
        star = _STAR if required else ""
        return f"<{tag}{_attrs(for_=for_, id=id_)}>{escape(title)}{star}</{tag}>"

    @staticmethod
    def _help(dom_id: str, prop: dict[str, Any], ui: dict[str, Any]) -> tuple[str, str | None]:
        texts = [t for t in (prop.get("description"), ui.get("ui:help")) if t]
        if not texts:
            return "", None
        inner = "<br>".join(str(escape(t)) for t in texts)
        return f'<div class="help" id="{escape(dom_id)}-help">{inner}</div>', f"{dom_id}-help"

    @staticmethod
    def _error_html(dom_id: str, messages: list[str]) -> str:
        if not messages:
            return ""
        inner = "；".join(str(escape(m)) for m in messages)
        return f'<div class="field-error" id="{escape(dom_id)}-error" role="alert">{inner}</div>'

    def _fieldset(self, name: str, schema: dict[str, Any], ui: dict[str, Any], required: bool) -> str:
        dom_id = f"f-{name}"
        data = self.data.get(name) if isinstance(self.data, Mapping) else None
        if not isinstance(data, Mapping):
            data = {}
        sub_required = required_names(schema)
        props = properties(schema)
        inner = []
        for sub in ordered(props, ui):
            prop, pui = props[sub], sub_ui(ui, sub)
            value, present = self._value(data, sub, prop)
            if not present and isinstance(self.data, Mapping) and f"{name}.{sub}" in self.data:
                # flat form-encoded data echoed back as is ({"contact.name": …})
                value, present = self.data[f"{name}.{sub}"], True
            if not present and self.use_defaults and isinstance(schema.get("default"), Mapping):
                value, present = schema["default"].get(sub), sub in schema["default"]
            inner.append(self._field(f"{name}.{sub}", f"{name}/{sub}", prop, pui, value, present,
                                     sub in sub_required, nested=True))
        own_errors = self._claim(name)
        help_html, _ = self._help(dom_id, schema, ui)
        cls = "form-fieldset has-error" if own_errors else "form-fieldset"
        legend = self._label(str(schema.get("title") or name), required, tag="legend")
        return (f'<fieldset class="{cls}" id="{escape(dom_id)}">{legend}{help_html}'
                f"{self._error_html(dom_id, own_errors)}{''.join(inner)}</fieldset>")

    def _field(self, field_name: str, path: str, prop: dict[str, Any], ui: dict[str, Any], value: Any,
               present: bool, required: bool, *, nested: bool = False) -> str:
        dom_id = "f-" + field_name.replace(".", "-")
        kind = field_kind(prop, ui)
        if nested and kind == "object":
            kind = "json"  # one nested level is rendered as fields; deeper ones as JSON text
        messages = self._claim(path)
        title = str(prop.get("title") or field_name.rsplit(".", 1)[-1])
        if kind == "hidden":
            return "" if self.readonly else self._hidden_inputs(field_name, prop, value, present, dom_id)
        help_html, help_id = self._help(dom_id, prop, ui)
        described = " ".join(x for x in (help_id, f"{dom_id}-error" if messages else None) if x) or None
        cls = "form-field has-error" if messages else "form-field"
        if self.readonly or kind == "readonly":
            shown = self._display(prop, value if present else None)
            control = f'<div class="field-value"{_attrs(id=dom_id)}>{escape(shown) or "—"}</div>'
            if kind == "readonly" and not self.readonly:
                control += self._hidden_inputs(field_name, prop, value, present, None)
            label = self._label(title, required and not self.readonly, id_=f"{dom_id}-label")
            return (f'<div class="{cls} readonly"{_attrs(data_field=field_name)}>{label}{control}'
                    f"{help_html}{self._error_html(dom_id, messages)}</div>")
        common = {"aria_invalid": "true" if messages else None, "aria_describedby": described}
        group = kind in ("radio", "multi") and ui.get("ui:widget") != "select"
        if kind == "boolean" and ui.get("ui:widget") not in ("checkbox", "select"):
            group = True
        if group:
            label = self._label(title, required, id_=f"{dom_id}-label")
            control = self._group(kind, field_name, dom_id, prop, value, present, common)
            attrs = _attrs(id=dom_id, aria_labelledby=f"{dom_id}-label", data_field=field_name)
            return (f'<div class="{cls}" role="group"{attrs}>'
                    f"{label}{control}{help_html}{self._error_html(dom_id, messages)}</div>")
        control = self._control(kind, field_name, dom_id, prop, ui, value, present, required, common)
        if kind == "boolean" and ui.get("ui:widget") == "checkbox":
            # the box sits inside its label; the title carries the star
            star = _STAR if required else ""
            return (f'<div class="{cls}"{_attrs(data_field=field_name)}>'
                    f"<label{_attrs(for_=dom_id)}>{control} {escape(title)}{star}</label>"
                    f"{help_html}{self._error_html(dom_id, messages)}</div>")
        label = self._label(title, required, for_=dom_id)
        return (f'<div class="{cls}"{_attrs(data_field=field_name)}>{label}{control}{help_html}'
                f"{self._error_html(dom_id, messages)}</div>")

    def _hidden_inputs(self, field_name: str, prop: dict[str, Any], value: Any, present: bool,
                       dom_id: str | None) -> str:
        if not present or value is None:
            return f'<input type="hidden"{_attrs(name=field_name, id=dom_id, value="")}>'
        if isinstance(value, list) and json_type(prop) == "array" and field_kind(prop) == "multi":
            return "".join(f'<input type="hidden"{_attrs(name=field_name, value=token(v))}>' for v in value)
        return f'<input type="hidden"{_attrs(name=field_name, id=dom_id, value=token(value))}>'

    def _display(self, prop: dict[str, Any], value: Any) -> str:
        if value is None:
            return ""
        kind = field_kind(prop)
        if kind in ("select", "radio"):
            labels = {token(v): label for v, label in options(prop)}
            return labels.get(token(value), display(value))
        if kind == "multi" and isinstance(value, list):
            items = prop.get("items") or {}
            labels = {token(v): label for v, label in options(items)}
            return "、".join(labels.get(token(v), display(v)) for v in value)
        if isinstance(value, dict | list):
            return json.dumps(value, ensure_ascii=False, indent=2)
        return display(value)

    def _group(self, kind: str, field_name: str, dom_id: str, prop: dict[str, Any], value: Any, present: bool,
               common: dict[str, Any]) -> str:
        if kind == "multi":
            opts = options(prop.get("items") or {})
            chosen = {token(v) for v in value} if isinstance(value, list) else ({token(value)} if present else set())
            input_type = "checkbox"
        elif kind == "boolean":
            opts = [(True, "是"), (False, "否")]
            chosen = {token(value)} if present else set()
            input_type = "radio"
        else:
            opts = options(prop)
            chosen = {token(value)} if present and value is not None else set()
            input_type = "radio"
        out = ['<div class="choices">']
        for i, (v, label) in enumerate(opts):
            oid = f"{dom_id}-{i}"
            attrs = _attrs(type=input_type, id=oid, name=field_name, value=token(v), checked=token(v) in chosen,
                           **common)
            out.append(f'<label class="choice"{_attrs(for_=oid)}><input{attrs}> {escape(label)}</label>')
        out.append("</div>")
        return "".join(out)

    def _control(self, kind: str, field_name: str, dom_id: str, prop: dict[str, Any], ui: dict[str, Any],
                 value: Any, present: bool, required: bool, common: dict[str, Any]) -> str:
        placeholder = ui.get("ui:placeholder")
        text = token(value) if present and value is not None else ""
        base = {"id": dom_id, "name": field_name, **common}
        if kind in ("select", "radio", "multi", "boolean"):
            multiple = kind == "multi"
            if kind == "boolean":
                opts = [(True, "是"), (False, "否")]
            else:
                opts = options(prop.get("items") or {}) if multiple else options(prop)
            if kind == "boolean" and ui.get("ui:widget") == "checkbox":
                # unchecked boxes send nothing: the hidden "false" comes first, a ticked box's "true" wins
                return (f'<input type="hidden"{_attrs(name=field_name, value="false")}>'
                        f'<input type="checkbox"{_attrs(value="true", checked=present and value is True, **base)}>')
            if multiple:
                chosen = {token(v) for v in value} if isinstance(value, list) else set()
            else:
                chosen = {text} if text else set()
            out = [f"<select{_attrs(multiple=multiple, required=required and not multiple, **base)}>"]
            if not multiple:
                out.append(f'<option value="">{escape(placeholder or "请选择")}</option>')
            for v, label in opts:
                out.append(f"<option{_attrs(value=token(v), selected=token(v) in chosen)}>{escape(label)}</option>")
            out.append("</select>")
            return "".join(out)
        if kind in ("textarea", "json"):
            if kind == "json" and present and not isinstance(value, str) and value is not None:
                text = json.dumps(value, ensure_ascii=False, indent=2)
            rows = 6 if kind == "json" else 4
            if kind == "json" and not placeholder:
                placeholder = "按 JSON 格式填写"
            maxlength = prop.get("maxLength") if kind == "textarea" else None
            cls = "json" if kind == "json" else None
            attrs = _attrs(rows=rows, maxlength=maxlength, placeholder=placeholder, class_=cls, required=required,
                           **base)
            return f"<textarea{attrs}>{escape(text)}</textarea>"
        if kind in ("integer", "number"):
            step = "1" if kind == "integer" else "any"
            lo = prop.get("minimum", prop.get("exclusiveMinimum"))
            hi = prop.get("maximum", prop.get("exclusiveMaximum"))
            # text that is not a number is shown back as typed (a number box would blank it)
            shown_type = "number" if _is_number_text(text) else "text"
            attrs = _attrs(type=shown_type, value=text, step=step if shown_type == "number" else None, min=lo,
                           max=hi, placeholder=placeholder, required=required, inputmode="decimal", **base)
            return f"<input{attrs}>"
        input_type = {"date": "date", "datetime": "datetime-local", "time": "time", "email": "email"}.get(kind, "text")
        if kind == "datetime" and text:
            text = _beijing_minutes(text)
        attrs = _attrs(type=input_type, value=text, maxlength=prop.get("maxLength"), placeholder=placeholder,
                       required=required, **base)
        return f"<input{attrs}>"


def render_form(form: FormDef, data: Mapping[str, Any] | None = None, errors: ErrorsIn = None,
                readonly: bool = False) -> Markup:
    """The fields of a form as HTML (no <form> tag, no buttons, no CSRF token: the page supplies those)."""
    return _Renderer(form, data, errors, readonly).render()
