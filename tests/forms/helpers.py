"""Helpers for the office-editable start-form tests: adding a field as the office would, reading pages back."""

from __future__ import annotations

import html as htmllib
import re
from typing import Any

from app.forms import editor
from app.forms import services as forms


def add_field(key: str, actor, **row: Any):
    """Add a field to the latest template through the form editor, as the office would."""
    form = forms.get_form(key)
    state = editor.state_from_form(form.schema, form.ui, version=form.version)
    state.rows.append(editor.FieldRow(**row))
    saved, changed = editor.save(key=key, state=state, actor=actor)
    assert changed
    return saved


def page_text(html: str) -> str:
    """A page's text without its tags, entities unescaped."""
    return htmllib.unescape(re.sub(r"<[^>]+>", " ", html))


def field_error(page: str, path: str) -> str | None:
    """The message shown on the field itself (the template's per-field error box)."""
    found = re.search(rf'<div class="form-field has-error[^"]*"[^>]*data-field="{path}".*?'
                      rf'<div class="field-error" id="f-{path}-error" role="alert">([^<]*)</div>', page, re.S)
    return htmllib.unescape(found.group(1)) if found else None
