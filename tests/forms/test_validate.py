"""Validation: Chinese messages on slash-joined paths; parsing of form-encoded submissions."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import MultiDict

from app.errors import ValidationFailed
from app.forms.services import FormDef, parse_submission, validate, validation_errors

VALID = {"reason": "发热就诊", "days": 2, "start": "2024-05-01", "kind": "sick"}


def _errors(form: FormDef, data: dict) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as exc:
        validate(form, data)
    return {e["path"]: e["message"] for e in exc.value.errors}


def test_valid_data_comes_back_unchanged(leave_form):
    data = dict(VALID, notify=["科主任"], urgent=False, contact={"name": "王医生"})
    assert validate(leave_form, data) is data


def test_missing_required_fields_are_reported_on_their_own_path(leave_form):
    errors = _errors(leave_form, {"kind": "sick"})
    assert errors == {"reason": "“请假事由”为必填项", "days": "“天数”为必填项", "start": "“开始日期”为必填项"}


def test_errors_follow_the_form_order(leave_form):
    with pytest.raises(ValidationFailed) as exc:
        validate(leave_form, {})
    assert [e["path"] for e in exc.value.errors] == ["kind", "reason", "days", "start"]


def test_nested_errors_use_slash_joined_paths(leave_form):
    errors = _errors(leave_form, dict(VALID, contact={"ward": "三"}, items=[{"code": "A"}, {}]))
    assert errors["contact/name"] == "“姓名”为必填项"
    assert errors["contact/ward"] == "“病区”应为整数"
    assert errors["items/1/code"] == "“编码”为必填项"
    assert "items/0/code" not in errors


@pytest.mark.parametrize(("patch", "path", "message"), [
    ({"reason": "热"}, "reason", "“请假事由”至少 2 个字符"),
    ({"reason": "长" * 501}, "reason", "“请假事由”最多 500 个字符"),
    ({"days": 0}, "days", "“天数”不能小于 1"),
    ({"days": 31}, "days", "“天数”不能大于 30"),
    ({"days": 1.5}, "days", "“天数”应为整数"),
    ({"hours": 0}, "hours", "“折合小时”必须大于 0"),
    ({"kind": "other"}, "kind", "请从列表中选择“类别”"),
    ({"shift": "evening"}, "shift", "请从列表中选择“班次”"),
    ({"start": "2024-02-30"}, "start", "“开始日期”应为有效的日期（如 2024-05-01）"),
    ({"start": "20240501"}, "start", "“开始日期”应为有效的日期（如 2024-05-01）"),
    ({"email": "zhang.at.hospital"}, "email", "“电子邮箱”应为有效的电子邮箱地址"),
    ({"mobile": "12345"}, "mobile", "“手机号”格式不正确"),
    ({"notify": []}, "notify", "“通知对象”至少选择 1 项"),
    ({"notify": ["科主任", "科主任"]}, "notify", "“通知对象”中有重复的项"),
    ({"notify": ["院长"]}, "notify/0", "请从列表中选择“通知对象”"),
    ({"urgent": "是"}, "urgent", "“是否紧急”应为“是”或“否”"),
])
def test_common_keywords_get_chinese_messages(leave_form, patch, path, message):
    assert _errors(leave_form, dict(VALID, **patch)) == {path: message}


def test_additional_properties_are_kept_unless_the_schema_forbids_them(leave_form):
    assert validate(leave_form, dict(VALID, extra=1))["extra"] == 1
    leave_form.schema["additionalProperties"] = False
    assert _errors(leave_form, dict(VALID, extra=1)) == {"extra": "不允许的字段“extra”"}


def test_a_schema_may_word_its_own_pattern_message(leave_form):
    leave_form.schema["properties"]["mobile"]["errorMessage"] = "请填写 11 位手机号"
    assert _errors(leave_form, dict(VALID, mobile="1")) == {"mobile": "请填写 11 位手机号"}


def test_validation_failed_carries_a_chinese_summary(leave_form):
    with pytest.raises(ValidationFailed) as exc:
        validate(leave_form, {})
    assert exc.value.status == 400 and "请假申请" in exc.value.message


# parsing --------------------------------------------------------------------------------------------------------

def test_form_encoded_values_become_typed_data(leave_form):
    form = MultiDict([
        ("reason", "  发热就诊 "), ("days", "3"), ("hours", "7.5"), ("start", "2024-05-01"), ("kind", "annual"),
        ("notify", "科主任"), ("notify", "医务处"), ("urgent", "true"), ("email", ""), ("mobile", ""),
        ("contact.name", "王医生"), ("contact.ward", "12"), ("csrf_token", "x"), ("action", "save"),
    ])
    data = parse_submission(leave_form, form)
    assert data == {"reason": "发热就诊", "days": 3, "hours": 7.5, "start": "2024-05-01", "kind": "annual",
                    "notify": ["科主任", "医务处"], "urgent": True, "contact": {"name": "王医生", "ward": 12}}
    assert validate(leave_form, data) is data


def test_bracketed_names_and_plain_dicts_are_accepted(leave_form):
    data = parse_submission(leave_form, {"notify[]": ["护士长", ""], "urgent": "否", "days": "2.0"})
    assert data == {"notify": ["护士长"], "urgent": False, "days": 2}


def test_empty_strings_are_missing_so_required_says_so(leave_form):
    data = parse_submission(leave_form, MultiDict([("reason", ""), ("days", " "), ("kind", "sick"),
                                                   ("start", "2024-05-01")]))
    assert data == {"kind": "sick", "start": "2024-05-01"}
    assert _errors(leave_form, data) == {"reason": "“请假事由”为必填项", "days": "“天数”为必填项"}


def test_bad_numbers_become_validation_errors_with_a_path(leave_form):
    data = parse_submission(leave_form, MultiDict([("days", "三天"), ("hours", "1e999"), ("contact.ward", "x"),
                                                   ("urgent", "maybe")]))
    assert data["days"] == "三天" and data["hours"] == "1e999"
    errors = validation_errors(leave_form, data)
    paths = {e["path"]: e["message"] for e in errors}
    assert paths["days"] == "“天数”应为整数"
    assert paths["hours"] == "“折合小时”应为数字"
    assert paths["contact/ward"] == "“病区”应为整数"
    assert paths["urgent"] == "“是否紧急”应为“是”或“否”"
    assert paths["contact/name"] == "“姓名”为必填项"


def test_an_untouched_optional_group_is_left_out(leave_form):
    assert "contact" not in parse_submission(leave_form, MultiDict([("contact.name", "")]))
    leave_form.schema["required"].append("contact")
    assert parse_submission(leave_form, MultiDict())["contact"] == {}


def test_a_ticked_checkbox_wins_over_its_hidden_false(leave_form):
    leave_form.ui["urgent"] = {"ui:widget": "checkbox"}
    assert parse_submission(leave_form, MultiDict([("urgent", "false"), ("urgent", "true")]))["urgent"] is True
    assert parse_submission(leave_form, MultiDict([("urgent", "false")]))["urgent"] is False


def test_deeper_structures_are_posted_as_json_text(leave_form):
    data = parse_submission(leave_form, {"items": '[{"code": "A1"}]'})
    assert data["items"] == [{"code": "A1"}]
    broken = parse_submission(leave_form, {"items": "[{"})
    assert {e["path"]: e["message"] for e in validation_errors(leave_form, broken)}["items"] == "“交接事项”应为列表"


def test_datetime_local_values_are_read_as_beijing_time():
    form = FormDef("t", 1, {"type": "object", "properties": {
        "at": {"type": "string", "format": "date-time", "title": "时间"}}})
    data = parse_submission(form, {"at": "2024-05-01T08:30"})
    assert data == {"at": "2024-05-01T08:30:00+08:00"}
    assert validate(form, data) is data
    assert validation_errors(form, {"at": "2024-05-01 8点"}) == [
        {"path": "at", "message": "“时间”应为有效的日期时间（如 2024-05-01T08:30:00+08:00）"}]


def test_conditional_requirements_still_name_the_field_in_chinese(leave_form):
    leave_form.schema["if"] = {"required": ["kind"], "properties": {"kind": {"const": "sick"}}}
    leave_form.schema["then"] = {"required": ["mobile"], "properties": {"mobile": {"minLength": 11}}}
    assert _errors(leave_form, VALID) == {"mobile": "“手机号”为必填项"}
    assert validation_errors(leave_form, dict(VALID, mobile="1")) == [
        {"path": "mobile", "message": "“手机号”格式不正确"}, {"path": "mobile", "message": "“手机号”至少 11 个字符"}]
    assert validate(leave_form, dict(VALID, kind="annual"))
