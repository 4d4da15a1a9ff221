"""Engine operations on PostgreSQL: start, claim, complete, send back, delegate, withdraw, terminate,
messages, timers, versions, bad BPMN and restricted scripts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from app.errors import Conflict, Forbidden, InvalidTransition, NotFound, ValidationFailed
from app.notify.models import Notification
from app.workflow import hooks, services
from app.workflow.models import HumanTask, MessageWait, ProcessInstance, ProcessVersion, TaskLog

FIXTURES = Path(__file__).parent / "fixtures"
BPMN = (FIXTURES / "review.bpmn").read_text(encoding="utf-8")
DMN = {"test_levels.dmn": (FIXTURES / "test_levels.dmn").read_text(encoding="utf-8")}


@pytest.fixture
def deployed(db_session, user):
    from app.forms import services as forms

    forms.sync_files(FIXTURES)
    return services.upload_version(bpmn_xml=BPMN, dmn=DMN, actor=user("flow"), note="测试")


def _start(user, who="gs_doc", *, grade=1, duration="P1D", key="A-1"):
    return services.start(key="test_review", business_key=key, title=f"测试申请 {key}", actor=user(who),
                          data={"grade": grade, "reminder_duration": duration})


def _ready(instance):
    return list(services.db.session.scalars(
        select(HumanTask).where(HumanTask.instance_id == instance.id, HumanTask.status == "ready")))


def test_start_projects_a_group_task_for_the_lane_role(deployed, user):
    inst = _start(user, grade=3)
    [task] = _ready(inst)
    assert (task.name, task.role_code, task.assignee_id) == ("医务处审核", "mao", None)
    assert task.form_key == "test_review" and task.due_at is not None
    assert inst.current_nodes == ["review"] and "decide" in inst.done_nodes
    assert services.instance_data(inst)["needs_committee"] is True  # the DMN decided
    mao, doctor = user("mao"), user("gs_doc")
    assert task in services.db.session.scalars(services.group_tasks_query(mao)).all()
    assert services.db.session.scalars(services.group_tasks_query(doctor)).all() == []
    notes = services.db.session.scalars(select(Notification).where(Notification.user_id == mao.id)).all()
    assert any("新待办" in n.title for n in notes)


def test_bad_form_data_is_refused_with_paths_and_changes_nothing(deployed, user, db_session):
    inst = _start(user)
    [task] = _ready(inst)
    before = inst.serialized
    with pytest.raises(ValidationFailed) as err:
        services.complete(task_id=task.id, actor=user("mao"), data={"decision": "maybe", "score": 300})
    paths = {e["path"]: e["message"] for e in err.value.errors}
    assert set(paths) == {"decision", "score"}
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in m) for m in paths.values())
    db_session.refresh(task)
    db_session.refresh(inst)
    assert task.status == "ready" and inst.serialized == before


def test_only_candidates_may_complete(deployed, user):
    inst = _start(user)
    [task] = _ready(inst)
    with pytest.raises(Forbidden):
        services.complete(task_id=task.id, actor=user("gs_head"), data={"decision": "approve", "score": 90})


def test_claimed_task_belongs_to_the_claimer(deployed, user, db_session):
    inst = _start(user)
    [task] = _ready(inst)
    services.claim(task_id=task.id, actor=user("mao"))
    with pytest.raises(Forbidden):
        services.complete(task_id=task.id, actor=user("admin"), data={"decision": "approve", "score": 90})
    services.unclaim(task_id=task.id, actor=user("mao"))
    assert task.assignee_id is None


def test_approve_then_message_completes_and_duplicate_message_is_ignored(deployed, user, db_session):
    ended = []
    hooks.on_end("test_review")(lambda **kw: ended.append(kw["data"].get("final_decision")))
    try:
        inst = _start(user, key="A-2")
        [task] = _ready(inst)
        services.complete(task_id=task.id, actor=user("mao"), data={"decision": "approve", "score": 95})
        assert inst.status == "running" and inst.current_nodes == ["wait_signed"]
        wait = db_session.scalar(select(MessageWait).where(MessageWait.instance_id == inst.id))
        assert (wait.message_name, wait.correlation_key) == ("signed", "A-2")
        with pytest.raises(NotFound):
            services.deliver_message(name="signed", correlation_key="NOPE", message_id="x0")
        out = services.deliver_message(name="signed", correlation_key="A-2", payload={"by": "HIS"},
                                       message_id="his-1", sender="HIS")
        assert out == {"status": "delivered", "instance_id": inst.id}
        assert inst.status == "completed" and inst.ended_at is not None
        again = services.deliver_message(name="signed", correlation_key="A-2", message_id="his-1", sender="HIS")
        assert again["status"] == "duplicate"
        assert ended == [None]
        with pytest.raises(Conflict):
            services.complete(task_id=task.id, actor=user("mao"), data={"decision": "approve", "score": 95})
    finally:
        hooks.END_HOOKS.pop("test_review", None)


def test_send_back_goes_to_the_initiator_and_comes_back(deployed, user):
    inst = _start(user, key="A-3")
    [task] = _ready(inst)
    with pytest.raises(ValidationFailed):
        services.send_back(task_id=task.id, actor=user("mao"), reason="  ")
    services.send_back(task_id=task.id, actor=user("mao"), reason="请补充材料")
    [revise] = _ready(inst)
    assert revise.name == "申请人修改" and revise.assignee_id == user("gs_doc").id
    services.complete(task_id=revise.id, actor=user("gs_doc"), data={"reason": "已补充"})
    [review] = _ready(inst)
    assert review.spec_name == "review"
    actions = [h.action for h in services.history(inst.id)]
    assert actions == ["start", "send_back", "complete"]


def test_reject_ends_the_instance_as_rejected(deployed, user):
    inst = _start(user, key="A-4")
    [task] = _ready(inst)
    services.complete(task_id=task.id, actor=user("mao"), data={"decision": "reject", "score": 10, "comment": "不符合"})
    assert inst.status == "rejected"
    assert _ready(inst) == []


def test_delegate_hands_the_task_over_within_scope(deployed, user, db_session):
    from app.auth.services import create_user

    inst = _start(user, key="A-5")
    [task] = _ready(inst)
    colleague = create_user(username="mao2", name="赵医务", password=None, dept=user("mao").dept, roles=["mao"])
    with pytest.raises(ValidationFailed):
        services.delegate(task_id=task.id, actor=user("mao"), to_user=user("gs_doc"))
    services.delegate(task_id=task.id, actor=user("mao"), to_user=colleague)
    assert task.assignee_id == colleague.id
    with pytest.raises(Forbidden):
        services.complete(task_id=task.id, actor=user("mao"), data={"decision": "approve", "score": 80})


def test_withdraw_and_terminate(deployed, user):
    inst = _start(user, key="A-6")
    with pytest.raises(Forbidden):
        services.withdraw(instance_id=inst.id, actor=user("mao"), reason="x")
    services.withdraw(instance_id=inst.id, actor=user("gs_doc"), reason="申请有误")
    assert inst.status == "withdrawn" and _ready(inst) == []
    with pytest.raises(InvalidTransition):
        services.withdraw(instance_id=inst.id, actor=user("gs_doc"), reason="again")
    other = _start(user, key="A-7")
    with pytest.raises(Forbidden):
        services.terminate(instance_id=other.id, actor=user("mao"), reason="x")
    services.terminate(instance_id=other.id, actor=user("flow"), reason="流程调整")
    assert other.status == "terminated"


def test_due_timer_reminds_the_reviewers(deployed, user, db_session):
    inst = _start(user, key="A-8", duration="PT1S")
    assert inst.next_timer_at is not None
    assert services.fire_due_timers() == 0  # not due yet
    time.sleep(1.2)
    assert services.fire_due_timers() == 1
    reminders = db_session.scalars(select(Notification).where(Notification.kind == "reminder")).all()
    assert {n.user_id for n in reminders} >= {user("mao").id}
    assert "timer" in [h.action for h in services.history(inst.id)]
    # the reminder path does not cancel the review itself
    assert [t.spec_name for t in _ready(inst)] == ["review"]
    assert inst.next_timer_at is None


def test_running_instances_keep_their_version(deployed, user):
    old = _start(user, key="V-1")
    v2 = services.upload_version(bpmn_xml=BPMN.replace("医务处审核", "医务处审核（新版）"), dmn=DMN,
                                 actor=user("flow"), expected_key="test_review")
    assert v2.version == deployed.version + 1
    new = _start(user, key="V-2")
    assert (old.version_id, new.version_id) == (deployed.id, v2.id)
    [t_old] = _ready(old)
    [t_new] = _ready(new)
    assert (t_old.name, t_new.name) == ("医务处审核", "医务处审核（新版）")
    services.complete(task_id=t_old.id, actor=user("mao"), data={"decision": "reject", "score": 1})
    assert old.status == "rejected"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda x: x.replace("<bpmn:process", "<bpmn:proces", 1), "XML"),
        (lambda x: x.replace('<bpmn:flowNodeRef>review</bpmn:flowNodeRef>', ''), "医务处审核"),
        (lambda x: x.replace("<spiffworkflow:formJsonSchemaFilename>test_review.json</spiffworkflow:formJsonSchemaFilename>", ""), "医务处审核"),
        (lambda x: x.replace('targetRef="wait_signed"', 'targetRef="nowhere"'), "nowhere"),
    ],
)
def test_broken_upload_is_refused_naming_the_element(deployed, user, db_session, mutate, expected):
    with pytest.raises(ValidationFailed) as err:
        services.upload_version(bpmn_xml=mutate(BPMN), dmn=DMN, actor=user("flow"), expected_key="test_review")
    message = err.value.errors[0]["message"]
    assert expected in message, message
    assert services.active_version("test_review").id == deployed.id
    assert db_session.scalar(select(ProcessVersion.id).where(ProcessVersion.version == deployed.version + 1)) is None


@pytest.mark.parametrize("script", ["import os", "x = ().__class__.__base__", "open('/etc/passwd')"])
def test_scripts_run_restricted(deployed, user, script):
    bad = BPMN.replace("final_decision = 'rejected'", script)
    services.upload_version(bpmn_xml=bad, dmn=DMN, actor=user("flow"), expected_key="test_review")
    inst = _start(user, key="R-1")
    [task] = _ready(inst)
    with pytest.raises(services.WorkflowFailed) as err:
        services.complete(task_id=task.id, actor=user("mao"), data={"decision": "reject", "score": 1})
    assert "记录不通过" in err.value.message


def test_task_log_records_origin(deployed, user):
    inst = _start(user, key="L-1")
    [task] = _ready(inst)
    services.complete(task_id=task.id, actor=user("mao"), data={"decision": "reject", "score": 5},
                      origin=services.Origin(address="10.1.2.3", terminal="护士站-3"))
    row = services.db.session.scalar(select(TaskLog).where(TaskLog.instance_id == inst.id, TaskLog.action == "complete"))
    assert (row.actor_name, row.address, row.terminal, row.data["score"]) == ("王医务", "10.1.2.3", "护士站-3", 5)
    assert services.db.session.get(ProcessInstance, inst.id).status == "rejected"


def test_running_instance_moves_to_a_new_version_when_the_diff_allows(deployed, user, db_session):
    inst = _start(user, key="M-1")
    v2 = services.upload_version(bpmn_xml=BPMN.replace('name="发送催办"', 'name="发送催办（新）"'), dmn=DMN,
                                 actor=user("flow"), expected_key="test_review")
    with pytest.raises(Forbidden):
        services.migrate_instance(instance_id=inst.id, actor=user("mao"))
    services.migrate_instance(instance_id=inst.id, actor=user("flow"))
    assert inst.version_id == v2.id
    [task] = _ready(inst)
    assert task.spec_name == "review"
    services.complete(task_id=task.id, actor=user("mao"), data={"decision": "reject", "score": 3})
    assert inst.status == "rejected"
    assert "migrate" in [h.action for h in services.history(inst.id)]


def test_migration_is_refused_when_the_current_node_is_gone(deployed, user):
    inst = _start(user, key="M-2")
    renamed = BPMN.replace('id="review"', 'id="review2"').replace('"review"', '"review2"') \
        .replace(">review<", ">review2<").replace('attachedToRef="review"', 'attachedToRef="review2"') \
        .replace('targetRef="review"', 'targetRef="review2"').replace('sourceRef="review"', 'sourceRef="review2"') \
        .replace('bpmnElement="review"', 'bpmnElement="review2"')
    services.upload_version(bpmn_xml=renamed, dmn=DMN, actor=user("flow"), expected_key="test_review")
    with pytest.raises(InvalidTransition) as err:
        services.migrate_instance(instance_id=inst.id, actor=user("flow"))
    assert "医务处审核" in err.value.message
    assert inst.version_id == deployed.id
