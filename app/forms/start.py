"""Start forms: the application form that opens a business flow, kept as an office-editable template.

A domain service takes the latest template (`start_form`), types and checks a submission against it (`check`),
keeps its own business checks, maps the fields it knows to its columns and stores the rest (`extra`) with the
template version on its row (`StartFormMixin` in app.forms.models). Pages render the form with the choices a
template cannot hold (departments, catalogue items) through `render`, and a row's stored extra fields read-only,
from the version it was submitted with, through `stored_html` (the Jinja global `start_form_extras`).

Invariants:
- a submission is checked against exactly one template version, and that version is what the row records;
- fields a service maps to a required column carry `ui:locked` in the UI schema, which the editor and
  services.save_admin_version refuse to remove, un-require or retype.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from markupsafe import Markup

from app.errors import NotFound
from app.forms import services
from app.forms.render import ErrorsIn, render_form
from app.forms.schema import SCALAR_TYPES, FormDef, field_kind, json_type, properties, required_names, sub_ui

__all__ = ["start_form", "coerce", "check", "merge_errors", "extra", "with_choices", "without", "initial",
           "render", "stored_html", "LOCK"]

LOCK = "ui:locked"
# the same "absent" marker and text parsing as form-encoded submissions
_MISSING: Any = services._MISSING


def start_form(key: str) -> FormDef:
    """The latest version of a start form (the shipped file is stored on first use). Raises NotFound."""
    return services.get_form(key)


def _coerce_value(schema: Mapping[str, Any], value: Any) -> Any:
    """A JSON-like value typed per its property: text parsed like a form field, typed values kept as they are."""
    if value is None:
        return _MISSING
    if isinstance(value, datetime | date):
        value = value.isoformat()
    if json_type(dict(schema)) == "array":
        items = schema.get("items")
        items = items if isinstance(items, Mapping) else {}
        seq = value if isinstance(value, list | tuple) else [value]
        out = [v for v in (_coerce_value(items, x) for x in seq) if v is not _MISSING]
        return out or _MISSING
    if isinstance(value, str):
        return services._scalar(schema, value)
    return value


def coerce(form: FormDef, data: Any) -> dict[str, Any]:
    """Typed values of the form's fields from a form-encoded submission (a MultiDict) or a JSON-like dict.

    Empty text and empty lists are left out; text that does not parse stays text so validation names its field;
    keys that are not fields of the form are dropped.
    """
    if hasattr(data, "getlist"):
        return _form_encoded(form, data)
    out: dict[str, Any] = {}
    if not isinstance(data, Mapping):
        return out
    for name, prop in properties(form.schema).items():
        if name in data:
            value = _coerce_value(prop, data[name])
            if value is not _MISSING:
                out[name] = value
    return out


def _form_encoded(form: FormDef, formdata: Any) -> dict[str, Any]:
    """parse_submission, except that a list of scalars whose choices come at render time (with_choices) is read
    from its repeated inputs (checkboxes), which the stored template alone would take for JSON text."""
    out = services.parse_submission(form, formdata)
    for name, prop in properties(form.schema).items():
        items = prop.get("items")
        if json_type(prop) != "array" or not isinstance(items, Mapping) or json_type(dict(items)) not in SCALAR_TYPES:
            continue
        if field_kind(prop, sub_ui(form.ui, name)) != "json":
            continue  # a choice list: parse_submission reads it already
        texts = [str(v) for v in formdata.getlist(name) + formdata.getlist(f"{name}[]")]
        if len(texts) == 1 and texts[0].strip().startswith("["):
            continue  # JSON text typed into the box
        value = _coerce_value(prop, texts)
        if value is _MISSING:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def check(form: FormDef, data: Any, *, defaults: Mapping[str, Any] | None = None
          ) -> tuple[dict[str, Any], dict[str, str]]:
    """(typed values, errors by field path) of a submission against the form; `defaults` fill absent fields.

    Errors are Chinese, one per path, in form field order; {} when the values pass the template. Pure apart from
    reading nothing: the caller supplies the form (so it knows the version it checked against).
    """
    values = coerce(form, data)
    for name, value in (defaults or {}).items():
        if name not in values and value is not None:
            values[name] = value
    errors: dict[str, str] = {}
    for item in services.validation_errors(form, values):
        errors.setdefault(item["path"], item["message"])
    return values, errors


def merge_errors(template: Mapping[str, str], business: Mapping[str, str]) -> dict[str, str]:
    """The template's errors, then the business checks' for paths the template did not already report."""
    out = dict(template)
    for path, message in business.items():
        out.setdefault(path, message)
    return out


def extra(form: FormDef, values: Mapping[str, Any], known: Iterable[str]) -> dict[str, Any]:
    """The values of the form's fields that a service does not map to its own columns (stored as form_data)."""
    skip = set(known)
    return {name: values[name] for name in properties(form.schema) if name in values and name not in skip}


def with_choices(form: FormDef, choices: Mapping[str, Iterable[tuple[Any, str]]]) -> FormDef:
    """A copy of the form whose named fields offer these (value, label) choices (a select, or checkboxes for a
    list field). Only for rendering: the service checks the value itself (catalogue lookups, scope)."""
    schema = copy.deepcopy(form.schema)
    props = schema.get("properties") or {}
    for name, pairs in choices.items():
        prop = props.get(name)
        if not isinstance(prop, dict):
            continue
        branches = [{"const": value, "title": str(label)} for value, label in pairs]
        target = prop
        if json_type(prop) == "array":
            items = prop.get("items")
            target = items if isinstance(items, dict) else {}
            prop["items"] = target
        for keyword in ("enum", "enumNames", "anyOf"):
            target.pop(keyword, None)
        if branches:
            target["oneOf"] = branches
        else:
            target.pop("oneOf", None)
    return FormDef(key=form.key, version=form.version, schema=schema, ui=form.ui)


def without(form: FormDef, names: Iterable[str]) -> FormDef:
    """A copy of the form without these fields, for a page that draws them itself (a catalogue table) or keeps
    them from a user (an office-only field). Only for rendering: the service checks the whole submission."""
    drop = set(names)
    schema = copy.deepcopy(form.schema)
    schema["properties"] = {k: v for k, v in (schema.get("properties") or {}).items() if k not in drop}
    if isinstance(schema.get("required"), list):
        schema["required"] = [n for n in schema["required"] if n not in drop]
    ui = {k: copy.deepcopy(v) for k, v in form.ui.items() if k not in drop}
    if isinstance(ui.get("ui:order"), list):
        ui["ui:order"] = [n for n in ui["ui:order"] if n not in drop]
    return FormDef(key=form.key, version=form.version, schema=schema, ui=ui)


def initial(form: FormDef, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The schema's default values overlaid with the given ones (what a blank form shows)."""
    out = {name: copy.deepcopy(prop["default"]) for name, prop in properties(form.schema).items() if "default" in prop}
    out.update({k: v for k, v in (values or {}).items() if v is not None})
    return out


def render(form: FormDef, data: Mapping[str, Any] | None = None, errors: ErrorsIn = None, *,
           choices: Mapping[str, Iterable[tuple[Any, str]]] | None = None) -> Markup:
    """The form's fields as HTML with choices filled in; errors on paths outside the form's fields are left to
    the page (its error summary), so they are not listed twice."""
    shown = with_choices(form, choices) if choices else form
    names = set(properties(form.schema))
    kept: list[dict[str, str]] = []
    if isinstance(errors, Mapping):
        items = [{"path": str(p), "message": str(m)} for p, m in errors.items()]
    else:
        items = [{"path": str(e.get("path") or ""), "message": str(e.get("message") or "")} for e in errors or []]
    for item in items:
        if item["path"].strip("/").split("/", 1)[0] in names:
            kept.append(item)
    return render_form(shown, data, kept)


def stored_html(row: Any) -> Markup:
    """A row's extra start-form fields, read-only, rendered from the template version it was submitted with;
    empty when the row has none (no version recorded, or every field of that version maps to a column)."""
    key = getattr(row, "FORM_KEY", None)
    version = getattr(row, "form_version", None)
    if not key or not version:
        return Markup("")
    try:
        form = services.get_form(str(key), int(version))
    except NotFound:
        return Markup("")
    known = set(getattr(row, "FORM_COLUMNS", ()))
    props = {name: prop for name, prop in properties(form.schema).items() if name not in known}
    if not props:
        return Markup("")
    schema = {k: v for k, v in form.schema.items() if k not in ("properties", "required")}
    schema["properties"] = props
    required = [n for n in required_names(form.schema) if n in props]
    if required:
        schema["required"] = required
    subset = FormDef(key=form.key, version=form.version, schema=schema, ui=form.ui)
    data = getattr(row, "form_data", None) or {}
    return render_form(subset, data if isinstance(data, Mapping) else {}, readonly=True)
