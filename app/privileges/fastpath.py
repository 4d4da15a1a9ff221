"""The HIS check's short path: GET /api/v1/privileges/check from a hospital system, answered below Flask.

HIS asks for every prescription and procedure order, so the few hundred microseconds Flask spends per request
(request context, URL matching, before/after-request hooks, session, response object) are most of a check's cost.
This WSGI middleware answers the common case itself, in an app context only: a GET with a valid Bearer token, no
browser session cookie and well-formed parameters. It uses the same pieces as the Flask view (the cached token
verification, `_clean` for the parameters, `check.check` for the answer, the same JSON and security headers), so
both paths answer identically. Everything else (no or an invalid token, bad parameters, a session caller, POST, an
unexpected error) falls through to Flask, which gives its usual 400/401 answers with Chinese field errors.

PRIVILEGE_CHECK_FASTPATH=0 turns it off (every check goes through Flask).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask

log = logging.getLogger(__name__)

PATH = "/api/v1/privileges/check"


class CheckFastPath:
    def __init__(self, app: Flask, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.next = wsgi_app
        self.cookie = str(app.config.get("SESSION_COOKIE_NAME") or "session") + "="
        self.answered = 0  # how many checks took this path (tests and the benchmark read it)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "GET"
                or not environ.get("HTTP_AUTHORIZATION", "").startswith("Bearer ")
                or self.cookie in environ.get("HTTP_COOKIE", "")):
            return self.next(environ, start_response)
        try:
            body = self._answer(environ)
        except Exception:  # noqa: BLE001 - Flask answers (and logs) whatever went wrong here
            log.exception("privilege check short path failed; answering through Flask")
            body = None
        if body is None:
            return self.next(environ, start_response)
        self.answered += 1
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                  ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "SAMEORIGIN")])
        return [body]

    def _answer(self, environ: dict[str, Any]) -> bytes | None:
        from app.auth.services import verify_api_token_cached
        from app.privileges import check as checker
        from app.privileges.api import _answer, _clean

        with self.app.app_context():
            if verify_api_token_cached(environ["HTTP_AUTHORIZATION"][7:].strip()) is None:
                return None
            params = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
            errors: dict[str, str] = {}
            key = _clean(params, "", errors)
            if errors or key is None:
                return None
            answer = _answer(key, checker.check(*key))
        # what Flask's jsonify writes (sorted keys, ASCII), so both paths give byte-identical bodies
        return (json.dumps(answer, sort_keys=True, separators=(",", ":")) + "\n").encode()


def install(app: Flask) -> None:
    import os

    from app.privileges.check import _flag

    if _flag(app.config.get("PRIVILEGE_CHECK_FASTPATH", os.environ.get("PRIVILEGE_CHECK_FASTPATH")), True):
        app.wsgi_app = CheckFastPath(app, app.wsgi_app)  # type: ignore[method-assign]
        app.extensions["privilege_check_fastpath"] = app.wsgi_app
