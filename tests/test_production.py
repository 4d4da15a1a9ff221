"""The production setup: PostgreSQL + Redis + a real Celery worker firing due BPMN timers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from celery import Celery
from sqlalchemy import select
from sqlalchemy.engine import make_url

from app import create_app
from app.db import db
from tests.conftest import PG_URL, REDIS_URL, ensure_database, make_config, reset_schema

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "workflow" / "fixtures"


def test_celery_worker_on_redis_fires_due_timers():
    from app.auth.models import User
    from app.forms import services as forms
    from app.workflow import services as wf
    from app.workflow.models import ProcessInstance, TaskLog

    url = make_url(PG_URL).set(database=f"{make_url(PG_URL).database}_celery").render_as_string(hide_password=False)
    ensure_database(url)
    application = create_app(make_config(url))
    reset_schema(application)
    with application.app_context():
        from app.demo import load_demo

        load_demo()
        forms.sync_files(FIXTURES)
        users = {u.username: u for u in db.session.scalars(select(User))}
        wf.upload_version(bpmn_xml=(FIXTURES / "review.bpmn").read_text(encoding="utf-8"),
                          dmn={"test_levels.dmn": (FIXTURES / "test_levels.dmn").read_text(encoding="utf-8")},
                          actor=users["flow"])
        inst = wf.start(key="test_review", business_key="Q-1", title="定时器", actor=users["gs_doc"],
                        data={"grade": 1, "reminder_duration": "PT1S"})
        db.session.commit()
        instance_id = inst.id

    env = dict(os.environ, DATABASE_URL=url, REDIS_URL=REDIS_URL)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "wsgi:celery", "worker", "-P", "solo", "--loglevel=WARNING",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        time.sleep(1.2)
        client = Celery(broker=REDIS_URL)
        client.send_task("medloop.fire_due_timers")
        fired = False
        for _ in range(150):
            with application.app_context():
                fired = db.session.scalar(select(TaskLog.id).where(TaskLog.instance_id == instance_id,
                                                                   TaskLog.action == "timer")) is not None
                db.session.remove()
            if fired or worker.poll() is not None:
                break
            time.sleep(0.2)
        assert fired, worker.stdout.read() if worker.poll() is not None and worker.stdout else "timer not fired"
        with application.app_context():
            assert db.session.get(ProcessInstance, instance_id).next_timer_at is None
            db.session.remove()
            db.engine.dispose()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
