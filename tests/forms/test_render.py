"""Server-side rendering: Chinese labels, stars, help, per-field errors, escaping, input kinds."""

from __future__ import annotations

import re

from markupsafe import Markup

from app.forms.services import FormDef, render


def _field(html: str, name: str) -> str:
    """The HTML of one field wrapper (div.form-field with data-field=name)."""
    m = re.search(rf'<div class="form-field[^"]*"[^>]*data-field="{re.escape(name)}".*?(?=<div class="form-field|'
                  rf"<fieldset|</fieldset>|$)", html, re.S)
    assert m, f"no field {name}"
    return m.group(0)


def test_render_returns_markup_with_labels_stars_help_and_ids(leave_form):
    html = render(leave_form)
    assert isinstance(html, Markup)
    reason = _field(html, "reason")
    assert '<label for="f-reason">请假事由<span class="required" title="必填">*</span></label>' in reason
    assert '<textarea rows="4" maxlength="500" placeholder="如：发热"' in reason
    assert 'name="reason"' in reason and 'id="f-reason"' in reason
    assert '<div class="help" id="f-reason-help">写明事由</div>' in reason
    assert 'class="required"' not in _field(html, "hours")


def test_fields_follow_ui_order(leave_form):
    names = re.findall(r'data-field="([^"]+)"', str(render(leave_form)))
    assert names[:4] == ["kind", "reason", "days", "hours"]


def test_input_kinds_follow_type_format_and_enum(leave_form):
    html = str(render(leave_form))
    assert re.search(r'<input type="number"[^>]*step="1"[^>]*min="1" max="30"[^>]*name="days"', html)
    assert re.search(r'<input type="date"[^>]*name="start"', html)
    assert re.search(r'<input type="email"[^>]*name="email"', html)
    kind = _field(html, "kind")
    assert '<select required id="f-kind" name="kind"' in kind
    assert '<option value="sick">病假</option><option value="annual">年假</option>' in kind
    assert '<option value="night">夜班</option>' in _field(html, "shift")
    notify = _field(html, "notify")
    assert notify.count('type="checkbox"') == 3 and 'name="notify" value="护士长"' in notify
    urgent = _field(html, "urgent")
    assert 'type="radio" id="f-urgent-0" name="urgent" value="true"' in urgent and "否" in urgent
    assert re.search(r'<textarea rows="6" placeholder="按 JSON 格式填写" class="json" id="f-items" name="items"', html)


def test_nested_object_renders_as_a_fieldset_with_dotted_names(leave_form):
    html = str(render(leave_form))
    assert '<fieldset class="form-fieldset" id="f-contact"><legend>代班人</legend>' in html
    assert 'id="f-contact-name" name="contact.name"' in html
    assert re.search(r'<input type="number"[^>]*id="f-contact-ward" name="contact.ward"', html)


def test_long_strings_get_a_textarea_and_widgets_are_honoured(leave_form):
    leave_form.schema["properties"]["note"] = {"type": "string", "title": "备注", "maxLength": 1000}
    leave_form.ui.update({"kind": {"ui:widget": "radio"}, "shift": {"ui:widget": "hidden"},
                          "email": {"ui:widget": "readonly"}, "urgent": {"ui:widget": "checkbox"}})
    html = str(render(leave_form, {"shift": "day", "email": "a@b.cn", "urgent": True}))
    assert re.search(r'<textarea[^>]*name="note"', html)
    assert 'type="radio" id="f-kind-0" name="kind" value="sick"' in html
    assert '<input type="hidden" name="shift" id="f-shift" value="day">' in html
    email = _field(html, "email")
    assert '<div class="field-value" id="f-email">a@b.cn</div>' in email
    assert '<input type="hidden" name="email" value="a@b.cn">' in email
    urgent = _field(html, "urgent")
    assert '<input type="hidden" name="urgent" value="false"><input type="checkbox" value="true" checked' in urgent


def test_values_are_filled_back(leave_form):
    data = {"reason": "发热", "days": 3, "kind": "annual", "notify": ["医务处"], "urgent": False,
            "contact": {"name": "王医生"}, "items": [{"code": "A"}]}
    html = str(render(leave_form, data))
    assert '<option value="annual" selected>年假</option>' in html
    assert re.search(r'value="医务处" checked', html) and not re.search(r'value="科主任" checked', html)
    assert 'value="false" checked' in _field(html, "urgent")
    assert re.search(r'name="contact.name"[^>]*>', html) and 'value="王医生"' in html
    assert "&#34;code&#34;: &#34;A&#34;" in html
    assert ">发热</textarea>" in html


def test_defaults_fill_a_fresh_form_only(leave_form):
    leave_form.schema["properties"]["days"]["default"] = 1
    assert 'value="1"' in _field(str(render(leave_form)), "days")
    assert 'value="1"' not in _field(str(render(leave_form, {})), "days")


def test_everything_is_escaped(leave_form):
    evil = '<script>alert("x")</script>'
    leave_form.schema["properties"]["reason"]["title"] = evil
    leave_form.schema["properties"]["kind"]["oneOf"][0]["title"] = evil
    leave_form.ui["reason"]["ui:help"] = evil
    leave_form.ui["reason"]["ui:placeholder"] = '"><b>'
    html = str(render(leave_form, {"reason": evil, "days": '"><img src=x>'},
                      [{"path": "reason", "message": evil}, {"path": "<x>", "message": evil}]))
    assert "<script>" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


def test_errors_show_under_their_field(leave_form):
    errors = [{"path": "days", "message": "“天数”应为整数"}, {"path": "contact/name", "message": "“姓名”为必填项"},
              {"path": "notify/0", "message": "请从列表中选择“通知对象”"},
              {"path": "items/1/code", "message": "“编码”为必填项"}]
    html = str(render(leave_form, {"days": "三"}, errors))
    days = _field(html, "days")
    assert days.startswith('<div class="form-field has-error"')
    assert '<div class="field-error" id="f-days-error" role="alert">“天数”应为整数</div>' in days
    assert 'aria-invalid="true"' in days and 'value="三"' in days and 'type="text"' in days
    assert "“姓名”为必填项" in _field(html, "contact.name")
    assert "请从列表中选择“通知对象”" in _field(html, "notify")
    assert "第 2 项：“编码”为必填项" in _field(html, "items")
    assert "field-error" not in _field(html, "reason")
    assert "form-errors" not in html


def test_errors_without_a_field_are_listed_on_top(leave_form):
    html = str(render(leave_form, errors={"": "至少填写一项", "ghost": "不允许的字段“ghost”"}))
    top = html.split("data-field=", 1)[0]
    assert "至少填写一项" in top and "不允许的字段“ghost”" in top


def test_readonly_shows_values_with_labels_and_no_inputs(leave_form):
    html = str(render(leave_form, {"kind": "sick", "shift": "night", "notify": ["科主任", "医务处"],
                                   "urgent": True, "contact": {"name": "王医生"}}, readonly=True))
    assert "<input" not in html and "<select" not in html and "<textarea" not in html
    assert '<div class="field-value" id="f-kind">病假</div>' in html
    assert ">夜班<" in html and ">科主任、医务处<" in html and ">是<" in html and ">王医生<" in html
    assert 'class="required"' not in html


def test_a_form_without_properties_renders_empty():
    assert "data-field" not in str(render(FormDef("x", 1, {"type": "object"})))


def test_datetime_values_show_as_beijing_wall_clock():
    form = FormDef("t", 1, {"type": "object", "properties": {
        "at": {"type": "string", "format": "date-time", "title": "时间"}}})
    html = str(render(form, {"at": "2024-05-01T00:30:00Z"}))
    assert 'type="datetime-local" value="2024-05-01T08:30"' in html


def test_flat_form_encoded_data_is_echoed_back(leave_form):
    html = str(render(leave_form, {"contact.name": "王医生", "days": "三", "notify": "医务处"}))
    assert 'value="王医生"' in _field(html, "contact.name")
    assert 'value="三"' in _field(html, "days")
    assert 'value="医务处" checked' in _field(html, "notify")
