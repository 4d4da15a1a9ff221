"""The embedded default: SQLite file, in-process work; the README's run path on a fresh database."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
MEDLOOP = str(Path(sys.executable).parent / "medloop")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sqlite_env(tmp_path_factory):
    path = tmp_path_factory.mktemp("embedded") / "medloop.sqlite"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["DATABASE_URL"] = f"sqlite:///{path}"
    for args in (["db", "upgrade"], ["demo"], ["demo"]):  # demo twice: it must be idempotent
        out = subprocess.run([MEDLOOP, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-2000:]
    return env


def test_cli_token_and_user_commands(sqlite_env):
    out = subprocess.run([MEDLOOP, "token", "create", "--system", "LIS"], cwd=ROOT, env=sqlite_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().startswith("ml_")
    bad = subprocess.run([MEDLOOP, "user", "create", "--username", "x1", "--name", "测试", "--password", "short",
                          "--role", "physician"], cwd=ROOT, env=sqlite_env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "密码" in bad.stderr
    ok = subprocess.run([MEDLOOP, "user", "create", "--username", "x1", "--name", "测试", "--password", "Strong#Pass1",
                         "--role", "physician", "--dept", "GS"], cwd=ROOT, env=sqlite_env, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


def test_serve_runs_on_sqlite_and_a_user_can_log_in(sqlite_env):
    port = _free_port()
    proc = subprocess.Popen([MEDLOOP, "serve", "--port", str(port)], cwd=ROOT, env=sqlite_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            pytest.fail("serve did not come up: " + (proc.stdout.read() if proc.stdout else ""))
        s = requests.Session()
        page = s.get(f"{base}/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        resp = s.post(f"{base}/login", data={"username": "mao", "password": "Medloop@2026", "csrf_token": token})
        assert resp.status_code == 200 and "我的待办" in resp.text
        assert s.get(f"{base}/vendor/bpmn-js/dist/bpmn-navigated-viewer.production.min.js").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_workflow_runs_on_sqlite(tmp_path):
    from sqlalchemy import select

    from app import create_app
    from app.auth.models import User
    from app.db import db
    from app.forms import services as forms
    from app.workflow import services as wf
    from app.workflow.models import HumanTask
    from tests.conftest import make_config, reset_schema

    fixtures = ROOT / "tests" / "workflow" / "fixtures"
    application = create_app(make_config(f"sqlite:///{tmp_path / 'wf.sqlite'}"))
    reset_schema(application)
    with application.app_context():
        from app.demo import load_demo

        load_demo()
        forms.sync_files(fixtures)
        users = {u.username: u for u in db.session.scalars(select(User))}
        wf.upload_version(bpmn_xml=(fixtures / "review.bpmn").read_text(encoding="utf-8"),
                          dmn={"test_levels.dmn": (fixtures / "test_levels.dmn").read_text(encoding="utf-8")},
                          actor=users["flow"])
        inst = wf.start(key="test_review", business_key="S-1", title="SQLite", actor=users["gs_doc"],
                        data={"grade": 4, "reminder_duration": "P1D"})
        db.session.commit()
        task = db.session.scalar(select(HumanTask).where(HumanTask.instance_id == inst.id))
        wf.complete(task_id=task.id, actor=users["mao"], data={"decision": "approve", "score": 70})
        wf.deliver_message(name="signed", correlation_key="S-1", message_id="s-1", sender="HIS")
        db.session.commit()
        assert inst.status == "completed"
        timed = wf.start(key="test_review", business_key="S-2", title="SQLite 定时", actor=users["gs_doc"],
                         data={"grade": 1, "reminder_duration": "PT1S"})
        db.session.commit()
        timed_id = timed.id
        db.session.remove()
    time.sleep(1.2)
    from app.scheduler import run_due_work

    assert run_due_work(application) == 1  # the in-process scheduler's tick, as `medloop serve` runs it
    with application.app_context():
        from app.workflow.models import ProcessInstance

        assert db.session.get(ProcessInstance, timed_id).next_timer_at is None
        db.session.remove()
        db.engine.dispose()
