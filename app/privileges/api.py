"""HIS privilege check API (seed 000 §三.6): may this physician do this item now?

GET  /api/v1/privileges/check?staff_no=…&category=…&code=…      one check
POST /api/v1/privileges/check  {"checks": [{staff_no, category, code}, …]}  up to 500 checks

Each answer: {"allowed": bool, "reason": "…", "grant": {"id", "valid_from", "valid_until", "status"} | null}
(`code` is the catalogue item code, or for surgery/invasive items the ICD-9-CM-3 procedure code).
Authentication: a hospital system's Bearer token, or a logged-in user with privileges.view.
Read-only: nothing is committed, so a check costs no write.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from app.auth.access import api_auth
from app.errors import ValidationFailed
from app.privileges import check as checker

bp = Blueprint("privileges_api", __name__, url_prefix="/api/v1/privileges")

BATCH_MAX = 500
FIELDS = (("staff_no", "工号", 32), ("category", "授权类别编码", 32), ("code", "授权项目编码", 64))


def _clean(source: Any, prefix: str, errors: dict[str, str]) -> tuple[str, str, str] | None:
    values = []
    for name, label, limit in FIELDS:
        path = f"{prefix}{name}"
        raw = source.get(name) if isinstance(source, dict) else None
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            errors[path] = f"必填：{label}"
            continue
        if not isinstance(raw, str):
            errors[path] = f"{label}应为字符串"
            continue
        value = raw.strip()
        if len(value) > limit:
            errors[path] = f"{label}不能超过 {limit} 个字符"
            continue
        values.append(value)
    return (values[0], values[1], values[2]) if len(values) == 3 else None


def _answer(key: tuple[str, str, str], result: checker.CheckResult) -> dict[str, Any]:
    return {"staff_no": key[0], "category": key[1], "code": key[2], **result.as_dict()}


@bp.get("/check")
@api_auth("privileges.view")
def check_one():
    errors: dict[str, str] = {}
    key = _clean(request.args, "", errors)
    if errors or key is None:
        raise ValidationFailed(errors)
    return jsonify(_answer(key, checker.check(*key)))


@bp.post("/check")
@api_auth("privileges.view")
def check_batch():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationFailed({"": "请求体应为 JSON 对象：{\"checks\": [...]}"})
    checks = body.get("checks")
    if not isinstance(checks, list) or not checks:
        raise ValidationFailed({"checks": "checks 应为非空数组"})
    if len(checks) > BATCH_MAX:
        raise ValidationFailed({"checks": f"一次最多校验 {BATCH_MAX} 条"})
    errors: dict[str, str] = {}
    keys: list[tuple[str, str, str]] = []
    for idx, entry in enumerate(checks):
        if not isinstance(entry, dict):
            errors[f"checks/{idx}"] = "每条校验应为对象：{staff_no, category, code}"
            continue
        key = _clean(entry, f"checks/{idx}/", errors)
        if key is not None:
            keys.append(key)
    if errors:
        raise ValidationFailed(errors)
    results = checker.check_many(keys)
    return jsonify({"count": len(keys), "results": [_answer(k, r) for k, r in zip(keys, results, strict=True)]})
