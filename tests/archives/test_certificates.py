"""Certificates: single and batch upload (zip, unmatched files, bad types), authorised preview, reminders."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta

from sqlalchemy import func, select

from app.archives import certificates, services
from app.archives.models import Certificate, CertificateFile, CertificateType
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
