"""The departure registration and the certificate form come from office-editable JSON Schema templates
(`archive_departure`, `archive_certificate`): they render from the template (certificate types filled from the
database), bad input is one 400 naming every field path in Chinese with nothing written, a field the office adds is
asked, checked, stored in form_data with the template version and shown on the detail pages, and the fields kept in
the rows' own columns are locked in the editor."""

from __future__ import annotations

import html as htmllib
import io
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.archives import certificates, departure, services
from app.archives.models import Certificate, CertificateType, Departure
from app.errors import ValidationFailed
from app.forms import editor
from app.forms import start as start_forms
from tests.archives.conftest import PDF
from tests.forms.helpers import add_field, field_error, page_text


def _count(db_session, model) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


def _latest(db_session, model):
    return db_session.scalars(select(model).order_by(model.id.desc())).first()


def _type_id(db_session, code: str) -> int:
    return db_session.scalar(select(CertificateType.id).where(CertificateType.code == code))


# ---------------------------------------------------------------- 登记离职


def test_departure_form_renders_from_its_template(deployed, client, login, make_staff):
    doc = make_staff()
    login("mao")
    page = client.get(f"/archives/{doc.id}/departure").get_data(as_text=True)
    form = start_forms.start_form("archive_departure")
    assert 'data-form="archive_departure"' in page and "novalidate" in page
    for prop in form.schema["properties"].values():
        assert prop["title"] in page
    assert page.count('class="required"') >= len(form.schema["required"])
    assert 'type="radio"' in page and "辞退/解聘" in page
    assert f'value="{services.today().isoformat()}"' in page  # the date defaults to today
    assert "提交后立即生效" in page  # the page's own warning stays


def test_bad_departure_is_one_400_naming_each_field_and_changes_nothing(deployed, client, login, make_staff,
                                                                        db_session):
    doc = make_staff()
    token = login("mao")
    before = _count(db_session, Departure)
    resp = client.post(f"/archives/{doc.id}/departure", data={"csrf_token": token, "kind": "fired",
                                                               "departure_date": "2024-02-30", "reason": ""})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 400
    expected = {"kind": "请从列表中选择“离职类型”", "departure_date": "“离职日期”应为有效的日期（如 2024-05-01）",
                "reason": "“离职原因”为必填项"}
    for path, message in expected.items():
        assert f"<code>{path}</code>：{message}" in htmllib.unescape(page), path
        assert field_error(page, path) == message, path
    # a date after today is the service's business rule, reported the same way
    resp = client.post(f"/archives/{doc.id}/departure", data={
        "csrf_token": token, "kind": "resignation", "reason": "个人原因",
        "departure_date": (services.today() + timedelta(days=3)).isoformat()})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "离职日期不能晚于今天" in field_error(page, "departure_date")
    assert "个人原因" in page  # what was typed is shown back
    db_session.refresh(doc)
    assert doc.departed_at is None and doc.is_active and _count(db_session, Departure) == before


def test_a_field_the_office_adds_to_the_departure_is_asked_checked_stored_and_shown(
        deployed, client, login, make_staff, user, db_session):
    first = start_forms.start_form("archive_departure")
    old = departure.register_departure(staff=make_staff(), kind="retirement", departure_date=services.today(),
                                       reason="退休", actor=user("mao"))
    assert (old.form_version, old.form_data) == (first.version, {})
    add_field("archive_departure", user("mao"), name="handover", title="工作交接情况", type="radio", required=True,
              options="done|已交接\npending|未交接", help="病历、设备与科研资料")
    latest = start_forms.start_form("archive_departure")
    assert latest.version > first.version

    doc = make_staff()
    token = login("mao")
    page = client.get(f"/archives/{doc.id}/departure").get_data(as_text=True)
    assert "工作交接情况" in page and "病历、设备与科研资料" in page
    good = {"csrf_token": token, "kind": "resignation", "departure_date": services.today().isoformat(),
            "reason": "个人原因辞职"}
    resp = client.post(f"/archives/{doc.id}/departure", data=good)
    assert resp.status_code == 400 and "“工作交接情况”为必填项" in resp.get_data(as_text=True)
    db_session.refresh(doc)
    assert doc.departed_at is None

    resp = client.post(f"/archives/{doc.id}/departure", data={**good, "handover": "pending"})
    assert resp.status_code == 302, page_text(resp.get_data(as_text=True))[:2000]
    row = db_session.scalar(select(Departure).where(Departure.user_id == doc.id))
    assert (row.kind, row.reason) == ("resignation", "个人原因辞职")
    assert (row.form_version, row.form_data) == (latest.version, {"handover": "pending"})
    detail = client.get(f"/archives/departures/{row.id}").get_data(as_text=True)
    assert 'id="form-extras"' in detail
    extras = page_text(detail[detail.index('id="form-extras"'):])
    assert "工作交接情况" in extras and "未交接" in extras
    # the one registered on the shipped version shows no extra fields
    assert 'id="form-extras"' not in client.get(f"/archives/departures/{old.id}").get_data(as_text=True)


# ---------------------------------------------------------------- 证件


def test_certificate_form_renders_from_its_template_with_the_types(deployed, client, login, user, db_session):
    doc = user("gs_doc")
    login("mao")
    page = client.get(f"/archives/{doc.id}/certificates/new",
                      query_string={"type_id": _type_id(db_session, "degree")}).get_data(as_text=True)
    form = start_forms.start_form("archive_certificate")
    assert 'data-form="archive_certificate"' in page and 'enctype="multipart/form-data" novalidate' in page
    for prop in form.schema["properties"].values():
        assert prop["title"] in page
    assert "执业证（有有效期）" in page and 'type="file" name="files"' in page
    assert f'<option value="{_type_id(db_session, "degree")}" selected>学位证</option>' in page
    assert 'type="date"' in page


def test_bad_certificate_is_one_400_naming_each_field_and_stores_nothing(deployed, client, login, user, db_session,
                                                                         upload_dir):
    doc = user("gs_doc")
    token = login("mao")
    before = _count(db_session, Certificate)
    resp = client.post(f"/archives/{doc.id}/certificates/new", content_type="multipart/form-data", data={
        "csrf_token": token, "number": "N" * 65, "issue_date": "2020-13-01", "expiry_date": "2031-01-01",
        "files": [(io.BytesIO(b"not a pdf"), "scan.pdf")]})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 400
    expected = {"type_id": "“证件类型”为必填项", "number": "“证件编号”最多 64 个字符",
                "issue_date": "“发证日期”应为有效的日期（如 2024-05-01）"}
    for path, message in expected.items():
        assert f"<code>{path}</code>：{message}" in htmllib.unescape(page), path
        assert field_error(page, path) == message, path
    assert "<code>files/0</code>" in page and "不是有效的 JPG、PNG 或 PDF" in page  # the page's own upload field
    assert "N" * 65 in page
    assert _count(db_session, Certificate) == before
    assert not upload_dir.exists() or not any(upload_dir.rglob("*.*"))


def test_a_field_the_office_adds_to_certificates_is_stored_shown_and_kept_on_edit(
        deployed, client, login, user, db_session, upload_dir):
    first = start_forms.start_form("archive_certificate")
    doc = user("gs_doc")
    old = certificates.add_certificate(staff=doc, actor=user("mao"), data=certificates.CertificateInput(
        type_id=_type_id(db_session, "degree"), number="DEG-OLD"))
    assert (old.form_version, old.form_data) == (first.version, {})
    add_field("archive_certificate", user("mao"), name="verified", title="原件核验", type="radio", required=True,
              options="yes|已核验原件\nno|未核验")
    latest = start_forms.start_form("archive_certificate")

    token = login("mao")
    good = {"csrf_token": token, "type_id": str(_type_id(db_session, "diploma")), "number": "DIP-1",
            "issuer": "浙江大学", "issue_date": "2015-07-01"}
    resp = client.post(f"/archives/{doc.id}/certificates/new", content_type="multipart/form-data",
                       data={**good, "files": [(io.BytesIO(PDF), "毕业证.pdf")]})
    assert resp.status_code == 400 and "“原件核验”为必填项" in resp.get_data(as_text=True)
    assert not upload_dir.exists() or not any(upload_dir.rglob("*.*"))
    resp = client.post(f"/archives/{doc.id}/certificates/new", content_type="multipart/form-data",
                       data={**good, "verified": "yes", "files": [(io.BytesIO(PDF), "毕业证.pdf")]})
    assert resp.status_code == 302, page_text(resp.get_data(as_text=True))[:2000]
    cert = _latest(db_session, Certificate)
    assert (cert.number, cert.issuer, str(cert.issue_date)) == ("DIP-1", "浙江大学", "2015-07-01")
    assert (cert.form_version, cert.form_data) == (latest.version, {"verified": "yes"})
    assert len(cert.files) == 1

    tab = client.get(f"/archives/{doc.id}", query_string={"tab": "certificates"}).get_data(as_text=True)
    assert f'id="cert-extras-{cert.id}"' in tab and "已核验原件" in tab
    assert f'id="cert-extras-{old.id}"' not in tab
    # the edit page shows the stored value; a change is checked and stored the same way
    page = client.get(f"/archives/certificates/{cert.id}/edit").get_data(as_text=True)
    assert '<option value="yes" selected>已核验原件</option>' in page and 'value="DIP-1"' in page
    resp = client.post(f"/archives/certificates/{cert.id}/edit", content_type="multipart/form-data",
                       data={**good, "number": "DIP-2", "verified": "no"})
    assert resp.status_code == 302, page_text(resp.get_data(as_text=True))[:2000]
    db_session.refresh(cert)
    assert (cert.number, cert.form_data) == ("DIP-2", {"verified": "no"})
    # a service call without the office's fields keeps the ones stored
    certificates.update_certificate(cert=cert, actor=user("mao"), data=certificates.CertificateInput(
        type_id=cert.type_id, number="DIP-3", issue_date="2015-07-01"))
    assert (cert.number, cert.form_data) == ("DIP-3", {"verified": "no"})
    with pytest.raises(ValidationFailed) as err:  # while one without them, on a new certificate, is refused
        certificates.add_certificate(staff=doc, actor=user("mao"), data=certificates.CertificateInput(
            type_id=_type_id(db_session, "degree"), number="DEG-2"))
    assert {e["path"] for e in err.value.errors} == {"verified"}


# ---------------------------------------------------------------- locked system fields


@pytest.mark.parametrize("key,model,field", [("archive_departure", Departure, "reason"),
                                             ("archive_certificate", Certificate, "type_id")])
def test_the_system_fields_are_locked(key, model, field, user):
    form = start_forms.start_form(key)
    locked = [n for n in form.schema["properties"] if form.ui.get(n, {}).get("ui:locked")]
    assert set(form.schema["required"]) <= set(locked) and set(locked) == set(model.FORM_COLUMNS)
    state = editor.state_from_form(form.schema, form.ui, version=form.version)
    idx = next(i for i, r in enumerate(state.rows) if r.name == field)
    with pytest.raises(ValidationFailed) as err:
        editor.apply_action(state, f"remove:{idx}")
    assert "不能删除" in err.value.errors[0]["message"]
    retyped = editor.state_from_form(form.schema, form.ui, version=form.version)
    retyped.rows[idx].required = False
    with pytest.raises(ValidationFailed) as err:
        editor.save(key=key, state=retyped, actor=user("mao"))
    assert "不能取消必填" in err.value.errors[0]["message"]
    assert start_forms.start_form(key).version == form.version
