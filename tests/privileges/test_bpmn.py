"""The shipped privilege_grant BPMN and privilege_levels DMN, run directly with SpiffWorkflow (no engine)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine, TaskDataEnvironment
from SpiffWorkflow.spiff.parser import VALIDATOR, SpiffBpmnParser
from SpiffWorkflow.util.task import TaskState

ROOT = Path(__file__).resolve().parents[2]
BPMN = ROOT / "processes" / "privilege_grant.bpmn"
DMN = ROOT / "processes" / "privilege_levels.dmn"
REVIEWS = ("dept_review", "mao_review", "committee_review")


@pytest.fixture(scope="module")
def spec():
    parser = SpiffBpmnParser(validator=VALIDATOR)
    parser.add_bpmn_file(str(BPMN))
    parser.add_dmn_file(str(DMN))
    return parser.get_spec("privilege_grant"), parser.get_subprocess_specs("privilege_grant")


def base_data(**overrides):
    data = {
        "application_id": 1, "application_no": "QX000001", "applicant_name": "陈医生", "reason": "工作需要",
        "items": [], "categories": ["basic"], "max_surgery_grade": 0, "max_anesthesia_grade": 0,
        "max_endoscopy_grade": 0, "max_antibacterial_level": 0, "reminder_duration": "P3D",
    }
    data.update(overrides)
    return data


class Run:
    def __init__(self, spec, data):
        self.notices: list[dict] = []
        env = TaskDataEnvironment({"notify": lambda **kw: self.notices.append(kw)})
        top, subprocesses = spec
        self.wf = BpmnWorkflow(top, subprocesses, script_engine=PythonScriptEngine(environment=env))
        for task in self.wf.get_tasks(state=TaskState.READY):
            task.data.update(data)
        self.wf.do_engine_steps()

    def ready(self) -> list[str]:
        return sorted(t.task_spec.name for t in self.wf.get_tasks(state=TaskState.READY, manual=True))

    def complete(self, name: str, **data):
        tasks = [t for t in self.wf.get_tasks(state=TaskState.READY, manual=True) if t.task_spec.name == name]
        assert tasks, f"{name} is not ready; ready: {self.ready()}"
        tasks[0].data.update(data)
        tasks[0].run()
        self.wf.do_engine_steps()

    def route(self) -> list[str]:
        return [t.task_spec.name for t in self.wf.get_tasks(state=TaskState.COMPLETED)
                if t.task_spec.bpmn_id is not None]

    @property
    def data(self) -> dict:
        return self.wf.last_task.data if self.wf.last_task else {}


def test_spec_has_lanes_forms_and_properties(spec):
    top, _ = spec
    assert top.name == "privilege_grant" and top.description == "医疗权限申请与授权"
    lanes = {name: top.task_specs[name].lane for name in ("dept_review", "mao_review", "committee_review", "revise")}
    assert lanes == {"dept_review": "dept_group", "mao_review": "mao", "committee_review": "committee",
                     "revise": "physician"}
    for name in REVIEWS:
        ext = top.task_specs[name].extensions
        assert ext["properties"]["can_send_back"] == "true" and ext["properties"]["due_days"] == "3"
        assert (ROOT / "forms" / ext["formJsonSchemaFilename"]).is_file()
    assert top.task_specs["revise"].extensions["properties"]["assignee"] == "initiator"
    for form in (ROOT / "forms").glob("privilege_*.json"):
        if not form.name.endswith(".ui.json"):
            Draft202012Validator.check_schema(json.loads(form.read_text(encoding="utf-8")))


def test_approve_all_goes_through_the_committee_for_a_grade_4_operation(spec):
    run = Run(spec, base_data(categories=["surgery"], max_surgery_grade=4))
    assert run.ready() == ["dept_review"]
    run.complete("dept_review", decision="approve", score=92)
    assert run.ready() == ["mao_review"]
    run.complete("mao_review", decision="approve")
    assert run.ready() == ["committee_review"]
    run.complete("committee_review", decision="approve", comment="同意")
    assert run.wf.is_completed()
    assert run.data["final_decision"] == "approved" and run.data["needs_committee"] is True
    assert run.route()[-2:] == ["set_approved", "approved"]


def test_reject_at_the_department_ends_rejected(spec):
    run = Run(spec, base_data(categories=["surgery"], max_surgery_grade=3))
    run.complete("dept_review", decision="reject", score=40, comment="操作考核不合格")
    assert run.wf.is_completed()
    assert run.data["final_decision"] == "rejected"
    assert "mao_review" not in run.route() and run.route()[-1] == "rejected"


def test_return_then_resubmit_goes_back_to_the_department(spec):
    run = Run(spec, base_data())
    run.complete("dept_review", decision="return", score=70, comment="请补充培训证明")
    assert run.ready() == ["revise"]
    run.complete("revise", reason="工作需要，已补充培训证明", revision_note="已上传")
    assert run.ready() == ["dept_review"]
    run.complete("dept_review", decision="approve", score=85)
    run.complete("mao_review", decision="return", comment="职称证书不清晰")
    assert run.ready() == ["revise"]
    run.complete("revise", reason="再次提交", revision_note="已补交")
    assert run.ready() == ["dept_review"]
    run.complete("dept_review", decision="approve", score=85)
    run.complete("mao_review", decision="approve")
    assert run.wf.is_completed() and run.data["final_decision"] == "approved"
    assert run.route().count("revise") == 2


def test_basic_item_skips_the_committee(spec):
    run = Run(spec, base_data(categories=["basic"]))
    run.complete("dept_review", decision="approve", score=90)
    run.complete("mao_review", decision="approve")
    assert run.wf.is_completed()
    assert run.data["needs_committee"] is False and run.data["final_decision"] == "approved"
    assert "committee_review" not in run.route()


@pytest.mark.parametrize("data, expected", [
    ({"max_surgery_grade": 2, "categories": ["surgery"]}, False),
    ({"max_surgery_grade": 3, "categories": ["surgery"]}, True),
    ({"max_anesthesia_grade": 3, "categories": ["anesthesia"]}, True),
    ({"max_endoscopy_grade": 2, "categories": ["endoscopy"]}, False),
    ({"max_endoscopy_grade": 4, "categories": ["endoscopy"]}, True),
    ({"max_antibacterial_level": 2, "categories": ["special"]}, False),
    ({"max_antibacterial_level": 3, "categories": ["special"]}, True),
    ({"categories": ["restricted_tech"]}, True),
    ({"categories": ["basic", "new_tech"]}, True),
    ({"categories": ["invasive", "emergency"]}, False),
])
def test_dmn_decides_when_the_committee_is_needed(spec, data, expected):
    run = Run(spec, base_data(**data))
    assert run.ready() == ["dept_review"]
    assert run.wf.get_tasks(state=TaskState.READY, manual=True)[0].data["needs_committee"] is expected


def test_committee_reject_and_return(spec):
    run = Run(spec, base_data(categories=["restricted_tech"]))
    run.complete("dept_review", decision="approve", score=95)
    run.complete("mao_review", decision="approve")
    run.complete("committee_review", decision="return", comment="请补充病例数")
    assert run.ready() == ["revise"]
    run.complete("revise", reason="补充", revision_note="已补充")
    run.complete("dept_review", decision="approve", score=95)
    run.complete("mao_review", decision="approve")
    run.complete("committee_review", decision="reject", comment="条件不足")
    assert run.wf.is_completed() and run.data["final_decision"] == "rejected"


def test_overdue_review_sends_a_reminder_and_keeps_the_task(spec):
    run = Run(spec, base_data(reminder_duration="PT0S"))
    time.sleep(0.01)
    run.wf.refresh_timers()
    run.wf.do_engine_steps()
    assert run.notices and run.notices[0]["role"] == "dept_group"
    assert "QX000001" in run.notices[0]["body"]
    assert run.ready() == ["dept_review"]  # non-interrupting: the review is still open
    assert not run.wf.is_completed()
    run.complete("dept_review", decision="reject", score=10, comment="不合格")
    assert run.wf.is_completed() and run.data["final_decision"] == "rejected"
