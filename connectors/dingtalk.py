"""DingTalk (钉钉) senders: the enterprise internal app's work notification and the group custom robot.

Work notification (工作通知, corp conversation asyncsend_v2):
  GET  {DINGTALK_API_BASE}/gettoken?appkey=…&appsecret=…      → {"errcode": 0, "access_token": …, "expires_in": 7200}
  POST {DINGTALK_API_BASE}/topapi/message/corpconversation/asyncsend_v2?access_token=…
       {"agent_id": …, "userid_list": "userid", "msg": {"msgtype": "text", "text": {"content": …}}}
  The token is cached per (base, appkey) until shortly before it expires, and dropped when DingTalk says it is
  invalid or expired, so the next attempt fetches a new one.

Group custom robot (自定义机器人, 加签): POST the webhook URL with `timestamp` (milliseconds) and
`sign` = urlencode(base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}"))) appended to its query.

Every function raises RuntimeError with a Chinese reason on any failure (HTTP error, timeout, errcode ≠ 0):
the outbox counts it as a failed attempt and retries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from typing import Any
from urllib.parse import quote_plus

import requests

from connectors._http import call, json_answer

DEFAULT_API_BASE = "https://oapi.dingtalk.com"
TOKEN_PATH = "/gettoken"
SEND_PATH = "/topapi/message/corpconversation/asyncsend_v2"
# errcodes meaning the access token is no longer good (不合法 / 过期)
TOKEN_ERRCODES = {40001, 40014, 42001}
TOKEN_MARGIN_SECONDS = 300

_session = requests.Session()
_tokens: dict[tuple[str, str], tuple[str, float]] = {}
_tokens_lock = threading.Lock()


def _call(method: str, url: str, what: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
    data = json_answer(call(_session, method, url, what=what, timeout=timeout, **kwargs), what)
    if not isinstance(data, dict):
        raise RuntimeError(f"{what}返回格式不正确：{str(data)[:200]}")
    return data


def access_token(*, base: str, appkey: str, appsecret: str, timeout: float = 10) -> str:
    """The enterprise app's access token, from the cache or fetched anew. Raises RuntimeError."""
    cache_key = (base, appkey)
    with _tokens_lock:
        cached = _tokens.get(cache_key)
        if cached and cached[1] > time.monotonic():
            return cached[0]
    data = _call("GET", f"{base}{TOKEN_PATH}", "钉钉获取 access_token 接口", timeout,
                 params={"appkey": appkey, "appsecret": appsecret})
    token = data.get("access_token")
    if data.get("errcode") not in (0, None) or not token:
        raise RuntimeError(f"钉钉获取 access_token 失败：errcode={data.get('errcode')} {data.get('errmsg') or ''}")
    expires_in = int(data.get("expires_in") or 7200)
    with _tokens_lock:
        _tokens[cache_key] = (str(token), time.monotonic() + max(60, expires_in - TOKEN_MARGIN_SECONDS))
    return str(token)


def forget_token(*, base: str, appkey: str) -> None:
    with _tokens_lock:
        _tokens.pop((base, appkey), None)


def send_work_notice(*, base: str, appkey: str, appsecret: str, agent_id: int, userid: str, content: str,
                     timeout: float = 10) -> dict[str, Any]:
    """Send one text work notification to one DingTalk userid. Returns DingTalk's answer; raises RuntimeError."""
    token = access_token(base=base, appkey=appkey, appsecret=appsecret, timeout=timeout)
    body = {"agent_id": agent_id, "userid_list": userid, "msg": {"msgtype": "text", "text": {"content": content}}}
    data = _call("POST", f"{base}{SEND_PATH}", "钉钉工作通知接口", timeout, params={"access_token": token}, json=body)
    errcode = data.get("errcode")
    if errcode != 0:
        if errcode in TOKEN_ERRCODES:
            forget_token(base=base, appkey=appkey)
        raise RuntimeError(f"钉钉工作通知发送失败：errcode={errcode} {data.get('errmsg') or ''}".strip())
    return data


def robot_sign(secret: str, timestamp_ms: int) -> str:
    """The custom robot's 加签 value for `timestamp_ms` (already URL-encoded, as DingTalk documents it)."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest).decode("ascii"))


def robot_url(webhook_url: str, secret: str | None, *, timestamp_ms: int | None = None) -> str:
    """The webhook URL with `timestamp` and `sign` appended when the robot has a signing secret."""
    if not secret:
        return webhook_url
    ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    joiner = "&" if "?" in webhook_url else "?"
    return f"{webhook_url}{joiner}timestamp={ts}&sign={robot_sign(secret, ts)}"


def send_robot(*, webhook_url: str, secret: str | None, content: str, timeout: float = 10) -> dict[str, Any]:
    """Post one text message through a group custom robot. Raises RuntimeError."""
    data = _call("POST", robot_url(webhook_url, secret), "钉钉群机器人", timeout,
                 json={"msgtype": "text", "text": {"content": content}})
    if data.get("errcode") not in (0, None):
        raise RuntimeError(f"钉钉群机器人发送失败：errcode={data.get('errcode')} {data.get('errmsg') or ''}".strip())
    return data
