"""The clinical-privilege grant flow walked in Chromium through its four roles (seed 000 §三.3):
physician applies → department group scores → 医务处 reviews → committee approves → grant visible."""

from __future__ import annotations

import pytest

from tests.browser.conftest import shot

pytestmark = pytest.mark.browser

# ICD-9-CM-3 52.2201, in 普外科's 科室技术目录; demo grade 3 (主治医师 and above, so 陈医生 fits), so the committee
# must approve
ITEM = "胰腺病损切除术"


def _work_task(page, base: str, task_name: str, fill) -> None:
    page.goto(base + "/tasks/group")
    row = page.locator("#task-list tr", has_text=task_name).first
    row.locator("button", has_text="认领").click()
    page.wait_for_selector("#task-form")
    fill(page)
    page.click("#task-form button[type=submit]")
    page.wait_for_selector(f"text=「{task_name}」已提交")


def test_grant_flow_through_four_roles(new_page, live_server):
    base = live_server["url"]

    doctor = new_page("gs_doc")
    doctor.goto(base + "/privileges/apply?q=" + ITEM)
    doctor.check(f"tr:has-text('{ITEM}') input[name=item_ids]")
    assert "✓ 主治医师及以上" in doctor.inner_text(f"tr:has-text('{ITEM}')")
    doctor.fill("#f-reason", "已完成胰腺外科进修 6 个月，作为一助完成相关手术 30 例")
    shot(doctor, "grant-1-apply")
    doctor.click("#apply-form button.primary")
    doctor.wait_for_load_state()
    assert "科室考核" in doctor.content()

    head = new_page("gs_head")

    def bad_then_good(page):
        page.check("input[name=decision][value=approve]")
        page.fill("input[name=score]", "200")
        page.click("#task-form button[type=submit]")
        assert "考核成绩" in page.inner_text("#form-errors")
        shot(page, "grant-2-dept-review-error")
        page.check("input[name=decision][value=approve]")
        page.fill("input[name=score]", "92")
        page.fill("textarea[name=comment]", "理论与操作考核合格")

    _work_task(head, base, "科室考核", bad_then_good)

    mao = new_page("mao")
    _work_task(mao, base, "医务处审核", lambda p: p.check("input[name=decision][value=approve]"))

    committee = new_page("committee")

    def approve(page):
        page.check("input[name=decision][value=approve]")
        shot(page, "grant-3-committee")

    _work_task(committee, base, "小组批准", approve)

    doctor.goto(base + "/privileges/grants")
    assert ITEM in doctor.inner_text("main")
    shot(doctor, "grant-4-granted")

    doctor.goto(base + "/workflow/mine")
    doctor.locator("#my-instances a").first.click()
    doctor.wait_for_selector("#diagram[data-rendered=true]")
    assert "已通过" in doctor.inner_text("#instance-status")
    history = doctor.inner_text("table.history")
    for who in ("陈医生", "张主任", "王医务", "李主任委员"):
        assert who in history
    assert doctor.locator("#diagram .highlight-done").count() >= 4
    shot(doctor, "grant-5-instance")

    mao.goto(base + "/privileges/grants?q=" + ITEM)
    assert "陈医生" in mao.inner_text("main")
