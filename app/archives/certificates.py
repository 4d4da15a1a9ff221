"""Certificates (证件管理, seed 000 §一.2): types and requirements (data), certificates with scanned files, batch
upload matched by staff number in the file name, and reminders for missing and expiring certificates.

Invariants:
- a file is stored under UPLOAD_DIR with a name the system generates; the client's file name is only shown,
  never used as a path; only JPEG, PNG and PDF are accepted, recognised by their content (not the name), and
  no larger than ARCHIVE_MAX_FILE_BYTES;
- certificates and files are soft-deleted; every change is audited;
- a reminder is sent at most once per key (certificate × threshold, or person × type × month for a missing
  certificate), so the daily job may run any number of times.
"""

from __future__ import annotations

import hashlib
import io
import re
import unicodedata
import uuid
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.audit import services as audit
from app.auth.models import Role, User, UserRole
from app.auth.services import has_permission
from app.db import db, utcnow
from app.errors import Forbidden, NotFound, ValidationFailed
from app.forms import start as start_forms
from app.notify import services as notify

from . import services as archives
from .models import (
    ArchiveProfile,
    ArchiveReminder,
    Certificate,
    CertificateFile,
    CertificateRequirement,
    CertificateType,
)

# seed 000 §一.2 lists these; the office edits the table (name, aliases, expiry, reminder days)
DEFAULT_TYPES: tuple[tuple[str, str, str, bool], ...] = (
    ("diploma", "毕业证", "毕业证书", False),
    ("degree", "学位证", "学位证书", False),
    ("residency", "规培证", "住院医师规范化培训合格证,规范化培训", False),
    ("qualification", "资格证", "医师资格证,资格证书", False),
    ("practice", "执业证", "医师执业证,执业证书,执业注册", True),
    ("title", "职称证", "专业技术资格证,职称证书", False),
    ("tcm_western", "西学中", "西学中证书,西医学习中医", False),
    ("respiratory", "呼吸治疗师", "呼吸治疗师证", True),
    ("cosmetic", "美容主诊医师", "美容主诊医师证,医疗美容主诊医师", True),
    # nurses (《护士条例》: 护士执业资格考试 passed, then 执业注册, valid 5 years and renewed before it lapses)
    ("nurse_qualification", "护士资格证", "护士执业资格证,护士资格证书,护士执业资格考试合格证明", False),
    ("nurse_practice", "护士执业证书", "护士执业证,护士执业注册,护士注册证", True),
)
DEFAULT_REMIND_DAYS = [90, 30]
NURSING_TITLES = ("护士", "护师", "主管护师", "副主任护师", "主任护师")
# (type code, title or None, role code or None)
DEFAULT_REQUIREMENTS: tuple[tuple[str, str | None, str | None], ...] = (
    ("diploma", None, "physician"),
    ("qualification", None, "physician"),
    ("practice", None, "physician"),
    ("residency", "住院医师", "physician"),
    ("title", "主治医师", None),
    ("title", "副主任医师", None),
    ("title", "主任医师", None),
    # nurses by role, and by nursing title (an HR-confirmed nurse may hold another role, e.g. 科主任)
    ("nurse_qualification", None, "nurse"),
    ("nurse_practice", None, "nurse"),
    *((code, title, None) for title in NURSING_TITLES for code in ("nurse_qualification", "nurse_practice")),
)

ALLOWED = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "pdf": "application/pdf"}
EXT_FOR = {"image/jpeg": "jpg", "image/png": "png", "application/pdf": "pdf"}
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
ZIP_MAX_ENTRIES = 500
ZIP_MAX_TOTAL = 300 * 1024 * 1024
CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def _config(name: str, default: Any) -> Any:
    from flask import current_app, has_app_context

    return current_app.config.get(name, default) if has_app_context() else default


def upload_root() -> Path:
    from app.config import ROOT

    return Path(_config("UPLOAD_DIR", str(ROOT / "instance" / "uploads")))


def max_file_bytes() -> int:
    return int(_config("ARCHIVE_MAX_FILE_BYTES", DEFAULT_MAX_BYTES))


# ---------------------------------------------------------------- types and requirements


def seed_types() -> int:
    """Create the shipped certificate types and requirements where missing (idempotent): all requirements on a
    first run, afterwards only those of types this run created (the office's edits to the others stay).
    Returns new types."""
    have = {t.code: t for t in db.session.scalars(select(CertificateType))}
    created: set[str] = set()
    for i, (code, name, aliases, expiry) in enumerate(DEFAULT_TYPES):
        if code not in have:
            have[code] = CertificateType(code=code, name=name, aliases=aliases, has_expiry=expiry,
                                         remind_days=list(DEFAULT_REMIND_DAYS) if expiry else [], sort_order=i + 1)
            db.session.add(have[code])
            created.add(code)
    db.session.flush()
    first_run = not db.session.scalar(select(func.count()).select_from(CertificateRequirement))
    added = False
    for code, title, role in DEFAULT_REQUIREMENTS:
        if first_run or code in created:
            db.session.add(CertificateRequirement(type_id=have[code].id, title=title, role_code=role))
            added = True
    if added:
        db.session.flush()
    return len(created)


def certificate_types(*, active_only: bool = True) -> list[CertificateType]:
    stmt = select(CertificateType).order_by(CertificateType.sort_order, CertificateType.id)
    if active_only:
        stmt = stmt.where(CertificateType.is_active.is_(True))
    return list(db.session.scalars(stmt))


def requirements() -> list[CertificateRequirement]:
    return list(db.session.scalars(select(CertificateRequirement).order_by(CertificateRequirement.type_id,
                                                                           CertificateRequirement.id)))


def _remind_days(text: str | Iterable[Any] | None) -> tuple[list[int] | None, str | None]:
    if text is None:
        return [], None
    parts = re.split(r"[,，\s]+", text.strip()) if isinstance(text, str) else [str(x) for x in text]
    days = []
    for p in parts:
        if not p:
            continue
        if not p.isdigit() or not 0 < int(p) <= 3650:
            return None, "提醒天数为 1–3650 的整数，多个用逗号分隔（如 90,30）"
        days.append(int(p))
    return sorted(set(days), reverse=True), None


def save_type(*, actor: User, type_id: int | None, code: str, name: str, aliases: str | None, has_expiry: bool,
              remind_days: str | None, sort_order: int | None, is_active: bool) -> CertificateType:
    """Create or change a certificate type (audited). Raises ValidationFailed (nothing changed)."""
    code, name = (code or "").strip(), (name or "").strip()
    errors: dict[str, str] = {}
    row = db.session.get(CertificateType, type_id) if type_id else None
    if type_id and row is None:
        raise NotFound("证件类型不存在")
    if not CODE_RE.match(code):
        errors["code"] = "类型编码为小写字母开头的字母、数字或下划线（不超过 32 位）"
    else:
        other = db.session.scalar(select(CertificateType.id).where(CertificateType.code == code))
        if other is not None and (row is None or other != row.id):
            errors["code"] = "类型编码已存在"
    if not name or len(name) > 64:
        errors["name"] = "请填写类型名称（不超过 64 个字符）"
    if aliases and len(aliases) > 200:
        errors["aliases"] = "别名不超过 200 个字符"
    days, problem = _remind_days(remind_days)
    if problem:
        errors["remind_days"] = problem
    if errors:
        raise ValidationFailed(errors)
    before = audit.snapshot(row) if row is not None else None
    if row is None:
        row = CertificateType(code=code)
        db.session.add(row)
    row.code, row.name, row.aliases = code, name, (aliases or "").strip() or None
    row.has_expiry, row.remind_days, row.is_active = bool(has_expiry), days or [], bool(is_active)
    row.sort_order = sort_order if sort_order is not None else (row.sort_order or 0)
    db.session.flush()
    audit.record(actor, "archive.certificate_type_saved", row, before=before, after=audit.snapshot(row))
    archives.refresh_completeness()
    return row


def add_requirement(*, actor: User, type_id: int | None, title: str | None, role_code: str | None
                    ) -> CertificateRequirement:
    """Require a certificate type of a title and/or role (audited). Raises ValidationFailed."""
    title, role_code = (title or "").strip() or None, (role_code or "").strip() or None
    errors: dict[str, str] = {}
    ctype = db.session.get(CertificateType, type_id) if type_id else None
    if ctype is None:
        errors["type_id"] = "请选择证件类型"
    if title and len(title) > 32:
        errors["title"] = "职称不超过 32 个字符"
    if role_code and not db.session.scalar(select(Role.id).where(Role.code == role_code)):
        errors["role_code"] = "角色不存在"
    if not errors and db.session.scalar(select(CertificateRequirement.id).where(
            CertificateRequirement.type_id == type_id, CertificateRequirement.title.is_(None) if title is None
            else CertificateRequirement.title == title,
            CertificateRequirement.role_code.is_(None) if role_code is None
            else CertificateRequirement.role_code == role_code)):
        errors["type_id"] = "该要求已存在"
    if errors:
        raise ValidationFailed(errors)
    row = CertificateRequirement(type_id=type_id, title=title, role_code=role_code)
    db.session.add(row)
    db.session.flush()
    audit.record(actor, "archive.certificate_requirement_saved", row,
                 after={"type": ctype.code if ctype else None, "title": title, "role_code": role_code,
                        "change": "added"})
    archives.refresh_completeness()
    return row


def remove_requirement(*, actor: User, requirement_id: int) -> None:
    """Drop a requirement (it is configuration, not a record; the change is audited with its content)."""
    row = db.session.get(CertificateRequirement, requirement_id)
    if row is None:
        raise NotFound("证件要求不存在")
    before = {"type": row.type.code, "title": row.title, "role_code": row.role_code}
    db.session.delete(row)
    db.session.flush()
    audit.record(actor, "archive.certificate_requirement_saved", None, entity_type="certificate_requirements",
                 entity_id=requirement_id, before=before, after={"change": "removed"})
    archives.refresh_completeness()


# ---------------------------------------------------------------- certificates


def can_edit_certificates(actor: Any, staff: User) -> bool:
    """archives.manage in scope; or the person / archives.edit in scope while the person is not departed."""
    if archives.is_manager(actor, staff):
        return True
    if not isinstance(actor, User) or staff.departed_at is not None:
        return False
    if actor.id == staff.id:
        return True
    scope = archives._scope(actor, "archives.edit")
    return scope is not None and scope.allows(user_id=staff.id, dept_id=staff.dept_id)


def _ensure_can_edit(actor: Any, staff: User) -> None:
    if not can_edit_certificates(actor, staff):
        if staff.departed_at is not None:
            raise Forbidden("该人员已离职，档案只读（仅医务处可维护）")
        raise Forbidden("没有权限维护该人员的证件")


def certificates_of(staff: User) -> list[Certificate]:
    return list(db.session.scalars(select(Certificate).where(Certificate.user_id == staff.id,
                                                             Certificate.is_deleted.is_(False))
                                   .join(CertificateType).order_by(CertificateType.sort_order, Certificate.id)))


def get_certificate(certificate_id: int) -> Certificate:
    cert = db.session.get(Certificate, certificate_id)
    if cert is None or cert.is_deleted:
        raise NotFound("证件不存在")
    return cert


@dataclass
class CertificateInput:
    type_id: int | None = None
    number: str | None = None
    issuer: str | None = None
    issue_date: str | None = None
    expiry_date: str | None = None
    note: str | None = None


def _check_input(data: Any, *, keep: Mapping[str, Any] | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """Errors by field path and clean values of a certificate against the latest `archive_certificate` form
    template and the business rules (type in use, dates in order, an expiry date where the type expires). `data`
    is a CertificateInput (then `keep`, the row's stored extra fields, fills the template fields it cannot carry)
    or a dict / form-encoded data with any fields the office added."""
    form = start_forms.start_form(Certificate.FORM_KEY)
    defaults = None
    if isinstance(data, CertificateInput):
        data, defaults = asdict(data), keep
    values, template_errors = start_forms.check(form, data, defaults=defaults)
    errors: dict[str, str] = {}
    type_id = values.get("type_id")
    ctype = (db.session.get(CertificateType, type_id)
             if isinstance(type_id, int) and not isinstance(type_id, bool) and type_id > 0 else None)
    if ctype is None or not ctype.is_active:
        errors["type_id"] = "请选择证件类型"
    clean: dict[str, Any] = {"type": ctype}
    for name in ("number", "issuer", "note"):
        value = values.get(name)
        clean[name] = value if isinstance(value, str) and value else None
    for name, label in (("issue_date", "发证日期"), ("expiry_date", "有效期至")):
        text, value = values.get(name), None
        if isinstance(text, str) and name not in template_errors:
            try:
                value = date.fromisoformat(text)
            except ValueError:
                errors[name] = f"{label}应为有效的日期（如 2024-05-01）"
        clean[name] = value
    if clean.get("issue_date") and clean["issue_date"] > archives.today():
        errors["issue_date"] = "发证日期不能晚于今天"
    if clean.get("issue_date") and clean.get("expiry_date") and clean["expiry_date"] < clean["issue_date"]:
        errors["expiry_date"] = "有效期至不能早于发证日期"
    if (ctype is not None and ctype.has_expiry and clean.get("expiry_date") is None
            and "expiry_date" not in errors and "expiry_date" not in template_errors):
        # without the date no expiry reminder can ever be sent (seed 000 §一.2 证件提醒)
        errors["expiry_date"] = f"{ctype.name}有有效期，请填写有效期至"
    clean["form"] = form
    clean["form_data"] = start_forms.extra(form, values, Certificate.FORM_COLUMNS)
    return start_forms.merge_errors(template_errors, errors), clean


@dataclass
class Upload:
    """One file as received: the client's name (display only) and the bytes."""

    filename: str
    content: bytes


def sniff(content: bytes) -> str | None:
    """The content type recognised from the first bytes (JPEG, PNG, PDF), else None."""
    if content.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if content.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if content[:1024].lstrip().startswith(b"%PDF-"):
        return "application/pdf"
    return None


def file_problem(upload: Upload) -> str | None:
    """Why a file cannot be stored (type by extension and content, size); None when it can."""
    ext = upload.filename.rsplit(".", 1)[-1].lower() if "." in upload.filename else ""
    if ext not in ALLOWED:
        return "文件类型不支持，仅接受 JPG、PNG、PDF"
    if not upload.content:
        return "文件为空"
    if len(upload.content) > max_file_bytes():
        return f"文件超过 {max_file_bytes() // (1024 * 1024)} MB"
    kind = sniff(upload.content)
    if kind is None:
        return "文件内容不是有效的 JPG、PNG 或 PDF"
    if ALLOWED[ext] != kind:
        return "文件扩展名与内容不符"
    return None


def display_name(filename: str) -> str:
    """The client's file name reduced to its last path part and printable characters (display only)."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in unicodedata.normalize("NFC", name) if c.isprintable())
    return name.strip()[:200] or "未命名"


def _store(cert: Certificate, upload: Upload, actor: Any) -> CertificateFile:
    problem = file_problem(upload)
    if problem:
        raise ValidationFailed({"files": f"{display_name(upload.filename)}：{problem}"})
    kind = sniff(upload.content)
    assert kind is not None
    rel = f"archives/{uuid.uuid4().hex[:2]}/{uuid.uuid4().hex}.{EXT_FOR[kind]}"
    path = upload_root() / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(upload.content)
    row = CertificateFile(certificate_id=cert.id, stored_path=rel, original_name=display_name(upload.filename),
                          content_type=kind, size=len(upload.content),
                          sha256=hashlib.sha256(upload.content).hexdigest(),
                          uploaded_by_id=actor.id if isinstance(actor, User) else None)
    db.session.add(row)
    db.session.flush()
    audit.record(actor, "archive.certificate_file_added", row,
                 after={"certificate_id": cert.id, "name": row.original_name, "size": row.size,
                        "content_type": kind, "sha256": row.sha256})
    return row


def add_certificate(*, staff: User, actor: Any, data: CertificateInput | Any, files: Iterable[Upload] = (),
                    source: str = "manual") -> Certificate:
    """Register a certificate with its scans (audited) from the `archive_certificate` form (a CertificateInput, or
    a dict / form-encoded data with the office's extra fields, kept with the template version). Raises Forbidden,
    ValidationFailed (every problem by field path; nothing stored)."""
    _ensure_can_edit(actor, staff)
    files = list(files)
    errors, clean = _check_input(data)
    for i, f in enumerate(files):
        problem = file_problem(f)
        if problem:
            errors[f"files/{i}"] = f"{display_name(f.filename)}：{problem}"
    if errors:
        raise ValidationFailed(errors)
    cert = Certificate(user_id=staff.id, type_id=clean["type"].id, number=clean["number"], issuer=clean["issuer"],
                       issue_date=clean["issue_date"], expiry_date=clean["expiry_date"], note=clean["note"],
                       source=source, created_by_id=actor.id if isinstance(actor, User) else None,
                       form_version=clean["form"].version, form_data=clean["form_data"])
    db.session.add(cert)
    db.session.flush()
    audit.record(actor, "archive.certificate_created", cert, after=audit.snapshot(cert))
    for f in files:
        _store(cert, f, actor)
    db.session.expire(cert, ["files"])
    archives.refresh_completeness(user_ids=[staff.id])
    return cert


def update_certificate(*, cert: Certificate, actor: Any, data: CertificateInput | Any, files: Iterable[Upload] = ()
                       ) -> Certificate:
    """Change a certificate's details and add scans (audited before/after), checked against the latest
    `archive_certificate` template (whose version and extra fields the certificate then records; a
    CertificateInput keeps the extra fields stored before). Raises Forbidden, ValidationFailed."""
    staff = db.session.get(User, cert.user_id)
    assert staff is not None
    _ensure_can_edit(actor, staff)
    files = list(files)
    errors, clean = _check_input(data, keep=cert.form_data)
    for i, f in enumerate(files):
        problem = file_problem(f)
        if problem:
            errors[f"files/{i}"] = f"{display_name(f.filename)}：{problem}"
    if errors:
        raise ValidationFailed(errors)
    before = audit.snapshot(cert)
    cert.type_id = clean["type"].id
    cert.type = clean["type"]
    cert.number, cert.issuer, cert.note = clean["number"], clean["issuer"], clean["note"]
    cert.issue_date, cert.expiry_date = clean["issue_date"], clean["expiry_date"]
    cert.form_version, cert.form_data = clean["form"].version, clean["form_data"]
    db.session.flush()
    audit.record(actor, "archive.certificate_updated", cert, before=before, after=audit.snapshot(cert))
    for f in files:
        _store(cert, f, actor)
    db.session.expire(cert, ["files"])
    archives.refresh_completeness(user_ids=[staff.id])
    return cert


def delete_certificate(*, cert: Certificate, actor: Any, reason: str) -> Certificate:
    """Soft-delete a certificate (files kept). archives.manage only. Raises Forbidden, ValidationFailed."""
    staff = db.session.get(User, cert.user_id)
    assert staff is not None
    if not archives.is_manager(actor, staff):
        raise Forbidden("只有医务处可以删除证件")
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed({"reason": "请填写删除原因"})
    before = audit.snapshot(cert)
    cert.is_deleted, cert.deleted_at, cert.deleted_reason = True, utcnow(), reason[:500]
    cert.deleted_by_id = actor.id if isinstance(actor, User) else None
    db.session.flush()
    audit.record(actor, "archive.certificate_deleted", cert, before=before, after=audit.snapshot(cert))
    archives.refresh_completeness(user_ids=[staff.id])
    return cert


def delete_file(*, file: CertificateFile, actor: Any) -> CertificateFile:
    """Soft-delete one scan (the stored file stays for the record). Raises Forbidden."""
    cert = db.session.get(Certificate, file.certificate_id)
    assert cert is not None
    staff = db.session.get(User, cert.user_id)
    assert staff is not None
    _ensure_can_edit(actor, staff)
    file.is_deleted = True
    db.session.flush()
    audit.record(actor, "archive.certificate_file_deleted", file, after={"certificate_id": cert.id,
                                                                        "name": file.original_name})
    db.session.expire(cert, ["files"])
    archives.refresh_completeness(user_ids=[staff.id])
    return file


def get_file(*, file_id: int, viewer: Any) -> tuple[CertificateFile, Path]:
    """A stored scan the viewer may see, with its path on disk. Raises NotFound, Forbidden."""
    row = db.session.get(CertificateFile, file_id)
    if row is None or row.is_deleted:
        raise NotFound("文件不存在")
    cert = db.session.get(Certificate, row.certificate_id)
    assert cert is not None
    staff = db.session.get(User, cert.user_id)
    assert staff is not None
    archives.ensure_can_view(viewer, staff)
    root = upload_root().resolve()
    path = (root / row.stored_path).resolve()
    if root not in path.parents or not path.is_file():
        raise NotFound("文件不存在或已被移走，请联系信息科")
    return row, path


# ---------------------------------------------------------------- batch upload


@dataclass
class BatchResult:
    matched: list[dict[str, Any]] = field(default_factory=list)
    unmatched: list[dict[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.matched) + len(self.unmatched)


def _zip_name(info: zipfile.ZipInfo) -> str:
    # Windows zip tools write GBK names without the UTF-8 flag; Python reads those as cp437
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("gbk")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def expand(uploads: Iterable[Upload]) -> tuple[list[Upload], list[dict[str, str]]]:
    """Files with every .zip unpacked (bounded entries and size); problems with the archives themselves."""
    out: list[Upload] = []
    problems: list[dict[str, str]] = []
    for up in uploads:
        if not up.filename.lower().endswith(".zip"):
            out.append(up)
            continue
        name = display_name(up.filename)
        try:
            zf = zipfile.ZipFile(io.BytesIO(up.content))
        except zipfile.BadZipFile:
            problems.append({"file": name, "reason": "压缩包无法打开（不是有效的 zip 文件）"})
            continue
        infos = [i for i in zf.infolist() if not i.is_dir()]
        infos = [i for i in infos if not _zip_name(i).split("/")[-1].startswith(".")
                 and "__MACOSX" not in _zip_name(i)]
        if len(infos) > ZIP_MAX_ENTRIES:
            problems.append({"file": name, "reason": f"压缩包内文件超过 {ZIP_MAX_ENTRIES} 个，请分批上传"})
            continue
        if sum(i.file_size for i in infos) > ZIP_MAX_TOTAL:
            problems.append({"file": name, "reason": "压缩包解压后过大，请分批上传"})
            continue
        for info in infos:
            inner = f"{name}/{_zip_name(info)}"
            if info.file_size > max_file_bytes():
                problems.append({"file": inner, "reason": f"文件超过 {max_file_bytes() // (1024 * 1024)} MB"})
                continue
            try:
                content = zf.read(info)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError):
                problems.append({"file": inner, "reason": "无法解压（文件损坏或已加密）"})
                continue
            out.append(Upload(filename=_zip_name(info), content=content))
    return out, problems


NAME_RE = re.compile(r"^(?P<staff>[A-Za-z0-9]+)[\s_\-－—]+(?P<rest>.+)$")


def match_type(text: str, types: list[CertificateType]) -> CertificateType | None:
    """The certificate type named in a file-name part (name, code or alias; the longest match wins)."""
    text = text.strip().lower()
    best: tuple[int, CertificateType] | None = None
    for t in types:
        names = [t.name, t.code, *[a for a in re.split(r"[,，]", t.aliases or "") if a.strip()]]
        for n in names:
            n = n.strip().lower()
            if n and (text == n or text.startswith(n)) and (best is None or len(n) > best[0]):
                best = (len(n), t)
    return best[1] if best else None


# an expiry date in a batch file name: 2028-12-31, 2028.12.31, 2028年12月31日 or 20281231 (not part of a longer number)
NAME_DATE_RE = re.compile(r"(?<!\d)(\d{4})(?:[-.年/](\d{1,2})[-.月/](\d{1,2})日?|(\d{2})(\d{2}))(?!\d)")


def expiry_in_name(text: str) -> tuple[date | None, str | None]:
    """The expiry date written in a batch file name (after the type), and why it cannot be used (None if fine)."""
    m = NAME_DATE_RE.search(text)
    if not m:
        return None, None
    year, month, day = m.group(1), m.group(2) or m.group(4), m.group(3) or m.group(5)
    try:
        return date(int(year), int(month), int(day)), None
    except ValueError:
        return None, f"文件名中的有效期 {m.group(0)} 不是有效的日期（如 2028-12-31）"


def _batch_target(staff: User, ctype: CertificateType, expiry: date | None
                  ) -> tuple[Certificate | None, str | None]:
    """The certificate a batch file belongs to (None: create one), or why the file cannot be stored.

    A type with an expiry needs the date: the file name's date picks the certificate with that date (or fills
    one without a date; a different date is a renewed certificate, created); without a date the file goes to
    the latest certificate only when that one has its date."""
    mine = list(db.session.scalars(select(Certificate).where(Certificate.user_id == staff.id,
                                                             Certificate.type_id == ctype.id,
                                                             Certificate.is_deleted.is_(False))
                                   .order_by(Certificate.id.desc())))
    if not ctype.has_expiry:
        return (mine[0] if mine else None), None
    example = f"{staff.staff_no}_{ctype.name}_2028-12-31.pdf"
    if expiry is not None:
        same = [c for c in mine if c.expiry_date == expiry] or [c for c in mine if c.expiry_date is None]
        return (same[0] if same else None), None
    if not mine:
        return None, f"{ctype.name}有有效期，须填写有效期至：请在文件名中注明（如 {example}），或先单个登记该证件"
    if mine[0].expiry_date is None:
        return None, (f"该人员的{ctype.name}尚未填写有效期至：请在文件名中注明（如 {example}），"
                      f"或先在证件中补填有效期")
    return mine[0], None


def batch_upload(*, uploads: Iterable[Upload], actor: User) -> BatchResult:
    """Attach scans named `<工号>_<证件类型>[_有效期][_说明].<ext>` (or a zip of them) to each person's certificate
    of that type (created when missing). A type with an expiry needs the date: in the file name, or on the
    certificate already registered. Files that cannot be matched or stored are reported, not stored.
    archives.manage within scope is required for every person matched; audited."""
    if not has_permission(actor, "archives.manage"):
        raise Forbidden("没有权限：维护医师档案")
    files, problems = expand(uploads)
    result = BatchResult(unmatched=list(problems))
    types = certificate_types()
    staff_cache: dict[str, User | None] = {}
    touched: set[int] = set()
    for up in files:
        name = display_name(up.filename)
        stem = name.rsplit(".", 1)[0] if "." in name else name
        problem = file_problem(up)
        if problem:
            result.unmatched.append({"file": name, "reason": problem})
            continue
        m = NAME_RE.match(stem)
        if not m:
            result.unmatched.append({"file": name, "reason": "文件名应为“工号_证件类型”，如 D1002_执业证.pdf"})
            continue
        staff_no = m.group("staff")
        if staff_no not in staff_cache:
            staff_cache[staff_no] = db.session.scalar(select(User).where(func.upper(User.staff_no) == staff_no.upper()))
        staff = staff_cache[staff_no]
        if staff is None:
            result.unmatched.append({"file": name, "reason": f"工号 {staff_no} 不存在"})
            continue
        if not archives.is_manager(actor, staff):
            result.unmatched.append({"file": name, "reason": f"工号 {staff_no} 不在您的管理范围内"})
            continue
        ctype = match_type(re.split(r"[_\-－—\s]", m.group("rest"))[0], types) or match_type(m.group("rest"), types)
        if ctype is None:
            result.unmatched.append({"file": name, "reason": "无法从文件名识别证件类型（可在证件类型中维护别名）"})
            continue
        expiry, problem = expiry_in_name(m.group("rest")) if ctype.has_expiry else (None, None)
        if problem:
            result.unmatched.append({"file": name, "reason": problem})
            continue
        cert, problem = _batch_target(staff, ctype, expiry)
        if problem:
            result.unmatched.append({"file": name, "reason": problem})
            continue
        created = cert is None
        if cert is None:
            archives.ensure_profile(user=staff, actor=actor)
            cert = Certificate(user_id=staff.id, type_id=ctype.id, source="batch", created_by_id=actor.id,
                               expiry_date=expiry)
            db.session.add(cert)
            db.session.flush()
            audit.record(actor, "archive.certificate_created", cert, after=audit.snapshot(cert))
        elif ctype.has_expiry and cert.expiry_date is None and expiry is not None:
            before = audit.snapshot(cert)
            cert.expiry_date = expiry
            db.session.flush()
            audit.record(actor, "archive.certificate_updated", cert, before=before, after=audit.snapshot(cert))
        stored = _store(cert, up, actor)
        touched.add(staff.id)
        result.matched.append({"file": name, "staff_no": staff.staff_no, "staff_name": staff.name,
                               "type": ctype.name, "certificate_id": cert.id, "file_id": stored.id,
                               "created": created,
                               "expiry_date": cert.expiry_date.isoformat() if cert.expiry_date else None})
    audit.record(actor, "archive.certificate_batch_uploaded", None, entity_type="certificates",
                 after={"matched": len(result.matched), "unmatched": result.unmatched})
    archives.refresh_completeness(user_ids=sorted(touched))
    return result


# ---------------------------------------------------------------- expiry and reminders


@dataclass
class DueItem:
    user: User
    type_name: str
    kind: str  # expiring / expired / missing
    certificate: Certificate | None = None
    days_left: int | None = None


def due_items(*, viewer: User | None = None, within_days: int = 90, on: date | None = None,
              include_missing: bool = True) -> list[DueItem]:
    """Certificates expiring within `within_days`, already expired, and required certificates missing, for
    people not departed (within the viewer's archive scope when a viewer is given)."""
    on = on or archives.today()
    stmt = (select(Certificate).join(User, Certificate.user_id == User.id)
            .join(CertificateType, Certificate.type_id == CertificateType.id)
            .where(Certificate.is_deleted.is_(False), User.departed_at.is_(None), CertificateType.is_active.is_(True),
                   Certificate.expiry_date.is_not(None), Certificate.expiry_date <= on + timedelta(days=within_days))
            .order_by(Certificate.expiry_date))
    if viewer is not None:
        stmt = archives.viewable_query(viewer, stmt, user_col=User.id, dept_col=User.dept_id)
    latest: dict[tuple[int, int], Certificate] = {}
    for cert in db.session.scalars(stmt):
        latest[(cert.user_id, cert.type_id)] = cert
    # a newer certificate of the same type that is still valid makes an old one irrelevant
    valid_later = set()
    if latest:
        for uid, tid in db.session.execute(
                select(Certificate.user_id, Certificate.type_id).where(
                    Certificate.is_deleted.is_(False), Certificate.user_id.in_({k[0] for k in latest}),
                    (Certificate.expiry_date.is_(None)) | (Certificate.expiry_date > on + timedelta(days=within_days)))):
            valid_later.add((uid, tid))
    items = []
    for key, cert in latest.items():
        if key in valid_later:
            continue
        assert cert.expiry_date is not None
        left = (cert.expiry_date - on).days
        items.append(DueItem(user=cert.user, type_name=cert.type.name, kind="expired" if left < 0 else "expiring",
                             certificate=cert, days_left=left))
    if include_missing:
        pstmt = (select(ArchiveProfile).join(User, ArchiveProfile.user_id == User.id)
                 .where(User.departed_at.is_(None), ArchiveProfile.hr_pending.is_(False)))
        if viewer is not None:
            pstmt = archives.viewable_query(viewer, pstmt, user_col=User.id, dept_col=User.dept_id)
        names = {f"缺少{t.name}" for t in certificate_types()}
        for p in db.session.scalars(pstmt):
            for text in p.missing or []:
                if text in names:
                    items.append(DueItem(user=p.user, type_name=text[2:], kind="missing"))
                elif text.endswith("未上传扫描件"):
                    items.append(DueItem(user=p.user, type_name=text[: -len("未上传扫描件")], kind="missing"))
    order = {"expired": 0, "expiring": 1, "missing": 2}
    return sorted(items, key=lambda i: (order[i.kind], i.days_left if i.days_left is not None else 99999,
                                        i.user.staff_no or ""))


def _claim(key: str, user_id: int | None, kind: str) -> bool:
    """Record a reminder key; False when it was already sent (unique key, safe under concurrent runs)."""
    if db.session.scalar(select(ArchiveReminder.id).where(ArchiveReminder.key == key)):
        return False
    try:
        with db.session.begin_nested():
            db.session.add(ArchiveReminder(key=key, user_id=user_id, kind=kind))
    except IntegrityError:
        return False
    return True


def daily_run_done(on: date) -> bool:
    """Whether the daily reminder job already ran for this day."""
    return db.session.scalar(select(ArchiveReminder.id).where(ArchiveReminder.key == f"daily:{on.isoformat()}")) \
        is not None


def mark_daily_run(on: date) -> None:
    _claim(f"daily:{on.isoformat()}", None, "daily")


def managers() -> list[User]:
    """People holding archives.manage (not departed): recipients of the daily digest."""
    from app.auth.models import RolePermission

    return list(db.session.scalars(
        select(User).join(UserRole, UserRole.user_id == User.id)
        .join(RolePermission, RolePermission.role_id == UserRole.role_id)
        .where(RolePermission.permission == "archives.manage", User.departed_at.is_(None),
               User.is_active.is_(True)).distinct()))


def send_reminders(*, on: date | None = None) -> dict[str, int]:
    """Daily job: refresh completeness, then remind each person of certificates expiring within their type's
    reminder days (e.g. 90 and 30), expired ones, and missing required ones (monthly), and send 医务处 one digest.
    Idempotent per day: a second run sends nothing. Returns counts per kind."""
    on = on or archives.today()
    archives.refresh_completeness(on=on)
    counts = {"expiring": 0, "expired": 0, "missing": 0, "digest": 0}
    horizon = max([max(t.remind_days or [0]) for t in certificate_types()] + [0])
    for item in due_items(within_days=horizon, on=on):
        link = f"/archives/{item.user.id}?tab=certificates"
        if item.kind == "missing":
            key = f"missing:{item.user.id}:{item.type_name}:{on:%Y-%m}"
            if _claim(key, item.user.id, "missing"):
                notify.notify(user_ids=[item.user.id], title=f"请补充证件：{item.type_name}",
                              body=f"您的档案缺少{item.type_name}或其扫描件，请上传或联系医务处。", link=link,
                              kind="reminder")
                counts["missing"] += 1
            continue
        cert = item.certificate
        assert cert is not None and item.days_left is not None
        if item.kind == "expired":
            key = f"expired:{cert.id}"
            title = f"证件已过期：{item.type_name}"
            body = f"您的{item.type_name}已于 {cert.expiry_date} 到期，请尽快办理并上传新证件。"
        else:
            days = sorted(d for d in (cert.type.remind_days or []) if item.days_left <= d)
            if not days:
                continue
            key = f"expiring:{cert.id}:{days[0]}"
            title = f"证件将在 {item.days_left} 天后到期：{item.type_name}"
            body = f"您的{item.type_name}（编号 {cert.number or '未填'}）有效期至 {cert.expiry_date}，请及时办理。"
        if _claim(key, item.user.id, item.kind):
            notify.notify(user_ids=[item.user.id], title=title, body=body, link=link, kind="reminder")
            counts[item.kind] += 1
    sent = counts["expiring"] + counts["expired"] + counts["missing"]
    if sent and _claim(f"digest:{on.isoformat()}", None, "digest"):
        ids = [u.id for u in managers()]
        if ids:
            notify.notify(user_ids=ids, title=f"证件提醒汇总（{on.isoformat()}）",
                          body=f"今日提醒：即将到期 {counts['expiring']} 条，已过期 {counts['expired']} 条，"
                               f"缺证 {counts['missing']} 条。", link="/archives/certificates/due", kind="reminder")
            counts["digest"] = 1
    db.session.flush()
    return counts
