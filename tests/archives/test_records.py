"""Section records: versions and history, review through the real engine, bad input, data scope."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.archives import services
from app.archives.models import ArchiveEntry, ArchiveRecord
from app.audit.models import AuditLog
from app.errors import Conflict, Forbidden, ValidationFailed

WORK = {"start_date": "2010-07-01", "end_date": "2015-06-30", "employer": "杭州市第一人民医院", "department": "普外科"}


def _count(db_session, model) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


def test_manager_adds_changes_and_deletes_a_record_keeping_every_version(deployed, user, make_staff, db_session):
    doc, mao = make_staff(), user("mao")
    first = services.submit_change(staff=doc, section_key="work", actor=mao, data=WORK)
    assert first.status == "effective" and first.version == 1 and first.action == "create"
    second = services.submit_change(staff=doc, section_key="work", actor=mao, entry_id=first.entry_id,
                                    data=WORK | {"department": "肝胆外科"}, reason="科室更名")
    db_session.refresh(first)
    assert (first.status, second.status, second.version, second.supersedes_id) == ("superseded", "effective", 2,
                                                                                    first.id)
    [view] = services.section_entries(staff=doc, section_key="work")
    assert view.effective.id == second.id and view.effective.data["department"] == "肝胆外科"
    gone = services.submit_change(staff=doc, section_key="work", actor=mao, entry_id=first.entry_id, delete=True,
                                  reason="重复录入")
    assert gone.action == "delete" and gone.status == "effective"
    assert services.section_entries(staff=doc, section_key="work") == []
    entry = db_session.get(ArchiveEntry, first.entry_id)
    assert entry.is_deleted
    history = services.entry_history(entry=entry, viewer=mao)
    assert [v.record.version for v in history] == [1, 2, 3]
    assert [(c.label, c.old, c.new) for c in history[1].changes] == [("科室/部门", "普外科", "肝胆外科")]
    assert {c.label for c in history[2].changes} >= {"工作单位", "开始时间"}
    assert db_session.scalar(select(func.count()).select_from(ArchiveRecord)
                             .where(ArchiveRecord.entry_id == first.entry_id)) == 3
    actions = db_session.scalars(select(AuditLog.action).where(AuditLog.entity_type == "archive_records",
                                                               AuditLog.entity_id.in_([str(first.id), str(second.id),
                                                                                       str(gone.id)]))).all()
    assert actions.count("archive.record_changed") == 3


def test_bad_input_names_each_field_and_changes_nothing(deployed, user, make_staff, db_session):
    doc, mao = make_staff(), user("mao")
    before = (_count(db_session, ArchiveRecord), _count(db_session, ArchiveEntry))
    with pytest.raises(ValidationFailed) as err:
        services.submit_change(staff=doc, section_key="work", actor=mao,
                               data={"start_date": "2015-01-01", "end_date": "2014-01-01", "department": "x" * 80})
    paths = {e["path"]: e["message"] for e in err.value.errors}
    assert paths["employer"] == "“工作单位”为必填项"
    assert "不能早于" in paths["end_date"] and "最多 64 个字符" in paths["department"]
    with pytest.raises(ValidationFailed) as err:
        services.submit_change(staff=doc, section_key="profile", actor=mao,
                               data={"id_number": "330106198609020011", "birth_date": "1990-01-01"})
    assert {e["path"] for e in err.value.errors} == {"id_number"}
    assert (_count(db_session, ArchiveRecord), _count(db_session, ArchiveEntry)) == before


def test_api_bad_input_is_400_with_field_paths(deployed, client, login, user, db_session):
    token = login("mao")
    doc = user("gs_doc2")
    before = _count(db_session, ArchiveRecord)
    resp = client.post(f"/api/v1/archives/{doc.id}/sections/education", headers={"X-CSRFToken": token},
                       json={"data": {"start_date": "2012-13-01", "education": "小学"}})
    assert resp.status_code == 400
    errors = {e["path"]: e["message"] for e in resp.get_json()["error"]["errors"]}
    assert set(errors) == {"start_date", "school", "education"} and "选择" in errors["education"]
    assert _count(db_session, ArchiveRecord) == before
    ok = client.post(f"/api/v1/archives/{doc.id}/sections/education", headers={"X-CSRFToken": token},
                     json={"data": {"start_date": "2012-09-01", "school": "温州医科大学", "education": "硕士研究生"}})
    assert ok.status_code == 201 and ok.get_json()["status"] == "effective"


def test_review_section_takes_effect_only_when_the_office_approves(deployed, user, ready, db_session):
    doc, mao = user("gs_doc"), user("mao")
    data = {"cycle": "2022-2024", "assessment_date": "2024-06-01", "result": "合格", "kind": "一般程序"}
    row = services.submit_change(staff=doc, section_key="periodic_assessment", actor=doc, data=data)
    assert row.status == "pending" and row.instance_id
    assert services.section_counts(doc).get("periodic_assessment", 0) == 0
    [task] = ready(row.instance_id)
    assert (task.spec_name, task.role_code) == ("mao_review", "mao")
    with pytest.raises(Conflict):  # one open change per record
        services.submit_change(staff=doc, section_key="periodic_assessment", actor=doc, entry_id=row.entry_id,
                               data=data | {"result": "不合格"})
    from app.workflow import services as wf

    wf.complete(task_id=task.id, actor=mao, data={"decision": "approve", "comment": "核对无误"})
    db_session.refresh(row)
    assert row.status == "effective" and row.decided_by_id == mao.id and row.decision_comment == "核对无误"
    assert services.section_counts(doc)["periodic_assessment"] == 1


def test_returned_change_is_revised_on_the_archive_page_and_rejection_keeps_the_old_version(
        deployed, user, ready, db_session):
    from app.workflow import services as wf

    doc, mao = user("gs_doc"), user("mao")
    [edu] = services.section_entries(staff=doc, section_key="education")
    old = edu.effective
    row = services.submit_change(staff=doc, section_key="education", actor=doc, entry_id=edu.entry.id,
                                 data=dict(old.data) | {"school": "浙江大学"})
    [task] = ready(row.instance_id)
    wf.send_back(task_id=task.id, actor=mao, reason="请附学校全称")
    db_session.refresh(row)
    assert row.status == "returned" and row.decision_comment == "请附学校全称"
    [revise] = ready(row.instance_id)
    assert revise.spec_name == "revise" and revise.assignee_id == doc.id
    with pytest.raises(Conflict):  # only the submitter revises a returned change
        services.submit_change(staff=doc, section_key="education", actor=user("gs_head"), entry_id=edu.entry.id,
                               data=dict(old.data) | {"school": "浙江大学医学院（全称）"})
    again = services.submit_change(staff=doc, section_key="education", actor=doc, entry_id=edu.entry.id,
                                   data=dict(old.data) | {"school": "浙江大学医学院临床医学系"})
    db_session.refresh(row)
    assert row.status == "superseded" and again.status == "pending" and again.instance_id == row.instance_id
    [task] = ready(row.instance_id)
    assert task.spec_name == "mao_review"
    wf.complete(task_id=task.id, actor=mao, data={"decision": "reject", "comment": "与学位证不符"})
    db_session.refresh(again)
    db_session.refresh(old)
    assert again.status == "rejected" and old.status == "effective"
    versions = services.entry_history(entry=edu.entry, viewer=mao)
    assert [v.record.status for v in versions] == ["effective", "superseded", "rejected"]


def test_withdrawn_review_marks_the_version_withdrawn(deployed, user, db_session):
    from app.workflow import services as wf

    doc = user("card_doc")
    row = services.submit_change(staff=doc, section_key="rewards_penalties", actor=doc,
                                 data={"kind": "奖励", "date": "2023-12-01", "name": "院优秀医师"})
    wf.withdraw(instance_id=row.instance_id, actor=doc, reason="材料不全")
    db_session.refresh(row)
    assert row.status == "withdrawn"


def test_physician_edits_only_their_own_archive_and_office_only_sections_refuse(deployed, user, db_session):
    doc, other = user("gs_doc"), user("card_doc")
    assert services.edit_mode(doc, doc, "work") == "direct"
    assert services.edit_mode(doc, doc, "education") == "review"
    assert services.edit_mode(doc, other, "work") is None
    assert services.edit_mode(doc, doc, "major_incidents") is None
    with pytest.raises(Forbidden):
        services.submit_change(staff=other, section_key="work", actor=doc, data=WORK)
    with pytest.raises(Forbidden):
        services.submit_change(staff=doc, section_key="major_incidents", actor=doc,
                               data={"date": "2024-01-01", "kind": "医疗差错", "description": "x"})
    head = user("gs_head")
    assert services.edit_mode(head, doc, "education") == "review"  # archives.edit within the department
    assert services.edit_mode(head, other, "education") is None


def test_dept_head_submits_for_a_colleague_through_review(deployed, user, ready, db_session):
    head, doc = user("gs_head"), user("gs_doc2")
    row = services.submit_change(staff=doc, section_key="title_appointment", actor=head,
                                 data={"title": "主治医师", "qualified_date": "2024-05-20", "method": "考试"})
    assert row.status == "pending" and row.submitted_by_id == head.id
    [task] = ready(row.instance_id)
    assert task.dept_id == doc.dept_id


def test_profile_hides_the_id_number_from_non_managers(deployed, user, db_session):
    doc, mao = user("gs_doc"), user("mao")
    stored = services.profile_data(doc)["id_number"]
    form = services.form_for_viewer(services.section_form("profile"), viewer=doc, staff=doc, section_key="profile")
    assert "id_number" not in form.schema["properties"]
    assert services.shown_id_number(doc, doc, stored) == stored[:4] + "*" * 10 + stored[-4:]
    assert services.shown_id_number(mao, doc, stored) == stored
    row = services.submit_change(staff=doc, section_key="profile", actor=doc,
                                 data={k: v for k, v in services.profile_data(doc).items() if k != "id_number"}
                                 | {"specialty": "胃肠肿瘤微创"})
    assert row.status == "pending" and row.data["id_number"] == stored
    history = services.entry_history(entry=row.entry, viewer=doc)
    [shown] = [c for c in history[0].changes if c.name == "id_number"]
    assert shown.new == stored[:4] + "*" * 10 + stored[-4:]
