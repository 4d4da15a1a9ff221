"""Technology pages: permissions (403), bad input (400 with field paths, nothing written), lists, exports."""

from __future__ import annotations

from io import BytesIO

from openpyxl import load_workbook
from sqlalchemy import func, select

from app.technology.models import EthicsReview, HighRiskItem, NewTechProject
from tests.conftest import csrf_from


def test_apply_page_submits_and_starts_the_flow(client, login, user, ready, db_session):
    token = login("gs_doc")
    assert "申请新技术新项目" in client.get("/technology/new-tech/apply").get_data(as_text=True)
    resp = client.post("/technology/new-tech/apply", data={
        "csrf_token": token, "name": "单孔腹腔镜阑尾切除术", "category": "surgery", "risk_level": "low",
        "description": "经脐单孔", "expected_cases": "30", "dept_id": str(user("gs_doc").dept_id),
        "lead_id": str(user("gs_doc").id), "team": "陈医生"})
    assert resp.status_code == 302
    project = db_session.scalar(select(NewTechProject).where(NewTechProject.name == "单孔腹腔镜阑尾切除术"))
    assert project.status == "dept_review" and [t.spec_name for t in ready(project.instance_id)] == ["dept_review"]
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "科室审核" in page and project.number in page


def test_bad_application_is_400_with_paths_and_writes_nothing(client, login, db_session):
    token = login("gs_doc")
    before = db_session.scalar(select(func.count()).select_from(NewTechProject))
    resp = client.post("/technology/new-tech/apply", data={"csrf_token": token, "name": "", "category": "x",
                                                            "risk_level": "high", "expected_cases": "abc"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400
    for path in ("name", "category", "expected_cases", "ethics_required", "description"):
        assert f"<code>{path}</code>" in html
    assert db_session.scalar(select(func.count()).select_from(NewTechProject)) == before
    assert client.post("/technology/new-tech/apply", data={"name": "x"}).status_code == 400  # no CSRF token


def test_permissions_are_enforced(client, login, make_project, user):
    project = make_project()
    login("pharm")
    assert client.get("/technology/new-tech/").status_code == 403
    assert client.get(f"/technology/new-tech/{project.id}").status_code == 403
    assert client.get("/technology/new-tech/apply").status_code == 403
    assert client.get("/technology/high-risk/").status_code == 403
    login("card_doc")  # another department's physician: own projects only
    assert client.get(f"/technology/new-tech/{project.id}").status_code == 403
    assert project.name not in client.get("/technology/new-tech/").get_data(as_text=True)
    token = login("gs_doc")
    assert client.get(f"/technology/new-tech/{project.id}").status_code == 200
    assert client.get(f"/technology/new-tech/{project.id}/experts").status_code == 403
    assert client.post("/technology/high-risk/new", data={"csrf_token": token, "code": "X"}).status_code == 403
    assert client.get("/technology/day-surgery/indicators").status_code == 200  # own scope
    login("card_head")  # 科主任 sees the own department only
    assert client.get(f"/technology/new-tech/{project.id}").status_code == 403
    login("gs_head")
    assert client.get(f"/technology/new-tech/{project.id}").status_code == 200
    login("nurse")
    assert client.get("/technology/day-surgery/cases/new").status_code == 200
    assert client.get("/technology/new-tech/").status_code == 403


def test_assign_experts_page(client, login, make_project, do, user, ready):
    project = make_project(ethics_required=False)
    do(project.instance_id, "dept_review", "gs_head", decision="approve")
    token = login("mao")
    page = client.get(f"/technology/new-tech/{project.id}").get_data(as_text=True)
    assert "组织专家评审（选择专家）" in page
    assert "钱专家" in client.get(f"/technology/new-tech/{project.id}/experts").get_data(as_text=True)
    [step] = ready(project.instance_id, "assign_experts")
    generic = client.get(f"/tasks/{step.id}").get_data(as_text=True)  # the inbox page points to the picker
    assert f"/technology/new-tech/{project.id}/experts" in generic and project.name in generic
    bad = client.post(f"/technology/new-tech/{project.id}/experts",
                      data={"csrf_token": token, "expert_ids": [str(user("expert1").id)]})
    assert bad.status_code == 400 and "<code>expert_ids</code>" in bad.get_data(as_text=True)
    assert [t.spec_name for t in ready(project.instance_id)] == ["assign_experts"]
    ok = client.post(f"/technology/new-tech/{project.id}/experts",
                     data={"csrf_token": token, "expert_ids": [str(user("expert1").id), str(user("expert2").id)]})
    assert ok.status_code == 302
    tasks = ready(project.instance_id, "expert_review [child]")
    assert sorted(t.assignee_id for t in tasks) == sorted([user("expert1").id, user("expert2").id])
    login("expert1")
    inbox = client.get("/tasks/").get_data(as_text=True)
    assert "专家评审" in inbox
    mine = next(t for t in tasks if t.assignee_id == user("expert1").id)
    form = client.get(f"/tasks/{mine.id}").get_data(as_text=True)
    assert project.name in form and "评分" in form
    theirs = next(t for t in tasks if t.assignee_id == user("expert2").id)
    resp = client.post(f"/tasks/{theirs.id}", data={"csrf_token": csrf_from(form), "score": "80",
                                                    "recommendation": "support", "comment": "x"})
    assert resp.status_code == 403


def test_ethics_setup_page_validates_and_starts_member_tasks(client, login, user, ready, db_session):
    from app.technology.services import ethics

    review = ethics.apply(applicant=user("gs_doc"), data={"title": "研究 A", "description": "描述"})
    token = login("mao")
    assert "确定审查方式与委员" in client.get(f"/technology/ethics/{review.id}").get_data(as_text=True)
    bad = client.post(f"/technology/ethics/{review.id}/setup", data={"csrf_token": token, "mode": "meeting",
                                                                      "member_ids": [str(user("ethics1").id)]})
    html = bad.get_data(as_text=True)
    assert bad.status_code == 400 and "<code>member_ids</code>" in html and "<code>review_items</code>" in html
    ok = client.post(f"/technology/ethics/{review.id}/setup", data={
        "csrf_token": token, "mode": "expedited", "member_ids": [str(user("ethics1").id), str(user("ethics2").id)],
        "review_items": ["consent", "privacy"]})
    assert ok.status_code == 302
    assert len(ready(review.instance_id, "member_opinion [child]")) == 2
    login("ethics1")
    listing = client.get("/technology/ethics/").get_data(as_text=True)
    assert "研究 A" in listing
    login("ethics3")
    assert "研究 A" not in client.get("/technology/ethics/").get_data(as_text=True)
    assert client.get(f"/technology/ethics/{review.id}").status_code == 403
    db_session.refresh(review)
    assert review.mode == "expedited" and db_session.get(EthicsReview, review.id) is review


def test_project_list_filters_and_export(client, login, make_project):
    make_project(name="项目甲", risk_level="low", ethics_required=False)
    make_project(name="项目乙", risk_level="high")
    login("mao")
    html = client.get("/technology/new-tech/?risk=high").get_data(as_text=True)
    assert "项目乙" in html and "项目甲" not in html
    assert "没有符合条件" in client.get("/technology/new-tech/?q=不存在的项目").get_data(as_text=True)
    data = client.get("/technology/new-tech/export.xlsx?status=dept_review").data
    names = [r[1] for r in load_workbook(BytesIO(data)).active.iter_rows(min_row=2, values_only=True)]
    assert "项目甲" in names and "项目乙" in names


def test_high_risk_pages(client, login, user, db_session):
    token = login("mao")
    html = client.get("/technology/high-risk/").get_data(as_text=True)
    assert "经皮冠状动脉药物球囊扩张成形术" in html
    bad = client.post("/technology/high-risk/new", data={"csrf_token": token, "code": "", "name": "", "category": "x"})
    assert bad.status_code == 400 and "<code>dept_id</code>" in bad.get_data(as_text=True)
    ok = client.post("/technology/high-risk/new", data={"csrf_token": token, "code": "HR-P-1", "name": "测试技术",
                                                         "category": "other", "dept_id": str(user("gs_doc").dept_id)})
    assert ok.status_code == 302
    item = db_session.scalar(select(HighRiskItem).where(HighRiskItem.code == "HR-P-1"))
    resp = client.post(f"/technology/high-risk/{item.id}/staff", data={"csrf_token": token, "user_id": "abc"})
    assert resp.status_code == 400
    resp = client.post(f"/technology/high-risk/{item.id}/staff",
                       data={"csrf_token": token, "user_id": str(user("gs_doc").id), "role_in_team": "术者"})
    assert resp.status_code == 302 and "陈医生" in client.get(f"/technology/high-risk/{item.id}").get_data(as_text=True)
    resp = client.post(f"/technology/high-risk/{item.id}/evaluate", data={"csrf_token": token})
    assert resp.status_code == 302
    data = client.get("/technology/high-risk/export.xlsx").data
    codes = [r[0] for r in load_workbook(BytesIO(data)).active.iter_rows(min_row=2, values_only=True)]
    assert "HR-P-1" in codes


def test_overview_and_catalogue_pages(client, login):
    login("mao")
    for url, text in [("/technology/", "新技术新项目"), ("/technology/restricted/catalogue", "异基因造血干细胞移植技术"),
                      ("/technology/day-surgery/catalogue", "DS-001"), ("/technology/restricted/", "限制类技术申请与备案"),
                      ("/technology/ethics/", "伦理审查"), ("/technology/day-surgery/qualifications", "日间手术资质"),
                      ("/technology/day-surgery/cases", "日间手术病例")]:
        resp = client.get(url)
        assert resp.status_code == 200 and text in resp.get_data(as_text=True), url


def test_restricted_apply_page_400(client, login, db_session):
    token = login("card_doc")
    resp = client.post("/technology/restricted/apply", data={"csrf_token": token, "technology_id": "999",
                                                              "conditions": ""})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "<code>technology_id</code>" in html and "<code>conditions</code>" in html


def test_decision_task_shows_the_flow_summary(client, login, user, ready):
    from app.technology.services import ethics
    from app.workflow import services as wf

    review = ethics.apply(applicant=user("gs_doc"), data={"title": "研究 B", "description": "描述"})
    ethics.setup_review(review=review, actor=user("mao"), data={
        "mode": "meeting", "member_ids": [user("ethics1").id, user("ethics2").id, user("ethics3").id],
        "review_items": ["science"], "meeting_date": "2026-12-01"})
    for t in ready(review.instance_id, "member_opinion [child]"):
        member = next(u for u in (user("ethics1"), user("ethics2"), user("ethics3")) if u.id == t.assignee_id)
        wf.complete(task_id=t.id, actor=member, data={"opinion": "agree" if member.username != "ethics3" else "disagree",
                                                      "comment": "理由"})
    [decision] = ready(review.instance_id, "ethics_decision")
    login("mao")
    html = client.get(f"/tasks/{decision.id}").get_data(as_text=True)
    assert "多数意见：<b>同意</b>" in html and "建议决定：同意" in html and "同意 2，修改后同意 0，不同意 1" in html
