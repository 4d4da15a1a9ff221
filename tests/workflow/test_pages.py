"""Inbox, task form, instance page, process upload and the processes API through HTTP."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import select

from app.workflow import services
from app.workflow.models import HumanTask, ProcessVersion

FIXTURES = Path(__file__).parent / "fixtures"
BPMN = (FIXTURES / "review.bpmn").read_text(encoding="utf-8")
DMN = {"test_levels.dmn": (FIXTURES / "test_levels.dmn").read_text(encoding="utf-8")}


@pytest.fixture
def started(db_session, user):
    from app.forms import services as forms

    forms.sync_files(FIXTURES)
    services.upload_version(bpmn_xml=BPMN, dmn=DMN, actor=user("flow"))
    inst = services.start(key="test_review", business_key="P-1", title="页面测试申请", actor=user("gs_doc"),
                          data={"grade": 1, "reminder_duration": "P1D"})
    task = db_session.scalar(select(HumanTask).where(HumanTask.instance_id == inst.id))
    db_session.commit()
    return inst, task


def test_group_task_is_listed_claimed_and_completed_through_pages(client, login, started, db_session):
    inst, task = started
    token = login("mao")
    page = client.get("/tasks/group").get_data(as_text=True)
    assert "医务处审核" in page and "页面测试申请" in page
    resp = client.post(f"/tasks/{task.id}/claim", data={"csrf_token": token})
    assert resp.status_code == 302
    assert "医务处审核" in client.get("/tasks/").get_data(as_text=True)
    form_page = client.get(f"/tasks/{task.id}").get_data(as_text=True)
    assert "考核分数" in form_page and 'name="decision"' in form_page
    bad = client.post(f"/tasks/{task.id}", data={"csrf_token": token, "decision": "approve", "score": "abc"})
    assert bad.status_code == 400
    body = bad.get_data(as_text=True)
    assert "score" in body and "考核分数" in body
    db_session.expire_all()
    assert db_session.get(HumanTask, task.id).status == "ready"
    ok = client.post(f"/tasks/{task.id}", data={"csrf_token": token, "decision": "approve", "score": "88"})
    assert ok.status_code == 302
    db_session.expire_all()
    assert db_session.get(HumanTask, task.id).status == "completed"
    history = client.get(f"/workflow/instances/{inst.id}").get_data(as_text=True)
    assert "王医务" in history and "提交" in history and 'id="diagram"' in history


def test_task_post_without_csrf_is_refused(client, login, started):
    _inst, task = started
    login("mao")
    resp = client.post(f"/tasks/{task.id}", data={"decision": "approve", "score": "88"})
    assert resp.status_code == 400


def test_outsiders_cannot_open_tasks_or_instances(client, login, started):
    inst, task = started
    login("card_doc")
    assert client.get(f"/tasks/{task.id}").status_code == 403
    assert client.get(f"/workflow/instances/{inst.id}").status_code == 403
    assert client.get(f"/workflow/instances/{inst.id}/diagram.bpmn").status_code == 403


def test_applicant_sees_status_and_current_step(client, login, started):
    inst, _task = started
    login("gs_doc")
    page = client.get("/workflow/mine").get_data(as_text=True)
    assert "P-1" in page and "医务处审核" in page and "进行中" in page
    assert client.get(f"/workflow/instances/{inst.id}").status_code == 200


def test_upload_page_refuses_broken_bpmn_and_keeps_active_version(client, login, started, db_session):
    token = login("flow")
    active = services.active_version("test_review").id
    broken = BPMN.replace('targetRef="wait_signed"', 'targetRef="ghost"')
    resp = client.post("/workflow/processes/upload", data={
        "csrf_token": token, "key": "test_review", "bpmn": (io.BytesIO(broken.encode()), "review.bpmn"),
    }, content_type="multipart/form-data")
    assert resp.status_code == 400
    assert "ghost" in resp.get_data(as_text=True)
    db_session.expire_all()
    assert services.active_version("test_review").id == active
    good = client.post("/workflow/processes/upload", data={
        "csrf_token": token, "key": "test_review", "note": "调整",
        "bpmn": (io.BytesIO(BPMN.replace("医务处审核", "医务处复核").encode()), "review.bpmn"),
    }, content_type="multipart/form-data")
    assert good.status_code == 302
    db_session.expire_all()
    latest = services.active_version("test_review")
    assert latest.id != active and latest.source == "upload" and latest.dmn  # DMN carried over
    assert db_session.scalar(select(ProcessVersion.note).where(ProcessVersion.id == latest.id)) == "调整"


def test_process_admin_pages_need_permission(client, login, started):
    login("gs_doc")
    assert client.get("/workflow/processes").status_code == 403
    assert client.get("/workflow/processes/upload").status_code == 403
    login("flow")
    page = client.get("/workflow/processes/test_review").get_data(as_text=True)
    assert "生效中" in page


def test_processes_api_requires_token_or_admin(client, login, started, db_session):
    from app.auth.services import create_api_token

    assert client.get("/api/v1/processes").status_code == 401
    token = create_api_token(system="HIS")
    resp = client.get("/api/v1/processes", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    keys = {p["key"]: p for p in resp.get_json()["processes"]}
    assert keys["test_review"]["active_version"] >= 1 and keys["test_review"]["versions"]
    login("gs_doc")
    assert client.get("/api/v1/processes").status_code == 403
    login("flow")
    assert client.get("/api/v1/processes").status_code == 200


def test_message_api_delivers_once(client, started, db_session, user):
    from app.auth.services import create_api_token

    inst, task = started
    services.complete(task_id=task.id, actor=user("mao"), data={"decision": "approve", "score": 90})
    token = create_api_token(system="HIS")
    headers = {"Authorization": f"Bearer {token}"}
    bad = client.post("/api/v1/messages", json={"name": "signed"}, headers=headers)
    assert bad.status_code == 400
    assert {e["path"] for e in bad.get_json()["error"]["errors"]} == {"correlation_key"}
    body = {"name": "signed", "correlation_key": "P-1", "message_id": "HIS-77", "payload": {"by": "张三"}}
    first = client.post("/api/v1/messages", json=body, headers=headers)
    assert first.status_code == 200 and first.get_json()["status"] == "delivered"
    second = client.post("/api/v1/messages", json=body, headers=headers)
    assert second.get_json()["status"] == "duplicate"
    db_session.expire_all()
    assert services.db.session.get(type(inst), inst.id).status == "completed"


def test_json_complete_reports_field_paths(client, login, started, db_session):
    _inst, task = started
    token = login("mao")
    resp = client.post(f"/api/v1/tasks/{task.id}/complete", json={"data": {"decision": "approve"}},
                       headers={"X-CSRFToken": token})
    assert resp.status_code == 400
    err = resp.get_json()["error"]
    assert [e["path"] for e in err["errors"]] == ["score"]
    db_session.expire_all()
    assert db_session.get(HumanTask, task.id).status == "ready"
