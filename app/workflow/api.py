"""Workflow JSON API: process definitions, task completion and message delivery for hospital systems."""

from __future__ import annotations

from flask import Blueprint, g, request
from flask_login import current_user
from marshmallow import Schema, fields, validate

from app.auth.access import api_auth
from app.db import db
from app.errors import Forbidden
from app.workflow import services

bp = Blueprint("workflow_api", __name__, url_prefix="/api/v1")


@bp.get("/processes")
@api_auth("workflow.admin")
def processes():
    return {"processes": services.list_definitions()}


class MessageIn(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128),
                         error_messages={"required": "必填：消息名称"})
    correlation_key = fields.String(required=True, validate=validate.Length(min=1, max=128),
                                    error_messages={"required": "必填：关联键"})
    message_id = fields.String(load_default=None, validate=validate.Length(max=128))
    payload = fields.Dict(load_default=dict)


@bp.post("/messages")
@api_auth("workflow.admin")
def deliver():
    data = MessageIn().load(request.get_json(silent=True) or {})
    sender = g.api_system or current_user
    result = services.deliver_message(name=data["name"], correlation_key=data["correlation_key"],
                                      payload=data["payload"], message_id=data["message_id"], sender=sender)
    db.session.commit()
    return result


class CompleteIn(Schema):
    data = fields.Dict(required=True, error_messages={"required": "必填：表单数据 data"})


@bp.post("/tasks/<int:task_id>/complete")
@api_auth(allow_token=False)
def complete(task_id: int):
    if not current_user.is_authenticated:
        raise Forbidden("请先登录")
    body = CompleteIn().load(request.get_json(silent=True) or {})
    task = services.complete(task_id=task_id, actor=current_user, data=body["data"])
    db.session.commit()
    return {"task_id": task.id, "status": task.status, "instance_id": task.instance_id}
