"""Form templates: loading, validating, parsing and rendering JSON Schema forms; versions saved by admins.

Invariants:
- A (key, version) row is never changed once stored; every change, from a shipped file or the editor, is a
  new version, so a running workflow instance can keep the version it started with.
- A file in forms/ becomes a new version only when its content (schema + UI schema) differs from the last
  version stored *from that file*; admin versions stay the latest until the shipped file itself changes.
- Every stored schema passes draft 2020-12's meta-schema, is an object with properties, and every property
  (one nested level included) has a Chinese title, since titles are the labels users see.
- Validation errors are a list of {"path": "items/0/code", "message": Chinese text}; for a missing required
  property the path is the property itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError as SchemaValidationError
from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.audit.services import record as audit_record
from app.db import db
from app.errors import NotFound, ValidationFailed
from app.forms.models import FormSource, FormTemplate
from app.forms.render import ErrorsIn, render_form
from app.forms.schema import (
    FormDef,
    field_kind,
    json_type,
    ordered,
    properties,
    required_names,
    sub_ui,
)

__all__ = [
    "FormDef", "sync_files", "get_form", "validate", "parse_submission", "render", "save_admin_version",
    "list_versions", "form_checksum", "KEY_RE",
]

KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

FORMAT_CHECKER = FormatChecker()
if "date-time" not in FORMAT_CHECKER.checkers:
    # jsonschema only checks date-time with rfc3339-validator installed; RFC 3339 needs a zone offset
    @FORMAT_CHECKER.checks("date-time", raises=ValueError)
    def _is_datetime(instance: object) -> bool:
        if not isinstance(instance, str):
            return True
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", instance):
            return False
        return datetime.fromisoformat(instance.replace("z", "Z").replace("Z", "+00:00")) is not None


# --------------------------------------------------------------------------------------------------------------
# storage
# --------------------------------------------------------------------------------------------------------------

def _key_of(path_or_name: str) -> str:
    name = Path(path_or_name).name
    for suffix in (".ui.json", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _forms_dir(forms_dir: str | Path | None) -> Path:
    if forms_dir is not None:
        return Path(forms_dir)
    from flask import current_app, has_app_context

    if has_app_context() and current_app.config.get("FORMS_DIR"):
        return Path(current_app.config["FORMS_DIR"])
    from app.config import ROOT

    return ROOT / "forms"


def form_checksum(schema: Mapping[str, Any], ui: Mapping[str, Any] | None) -> str:
    """SHA-256 of the canonical JSON of schema + UI schema (key order and spacing do not count)."""
    text = json.dumps([schema, ui or {}], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _latest(key: str, *, source: str | None = None) -> FormTemplate | None:
    stmt = select(FormTemplate).where(FormTemplate.key == key)
    if source:
        stmt = stmt.where(FormTemplate.source == source)
    return db.session.scalars(stmt.order_by(FormTemplate.version.desc()).limit(1)).first()


def _next_version(key: str) -> int:
    return (db.session.scalar(select(func.max(FormTemplate.version)).where(FormTemplate.key == key)) or 0) + 1


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationFailed([{"path": path.name, "message": f"表单文件无法读取或不是合法的 JSON：{exc}"}],
                               message=f"表单文件 {path.name} 有误") from exc
    if not isinstance(value, dict):
        raise ValidationFailed([{"path": path.name, "message": "表单文件的内容应为 JSON 对象"}],
                               message=f"表单文件 {path.name} 有误")
    return value


def _load_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    schema = _read_json(path)
    ui_path = path.with_name(_key_of(path.name) + ".ui.json")
    ui = _read_json(ui_path) if ui_path.exists() else {}
    problems = schema_problems(schema, ui)
    if problems:
        raise ValidationFailed(problems, message=f"表单文件 {path.name} 不是有效的表单定义")
    return schema, ui


def _store_file(path: Path) -> FormTemplate | None:
    """Store one file as a new version if its content is new; None when unchanged."""
    key = _key_of(path.name)
    schema, ui = _load_file(path)
    checksum = form_checksum(schema, ui)
    last = _latest(key, source=FormSource.FILE.value)
    if last is not None and last.checksum == checksum:
        return None
    row = FormTemplate(key=key, version=_next_version(key), schema=schema, ui_schema=ui,
                       source=FormSource.FILE.value, checksum=checksum, note=f"同步自 forms/{path.name}")
    db.session.add(row)
    db.session.flush()
    return row


def _form_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.json") if not p.name.endswith(".ui.json") and KEY_RE.match(p.stem))


def sync_files(forms_dir: str | Path | None = None) -> int:
    """Store every forms/<key>.json (+ <key>.ui.json) whose content is new as a version; returns how many.

    Idempotent; flushes. Raises ValidationFailed naming the file when one is not valid JSON or not a valid form.
    """
    count = 0
    for path in _form_files(_forms_dir(forms_dir)):
        if _store_file(path) is not None:
            count += 1
    return count


def _to_def(row: FormTemplate) -> FormDef:
    return FormDef(key=row.key, version=row.version, schema=dict(row.schema or {}), ui=dict(row.ui_schema or {}))


def get_form(key: str, version: int | None = None, *, forms_dir: str | Path | None = None) -> FormDef:
    """The form at a version (latest when None). Syncs the shipped file when the database has no row for it.

    Accepts "privilege_review" or "privilege_review.json" (as BPMN user tasks name it). Raises NotFound.
    """
    key = _key_of(key)
    if not KEY_RE.match(key):
        raise NotFound(f"表单 {key} 不存在", key=key)
    stmt = select(FormTemplate).where(FormTemplate.key == key)
    if version is not None:
        stmt = stmt.where(FormTemplate.version == version)
    row = db.session.scalars(stmt.order_by(FormTemplate.version.desc()).limit(1)).first()
    if row is None and not db.session.scalar(select(FormTemplate.id).where(FormTemplate.key == key).limit(1)):
        path = _forms_dir(forms_dir) / f"{key}.json"
        if path.is_file():
            # another request may store the same file at the same moment: the unique (key, version) decides
            try:
                with db.session.begin_nested():
                    _store_file(path)
            except IntegrityError:
                pass
            row = db.session.scalars(stmt.order_by(FormTemplate.version.desc()).limit(1)).first()
    if row is None:
        if version is not None:
            raise NotFound(f"表单 {key} 没有第 {version} 版", key=key, version=version)
        raise NotFound(f"表单 {key} 不存在", key=key)
    return _to_def(row)


def list_versions(key: str) -> list[FormTemplate]:
    """Every stored version of a form, newest first."""
    stmt = select(FormTemplate).where(FormTemplate.key == _key_of(key)).order_by(FormTemplate.version.desc())
    return list(db.session.scalars(stmt))


# --------------------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------------------

TYPE_NAMES = {"string": "文本", "integer": "整数", "number": "数字", "boolean": "“是”或“否”", "array": "列表",
              "object": "对象", "null": "空值"}

FORMAT_NAMES = {
    "date": "有效的日期（如 2024-05-01）",
    "date-time": "有效的日期时间（如 2024-05-01T08:30:00+08:00）",
    "time": "有效的时间（如 08:30:00+08:00）",
    "email": "有效的电子邮箱地址",
    "idn-email": "有效的电子邮箱地址",
    "ipv4": "有效的 IPv4 地址",
    "ipv6": "有效的 IPv6 地址",
    "uri": "有效的网址",
    "uuid": "有效的 UUID",
    "regex": "有效的正则表达式",
    "hostname": "有效的主机名",
    "idn-hostname": "有效的主机名",
}


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _title_at(schema: Mapping[str, Any], parts: list[Any]) -> str | None:
    """Title of the property at a data path, or of its closest titled ancestor below the root."""
    current: Any = schema
    title = None
    for part in parts:
        if not isinstance(current, Mapping):
            break
        props: Mapping[str, Any] = current.get("properties") or {}
        if not isinstance(props, Mapping):
            props = {}
        if isinstance(part, str) and part in props:
            current = props[part]
        elif isinstance(part, int) and isinstance(current.get("items"), Mapping):
            current = current["items"]
        else:
            break
        if isinstance(current, Mapping) and current.get("title"):
            title = str(current["title"])
    return title


def _custom_message(schema: Any, keyword: str) -> str | None:
    """A schema's own wording: "errorMessage": "…" (pattern/format) or {"pattern": "…", "minLength": "…"}."""
    if not isinstance(schema, Mapping):
        return None
    custom = schema.get("errorMessage")
    if isinstance(custom, str) and keyword in ("pattern", "format"):
        return custom
    if isinstance(custom, Mapping) and isinstance(custom.get(keyword), str):
        return str(custom[keyword])
    return None


def _message(err: SchemaValidationError, title: str | None) -> str:
    q = f"“{title}”" if title else "此项"
    kw, expected = err.validator, err.validator_value
    custom = _custom_message(err.schema, str(kw))
    if custom:
        return custom
    if kw == "type":
        types = expected if isinstance(expected, list) else [expected]
        return f"{q}应为{'或'.join(TYPE_NAMES.get(str(t), str(t)) for t in types if t != 'null')}"
    if kw == "minLength":
        return f"{q}至少 {expected} 个字符"
    if kw == "maxLength":
        return f"{q}最多 {expected} 个字符"
    if kw == "minimum":
        return f"{q}不能小于 {_num(expected)}"
    if kw == "maximum":
        return f"{q}不能大于 {_num(expected)}"
    if kw == "exclusiveMinimum":
        return f"{q}必须大于 {_num(expected)}"
    if kw == "exclusiveMaximum":
        return f"{q}必须小于 {_num(expected)}"
    if kw == "multipleOf":
        return f"{q}必须是 {_num(expected)} 的整数倍"
    if kw == "enum":
        return f"请从列表中选择{q}"
    if kw in ("oneOf", "anyOf") and isinstance(expected, list) and expected \
            and all(isinstance(b, Mapping) and "const" in b for b in expected):
        return f"请从列表中选择{q}"
    if kw in ("oneOf", "anyOf"):
        return f"{q}不符合任何一种允许的格式"
    if kw == "const":
        return f"{q}的取值不正确"
    if kw == "format":
        name = FORMAT_NAMES.get(str(expected))
        return f"{q}应为{name}" if name else f"{q}格式不正确"
    if kw == "pattern":
        return f"{q}格式不正确"
    if kw == "minItems":
        return f"{q}至少选择 {expected} 项"
    if kw == "maxItems":
        return f"{q}最多选择 {expected} 项"
    if kw == "uniqueItems":
        return f"{q}中有重复的项"
    if kw == "contains":
        return f"{q}缺少必需的项"
    if kw == "minProperties":
        return f"{q}至少填写 {expected} 项"
    if kw == "maxProperties":
        return f"{q}最多填写 {expected} 项"
    if kw == "not":
        return f"{q}的取值不被允许"
    if kw == "propertyNames":
        return f"{q}中有不允许的名称"
    return f"{q}不符合要求"


def _translate(err: SchemaValidationError, root: Mapping[str, Any]) -> list[dict[str, str]]:
    base = list(err.absolute_path)
    prefix = "/".join(str(p) for p in base)

    def join(name: str) -> str:
        return f"{prefix}/{name}" if prefix else name

    instance = err.instance if isinstance(err.instance, Mapping) else {}
    sub_props = err.schema.get("properties") if isinstance(err.schema, Mapping) else None
    sub_props = sub_props if isinstance(sub_props, Mapping) else {}

    def title_of(name: str) -> str:
        # the failing subschema may be an if/then branch without titles: fall back to the form's own field
        prop = sub_props.get(name)
        if isinstance(prop, Mapping) and prop.get("title"):
            return str(prop["title"])
        return _title_at(root, [*base, name]) or name

    if err.validator == "required":
        missing = [n for n in err.validator_value if isinstance(n, str) and n not in instance]
        return [{"path": join(n), "message": f"“{title_of(n)}”为必填项"} for n in missing]
    if err.validator == "dependentRequired":
        out = []
        for trigger, needed in (err.validator_value or {}).items():
            if trigger in instance:
                out += [{"path": join(n), "message": f"填写了“{title_of(trigger)}”时，“{title_of(n)}”为必填项"}
                        for n in needed if n not in instance]
        return out
    if err.validator in ("additionalProperties", "unevaluatedProperties") and err.validator_value is False:
        patterns = err.schema.get("patternProperties") or {} if isinstance(err.schema, Mapping) else {}
        extras = [n for n in instance if n not in sub_props and not any(re.search(p, n) for p in patterns)]
        if extras:
            return [{"path": join(str(n)), "message": f"不允许的字段“{n}”"} for n in extras]
    return [{"path": prefix, "message": _message(err, _title_at(root, base))}]


def validation_errors(form: FormDef, data: Any) -> list[dict[str, str]]:
    """Every problem of the data against the form, in form field order, in Chinese; [] when valid."""
    validator = Draft202012Validator(form.schema, format_checker=FORMAT_CHECKER)
    out: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for err in validator.iter_errors(data):
        for item in _translate(err, form.schema):
            mark = (item["path"], item["message"])
            if mark not in seen:
                seen.add(mark)
                out.append(item)
    position = {name: i for i, name in enumerate(ordered(properties(form.schema), form.ui))}
    out.sort(key=lambda e: (position.get(e["path"].split("/")[0], len(position)), e["path"]))
    return out


def validate(form: FormDef, data: dict[str, Any]) -> dict[str, Any]:
    """Check data against the form; returns it unchanged. Raises ValidationFailed with Chinese per-path errors."""
    errors = validation_errors(form, data)
    if errors:
        raise ValidationFailed(errors, message=f"“{form.title}”填写有误，请按提示修改")
    return data


# --------------------------------------------------------------------------------------------------------------
# form-encoded submissions
# --------------------------------------------------------------------------------------------------------------

_MISSING: Any = object()
TRUE_WORDS = {"true", "on", "1", "yes", "y", "是", "t"}
FALSE_WORDS = {"false", "off", "0", "no", "n", "否", "f"}
_LOCAL_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$")


def _getlist(formdata: Any, name: str) -> list[str]:
    values: list[Any] = []
    for candidate in (name, f"{name}[]"):
        if hasattr(formdata, "getlist"):
            values += formdata.getlist(candidate)
        elif isinstance(formdata, Mapping) and candidate in formdata:
            raw = formdata[candidate]
            values += raw if isinstance(raw, list | tuple) else [raw]
    return ["" if v is None else str(v) for v in values]


def _scalar(schema: Mapping[str, Any], text: str) -> Any:
    """Typed value of one submitted text; text that does not parse stays text so validation names the field."""
    text = text.strip()
    if text == "":
        return _MISSING
    t = json_type(dict(schema))
    if t == "integer":
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return text
            return int(number) if math.isfinite(number) and number.is_integer() else text
    if t == "number":
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return text
        return number if math.isfinite(number) else text
    if t == "boolean":
        low = text.lower()
        if low in TRUE_WORDS:
            return True
        if low in FALSE_WORDS:
            return False
        return text
    if t == "null":
        return _MISSING
    if schema.get("format") == "date-time" and _LOCAL_DATETIME.match(text):
        # <input type=datetime-local> sends wall-clock time without seconds or zone: Beijing time
        return (text if len(text) == 19 else text + ":00") + "+08:00"
    return text


def _parse_field(schema: Mapping[str, Any], ui: Mapping[str, Any], formdata: Any, name: str, *,
                 nested: bool) -> Any:
    kind = field_kind(dict(schema), dict(ui))
    if kind in ("hidden", "readonly"):
        kind = field_kind(dict(schema))
    if kind == "object" and not nested:
        out: dict[str, Any] = {}
        for sub, prop in properties(dict(schema)).items():
            value = _parse_field(prop, sub_ui(dict(ui), sub), formdata, f"{name}.{sub}", nested=True)
            if value is not _MISSING:
                out[sub] = value
        return out
    values = _getlist(formdata, name)
    if kind == "multi":
        items: Mapping[str, Any] = schema.get("items") or {}
        if not isinstance(items, Mapping):
            items = {}
        parsed = [_scalar(items, v) for v in values]
        parsed = [v for v in parsed if v is not _MISSING]
        return parsed or _MISSING
    if kind in ("object", "json"):
        text = next((v for v in reversed(values) if v.strip()), "")
        if not text.strip():
            return _MISSING
        try:
            return json.loads(text)
        except ValueError:
            return text
    # a single value; a ticked checkbox follows its hidden "false", so the last one wins
    for text in reversed(values):
        value = _scalar(schema, text)
        if value is not _MISSING:
            return value
    return _MISSING


def parse_submission(form: FormDef, formdata: Any) -> dict[str, Any]:
    """Typed data from HTML form-encoded values (a MultiDict or a plain dict), per the schema.

    Numbers and booleans become numbers and booleans, checkbox groups and `name[]` become lists, empty
    strings are left out. Text that does not parse is kept as text, so validation reports it on its path.
    Keys that are not form properties (csrf_token, buttons) are ignored. Pure: no database access.
    """
    out: dict[str, Any] = {}
    required = required_names(form.schema)
    for name, prop in properties(form.schema).items():
        value = _parse_field(prop, sub_ui(form.ui, name), formdata, name, nested=False)
        if isinstance(value, dict) and not value and field_kind(prop, sub_ui(form.ui, name)) == "object":
            # an untouched optional group is absent; a required one is {} so its own required fields speak
            if name in required:
                out[name] = value
            continue
        if value is not _MISSING:
            out[name] = value
    return out


def render(form: FormDef, data: Mapping[str, Any] | None = None, errors: ErrorsIn = None,
           readonly: bool = False) -> Markup:
    """The form's fields as escaped HTML (labels, stars, help, per-field errors); the page adds <form> and CSRF."""
    return render_form(form, data, errors, readonly)


# --------------------------------------------------------------------------------------------------------------
# admin versions
# --------------------------------------------------------------------------------------------------------------

_META_VALIDATOR = Draft202012Validator(Draft202012Validator.META_SCHEMA, format_checker=FORMAT_CHECKER)


def schema_problems(schema: Any, ui: Any) -> list[dict[str, str]]:
    """Why a schema/UI schema pair cannot be a form (Chinese, with paths); [] when it can."""
    problems: list[dict[str, str]] = []
    if not isinstance(schema, Mapping):
        return [{"path": "", "message": "表单定义应为 JSON 对象"}]
    for err in sorted(_META_VALIDATOR.iter_errors(schema), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(str(p) for p in err.absolute_path)
        problems.append({"path": where, "message": f"不符合 JSON Schema 2020-12 规范（{where or '根'}）：{err.message}"})
    if problems:
        return problems
    if json_type(dict(schema)) != "object" or not isinstance(schema.get("properties"), Mapping):
        problems.append({"path": "", "message": "表单定义的根应为 object 并列出 properties（字段）"})
        return problems
    if not schema.get("title"):
        problems.append({"path": "title", "message": "表单需要中文名称（title）"})

    def check_titles(props: Mapping[str, Any], prefix: str, depth: int) -> None:
        for name, prop in props.items():
            path = f"{prefix}{name}"
            if not isinstance(prop, Mapping):
                problems.append({"path": path, "message": f"字段“{name}”的定义应为 JSON 对象"})
                continue
            if not str(prop.get("title") or "").strip():
                problems.append({"path": path, "message": f"字段“{name}”缺少中文名称（title）"})
            if depth == 0 and isinstance(prop.get("properties"), Mapping):
                check_titles(prop["properties"], f"{path}/", depth + 1)

    check_titles(schema["properties"], "", 0)
    if not isinstance(ui, Mapping):
        problems.append({"path": "ui", "message": "界面描述（UI schema）应为 JSON 对象"})
    else:
        order = ui.get("ui:order")
        if order is not None and (not isinstance(order, list) or not all(isinstance(x, str) for x in order)):
            problems.append({"path": "ui/ui:order", "message": "ui:order 应为字段名列表"})
    return problems


LOCKED = "ui:locked"

_LOCK_WORDS = {
    "remove": "不能删除",
    "optional": "不能取消必填",
    "type": "不能更改类型",
    "unlock": "不能取消锁定",
}


def locked_message(title: str, name: str, what: str) -> str:
    """Why a locked field cannot be changed that way (what: remove / optional / type / unlock)."""
    return f"“{title}”（{name}）是系统必需的字段（存入申请记录的数据列），{_LOCK_WORDS[what]}"


def locked_problems(old_schema: Mapping[str, Any], old_ui: Mapping[str, Any], schema: Mapping[str, Any],
                    ui: Mapping[str, Any]) -> list[dict[str, str]]:
    """What a new version does to the previous version's locked fields (`ui:locked` in the UI schema): each
    must stay, stay required when it was, keep its JSON type and its lock. Paths are the field names."""
    old_props, new_props = properties(dict(old_schema)), properties(dict(schema))
    old_required, new_required = required_names(dict(old_schema)), required_names(dict(schema))
    problems = []
    for name, prop in old_props.items():
        if not sub_ui(dict(old_ui), name).get(LOCKED):
            continue
        title = str(prop.get("title") or name)
        what = None
        if name not in new_props:
            what = "remove"
        elif name in old_required and name not in new_required:
            what = "optional"
        elif json_type(prop) != json_type(new_props[name]):
            what = "type"
        elif not sub_ui(dict(ui), name).get(LOCKED):
            what = "unlock"
        if what:
            problems.append({"path": name, "message": locked_message(title, name, what)})
    return problems


def save_admin_version(*, key: str, schema: dict[str, Any], ui: dict[str, Any] | None, actor: Any,
                       note: str | None = None) -> FormTemplate:
    """Store an edited form as the next version and audit it ("form.version_saved"); flushes.

    Returns the latest row unchanged (no new version, no audit) when the content equals it.
    Raises ValidationFailed (Chinese, per path) for a bad key, an invalid schema, an untitled field, or a
    locked field (`ui:locked`) of the latest version removed, made optional, retyped or unlocked.
    """
    key = (key or "").strip()
    if not KEY_RE.match(key):
        raise ValidationFailed([{"path": "key", "message": "表单编码只能用小写字母、数字和下划线，且以字母开头"}])
    ui = ui or {}
    problems = schema_problems(schema, ui)
    if problems:
        raise ValidationFailed(problems, message="表单定义有误，未保存")
    last = _latest(key)
    if last is not None:
        problems = locked_problems(last.schema or {}, last.ui_schema or {}, schema, ui)
        if problems:
            raise ValidationFailed(problems, message="系统必需的字段不能删除、取消必填或更改类型，未保存")
    checksum = form_checksum(schema, ui)
    if last is not None and last.checksum == checksum:
        return last
    row = FormTemplate(key=key, version=_next_version(key), schema=schema, ui_schema=ui,
                       source=FormSource.ADMIN.value, checksum=checksum,
                       created_by_id=getattr(actor, "id", None), note=(note or "").strip()[:255] or None)
    db.session.add(row)
    db.session.flush()
    audit_record(actor, "form.version_saved", row,
                 before={"version": last.version, "checksum": last.checksum} if last else None,
                 after={"key": key, "version": row.version, "schema": schema, "ui_schema": ui, "note": row.note})
    return row


def changed_fields(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """Names of properties added, removed or changed between two schemas (for version notes)."""
    old_props = properties(dict(old or {}))
    new_props = properties(dict(new))
    names: Iterable[str] = sorted(set(old_props) | set(new_props))
    return [n for n in names if old_props.get(n) != new_props.get(n)]
