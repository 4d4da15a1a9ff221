"""Embedded loop view for HIS doctor/nurse stations (seed 003 §一.3-4, §二.1 "内嵌到业务系统"): a hospital system
asks for a short-lived signed launch token with its Bearer API token, then opens
`/embed/orders/<order_no>?token=…` in an iframe — no second login.

Invariants:
- a launch token names the issuing system and API token, the order, the staff member and an expiry of at most
  300 seconds; it is HMAC-signed with the app secret plus that API token's own secret (its stored hash), so
  revoking the system's API token kills its launch tokens at once;
- an expired, forged, revoked or other-order token gets a Chinese 401 page, never the timeline;
- the page may be framed only by EMBED_ALLOWED_ORIGINS (CSP frame-ancestors; default 'self');
- patient identity is masked unless the staff number maps to an active user holding loops.patient_identity;
- each issued token is recorded in the audit log (who opened which order's loop from which system).
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, g, render_template, request, url_for
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select

from app.audit import services as audit
from app.auth.access import api_auth
from app.auth.models import ApiToken, User
from app.auth.services import has_permission
from app.db import db
from app.errors import Forbidden, ValidationFailed
from app.loops.models import LoopOrder
from app.loops.views import IDENTITY, timeline

bp = Blueprint("loop_embed", __name__)

MAX_TTL = 300
SALT = "medloop.loops.embed-launch"


class LaunchTokenInvalid(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _serializer(api_token: ApiToken) -> URLSafeSerializer:
    secret = f"{current_app.config['SECRET_KEY']}:{api_token.token_hash}"
    return URLSafeSerializer(secret, salt=SALT)


def issue_launch_token(*, api_token: ApiToken, order_no: str, staff_no: str, name: str | None = None,
                       ttl: int = MAX_TTL, now: float | None = None) -> tuple[str, int]:
    """Sign a launch token for one order and one staff member. Returns (token, expiry as epoch seconds)."""
    exp = int((now if now is not None else time.time()) + min(max(1, ttl), MAX_TTL))
    payload = {"sys": api_token.system, "kid": api_token.id, "ord": order_no, "staff": staff_no, "name": name,
               "exp": exp}
    return str(_serializer(api_token).dumps(payload)), exp


def verify_launch_token(*, token: str, order_no: str, now: float | None = None) -> dict[str, Any]:
    """The token's claims. Raises LaunchTokenInvalid (Chinese reason) when forged, expired, revoked or for
    another order."""
    if not token:
        raise LaunchTokenInvalid("缺少启动令牌：请从业务系统（医生站/护士站）重新打开闭环视图")
    # the key depends on the issuing API token, named inside the payload: read it unverified, then verify
    ok, claims = URLSafeSerializer("unverified", salt=SALT).loads_unsafe(token)
    kid = claims.get("kid") if isinstance(claims, dict) else None
    api_token = db.session.get(ApiToken, kid) if isinstance(kid, int) else None
    if api_token is None:
        raise LaunchTokenInvalid("启动令牌无效：签名校验失败")
    if api_token.revoked_at is not None:
        raise LaunchTokenInvalid("启动令牌无效：签发系统的接口令牌已吊销")
    try:
        claims = _serializer(api_token).loads(token)
    except BadSignature as exc:
        raise LaunchTokenInvalid("启动令牌无效：签名校验失败") from exc
    if claims.get("sys") != api_token.system:
        raise LaunchTokenInvalid("启动令牌无效：签发系统不符")
    current = now if now is not None else time.time()
    if not isinstance(claims.get("exp"), int) or claims["exp"] < current:
        raise LaunchTokenInvalid("启动令牌已过期（有效期不超过 5 分钟），请从业务系统重新打开")
    if claims.get("ord") != order_no:
        raise LaunchTokenInvalid("启动令牌与所查看的医嘱不符")
    return claims


def staff_sees_identity(staff_no: str | None) -> bool:
    """True when the launching staff number belongs to an active user holding loops.patient_identity."""
    if not staff_no:
        return False
    user = db.session.scalar(select(User).where(User.staff_no == staff_no))
    if user is None or not user.is_active or user.departed_at is not None:
        return False
    return has_permission(user, IDENTITY)


def _launch_input(body: Any) -> tuple[str, str, str | None, int]:
    errors: dict[str, str] = {}
    if not isinstance(body, dict):
        raise ValidationFailed({"": "请求体应为 JSON 对象：{\"order_no\", \"user\": {\"staff_no\", \"name\"}, \"ttl\"}"})
    order_no = body.get("order_no")
    if not isinstance(order_no, str) or not order_no.strip():
        errors["order_no"] = "必填：医嘱号 order_no（字符串）"
    elif len(order_no.strip()) > 64:
        errors["order_no"] = "医嘱号不能超过 64 个字符"
    user = body.get("user")
    staff_no = name = None
    if not isinstance(user, dict):
        errors["user"] = "必填：user 应为 JSON 对象 {\"staff_no\", \"name\"}"
    else:
        staff_no = user.get("staff_no")
        if isinstance(staff_no, int) and not isinstance(staff_no, bool):
            staff_no = str(staff_no)
        if not isinstance(staff_no, str) or not staff_no.strip():
            errors["user/staff_no"] = "必填：工号 user.staff_no（字符串）"
        elif len(staff_no.strip()) > 32:
            errors["user/staff_no"] = "工号不能超过 32 个字符"
        name = user.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 64):
            errors["user/name"] = "姓名 user.name 应为不超过 64 个字符的字符串"
    ttl = body.get("ttl", MAX_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        errors["ttl"] = f"有效期 ttl 应为 1–{MAX_TTL} 之间的整数（秒）"
    if errors:
        raise ValidationFailed(errors)
    assert isinstance(order_no, str) and isinstance(staff_no, str)
    return order_no.strip(), staff_no.strip(), (name or "").strip() or None, int(ttl)


@bp.post("/api/v1/launch-tokens")
@api_auth(allow_token=True)
def launch_token():
    if g.get("api_system") is None:
        raise Forbidden("启动令牌只能由业务系统以接口令牌（Authorization: Bearer …）申请")
    header = request.headers.get("Authorization", "")[7:].strip()
    from app.auth.services import verify_api_token

    api_token = verify_api_token(header)
    assert api_token is not None  # api_auth checked it
    order_no, staff_no, name, ttl = _launch_input(request.get_json(silent=True))
    token, exp = issue_launch_token(api_token=api_token, order_no=order_no, staff_no=staff_no, name=name, ttl=ttl)
    audit.record(api_token.system, "loops.launch_token_issued", entity_type="loop_orders", entity_id=order_no,
                 extra={"staff_no": staff_no, "name": name, "ttl": ttl, "system": api_token.system})
    db.session.commit()
    return {"token": token, "expires_in": ttl, "expires_at": exp,
            "url": url_for("loop_embed.order", order_no=order_no, token=token, _external=True)}


def _frame_headers(resp):
    origins = current_app.config.get("EMBED_ALLOWED_ORIGINS") or []
    if isinstance(origins, str):
        origins = [o for o in origins.replace(",", " ").split() if o]
    sources = " ".join(["'self'", *[o for o in origins if o and o != "'self'"]])
    resp.headers["Content-Security-Policy"] = f"frame-ancestors {sources}"
    resp.headers["Referrer-Policy"] = "no-referrer"  # the URL carries the launch token
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/embed/orders/<path:order_no>")
def order(order_no: str):
    try:
        claims = verify_launch_token(token=request.args.get("token", ""), order_no=order_no)
    except LaunchTokenInvalid as exc:
        resp = current_app.make_response((render_template("loops/embed_error.html", message=exc.message), 401))
        return _frame_headers(resp)
    found = db.session.scalar(select(LoopOrder).where(LoopOrder.order_no == order_no))
    if found is None:
        resp = current_app.make_response((render_template("loops/embed_missing.html", order_no=order_no), 404))
        return _frame_headers(resp)
    view = timeline(found, show_identity=staff_sees_identity(claims.get("staff")))
    html = render_template("loops/embed_order.html", viewer=claims.get("name") or claims.get("staff"),
                           system=claims.get("sys"), **view)
    return _frame_headers(current_app.make_response(html))


def register(app) -> None:
    app.register_blueprint(bp)
    audit.ACTION_LABELS["loops.launch_token_issued"] = "签发闭环嵌入启动令牌"
