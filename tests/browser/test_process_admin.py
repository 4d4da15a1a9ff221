"""A process admin uploads a broken and then a good BPMN version in the browser; the diagram renders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.conftest import shot

pytestmark = pytest.mark.browser
FIXTURES = Path(__file__).resolve().parents[1] / "workflow" / "fixtures"


def test_bpmn_upload_refuses_broken_file_then_deploys_a_version(new_page, tmp_path, live_server):
    page = new_page("flow")
    page.hover(".navgroup-label:text('系统管理')")  # the menu opens on hover
    page.click(".navgroup-menu a:text('流程管理')")
    broken = tmp_path / "broken.bpmn"
    broken.write_text((FIXTURES / "review.bpmn").read_text(encoding="utf-8").replace('targetRef="wait_signed"',
                                                                                      'targetRef="ghost"'),
                      encoding="utf-8")
    page.click("text=上传新流程 / 新版本")
    page.set_input_files("input[name=bpmn]", str(broken))
    page.set_input_files("input[name=dmn]", str(FIXTURES / "test_levels.dmn"))
    page.click("text=校验并部署")
    assert "ghost" in page.inner_text("#upload-errors")
    assert "当前生效版本不变" in page.inner_text("#upload-errors")
    shot(page, "bpmn-upload-refused")

    page.set_input_files("input[name=bpmn]", str(FIXTURES / "review.bpmn"))
    page.set_input_files("input[name=dmn]", str(FIXTURES / "test_levels.dmn"))
    page.fill("input[name=note]", "浏览器上传")
    page.click("text=校验并部署")
    page.wait_for_selector("text=生效中")
    assert "浏览器上传" in page.inner_text("#versions")
    page.wait_for_selector("#diagram[data-rendered=true]")
    assert page.locator("#diagram .djs-element").count() > 5
    shot(page, "bpmn-version-deployed")
