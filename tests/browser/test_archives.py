"""Physician archives walked in Chromium (seed 000 §一.1, §一.4): 医务处 opens the list through the menu, filters
and searches, opens a physician, adds a 工作经历 record (effective at once for the office) and sees the
completeness rise; a physician sees their own archive, is refused another department's (a Chinese 403 page),
submits an 教育经历 record that needs review, and 医务处 approves it in the archive change review task."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import shot

pytestmark = pytest.mark.browser

SCHOOL = "复旦大学上海医学院（浏览器演示）"
EMPLOYER = "杭州市第一人民医院（浏览器演示）"


def _menu(page, group: str, item: str) -> None:
    page.locator(".navgroup-label", has_text=group).hover()
    page.locator(".navgroup-menu a", has_text=item).first.click()


def _completeness(page) -> int:
    text = page.inner_text(".card dl.kv dd b")
    match = re.fullmatch(r"(\d+)%", text.strip())
    assert match, text
    return int(match.group(1))


def test_office_and_physician_walk_the_archives(new_page, live_server):
    base = live_server["url"]

    mao = new_page("mao")
    card_doc_id = _user_id(mao, base, "D2002")
    mao.goto(base + "/tasks/")
    _menu(mao, "医师档案", "医师档案")
    mao.wait_for_url("**/archives/")
    assert "医师技术档案" in mao.inner_text("h1")
    listed = mao.inner_text("table.grid tbody")
    assert "陈医生" in listed and "孙医生" in listed

    # filter by department, then search by staff number
    mao.select_option("select[name=dept]", label="心内科")
    mao.click("form.filters button:has-text('查询')")
    mao.wait_for_url(re.compile(r".*dept=\d+.*"))
    listed = mao.inner_text("table.grid tbody")
    assert "孙医生" in listed and "赵主任" in listed and "陈医生" not in listed
    mao.select_option("select[name=dept]", value="")
    mao.fill("input[name=q]", "D1002")
    mao.click("form.filters button:has-text('查询')")
    mao.wait_for_url(re.compile(r".*q=D1002.*"))
    rows = mao.locator("table.grid tbody tr")
    assert rows.count() == 1 and "陈医生" in rows.first.inner_text()
    shot(mao, "archives-1-list")
    rows.first.locator("a", has_text="陈医生").click()
    mao.wait_for_url(re.compile(r".*/archives/\d+$"))
    archive_url = mao.url
    assert "陈医生" in mao.inner_text("h1")
    before = _completeness(mao)
    assert before < 100 and "工作经历" in mao.inner_text("#missing-items")

    # 工作经历 (required, empty in the demo data): the office saves it directly
    mao.locator("nav.archive-tabs a", has_text="工作经历").click()
    mao.wait_for_selector("text=暂无工作经历记录")
    mao.click("a.button:has-text('新增工作经历')")
    mao.wait_for_selector("form[method=post]")
    mao.fill("[name=start_date]", "2009-07-01")
    mao.fill("[name=end_date]", "2012-06-30")
    mao.click("main form button[type=submit]")
    assert "工作单位" in mao.inner_text("#form-errors")  # required field left empty: the form says which
    mao.fill("[name=employer]", EMPLOYER)
    mao.fill("[name=department]", "普外科")
    mao.fill("[name=position]", "住院医师")
    shot(mao, "archives-2-work-form")
    mao.click("main form button[type=submit]")
    mao.wait_for_selector("text=已保存并生效")
    row = mao.locator("table.grid tbody tr", has_text=EMPLOYER)
    assert "已生效" in row.inner_text() and "2009-07-01" in row.inner_text()
    after = _completeness(mao)
    assert after > before
    assert "工作经历" not in (mao.inner_text("#missing-items") if mao.locator("#missing-items").count() else "")
    shot(mao, "archives-3-work-listed")

    # a physician: own archive through the menu, another department's is refused
    doctor = new_page("gs_doc")
    _menu(doctor, "医师档案", "我的档案")
    doctor.wait_for_url(archive_url)
    assert "陈医生" in doctor.inner_text("h1") and _completeness(doctor) == after
    assert "医师档案" not in [a.inner_text() for a in doctor.locator(".navgroup-menu a").all()]
    other = doctor.goto(base + f"/archives/{card_doc_id}")
    assert other is not None and other.status == 403
    assert "没有权限查看该人员的档案" in doctor.inner_text("main")
    shot(doctor, "archives-4-forbidden")

    # 教育经历 needs review when the physician changes it
    doctor.goto(archive_url + "?tab=education")
    doctor.click("a.button:has-text('新增教育经历')")
    assert "需医务处审核" in doctor.inner_text("main")
    doctor.fill("[name=start_date]", "2009-09-01")
    doctor.fill("[name=end_date]", "2012-07-01")
    doctor.fill("[name=school]", SCHOOL)
    doctor.fill("[name=major]", "外科学")
    doctor.select_option("[name=education]", "硕士研究生")
    doctor.select_option("[name=degree]", "硕士")
    doctor.fill("#f-reason", "补充硕士研究生学历")
    doctor.click("main form button:has-text('提交审核')")
    doctor.wait_for_selector("text=已提交医务处审核")
    row = doctor.locator("table.grid tbody tr", has_text=SCHOOL)
    assert "新增待审核" in row.inner_text() and "已生效" not in row.inner_text()
    changes = doctor.locator("main .card:has(h2:has-text('审核中的变更'))")
    assert "教育经历" in changes.inner_text() and "待审核" in changes.inner_text()
    shot(doctor, "archives-5-education-submitted")
    # the submitter follows their review process from the archive
    changes.locator("a", has_text="流程").click()
    doctor.wait_for_url(re.compile(r".*/workflow/instances/\d+$"))
    assert "医师档案变更审核" in doctor.inner_text("main") and "医务处审核档案变更" in doctor.inner_text("main")

    # 医务处 claims and approves the change in the task list
    mao.goto(base + "/tasks/group")
    task_row = mao.locator("#task-list tr", has_text="医务处审核档案变更").first
    task_row.locator("button", has_text="认领").click()
    mao.wait_for_selector("#task-form")
    context = mao.inner_text(".context")
    assert SCHOOL in context and "陈医生" in context
    mao.check("input[name=decision][value=approve]")
    mao.fill("textarea[name=comment]", "与学位证一致")
    shot(mao, "archives-6-review-task")
    mao.click("#task-form button[type=submit]")
    mao.wait_for_selector("text=「医务处审核档案变更」已提交")

    doctor.goto(archive_url + "?tab=education")
    row = doctor.locator("table.grid tbody tr", has_text=SCHOOL)
    assert "已生效" in row.inner_text() and "审核" not in row.inner_text()
    assert doctor.locator("h2:has-text('审核中的变更')").count() == 0
    shot(doctor, "archives-7-education-effective")
    row.locator("a", has_text="历史").click()
    doctor.wait_for_selector("h1:has-text('变更历史')")
    version = doctor.inner_text("#v1")
    assert "已生效" in version and "审核意见：与学位证一致" in version and "王医务" in version
    assert "来源 页面录入" in version and SCHOOL in version


def _user_id(page, base: str, staff_no: str) -> int:
    """The archive id (user id) of a staff number, read from the office's list."""
    page.goto(base + f"/archives/?q={staff_no}")
    href = page.locator("table.grid tbody tr a").first.get_attribute("href") or ""
    return int(href.rstrip("/").rsplit("/", 1)[-1])


AWARD = "院级优秀住院医师（浏览器演示）"


def _claim_review(mao, base: str, staff_name: str) -> None:
    mao.goto(base + "/tasks/group")
    row = mao.locator("#task-list tr", has_text="医务处审核档案变更").filter(has_text=staff_name).first
    row.locator("button", has_text="认领").click()
    mao.wait_for_selector("#task-form")


def test_returned_change_is_revised_from_the_archive_and_approved(new_page, live_server):
    base = live_server["url"]
    doctor = new_page("gs_doc2")
    _menu(doctor, "医师档案", "我的档案")
    doctor.wait_for_url(re.compile(r".*/archives/\d+$"))
    archive_url = doctor.url
    doctor.locator("nav.archive-tabs a", has_text="奖惩记录").click()
    doctor.click("a.button:has-text('新增奖惩记录')")
    doctor.check("input[name=kind][value=奖励]")
    doctor.fill("[name=date]", "2023-12-20")
    doctor.fill("[name=name]", AWARD)
    doctor.click("main form button:has-text('提交审核')")
    doctor.wait_for_selector("text=已提交医务处审核")

    mao = new_page("mao")
    _claim_review(mao, base, "刘医生")
    assert AWARD in mao.inner_text(".context")
    mao.check("input[name=decision][value=return]")
    mao.click("#task-form button[type=submit]")
    assert "审核意见" in mao.inner_text("main")  # a return needs a comment
    mao.check("input[name=decision][value=return]")
    mao.fill("textarea[name=comment]", "请补充奖励级别和发文单位")
    mao.click("#task-form button[type=submit]")
    mao.wait_for_selector("text=「医务处审核档案变更」已提交")

    doctor.goto(archive_url + "?tab=rewards_penalties")
    row = doctor.locator("table.grid tbody tr", has_text=AWARD)
    assert "退回修改" in row.inner_text() and "请补充奖励级别和发文单位" in row.inner_text()
    shot(doctor, "archives-8-returned")
    row.locator("a", has_text="修改").click()
    doctor.wait_for_selector("main form")
    assert doctor.input_value("[name=name]") == AWARD
    doctor.select_option("[name=level]", "院级")
    doctor.fill("[name=issuer]", "院长办公室")
    doctor.fill("#f-reason", "已补充级别和发文单位")
    doctor.click("main form button:has-text('提交审核')")
    doctor.wait_for_selector("text=已提交医务处审核")
    row = doctor.locator("table.grid tbody tr", has_text=AWARD)
    assert "待审核" in row.inner_text() and "退回" not in row.inner_text()
    # the revision task closed itself when the record was resubmitted
    doctor.goto(base + "/tasks/")
    assert "修改档案变更" not in doctor.inner_text("main")

    _claim_review(mao, base, "刘医生")
    context = mao.inner_text(".context")
    assert "院长办公室" in context and "院级" in context
    mao.check("input[name=decision][value=approve]")
    mao.click("#task-form button[type=submit]")
    mao.wait_for_selector("text=「医务处审核档案变更」已提交")

    doctor.goto(archive_url + "?tab=rewards_penalties")
    row = doctor.locator("table.grid tbody tr", has_text=AWARD)
    assert "已生效" in row.inner_text() and "院级" in row.inner_text()
    shot(doctor, "archives-9-revised-effective")
