"""浙政钉 (Zhezhengding, 政务钉钉 2.0 open platform) work notification sender.

The open platform authenticates each call by an HMAC-SHA256 signature over the request, not by an access token.
As the platform's public SDK material describes it (and as implemented here):

  headers  X-Hmac-Auth-Timestamp  request time, Beijing time, "yyyy-MM-ddTHH:mm:ss.SSS+08:00"
           X-Hmac-Auth-Version    "1.0"
           X-Hmac-Auth-Nonce      13-digit millisecond time + 4 random digits
           apiKey                 the application's app key
           X-Hmac-Auth-Signature  base64(HMAC-SHA256(key=app secret, msg=string_to_sign))
           X-Hmac-Auth-IP / X-Hmac-Auth-MAC   the caller's address (sent when ZZD_CLIENT_IP / ZZD_CLIENT_MAC are set)
  string_to_sign = METHOD "\\n" timestamp "\\n" nonce "\\n" api path (no domain) ["\\n" params]
  params         = the request parameters sorted by name, "name=value" joined by "&", values not URL-encoded

Work notification: POST {ZZD_API_BASE}/message/workNotification, form-encoded parameters tenantId, receiverIds
(浙政钉 accountId), bizMsgId (our outbox message id: the platform can de-duplicate on it) and msg (JSON text
message). The answer is {"success": true, "content": {...}}; anything else is a failed attempt.

This has been checked against a local stand-in that verifies the signature the same way, not against the live
platform: a hospital connecting to its tenant should run one acceptance send first (docs/notifications.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import requests

from connectors._http import call, json_answer

DEFAULT_API_BASE = "https://openplatform-pro.ding.zj.gov.cn"
WORK_NOTICE_PATH = "/message/workNotification"
BEIJING = timezone(timedelta(hours=8))

_session = requests.Session()


def canonical_params(params: dict[str, Any]) -> str:
    return "&".join(f"{k}={params[k]}" for k in sorted(params))


def string_to_sign(method: str, timestamp: str, nonce: str, path: str, params: dict[str, Any]) -> str:
    parts = [method.upper(), timestamp, nonce, path]
    if params:
        parts.append(canonical_params(params))
    return "\n".join(parts)


def signature(secret: str, text: str) -> str:
    return base64.b64encode(hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).digest()).decode()


def signed_headers(*, method: str, path: str, params: dict[str, Any], app_key: str, app_secret: str,
                   now: datetime | None = None, nonce: str | None = None, client_ip: str | None = None,
                   client_mac: str | None = None) -> dict[str, str]:
    """The X-Hmac-Auth-* headers for one call."""
    moment = (now or datetime.now(UTC)).astimezone(BEIJING)
    timestamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+08:00"
    nonce = nonce or f"{int(moment.timestamp() * 1000)}{random.randint(1000, 9999)}"
    headers = {"X-Hmac-Auth-Timestamp": timestamp, "X-Hmac-Auth-Version": "1.0", "X-Hmac-Auth-Nonce": nonce,
               "apiKey": app_key,
               "X-Hmac-Auth-Signature": signature(app_secret, string_to_sign(method, timestamp, nonce, path, params))}
    if client_ip:
        headers["X-Hmac-Auth-IP"] = client_ip
    if client_mac:
        headers["X-Hmac-Auth-MAC"] = client_mac
    return headers


def send_work_notice(*, base: str, app_key: str, app_secret: str, tenant_id: str, account_id: str, content: str,
                     biz_msg_id: str, timeout: float = 10, client_ip: str | None = None,
                     client_mac: str | None = None) -> dict[str, Any]:
    """Send one text work notification to one 浙政钉 accountId. Returns the platform's answer; raises RuntimeError."""
    params = {"tenantId": tenant_id, "receiverIds": account_id, "bizMsgId": biz_msg_id,
              "msg": json.dumps({"msgtype": "text", "text": {"content": content}}, ensure_ascii=False)}
    headers = signed_headers(method="POST", path=WORK_NOTICE_PATH, params=params, app_key=app_key,
                             app_secret=app_secret, client_ip=client_ip, client_mac=client_mac)
    what = "浙政钉工作通知接口"
    resp = call(_session, "POST", f"{base}{WORK_NOTICE_PATH}", what=what, timeout=timeout, data=params,
                headers=headers)
    data = json_answer(resp, what)
    content_part = data.get("content") if isinstance(data, dict) else None
    ok = isinstance(data, dict) and data.get("success") is True
    if ok and isinstance(content_part, dict) and content_part.get("success") is False:
        ok = False
    if not ok:
        detail = data if not isinstance(data, dict) else {k: data.get(k) for k in ("errorCode", "errorMsg",
                                                                                  "errcode", "errmsg", "content")}
        raise RuntimeError(f"浙政钉工作通知发送失败：{json.dumps(detail, ensure_ascii=False)[:300]}")
    return data
