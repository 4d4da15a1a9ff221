"""A new-technology application walked in Chromium (seed 000 §二.1): physician applies → 科主任 approves →
医务处 picks two experts → each expert scores in an own task → 医务处 sends it to ethics review (expedited,
two members) → each member gives an opinion → the committee's decision → 医务处 approves → Word letter."""

from __future__ import annotations

import re
from io import BytesIO

import pytest
from docx import Document

from tests.browser.conftest import shot

pytestmark = pytest.mark.browser

NAME = "经皮内镜下胃造瘘术（浏览器演示）"


def _submit_task(page, expect: str) -> None:
    page.click("#task-form button[type=submit]")
    page.wait_for_selector(f"text=「{expect}」已提交")


def _open_mine(page, base: str, task_name: str) -> None:
    page.goto(base + "/tasks/?q=" + NAME)
    page.locator("#task-list tr", has_text=task_name).first.locator("a", has_text=task_name).click()
    page.wait_for_selector("#task-form")


def _claim(page, base: str, task_name: str) -> None:
    page.goto(base + "/tasks/group?q=" + NAME)
    page.locator("#task-list tr", has_text=task_name).first.locator("button", has_text="认领").click()
    page.wait_for_selector("#task-form")


def test_new_technology_through_experts_and_ethics(new_page, live_server):
    base = live_server["url"]

    doctor = new_page("gs_doc")
    doctor.goto(base + "/technology/new-tech/apply")
    doctor.fill("#f-name", "")
    doctor.click("#project-form button[type=submit]")
    assert "name" in doctor.inner_text("#form-errors") and "“项目名称”为必填项" in doctor.inner_text("#form-errors")
    doctor.fill("#f-name", NAME)
    doctor.select_option("#f-category", "surgery")
    doctor.check("input[name=risk_level][value=medium]")
    doctor.check("input[name=ethics_required][value=true]")
    doctor.fill("#f-description", "适用于长期不能经口进食的患者，内镜引导下经皮置入胃造瘘管")
    doctor.fill("#f-expected_cases", "12")
    doctor.fill("#f-team", "陈医生 主治医师 术者\n刘医生 住院医师 助手")
    shot(doctor, "newtech-1-apply")
    doctor.click("#project-form button[type=submit]")
    doctor.wait_for_url(re.compile(r".*/technology/new-tech/\d+$"))
    project_url = doctor.url
    assert "科室审核中" in doctor.inner_text("#project-status")

    head = new_page("gs_head")
    _claim(head, base, "科室审核")
    head.check("input[name=decision][value=approve]")
    head.fill("textarea[name=comment]", "科室具备开展条件")
    _submit_task(head, "科室审核")

    mao = new_page("mao")
    mao.goto(project_url)
    mao.click("#go-assign-experts")
    mao.check("#experts-form tr:has-text('钱专家') input[name=expert_ids]")
    mao.click("#experts-form button[type=submit]")
    assert "请选择 2–9 位评审专家" in mao.inner_text("#form-errors")
    mao.check("#experts-form tr:has-text('钱专家') input[name=expert_ids]")
    mao.check("#experts-form tr:has-text('韩专家') input[name=expert_ids]")
    shot(mao, "newtech-2-experts")
    mao.click("#experts-form button[type=submit]")
    mao.wait_for_selector("text=已发出专家评审任务")
    assert "专家评审中" in mao.inner_text("#project-status")

    for username, score in (("expert1", "88"), ("expert2", "80")):
        expert = new_page(username)
        _open_mine(expert, base, "专家评审")
        assert NAME in expert.inner_text(".context")
        expert.fill("input[name=score]", score)
        expert.check("input[name=recommendation][value=support]")
        expert.fill("textarea[name=comment]", "技术成熟，团队具备条件")
        if username == "expert1":
            shot(expert, "newtech-3-expert-review")
        _submit_task(expert, "专家评审")

    mao.goto(project_url)
    assert "2 位专家，平均 84.0 分" in mao.inner_text("#expert-summary")
    assert "伦理审查中" in mao.inner_text("#project-status")
    mao.click("#go-ethics")
    mao.check("input[name=mode][value=expedited]")
    mao.check("label:has-text('蒋委员') input[name=member_ids]")
    mao.check("label:has-text('沈委员') input[name=member_ids]")
    shot(mao, "newtech-4-ethics-setup")
    mao.click("#ethics-setup-form button[type=submit]")
    mao.wait_for_selector("text=已提交伦理审查")

    for username, opinion in (("ethics1", "agree"), ("ethics2", "modify")):
        member = new_page(username)
        _open_mine(member, base, "委员审查意见")
        member.check(f"input[name=opinion][value={opinion}]")
        if opinion == "modify":
            member.fill("textarea[name=comment]", "知情同意书补充造瘘管护理说明")
        _submit_task(member, "委员审查意见")

    _claim(mao, base, "伦理委员会决定")
    assert "同意 1，修改后同意 1，不同意 0" in mao.inner_text("#ethics-summary")
    assert "无过半数意见" in mao.inner_text("#ethics-majority") and "修改后重审" in mao.inner_text("#ethics-majority")
    mao.check("input[name=decision][value=approve_modified]")
    mao.fill("textarea[name=conditions]", "按委员意见修改知情同意书")
    shot(mao, "newtech-5-ethics-decision")
    _submit_task(mao, "伦理委员会决定")

    mao.goto(project_url)
    assert "医务处审批中" in mao.inner_text("#project-status")
    letter_href = mao.get_attribute("#ethics-letter", "href")
    resp = mao.request.get(base + letter_href)
    assert resp.ok and "wordprocessingml" in resp.headers["content-type"]
    text = "\n".join(p.text for p in Document(BytesIO(resp.body())).paragraphs)
    assert "修改后同意" in text and "伦理审查决定书" in text

    _claim(mao, base, "医务处审批")
    mao.check("input[name=decision][value=approve]")
    _submit_task(mao, "医务处审批")
    doctor.goto(project_url)
    assert "开展中" in doctor.inner_text("#project-status")
    assert "钱专家" in doctor.inner_text("main") and "韩专家" in doctor.inner_text("main")
    shot(doctor, "newtech-6-approved")

    mao.goto(base + "/technology/new-tech/?status=tracking")
    assert NAME in mao.inner_text("#project-list")
