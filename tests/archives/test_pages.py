"""Pages: data scope (own archive / department / all), forms with CSRF and per-field errors, exports."""

from __future__ import annotations

from io import BytesIO

from openpyxl import load_workbook
from sqlalchemy import func, select

from app.archives import services
from app.archives.models import ArchiveRecord


def test_physician_sees_only_their_own_archive(deployed, client, login, user):
    me, other = user("gs_doc"), user("gs_doc2")
    login("gs_doc")
    resp = client.get("/archives/me")
    assert resp.status_code == 302 and resp.headers["Location"].endswith(f"/archives/{me.id}")
    html = client.get(f"/archives/{me.id}").get_data(as_text=True)
    assert "陈医生" in html and "档案完整度" in html and "教育经历" in html and "技术授权" in html
    stored = services.profile_data(me)["id_number"]
    assert stored not in html and stored[:4] + "*" * 10 + stored[-4:] in html
    for url in (f"/archives/{other.id}", f"/archives/{other.id}?tab=certificates", f"/archives/{other.id}/work/new",
                f"/api/v1/archives/{other.id}"):
        assert client.get(url).status_code == 403, url
    assert client.get("/archives/").status_code == 302  # no list for a physician: their own archive instead
    assert client.get("/archives/export.xlsx").status_code == 403
    assert client.get("/archives/stats").status_code == 403
    assert client.get("/archives/settings").status_code == 403


def test_dept_head_lists_their_department_and_the_office_lists_all(deployed, client, login, user):
    login("gs_head")
    html = client.get("/archives/").get_data(as_text=True)
    assert "陈医生" in html and "刘医生" in html and "孙医生" not in html
    assert client.get(f"/archives/{user('card_doc').id}").status_code == 403
    rows = list(load_workbook(BytesIO(client.get("/archives/export.xlsx").data)).active.iter_rows(values_only=True))
    assert rows[0][:3] == ("工号", "姓名", "科室") and {r[1] for r in rows[1:]} <= {"张主任", "陈医生", "刘医生", "吴护士"}
    assert all("*" in (r[6] or "*") for r in rows[1:])  # ID numbers masked without archives.manage
    login("mao")
    html = client.get("/archives/", query_string={"degree": "博士"}).get_data(as_text=True)
    assert "张主任" in html and "赵主任" in html and "陈医生" not in html
    rows = list(load_workbook(BytesIO(client.get("/archives/export.xlsx").data)).active.iter_rows(values_only=True))
    assert {"孙医生", "周医生"} <= {r[1] for r in rows[1:]} and not any("*" in (r[6] or "") for r in rows[1:])
    stats = client.get("/archives/stats").get_data(as_text=True)
    assert "按年龄段" in stats and "科室 × 职称" in stats
    wb = load_workbook(BytesIO(client.get("/archives/stats.xlsx").data))
    assert wb.sheetnames[:3] == ["按科室", "按职称", "按学位"]
    page = client.get("/archives/completeness").get_data(as_text=True)
    assert "各科室" in page and "普外科" in page and "待完善的档案" in page


def test_record_form_shows_field_errors_and_saves_nothing(deployed, client, login, user, db_session):
    me = user("gs_doc")
    token = login("gs_doc")
    before = db_session.scalar(select(func.count()).select_from(ArchiveRecord))
    resp = client.post(f"/archives/{me.id}/work/new", data={"csrf_token": token, "start_date": "2015-01-01",
                                                           "end_date": "2010-01-01"})
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert "<code>employer</code>" in html and "“工作单位”为必填项" in html and "<code>end_date</code>" in html
    assert db_session.scalar(select(func.count()).select_from(ArchiveRecord)) == before
    assert client.post(f"/archives/{me.id}/work/new", data={"start_date": "2015-01-01",
                                                           "employer": "本院"}).status_code == 400  # no CSRF


def test_page_submissions_go_through_review_where_required(deployed, client, login, user, db_session):
    me = user("gs_doc")
    token = login("gs_doc")
    resp = client.post(f"/archives/{me.id}/work/new", data={"csrf_token": token, "start_date": "2015-01-01",
                                                           "employer": "本院", "reason": "补录"})
    assert resp.status_code == 302
    resp = client.post(f"/archives/{me.id}/publications/new", data={
        "csrf_token": token, "kind": "论文", "title": "腹腔镜胃癌根治术的学习曲线", "publish_date": "2023-05-01",
        "impact_factor": "3.2"})
    assert resp.status_code == 302
    resp = client.post(f"/archives/{me.id}/multi_site_practice/new", data={
        "csrf_token": token, "institution": "某社区卫生服务中心", "filing_date": "2024-01-10"})
    assert resp.status_code == 302
    html = client.get(f"/archives/{me.id}?tab=multi_site_practice").get_data(as_text=True)
    assert "某社区卫生服务中心" in html and "待审核" in html and "审核中的变更" in html
    pub = db_session.scalar(select(ArchiveRecord).where(ArchiveRecord.user_id == me.id,
                                                        ArchiveRecord.section == "publications"))
    assert pub.status == "effective" and pub.data["impact_factor"] == 3.2
    hist = client.get(f"/archives/{me.id}/entries/{pub.entry_id}/history").get_data(as_text=True)
    assert "第 1 版" in hist and "腹腔镜胃癌根治术的学习曲线" in hist
    resp = client.post(f"/archives/{me.id}/entries/{pub.entry_id}/delete", data={"csrf_token": token, "reason": ""})
    assert resp.status_code == 303
    resp = client.post(f"/archives/{me.id}/entries/{pub.entry_id}/delete", data={"csrf_token": token,
                                                                               "reason": "误录"})
    assert resp.status_code == 302 and services.section_entries(staff=me, section_key="publications") == []


def test_task_page_shows_the_change_before_and_after(deployed, client, login, user, ready):
    me = user("gs_doc")
    [edu] = services.section_entries(staff=me, section_key="education")
    row = services.submit_change(staff=me, section_key="education", actor=me, entry_id=edu.entry.id,
                                 data=dict(edu.effective.data) | {"school": "复旦大学上海医学院"})
    [task] = ready(row.instance_id)
    login("mao")
    html = client.get(f"/tasks/{task.id}").get_data(as_text=True)
    assert "复旦大学上海医学院" in html and "浙江大学医学院" in html and "教育经历" in html and "审核结论" in html


def test_settings_page_changes_the_review_registry(deployed, client, login, user):
    token = login("mao")
    page = client.get("/archives/settings").get_data(as_text=True)
    assert "work.requires_review" in page
    form = {"csrf_token": token}
    for s in services.sections():
        if s.editable:
            for flag in ("requires_review", "is_required", "staff_editable"):
                if getattr(s, flag):
                    form[f"{s.key}.{flag}"] = "1"
    form["work.requires_review"] = "1"
    assert client.post("/archives/settings", data=form).status_code == 302
    assert services.section("work").requires_review
    me = user("gs_doc")
    assert services.edit_mode(me, me, "work") == "review"


def test_certificate_type_pages(deployed, client, login, db_session):
    token = login("mao")
    html = client.get("/archives/certificate-types").get_data(as_text=True)
    assert "美容主诊医师" in html and "呼吸治疗师" in html and "西学中" in html
    resp = client.post("/archives/certificate-types", data={"csrf_token": token, "code": "Bad Code", "name": ""})
    assert resp.status_code == 400 and "类型编码" in resp.get_data(as_text=True)
    resp = client.post("/archives/certificate-types", data={"csrf_token": token, "code": "radiation",
                                                           "name": "放射工作人员证", "has_expiry": "1",
                                                           "remind_days": "60,15", "is_active": "1"})
    assert resp.status_code == 302
    from app.archives.models import CertificateType

    row = db_session.scalar(select(CertificateType).where(CertificateType.code == "radiation"))
    assert row.remind_days == [60, 15]
    due = client.get("/archives/certificates/due").get_data(as_text=True)
    assert "证件到期与缺证" in due


def test_a_template_edited_by_the_office_is_used_for_new_records(deployed, user, make_staff, db_session):
    import pytest

    from app.errors import ValidationFailed
    from app.forms import services as forms

    form = services.section_form("work")
    schema = dict(form.schema)
    schema["properties"] = dict(schema["properties"]) | {"proof": {"type": "string", "title": "证明材料编号",
                                                                   "maxLength": 32}}
    schema["required"] = [*schema.get("required", []), "proof"]
    forms.save_admin_version(key="archive_work", schema=schema, ui=form.ui, actor=user("admin"), note="加证明材料")
    doc = make_staff()
    with pytest.raises(ValidationFailed) as err:
        services.submit_change(staff=doc, section_key="work", actor=user("mao"),
                               data={"start_date": "2015-01-01", "employer": "本院"})
    assert err.value.errors == [{"path": "proof", "message": "“证明材料编号”为必填项"}]
    row = services.submit_change(staff=doc, section_key="work", actor=user("mao"),
                                 data={"start_date": "2015-01-01", "employer": "本院", "proof": "ZM-1"})
    assert row.form_version == services.section_form("work").version > form.version


def test_office_opens_an_archive_by_staff_number_and_filters_the_list(deployed, client, login, user, db_session):
    from app.auth.services import create_user

    create_user(username="no_archive", name="未建档医生", password=None, staff_no="Z0001", roles=["physician"])
    token = login("mao")
    assert client.post("/archives/create", data={"csrf_token": token, "staff_no": "NOPE"}).status_code == 303
    resp = client.post("/archives/create", data={"csrf_token": token, "staff_no": "Z0001"})
    assert resp.status_code == 302
    html = client.get("/archives/", query_string={"bucket": "low", "q": "未建档"}).get_data(as_text=True)
    assert "未建档医生" in html and "0%" in html
    assert "未建档医生" not in client.get("/archives/", query_string={"status": "departed"}).get_data(as_text=True)
    login("gs_head")
    assert client.post("/archives/create", data={"csrf_token": token, "staff_no": "Z0001"}).status_code in (400, 403)
