"""HR / HRP staff master data (seed 000 §一.4, §三 接口 1): Excel/CSV import and the JSON push API.

Invariants:
- every row is checked on its own: a bad row is rejected with its reasons (field paths) and never half-applied;
  good rows of the same batch are still processed;
- MedLoop's data is never overwritten silently: a value that differs from HR becomes an HrDiff that 医务处
  accepts (the archive is updated, audited) or ignores; a newer differing HR value supersedes an open diff;
- a staff number MedLoop does not know becomes an inactive user with an archive marked "pending" until
  医务处 confirms it (and gives it a role);
- each import is a batch with a per-row report; everything is audited;
- an HR status of 离职/退休/辞退 for someone in service is never applied here: it becomes an open `status` HrDiff
  ("人事系统报告离职") that 医务处 settles through the departure registration (departure.py) or ignores; it
  cannot be "accepted"; registering the departure closes it;
- HR may send the departure date (离职日期) with such a status: it is kept on the flag and prefills the registration
  form's date; a date more than DEPARTURE_AHEAD_DAYS days ahead, or one that is no date, rejects the row; a
  different date for the same status supersedes the open flag; with 在职 or no status the date means nothing and
  is ignored;
- 医务处 (holders of archives.manage) get one summary notification per batch with new staff or new differences;
- identifiers (工号, 科室编码, 手机号, 身份证号) are exact text: a number Excel stored with more than 15 significant
  digits (an 18-digit ID typed into a numeric cell) has already lost its last digits, so the row is rejected
  rather than imported with a wrong number.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from app.audit import services as audit
from app.auth.models import Department, Role, Scope, User, UserRole
from app.auth.permissions import ROLES
from app.auth.services import ensure_roles
from app.core.timefmt import SHANGHAI
from app.db import db, utcnow
from app.errors import InvalidTransition, NotFound, ValidationFailed
from app.notify import services as notify

from . import services as archives
from .models import DEPARTURE_KIND_LABELS, ArchiveProfile, Departure, HrDiff, HrDiffStatus, HrImportBatch

FIELDS = ("staff_no", "name", "dept_code", "title", "phone", "id_number", "hire_date", "status", "departure_date")
FIELD_LABELS = {"staff_no": "工号", "name": "姓名", "dept_code": "HIS 科室编码", "title": "职称", "phone": "手机号",
                "id_number": "身份证号", "hire_date": "入职日期", "status": "人员状态", "departure_date": "离职日期"}
DIFF_LABELS = {"name": "姓名", "dept": "科室", "title": "职称", "phone": "手机号", "id_number": "身份证号",
               "hire_date": "入职日期"}
# the HR status is a difference of its own kind ("人事系统报告离职"), settled by registering the departure
STATUS_FIELD = "status"
STATUS_DIFF_LABEL = "人事系统报告离职"
# HR's in-service/departed status: code -> label; the departed codes are the departure kinds of departure.py
HR_STATUS_LABELS = {"active": "在职", "resignation": "离职", "retirement": "退休", "dismissal": "辞退"}
HR_STATUS_ALIASES = {
    "在职": "active", "在岗": "active", "active": "active", "in_service": "active", "employed": "active",
    "离职": "resignation", "辞职": "resignation", "resigned": "resignation", "resignation": "resignation",
    "departed": "resignation", "left": "resignation",
    "退休": "retirement", "retired": "retirement", "retirement": "retirement",
    "辞退": "dismissal", "解聘": "dismissal", "dismissed": "dismissal", "dismissal": "dismissal",
}
HEADERS = {
    "staff_no": ("工号", "职工号", "人员编号", "staff_no", "staffno", "employee_no"),
    "name": ("姓名", "name"),
    "dept_code": ("科室编码", "HIS科室编码", "his科室编码", "HIS 科室编码", "部门编码", "科室代码", "dept_code", "dept_his_code",
                  "dept"),
    "title": ("职称", "专业技术职称", "title"),
    "phone": ("手机号", "手机", "联系电话", "phone", "mobile"),
    "id_number": ("身份证号", "身份证号码", "证件号码", "id_number", "idcard"),
    "hire_date": ("入职日期", "参加工作时间", "入院时间", "hire_date"),
    "status": ("人员状态", "在职状态", "在职情况", "状态", "status", "employment_status"),
    "departure_date": ("离职日期", "离职时间", "departure_date"),
}
STAFF_NO_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MOBILE_RE = re.compile(r"^1[3-9]\d{9}$")
MAX_ROWS = 5000
# columns whose every digit matters; they are never treated as numbers
IDENTIFIERS = ("staff_no", "dept_code", "phone", "id_number")
# Excel keeps 15 significant digits of a number (IEEE 754 double as Excel displays it); longer numbers are cut
EXCEL_DIGITS = 15
# a number turned into text: "1001.0" (pandas, float cells) or "3.30102E+17" (Excel's CSV export)
FLOAT_TEXT_RE = re.compile(r"^(\d+\.0*|\d+(\.\d+)?[eE]\+\d+)$")
ZERO_PAD_RE = re.compile(r"^0+$")
# HR may report a departure agreed in advance; a date further ahead than this is taken for a typing error
DEPARTURE_AHEAD_DAYS = 90
# 2024-05-01, 2024/5/1, 2024.05.01, 2024年5月1日, optionally followed by a time (离职时间)
DATE_TEXT_RE = re.compile(r"^(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?(?:[ T].*)?$")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value).strip()


def _number_shown(value: float) -> str:
    # how Excel shows such a number in a General cell, so the user can find it in the sheet
    return f"{value:.{EXCEL_DIGITS}G}"


def identifier_text(value: Any, *, number_format: str | None = None) -> tuple[str, str | None]:
    """Exact text of an identifier cell or JSON value, and why it cannot be exact (None when it is).

    Integers (and integer-valued floats up to 15 digits) become their digits, zero-padded when the cell's number
    format is "000000"; a float of more than 15 digits, or text such as "3.30102E+17", has lost digits."""
    if value is None or isinstance(value, bool):
        return _text(value), None
    if isinstance(value, str):
        text = value.strip()
        if not FLOAT_TEXT_RE.match(text):
            return text, None
        try:
            value = float(text)
        except ValueError:  # pragma: no cover - the pattern only matches numbers
            return text, None
        shown = text
    elif isinstance(value, int):
        return _zero_pad(str(value), number_format), None
    elif isinstance(value, float):
        shown = _number_shown(value)
    else:
        return _text(value), None
    if not math.isfinite(value) or not value.is_integer():
        return shown, "应为号码，不能是带小数的数字"
    digits = str(abs(int(value)))
    if len(digits) > EXCEL_DIGITS:
        return shown, f"以数字形式保存为 {shown}，超过 {EXCEL_DIGITS} 位有效数字的部分已丢失，无法还原准确的号码"
    return _zero_pad(("-" if value < 0 else "") + digits, number_format), None


def _zero_pad(digits: str, number_format: str | None) -> str:
    # a numeric cell formatted "000000" shows (and means) 001001 for 1001
    if number_format and ZERO_PAD_RE.match(number_format):
        return digits.zfill(len(number_format))
    return digits


def departure_date_value(value: Any) -> tuple[date | None, str | None]:
    """HR's departure date from a cell or JSON value (None when empty), and why it cannot be used: a date cell
    (openpyxl gives a datetime) or text such as 2024-05-01, 2024/5/1, 2024年5月1日 (a time part is dropped); not
    more than DEPARTURE_AHEAD_DAYS days after today. The reason reads after a field or column name."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    day: date | None
    if isinstance(value, datetime):
        day = value.date()
    elif isinstance(value, date):
        day = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        # a General cell holding Excel's serial number, or a JSON number: which day is meant is a guess
        return None, f"是数字 {_text(value)}，不是日期，请将该列设置为日期格式，或按 2024-05-01 的格式填写"
    else:
        text = str(value).strip()
        m = DATE_TEXT_RE.match(text)
        try:
            day = date(int(m[1]), int(m[2]), int(m[3])) if m else None
        except ValueError:
            day = None
        if day is None:
            return None, f"“{text[:30]}”不是有效的日期（如 2024-05-01）"
    if day > archives.today() + timedelta(days=DEPARTURE_AHEAD_DAYS):
        return None, f"为 {day.isoformat()}，晚于今天超过 {DEPARTURE_AHEAD_DAYS} 天，请核对"
    return day, None


class SheetRow(dict[str, str]):
    """One data row of an uploaded file: values keyed by FIELDS, its row number in the sheet, and the problems
    found while reading its cells (field -> Chinese message naming the row and the column)."""

    def __init__(self, values: dict[str, str], *, line: int, problems: dict[str, str] | None = None) -> None:
        super().__init__(values)
        self.line = line
        self.problems = problems or {}


# ---------------------------------------------------------------- reading files


def _header_map(row: Iterable[Any]) -> dict[int, str]:
    wanted = {h.lower().replace(" ", ""): f for f, names in HEADERS.items() for h in names}
    out: dict[int, str] = {}
    for i, cell in enumerate(row):
        key = _text(cell).lower().replace(" ", "")
        if key in wanted and wanted[key] not in out.values():
            out[i] = wanted[key]
    return out


def read_rows(filename: str, content: bytes) -> list[SheetRow]:
    """Rows of an .xlsx or .csv file keyed by FIELDS (Chinese or English headers in the first row), identifier
    columns as exact text. Raises ValidationFailed when the file cannot be read or lacks the 工号/姓名 columns."""
    name = (filename or "").lower()
    raw: list[list[Any]]
    formats: list[list[str | None]] = []
    if name.endswith(".xlsx"):
        from openpyxl import load_workbook

        try:
            wb = load_workbook(io.BytesIO(content), read_only=True, data_only=True)
        except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds for a broken file
            raise ValidationFailed({"file": "Excel 文件无法读取，请确认是 .xlsx 格式"}) from exc
        ws = wb.active
        raw = []
        for cells in ws.iter_rows() if ws is not None else ():
            # the cells, not values_only: the number format tells 001001 from 1001
            raw.append([c.value for c in cells])
            formats.append([getattr(c, "number_format", None) for c in cells])
        wb.close()
    elif name.endswith(".csv"):
        for encoding in ("utf-8-sig", "gb18030"):
            try:
                text = content.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
        else:
            raise ValidationFailed({"file": "CSV 文件编码无法识别（请使用 UTF-8 或 GBK）"})
        raw = [list(r) for r in csv.reader(io.StringIO(text))]
    else:
        raise ValidationFailed({"file": "请上传 .xlsx 或 .csv 文件"})
    if not raw:
        raise ValidationFailed({"file": "文件是空的"})
    header = _header_map(raw[0])
    if "staff_no" not in header.values() or "name" not in header.values():
        raise ValidationFailed({"file": "第一行应为表头，至少包含“工号”和“姓名”列"})
    titles = {i: _text(raw[0][i]) for i in header}
    rows = []
    for n, r in enumerate(raw[1:], start=1):
        if not any(_text(c) for c in r):
            continue
        line = n + 1  # the header is row 1
        values: dict[str, str] = {}
        problems: dict[str, str] = {}
        for i, f in header.items():
            cell = r[i] if i < len(r) else None
            if f == "departure_date":
                day, problem = departure_date_value(cell)
                values[f] = day.isoformat() if day else _text(cell)
                if problem:
                    problems[f] = f"第 {line} 行“{titles[i]}”列{problem}"
                continue
            if f not in IDENTIFIERS:
                values[f] = _text(cell)
                continue
            fmt = formats[n][i] if n < len(formats) and i < len(formats[n]) else None
            values[f], problem = identifier_text(cell, number_format=fmt)
            if problem:
                problems[f] = f"第 {line} 行“{titles[i]}”列{problem}，请将该列设置为“文本”格式后重新录入"
        rows.append(SheetRow(values, line=line, problems=problems))
    if len(rows) > MAX_ROWS:
        raise ValidationFailed({"file": f"单次最多导入 {MAX_ROWS} 行，请分批导入"})
    return rows


# ---------------------------------------------------------------- checking rows


def _dept_by_code(code: str) -> Department | None:
    return db.session.scalar(select(Department).where((Department.his_code == code) | (Department.code == code))
                             .order_by(Department.his_code.is_(None)).limit(1))


@dataclass
class CleanRow:
    staff_no: str
    name: str
    dept: Department | None
    title: str | None
    phone: str | None
    id_number: str | None
    hire_date: date | None
    status: str | None = None  # HR_STATUS_LABELS code; None when HR sent no status
    departure_date: date | None = None  # meaningful with a departed status only


def hr_status_code(value: Any) -> tuple[str | None, str | None]:
    """The HR status code of a cell or JSON value (None when empty), and why it is not understood."""
    text = _text(value).lower().replace(" ", "")
    if not text:
        return None, None
    code = HR_STATUS_ALIASES.get(text)
    if code is None:
        return None, "人员状态应为 在职、离职、退休、辞退 之一（或 active/resigned/retired/dismissed）"
    return code, None


def check_row(row: dict[str, Any]) -> tuple[CleanRow | None, dict[str, str]]:
    """A row's clean values, or its errors keyed by field (Chinese)."""
    errors: dict[str, str] = {}
    values: dict[str, str] = {}
    for f in FIELDS:
        if f in IDENTIFIERS:
            values[f], problem = identifier_text(row.get(f))
            if problem:
                errors[f] = f"{FIELD_LABELS[f]}{problem}，请以文本传送"
        else:
            values[f] = _text(row.get(f))
    # a problem found while reading the cell names the sheet's row and column; it wins over the generic one
    errors.update(getattr(row, "problems", {}))
    staff_no, name = values["staff_no"], values["name"]
    if not staff_no:
        errors["staff_no"] = "工号为必填项"
    elif "staff_no" not in errors and not STAFF_NO_RE.match(staff_no):
        errors["staff_no"] = "工号为 1–32 位字母、数字、下划线或短横线"
    if not name:
        errors["name"] = "姓名为必填项"
    elif len(name) > 64:
        errors["name"] = "姓名不超过 64 个字符"
    dept = None
    if values["dept_code"] and "dept_code" not in errors:
        dept = _dept_by_code(values["dept_code"])
        if dept is None:
            errors["dept_code"] = f"HIS 科室编码 {values['dept_code']} 在科室字典中不存在"
    if len(values["title"]) > 32:
        errors["title"] = "职称不超过 32 个字符"
    phone = values["phone"].replace(" ", "").replace("-", "")
    if phone and "phone" not in errors and not MOBILE_RE.match(phone):
        errors["phone"] = "手机号应为 1 开头的 11 位数字"
    id_number = values["id_number"].upper()
    if id_number and "id_number" not in errors:
        problem = archives.id_number_problem(id_number)
        if problem:
            errors["id_number"] = problem
    hire = None
    if values["hire_date"]:
        text = values["hire_date"].replace("/", "-").replace(".", "-")[:10]
        try:
            hire = date.fromisoformat(text)
        except ValueError:
            try:
                hire = datetime.strptime(text, "%Y-%m-%d").date()
            except ValueError:
                errors["hire_date"] = "入职日期应为有效的日期（如 2020-07-01）"
        if hire and hire > archives.today():
            errors["hire_date"] = "入职日期不能晚于今天"
    status, problem = hr_status_code(values["status"])
    if problem:
        errors["status"] = problem
    departure_day, problem = departure_date_value(row.get("departure_date"))
    if problem and "departure_date" not in errors:  # a sheet's problem, naming row and column, is kept
        errors["departure_date"] = f"离职日期{problem}"
    if errors:
        return None, errors
    return CleanRow(staff_no=staff_no, name=name, dept=dept, title=values["title"] or None, phone=phone or None,
                    id_number=id_number or None, hire_date=hire, status=status,
                    departure_date=departure_day if status not in (None, "active") else None), {}


# ---------------------------------------------------------------- applying


def _dept_label(dept: Department | None) -> str:
    if dept is None:
        return ""
    return f"{dept.name}（{dept.his_code or dept.code}）"


def _ours(user: User, profile: ArchiveProfile | None) -> dict[str, str]:
    return {"name": user.name, "dept": _dept_label(user.dept), "title": user.title or "", "phone": user.phone or "",
            "id_number": (profile.id_number if profile else None) or "",
            "hire_date": profile.hire_date.isoformat() if profile and profile.hire_date else ""}


def _theirs(row: CleanRow) -> dict[str, str | None]:
    # a field HR leaves empty carries no information and makes no difference
    return {"name": row.name, "dept": _dept_label(row.dept) if row.dept else None, "title": row.title,
            "phone": row.phone, "id_number": row.id_number,
            "hire_date": row.hire_date.isoformat() if row.hire_date else None}


def _record_diff(batch: HrImportBatch, user: User, field: str, ours: str, theirs: str,
                 departure_date: date | None = None) -> bool:
    """Store a difference unless the same one is already open (for a reported departure: the same status, and
    the same date unless HR sent none). Returns True when a new one was stored."""
    open_rows = list(db.session.scalars(select(HrDiff).where(HrDiff.user_id == user.id, HrDiff.field == field,
                                                             HrDiff.status == HrDiffStatus.OPEN.value)))
    for row in open_rows:
        if row.theirs == theirs and (departure_date is None or row.departure_date == departure_date):
            row.ours = ours
            return False
        row.status = HrDiffStatus.SUPERSEDED
        row.decided_at = utcnow()
    db.session.add(HrDiff(batch_id=batch.id, user_id=user.id, field=field, ours=ours[:200], theirs=theirs[:200],
                          departure_date=departure_date))
    return True


def _username_for(staff_no: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "", staff_no).lower() or "staff"
    if len(base) < 2:
        base = f"hr{base}"
    name, n = base, 1
    while db.session.scalar(select(User.id).where(func.lower(User.username) == name.lower())):
        n += 1
        name = f"{base}-{n}"
    return name[:64]


def _create_staff(row: CleanRow, actor: Any, batch: HrImportBatch) -> User:
    user = User(username=_username_for(row.staff_no), name=row.name, staff_no=row.staff_no, title=row.title,
                phone=row.phone, dept=row.dept, is_active=False, password_hash=None)
    db.session.add(user)
    db.session.flush()
    profile = archives.ensure_profile(user=user, actor=actor, origin="hr", hr_pending=True)
    data = {k: v for k, v in (("id_number", row.id_number),
                              ("hire_date", row.hire_date.isoformat() if row.hire_date else None)) if v}
    if data:
        archives.submit_change(staff=user, section_key=archives.PROFILE, actor=actor, data=data, source="hr",
                               reason=f"人事数据导入（批次 {batch.id}）")
    audit.record(actor, "archive.hr_staff_created", user,
                 after={**audit.snapshot(user), "batch_id": batch.id, "profile_id": profile.id})
    return user


def import_rows(*, rows: list[dict[str, Any]], actor: Any, source: str, filename: str | None = None,
                system: str | None = None) -> HrImportBatch:
    """Compare HR rows with MedLoop: unknown staff become inactive users pending confirmation (unless HR reports
    them departed), differences become HrDiff rows, a departure HR reports for someone in service becomes a
    "人事系统报告离职" flag (never applied), bad rows are rejected with reasons; 医务处 gets one notification when
    the batch has new staff or new differences. Audited. Returns the batch with its per-row report."""
    if len(rows) > MAX_ROWS:
        raise ValidationFailed({"staff": f"单次最多 {MAX_ROWS} 行，请分批推送"})
    batch = HrImportBatch(source=source, filename=filename, system=system,
                          actor_id=actor.id if isinstance(actor, User) else None,
                          actor_name=archives._actor_name(actor), total=len(rows), report=[])
    db.session.add(batch)
    db.session.flush()
    report: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    touched: list[int] = []
    reported = 0
    for idx, raw in enumerate(rows):
        # a file's rows are reported by their row in the sheet, so the user finds them in Excel
        line = raw.line if isinstance(raw, SheetRow) else idx + 1
        if not isinstance(raw, dict):
            report.append({"row": line, "status": "rejected", "staff_no": "",
                           "errors": [{"path": f"staff/{idx}", "message": "每一行应为对象（含工号、姓名等字段）"}]})
            continue
        clean, errors = check_row(raw)
        staff_no = _text(raw.get("staff_no"))
        if clean is not None and clean.staff_no.upper() in seen:
            errors = {"staff_no": f"工号 {clean.staff_no} 在本批数据中重复（第 {seen[clean.staff_no.upper()]} 行）"}
            clean = None
        if clean is None:
            report.append({"row": line, "status": "rejected", "staff_no": staff_no,
                           "errors": [{"path": f"staff/{idx}/{k}", "message": v} for k, v in errors.items()]})
            continue
        seen[clean.staff_no.upper()] = line
        user = db.session.scalar(select(User).where(func.upper(User.staff_no) == clean.staff_no.upper()))
        if user is None and clean.status not in (None, "active"):
            # someone who has already left is not worth an account; the row says so
            when = f"（离职日期 {clean.departure_date.isoformat()}）" if clean.departure_date else ""
            report.append({"row": line, "status": "skipped", "staff_no": clean.staff_no,
                           "note": f"人事系统报告已{HR_STATUS_LABELS[str(clean.status)]}{when}，本系统无此工号，未新建人员"})
            continue
        if user is None:
            user = _create_staff(clean, actor, batch)
            batch.created_count += 1
            report.append({"row": line, "status": "created", "staff_no": clean.staff_no, "user_id": user.id})
            touched.append(user.id)
            continue
        ours = _ours(user, archives.get_profile(user))
        diffs = []
        for field, theirs in _theirs(clean).items():
            if theirs is None or ours[field] == theirs:
                continue
            if field == "id_number" and ours[field].upper() == theirs.upper():
                continue
            if _record_diff(batch, user, field, ours[field], theirs):
                diffs.append(field)
        departure_reported = _check_status(batch, user, clean.status, clean.departure_date)
        if departure_reported:
            diffs.append(STATUS_FIELD)
            reported += 1
        if diffs:
            batch.diff_count += len(diffs)
            row_report: dict[str, Any] = {"row": line, "status": "diff", "staff_no": clean.staff_no,
                                          "user_id": user.id, "fields": [diff_label(f) for f in diffs]}
            if departure_reported:
                row_report["departure_reported"] = HR_STATUS_LABELS[str(clean.status)]
                if clean.departure_date:
                    row_report["departure_date"] = clean.departure_date.isoformat()
            report.append(row_report)
        else:
            batch.unchanged_count += 1
            report.append({"row": line, "status": "unchanged", "staff_no": clean.staff_no, "user_id": user.id})
    batch.rejected_count = sum(1 for r in report if r["status"] == "rejected")
    batch.report = report
    db.session.flush()
    audit.record(actor, "archive.hr_imported", batch,
                 after={"source": source, "filename": filename, "system": system, "total": batch.total,
                        "created": batch.created_count, "diffs": batch.diff_count,
                        "rejected": batch.rejected_count, "departures_reported": reported})
    _notify_managers(batch, reported)
    return batch


def diff_label(field: str) -> str:
    """The Chinese name of a difference's field ("人事系统报告离职" for the HR status)."""
    return STATUS_DIFF_LABEL if field == STATUS_FIELD else DIFF_LABELS.get(field, field)


def our_status(user: User) -> str:
    """MedLoop's in-service status of a person, as the HR page shows it."""
    if user.departed_at is None:
        return HR_STATUS_LABELS["active"]
    last = db.session.scalar(select(Departure).where(Departure.user_id == user.id)
                             .order_by(Departure.id.desc()).limit(1))
    return f"已离职（{last.kind_label}）" if last is not None else "已离职"


def _check_status(batch: HrImportBatch, user: User, status: str | None, departure_date: date | None = None) -> bool:
    """Flag a departure HR reports for someone MedLoop has in service (an open `status` diff with HR's departure
    date, if sent; never applied here). HR reporting the person in service again supersedes an open report. True
    when a new one was stored."""
    if status is None:
        return False
    if status == "active":
        for row in db.session.scalars(select(HrDiff).where(HrDiff.user_id == user.id, HrDiff.field == STATUS_FIELD,
                                                           HrDiff.status == HrDiffStatus.OPEN.value)):
            row.status = HrDiffStatus.SUPERSEDED
            row.decided_at = utcnow()
        return False
    if user.departed_at is not None:
        return False  # already registered: MedLoop's departure record is the authority
    return _record_diff(batch, user, STATUS_FIELD, our_status(user), HR_STATUS_LABELS[status],
                        departure_date=departure_date)


def _notify_managers(batch: HrImportBatch, reported: int) -> None:
    """One summary notification per batch with new staff or new differences, to every holder of archives.manage,
    linking to the HR page (the batch's differences)."""
    if not batch.created_count and not batch.diff_count:
        return
    from .certificates import managers

    ids = [u.id for u in managers()]
    if not ids:
        return
    source = f"文件 {batch.filename or ''}".strip() if batch.source == "file" else f"接口 {batch.system or ''}".strip()
    people = sum(1 for r in batch.report if r.get("status") == "diff")
    parts = [f"新增待确认 {batch.created_count} 人"] if batch.created_count else []
    if batch.diff_count:
        parts.append(f"差异 {batch.diff_count} 项（{people} 人）")
    if reported:
        parts.append(f"{STATUS_DIFF_LABEL} {reported} 人")
    notify.notify(user_ids=ids, title=f"人事数据导入批次 {batch.id}：" + "，".join(parts),
                  body=f"来源：{source}（{batch.actor_name or ''}）。共 {batch.total} 行，"
                       f"{'，'.join(parts)}，拒绝 {batch.rejected_count} 行。请到人事数据页面确认新增人员、处理差异。",
                  link=f"/archives/hr?batch={batch.id}", kind="info")


def open_diffs_query(*, q: str | None = None, field: str | None = None, batch_id: int | None = None):
    """Open field differences (the HR-reported departures are listed apart: reported_departures)."""
    from sqlalchemy.orm import joinedload

    stmt = (select(HrDiff).join(User, HrDiff.user_id == User.id)
            .where(HrDiff.status == HrDiffStatus.OPEN.value, HrDiff.field != STATUS_FIELD)
            .options(joinedload(HrDiff.user).joinedload(User.dept)).order_by(User.staff_no, HrDiff.id))
    if q:
        like = f"%{q.strip()}%"
        stmt = stmt.where((User.name.ilike(like)) | (User.staff_no.ilike(like)))
    if field:
        stmt = stmt.where(HrDiff.field == field)
    if batch_id:
        stmt = stmt.where(HrDiff.batch_id == batch_id)
    return stmt


def reported_departures() -> list[HrDiff]:
    """Open "人事系统报告离职" flags, oldest first (for 医务处 to register the departure or ignore)."""
    return list(db.session.scalars(select(HrDiff).where(HrDiff.field == STATUS_FIELD,
                                                        HrDiff.status == HrDiffStatus.OPEN.value)
                                   .order_by(HrDiff.id)))


def departure_kind(diff: HrDiff) -> str:
    """The departure kind (departure.py) matching the status HR reported."""
    by_label = {label: code for code, label in HR_STATUS_LABELS.items()}
    code = by_label.get(diff.theirs or "", "other")
    return code if code in DEPARTURE_KIND_LABELS else "other"


def departure_prefill(diff: HrDiff) -> dict[str, str]:
    """Values for the departure registration form opened from an HR report: kind, a reason naming the batch and
    HR's departure date when HR sent one that has come (a registration cannot be dated ahead; until then the
    form keeps its default and the HR page shows the date)."""
    batch = diff.batch
    source = f"文件 {batch.filename or ''}".strip() if batch.source == "file" else f"接口 {batch.system or ''}".strip()
    when = batch.created_at.astimezone(SHANGHAI).date().isoformat()
    out = {"kind": departure_kind(diff), "hr_diff": str(diff.id),
           "reason": f"人事系统报告{diff.theirs}（导入批次 {batch.id}，{source}，{when}）"}
    if diff.departure_date is not None and diff.departure_date <= archives.today():
        out["departure_date"] = diff.departure_date.isoformat()
    return out


def close_departure_reports(*, user: User, departure: Departure, actor: User) -> list[HrDiff]:
    """The departure is registered: every open HR report of it is settled (accepted, audited with the departure)."""
    rows = list(db.session.scalars(select(HrDiff).where(HrDiff.user_id == user.id, HrDiff.field == STATUS_FIELD,
                                                        HrDiff.status == HrDiffStatus.OPEN.value)))
    for diff in rows:
        diff.status = HrDiffStatus.ACCEPTED
        diff.decided_by_id, diff.decided_at = actor.id, utcnow()
        audit.record(actor, "archive.hr_diff_accepted", diff,
                     before={"field": STATUS_FIELD, "value": diff.ours},
                     after={"field": STATUS_FIELD, "value": diff.theirs, "departure_id": departure.id})
    db.session.flush()
    return rows


def get_diff(diff_id: int) -> HrDiff:
    row = db.session.get(HrDiff, diff_id)
    if row is None:
        raise NotFound("差异记录不存在")
    return row


def accept_diff(*, diff: HrDiff, actor: User) -> HrDiff:
    """Take HR's value into MedLoop (user fields directly, ID number / hire date as a new profile version),
    audited. Raises InvalidTransition when the diff is not open, ValidationFailed when the value no longer fits."""
    if diff.status != HrDiffStatus.OPEN:
        raise InvalidTransition(f"该差异已{diff.status_label}")
    if diff.field == STATUS_FIELD:
        # a departure cuts access and privileges: only the registration form does that (departure.py)
        raise InvalidTransition("人事系统报告的离职不会自动生效，请核实后通过“登记离职”办理，或忽略")
    user = diff.user
    before = audit.snapshot(user)
    value = diff.theirs or ""
    if diff.field in ("name", "title", "phone"):
        setattr(user, diff.field, value if diff.field == "name" else (value or None))
    elif diff.field == "dept":
        m = re.search(r"（([^（）]+)）$", value)
        dept = _dept_by_code(m.group(1)) if m else None
        if dept is None:
            raise ValidationFailed({"theirs": "人事系统的科室在科室字典中已不存在"})
        user.dept_id = dept.id
        user.dept = dept
    elif diff.field in ("id_number", "hire_date"):
        data = archives.profile_data(user)
        data[diff.field] = value
        if diff.field == "id_number":
            # the ID number is authoritative for the birth date and gender it encodes
            birth, gender = archives.facts_from_id(value)
            if birth is not None:
                data["birth_date"], data["gender"] = birth.isoformat(), gender
        archives.submit_change(staff=user, section_key=archives.PROFILE, actor=actor, data=data, source="hr",
                               reason=f"采纳人事系统数据（差异 {diff.id}）")
    else:
        raise ValidationFailed({"field": "未知字段"})
    diff.status = HrDiffStatus.ACCEPTED
    diff.decided_by_id, diff.decided_at = actor.id, utcnow()
    db.session.flush()
    audit.record(actor, "archive.hr_diff_accepted", diff,
                 before={"field": diff.field, "value": diff.ours, "user": before},
                 after={"field": diff.field, "value": diff.theirs, "user": audit.snapshot(user)})
    archives.refresh_completeness(user_ids=[user.id])
    return diff


def ignore_diff(*, diff: HrDiff, actor: User) -> HrDiff:
    """Keep MedLoop's value (audited). Raises InvalidTransition when the diff is not open."""
    if diff.status != HrDiffStatus.OPEN:
        raise InvalidTransition(f"该差异已{diff.status_label}")
    diff.status = HrDiffStatus.IGNORED
    diff.decided_by_id, diff.decided_at = actor.id, utcnow()
    db.session.flush()
    audit.record(actor, "archive.hr_diff_ignored", diff, after={"field": diff.field, "kept": diff.ours,
                                                                "ignored": diff.theirs})
    return diff


def pending_staff() -> list[ArchiveProfile]:
    """Archives created from HR data that 医务处 has not confirmed yet."""
    return list(db.session.scalars(select(ArchiveProfile).where(ArchiveProfile.hr_pending.is_(True))
                                   .order_by(ArchiveProfile.id)))


def confirm_staff(*, user: User, role_code: str, actor: User) -> User:
    """Confirm an HR-created person: give a role (its default scope), enable the account, clear "pending".
    Raises ValidationFailed (unknown role), InvalidTransition (not pending)."""
    profile = archives.get_profile(user)
    if profile is None or not profile.hr_pending:
        raise InvalidTransition("该人员不是待确认的人事新增人员")
    roles = ensure_roles()
    if role_code not in roles:
        raise ValidationFailed({"role_code": "请选择角色"})
    before = audit.snapshot(user)
    if role_code not in user.role_codes:
        scope = ROLES[role_code][2] if role_code in ROLES else Scope.DEPT.value
        user.roles.append(UserRole(role=roles[role_code], scope=Scope(scope)))
    user.is_active = True
    profile.hr_pending = False
    user.__dict__.pop("_perm_cache", None)
    db.session.flush()
    audit.record(actor, "archive.hr_staff_confirmed", user, before=before,
                 after={**audit.snapshot(user), "role": role_code})
    archives.refresh_completeness(user_ids=[user.id])
    return user


def role_choices() -> list[Role]:
    return list(db.session.scalars(select(Role).where(Role.code.in_(["physician", "nurse", "pharmacist", "dept_head"]))
                                   .order_by(Role.id)))


def recent_batches(limit: int = 20) -> list[HrImportBatch]:
    return list(db.session.scalars(select(HrImportBatch).order_by(HrImportBatch.id.desc()).limit(limit)))
