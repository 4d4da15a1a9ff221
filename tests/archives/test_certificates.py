"""Certificates: single and batch upload (zip, unmatched files, bad types), authorised preview, reminders."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.archives import certificates, services
from app.archives.models import Certificate, CertificateFile, CertificateType
from app.errors import ValidationFailed
from app.notify.models import Notification

from .conftest import JPG, PDF, PNG


def _type_id(db_session, code: str) -> int:
    return db_session.scalar(select(CertificateType.id).where(CertificateType.code == code))


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


def test_single_upload_stores_files_under_generated_names_and_previews_them(
        deployed, client, login, user, db_session, upload_dir):
    doc = user("gs_doc")
    token = login("gs_doc")
    resp = client.post(f"/archives/{doc.id}/certificates/new", content_type="multipart/form-data", data={
        "csrf_token": token, "type_id": str(_type_id(db_session, "degree")), "number": "1034252012000123",
        "issuer": "浙江大学", "issue_date": "2012-06-30",
        "files": [(io.BytesIO(PNG), "../../etc/学位证.png"), (io.BytesIO(PDF), "学位证.pdf")]})
    assert resp.status_code == 302, resp.get_data(as_text=True)[:400]
    cert = db_session.scalar(select(Certificate).where(Certificate.user_id == doc.id, Certificate.number == "1034252012000123"))
    png, pdf = cert.files
    assert (png.content_type, pdf.content_type) == ("image/png", "application/pdf")
    assert png.original_name == "学位证.png" and ".." not in png.stored_path and png.stored_path.endswith(".png")
    assert (upload_dir / png.stored_path).read_bytes() == PNG
    page = client.get(f"/archives/{doc.id}?tab=certificates").get_data(as_text=True)
    assert f'<img src="/archives/certificate-files/{png.id}"' in page
    assert f'<iframe src="/archives/certificate-files/{pdf.id}"' in page
    shown = client.get(f"/archives/certificate-files/{pdf.id}")
    assert shown.status_code == 200 and shown.mimetype == "application/pdf" and shown.data == PDF
    assert shown.headers["Content-Disposition"].startswith("inline")
    login("card_doc")
    assert client.get(f"/archives/certificate-files/{pdf.id}").status_code == 403
    login("gs_head")  # same department: may view
    assert client.get(f"/archives/certificate-files/{png.id}").status_code == 200


def test_a_bad_file_type_is_refused_and_nothing_is_stored(deployed, client, login, user, db_session, upload_dir):
    doc = user("gs_doc")
    token = login("mao")
    before = db_session.scalar(select(func.count()).select_from(Certificate))
    resp = client.post(f"/archives/{doc.id}/certificates/new", content_type="multipart/form-data", data={
        "csrf_token": token, "type_id": str(_type_id(db_session, "title")), "expiry_date": "2020-01-01",
        "issue_date": "2021-01-01",
        "files": [(io.BytesIO(b"MZ\x90\x00 not a pdf"), "职称证.pdf"), (io.BytesIO(PNG), "scan.exe")]})
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert "files/0" in html and "不是有效的 JPG、PNG 或 PDF" in html and "仅接受 JPG、PNG、PDF" in html
    assert "有效期至不能早于发证日期" in html
    assert db_session.scalar(select(func.count()).select_from(Certificate)) == before
    assert not upload_dir.exists() or not any(upload_dir.rglob("*.*"))


def test_batch_upload_matches_by_staff_number_and_reports_what_did_not_match(deployed, user, db_session, upload_dir):
    mao = user("mao")
    archive = _zip({"scans/D1002_执业证.pdf": PDF, "D1003_学位证_硕士.jpg": JPG, "X9999_执业证.pdf": PDF,
                    "D1002_驾驶证.pdf": PDF, "readme.txt": b"hello", "执业证.pdf": PDF, "__MACOSX/._D1002_执业证.pdf": b"x",
                    "D2001_西学中证书.png": PNG})
    result = certificates.batch_upload(actor=mao, uploads=[
        certificates.Upload("证件.zip", archive), certificates.Upload("D2002_资格证.gif", b"GIF89a"),
        certificates.Upload("D2002-规培证.png", PNG), certificates.Upload("broken.zip", b"PK\x03\x04 nope")])
    matched = {(m["staff_no"], m["type"]) for m in result.matched}
    assert matched == {("D1002", "执业证"), ("D1003", "学位证"), ("D2001", "西学中"), ("D2002", "规培证")}
    reasons = {u["file"]: u["reason"] for u in result.unmatched}
    assert reasons["X9999_执业证.pdf"] == "工号 X9999 不存在"
    assert "识别证件类型" in reasons["D1002_驾驶证.pdf"]
    assert "仅接受" in reasons["readme.txt"] and "仅接受" in reasons["D2002_资格证.gif"]
    assert "工号_证件类型" in reasons["执业证.pdf"]
    assert "zip" in reasons["broken.zip"]
    assert len(result.unmatched) == 6
    # the demo 执业证 of D1002 got the scan; D1003 had no 学位证, so one was created
    gs_doc = user("gs_doc")
    practice = db_session.scalars(select(Certificate).where(Certificate.user_id == gs_doc.id,
                                                            Certificate.type_id == _type_id(db_session, "practice"))).all()
    assert len(practice) == 1 and len(practice[0].files) == 1
    assert db_session.scalar(select(Certificate.source).join(CertificateFile).where(
        CertificateFile.original_name == "D1003_学位证_硕士.jpg")) == "batch"


def test_zip_names_written_by_windows_tools_in_gbk_are_read(deployed, user, db_session, upload_dir, monkeypatch):
    buf = io.BytesIO()
    info = zipfile.ZipInfo("D1003_执业证.pdf")
    monkeypatch.setattr(zipfile.ZipInfo, "_encodeFilenameFlags",
                        lambda self: (self.filename.encode("gbk"), self.flag_bits & ~0x800))
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(info, PDF)
    monkeypatch.undo()
    upload_dir.mkdir(parents=True, exist_ok=True)
    result = certificates.batch_upload(actor=user("mao"), uploads=[certificates.Upload("win.zip", buf.getvalue())])
    assert [(m["staff_no"], m["type"]) for m in result.matched] == [("D1003", "执业证")], result.unmatched


def test_batch_upload_needs_archives_manage(deployed, client, login):
    token = login("gs_head")
    resp = client.post("/archives/certificates/batch", content_type="multipart/form-data",
                       data={"csrf_token": token, "files": [(io.BytesIO(PDF), "D1002_执业证.pdf")]})
    assert resp.status_code == 403


def test_expiry_reminders_are_sent_once_per_threshold(deployed, user, make_staff, db_session, upload_dir):
    mao = user("mao")
    doc = make_staff(title="其他")
    today = services.today()
    cert = certificates.add_certificate(staff=doc, actor=mao, data=certificates.CertificateInput(
        type_id=_type_id(db_session, "practice"), number="P-1", expiry_date=(today + timedelta(days=80)).isoformat()),
        files=[certificates.Upload("p.pdf", PDF)])

    def mine() -> list[str]:
        return list(db_session.scalars(select(Notification.title).where(Notification.user_id == doc.id)
                                       .order_by(Notification.id)))

    certificates.send_reminders(on=today)
    certificates.send_reminders(on=today)
    from app.archives.tasks import run_daily

    assert run_daily(on=today) != {} and run_daily(on=today) == {}  # the second call of the day does nothing
    notes = mine()
    assert notes.count("证件将在 80 天后到期：执业证") == 1
    assert sum("请补充证件" in n for n in notes) == 2  # diploma and qualification missing; once this month
    certificates.send_reminders(on=today + timedelta(days=55))
    certificates.send_reminders(on=today + timedelta(days=56))
    assert mine().count("证件将在 25 天后到期：执业证") == 1
    assert not any("24 天后" in n for n in mine())
    certificates.send_reminders(on=today + timedelta(days=81))
    certificates.send_reminders(on=today + timedelta(days=82))
    assert mine().count("证件已过期：执业证") == 1
    digest = db_session.scalars(select(Notification).where(Notification.user_id == mao.id,
                                                           Notification.title.like("证件提醒汇总%"))).all()
    assert len({n.title for n in digest}) == len(digest)  # one digest per day
    # a renewed certificate silences the old one
    certificates.add_certificate(staff=doc, actor=mao, data=certificates.CertificateInput(
        type_id=_type_id(db_session, "practice"), number="P-2", expiry_date=(today + timedelta(days=3000)).isoformat()),
        files=[certificates.Upload("p2.pdf", PDF)])
    items = certificates.due_items(viewer=mao, within_days=90, on=today + timedelta(days=85))
    assert not any(i.certificate is not None and i.certificate.id == cert.id for i in items)


# ---------------------------------------------------------------- expiry date required; nurse certificates


def test_a_type_with_an_expiry_refuses_a_certificate_without_the_date(deployed, client, login, user, db_session,
                                                                       upload_dir):
    doc = user("gs_doc")
    token = login("mao")
    before = db_session.scalar(select(func.count()).select_from(Certificate))
    resp = client.post(f"/archives/{doc.id}/certificates/new", content_type="multipart/form-data", data={
        "csrf_token": token, "type_id": str(_type_id(db_session, "practice")), "number": "P-NODATE",
        "issue_date": "2020-01-01", "files": [(io.BytesIO(PDF), "执业证.pdf")]})
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert "<code>expiry_date</code>：执业证有有效期，请填写有效期至" in html
    assert db_session.scalar(select(func.count()).select_from(Certificate)) == before
    assert not upload_dir.exists() or not any(upload_dir.rglob("*.*"))
    # a type without an expiry is still fine without the date
    ok = certificates.add_certificate(staff=doc, actor=user("mao"), data=certificates.CertificateInput(
        type_id=_type_id(db_session, "degree"), number="DEG-1"))
    assert ok.expiry_date is None
    # nor can the date be removed from a certificate of such a type
    cert = db_session.scalar(select(Certificate).where(Certificate.user_id == doc.id,
                                                       Certificate.type_id == _type_id(db_session, "practice")))
    with pytest.raises(ValidationFailed) as exc:
        certificates.update_certificate(cert=cert, actor=user("mao"), data=certificates.CertificateInput(
            type_id=cert.type_id, number=cert.number))
    assert exc.value.errors == [{"path": "expiry_date", "message": "执业证有有效期，请填写有效期至"}]
    db_session.refresh(cert)
    assert cert.expiry_date is not None


def test_batch_upload_of_a_type_with_an_expiry_needs_the_date(deployed, user, make_staff, db_session, upload_dir):
    mao = user("mao")
    doc = make_staff(title="其他")
    no = doc.staff_no
    practice = _type_id(db_session, "practice")
    result = certificates.batch_upload(actor=mao, uploads=[
        certificates.Upload(f"{no}_执业证.pdf", PDF), certificates.Upload(f"{no}_执业证_20301399.pdf", PDF),
        certificates.Upload(f"{no}_学位证_20301399.pdf", PDF)])
    reasons = {u["file"]: u["reason"] for u in result.unmatched}
    assert "执业证有有效期，须填写有效期至" in reasons[f"{no}_执业证.pdf"]
    assert f"{no}_执业证_2028-12-31.pdf" in reasons[f"{no}_执业证.pdf"]  # tells how to name the file
    assert "不是有效的日期" in reasons[f"{no}_执业证_20301399.pdf"]
    assert [m["type"] for m in result.matched] == ["学位证"]  # a type without expiry ignores dates
    assert not db_session.scalars(select(Certificate).where(Certificate.user_id == doc.id,
                                                            Certificate.type_id == practice)).all()
    # the date in the name creates the certificate with it; later scans without a date attach to it
    result = certificates.batch_upload(actor=mao, uploads=[certificates.Upload(f"{no}_执业证_2030-12-31.pdf", PDF)])
    [row] = result.matched
    assert row["created"] and row["expiry_date"] == "2030-12-31"
    result = certificates.batch_upload(actor=mao, uploads=[certificates.Upload(f"{no}_执业证_正本.pdf", PDF)])
    assert not result.unmatched and result.matched[0]["certificate_id"] == row["certificate_id"]
    # a different date is a renewed certificate
    result = certificates.batch_upload(actor=mao, uploads=[certificates.Upload(f"{no}_执业证_20351231.jpg", JPG)])
    assert result.matched[0]["created"] and result.matched[0]["expiry_date"] == "2035-12-31"
    # a certificate registered before the date was required: a scan needs the date, which fills it in
    other = make_staff(title="其他")
    legacy = Certificate(user_id=other.id, type_id=practice, number="OLD", source="manual")
    db_session.add(legacy)
    db_session.flush()
    result = certificates.batch_upload(actor=mao, uploads=[certificates.Upload(f"{other.staff_no}_执业证.pdf", PDF)])
    assert "尚未填写有效期至" in result.unmatched[0]["reason"]
    result = certificates.batch_upload(actor=mao, uploads=[
        certificates.Upload(f"{other.staff_no}_执业证_2029.06.30.pdf", PDF)])
    assert result.matched[0]["certificate_id"] == legacy.id and not result.matched[0]["created"]
    db_session.refresh(legacy)
    assert legacy.expiry_date.isoformat() == "2029-06-30" and len(legacy.files) == 1


def test_batch_upload_page_lists_the_row_missing_its_expiry_date(deployed, client, login, user, db_session,
                                                                  make_staff, upload_dir):
    doc = make_staff(title="其他")
    token = login("mao")
    resp = client.post("/archives/certificates/batch", content_type="multipart/form-data",
                       data={"csrf_token": token, "files": [(io.BytesIO(PDF), f"{doc.staff_no}_执业证.pdf")]})
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert 'id="unmatched"' in html and f"{doc.staff_no}_执业证.pdf" in html and "须填写有效期至" in html
    assert 'id="expiry-rule"' in html and "护士执业证书" in html


def test_nurses_must_hold_the_nurse_certificates(deployed, user, make_staff, db_session, upload_dir):
    from app.archives.models import CertificateRequirement

    nurse = make_staff(title="护师", roles=("nurse",))
    missing = services.get_profile(nurse).missing
    assert "缺少护士资格证" in missing and "缺少护士执业证书" in missing
    assert "缺少资格证" not in missing  # the physician's 医师资格证 is not asked of a nurse
    # by nursing title too (a head nurse confirmed with another role)
    head_nurse = make_staff(title="副主任护师", roles=("dept_head",))
    assert {"缺少护士资格证", "缺少护士执业证书"} <= set(services.get_profile(head_nurse).missing)
    assert not any("护士" in m for m in services.get_profile(make_staff()).missing)
    # 护士执业证书 has an expiry (registration valid 5 years), 护士资格证 does not
    types = {t.code: t for t in certificates.certificate_types()}
    assert types["nurse_practice"].has_expiry and types["nurse_practice"].remind_days == [90, 30]
    assert not types["nurse_qualification"].has_expiry
    # the demo nurse holds a 护士执业证书 with its date and is reminded of the missing 护士资格证
    demo = user("nurse")
    [held] = certificates.certificates_of(demo)
    assert held.type.code == "nurse_practice" and held.expiry_date > services.today()
    assert "缺少护士资格证" in services.get_profile(demo).missing
    items = certificates.due_items(within_days=90)
    assert any(i.user.id == demo.id and i.kind == "missing" and i.type_name == "护士资格证" for i in items)
    # an install that predates the nurse types gets them, with their requirements, on the next seed run
    qual = types["nurse_qualification"]
    db_session.execute(CertificateRequirement.__table__.delete().where(CertificateRequirement.type_id == qual.id))
    db_session.execute(CertificateType.__table__.delete().where(CertificateType.id == qual.id))
    db_session.expire_all()
    before = db_session.scalar(select(func.count()).select_from(CertificateRequirement))
    assert certificates.seed_types() == 1
    assert db_session.scalar(select(func.count()).select_from(CertificateRequirement)) == before + 6
    assert certificates.seed_types() == 0
    # a batch file named after the nurse type is matched to it (not to the physician's 执业证)
    result = certificates.batch_upload(actor=user("mao"), uploads=[
        certificates.Upload(f"{nurse.staff_no}_护士执业证书_2031-08-31.pdf", PDF),
        certificates.Upload(f"{nurse.staff_no}_护士资格证.pdf", PDF)])
    assert [m["type"] for m in result.matched] == ["护士执业证书", "护士资格证"], result.unmatched


def test_a_required_certificate_without_its_expiry_date_counts_as_incomplete(deployed, user, make_staff, db_session,
                                                                              upload_dir):
    doc = make_staff(title="其他")
    cert = certificates.add_certificate(staff=doc, actor=user("mao"), data=certificates.CertificateInput(
        type_id=_type_id(db_session, "practice"), expiry_date="2031-01-01"), files=[certificates.Upload("p.pdf", PDF)])
    assert not any(m.startswith("执业证") for m in services.get_profile(doc).missing)
    cert.expiry_date = None  # as registered before the date was required
    db_session.flush()
    services.refresh_completeness(user_ids=[doc.id])
    assert "执业证未填写有效期至" in services.get_profile(doc).missing
