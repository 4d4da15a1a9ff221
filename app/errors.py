"""One error tree for every domain, mapped once to JSON (for /api) or a Chinese page."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, render_template, request


class DomainError(Exception):
    status = 400
    code = "domain_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ValidationFailed(DomainError):
    """Bad input. `errors` maps a field path ("items/0/code") to a Chinese message."""

    status, code = 400, "validation_failed"

    def __init__(self, errors: dict[str, str] | list[dict[str, str]], message: str = "提交的数据有误") -> None:
        if isinstance(errors, dict):
            errors = [{"path": k, "message": v} for k, v in errors.items()]
        super().__init__(message, errors=errors)
        self.errors = errors


class NotFound(DomainError):
    status, code = 404, "not_found"


class Forbidden(DomainError):
    status, code = 403, "forbidden"


class Unauthorized(DomainError):
    status, code = 401, "unauthorized"


class InvalidTransition(DomainError):
    status, code = 409, "invalid_transition"


class Conflict(DomainError):
    status, code = 409, "conflict"


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None):
    if _wants_json():
        body: dict[str, Any] = {"error": {"code": code, "message": message}}
        if details:
            body["error"].update(details)
        return jsonify(body), status
    return render_template("error.html", status=status, message=message, details=details or {}), status


def register_error_handlers(app: Flask) -> None:
    from flask_wtf.csrf import CSRFError
    from marshmallow import ValidationError as MarshmallowError
    from werkzeug.exceptions import HTTPException

    @app.errorhandler(DomainError)
    def _domain(err: DomainError):
        return error_response(err.status, err.code, err.message, err.details)

    @app.errorhandler(MarshmallowError)
    def _marshmallow(err: MarshmallowError):
        errors = []

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}/{k}" if prefix else str(k), v)
            elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                errors.append({"path": prefix, "message": "；".join(value)})
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    walk(f"{prefix}/{i}", v)
            else:
                errors.append({"path": prefix, "message": str(value)})

        walk("", err.messages)
        return error_response(400, "validation_failed", "提交的数据有误", {"errors": errors})

    @app.errorhandler(CSRFError)
    def _csrf(err: CSRFError):
        return error_response(400, "csrf_failed", "页面已过期或表单校验失败（CSRF），请刷新页面后重试")

    messages = {
        400: "请求有误",
        401: "请先登录",
        403: "没有权限执行此操作",
        404: "页面或数据不存在",
        405: "不支持的请求方法",
        413: "上传的文件过大",
        500: "服务器内部错误，请联系信息科",
    }

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException):
        status = err.code or 500
        return error_response(status, f"http_{status}", messages.get(status, err.description or "请求失败"))
