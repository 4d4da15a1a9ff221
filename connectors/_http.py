"""The HTTP call every outbound connector makes: a failure of any kind becomes a RuntimeError with a Chinese reason,
which the outbox counts as a failed attempt and retries."""

from __future__ import annotations

from typing import Any

import requests


def call(session: requests.Session, method: str, url: str, *, what: str, timeout: float, target: str = "",
         **kwargs: Any) -> requests.Response:
    """One request through `session`; raises RuntimeError on a timeout, a refused connection or a status outside
    2xx. `what` names the interface in the reason ("HIS 接口"); `target`, when given, is shown after it (the URL)."""
    where = f"：{target}" if target else ""
    gap = " " if what[:1].isascii() else ""  # 无法连接 HIS 接口, 无法连接浙政钉…
    try:
        resp = session.request(method, url, timeout=timeout, **kwargs)
    except requests.Timeout as exc:
        raise RuntimeError(f"{what}超时（{timeout:g} 秒）{where}") from exc
    except requests.ConnectionError as exc:
        raise RuntimeError(f"无法连接{gap}{what}{where}（{type(exc).__name__}）") from exc
    except requests.RequestException as exc:
        raise RuntimeError(f"{what}调用失败：{exc}") from exc
    if not 200 <= resp.status_code < 300:
        text = (resp.text or "").strip().replace("\n", " ")[:300]
        raise RuntimeError(f"{what}返回 HTTP {resp.status_code}：{text}")
    return resp


def json_answer(resp: requests.Response, what: str) -> Any:
    """The decoded JSON body of a 2xx answer; RuntimeError when it is not JSON."""
    try:
        return resp.json()
    except ValueError as exc:
        raise RuntimeError(f"{what}返回的不是 JSON：{(resp.text or '')[:200]}") from exc
