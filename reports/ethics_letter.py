"""伦理审查决定书 (ethics review decision letter) as a Word document, built with python-docx.

Input is a plain LetterData so the document does not depend on the database; the technology domain fills it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from io import BytesIO

from docx import Document
from docx.enum.text import WD_ALIGN_PARAGRAPH
from docx.oxml.ns import qn
from docx.shared import Pt

FONT = "宋体"


@dataclass
class LetterData:
    number: str
    title: str
    applicant: str
    dept: str
    source: str
    mode: str
    members: list[str]
    review_items: list[str]
    counts: dict[str, int]
    majority: str
    decision: str
    conditions: str = ""
    comment: str = ""
    meeting_date: date | None = None
    decided_on: str = ""
    decided_by: str = ""
    committee: str = "医院医学伦理委员会"
    extra: dict[str, str] = field(default_factory=dict)


def _font(run, size: float = 12, bold: bool = False) -> None:
    run.font.size = Pt(size)
    run.font.bold = bold
    run.font.name = FONT
    run._element.rPr.rFonts.set(qn("w:eastAsia"), FONT)  # CJK text needs the East Asian font slot


def _para(doc, text: str, *, size: float = 12, bold: bool = False, align=None):
    p = doc.add_paragraph()
    if align is not None:
        p.alignment = align
    _font(p.add_run(text), size, bold)
    return p


def build_letter(data: LetterData) -> bytes:
    """The decision letter: title, project, mode, members, summary of opinions, decision, date, seal placeholder."""
    doc = Document()
    _para(doc, data.committee, size=16, bold=True, align=WD_ALIGN_PARAGRAPH.CENTER)
    _para(doc, "伦理审查决定书", size=18, bold=True, align=WD_ALIGN_PARAGRAPH.CENTER)
    _para(doc, f"编号：{data.number}", size=10.5, align=WD_ALIGN_PARAGRAPH.RIGHT)

    table = doc.add_table(rows=0, cols=2)
    table.style = "Table Grid"
    rows = [
        ("项目名称", data.title), ("申请类别", data.source), ("申请人", data.applicant), ("申请科室", data.dept),
        ("审查方式", data.mode + (f"（会议日期：{data.meeting_date.isoformat()}）" if data.meeting_date else "")),
        ("审查委员", "、".join(data.members)), ("审查内容", "；".join(data.review_items)),
        *data.extra.items(),
    ]
    for label, value in rows:
        cells = table.add_row().cells
        _font(cells[0].paragraphs[0].add_run(label), 11, bold=True)
        _font(cells[1].paragraphs[0].add_run(value or "—"), 11)

    _para(doc, "")
    _para(doc, "一、委员意见汇总", bold=True)
    counts = "，".join(f"{k} {v} 票" for k, v in data.counts.items())
    total = sum(data.counts.values())
    _para(doc, f"参加审查委员 {len(data.members)} 人，提交意见 {total} 份：{counts}。多数意见：{data.majority or '无'}。")
    _para(doc, "二、审查决定", bold=True)
    _para(doc, f"经审查，本委员会决定：{data.decision}。", bold=True)
    if data.conditions:
        _para(doc, f"修改要求或附加条件：{data.conditions}")
    if data.comment:
        _para(doc, f"意见：{data.comment}")
    _para(doc, "三、说明", bold=True)
    _para(doc, "项目实施过程中如方案、知情同意书等发生变更，或发生严重不良事件，应及时向本委员会报告；"
               "本委员会将按规定进行跟踪审查。")
    _para(doc, "")
    _para(doc, f"{data.committee}（盖章）", align=WD_ALIGN_PARAGRAPH.RIGHT)
    _para(doc, "【此处加盖伦理委员会印章】", size=10.5, align=WD_ALIGN_PARAGRAPH.RIGHT)
    if data.decided_by:
        _para(doc, f"登记人：{data.decided_by}", size=10.5, align=WD_ALIGN_PARAGRAPH.RIGHT)
    _para(doc, f"日期：{data.decided_on or date.today().isoformat()}", align=WD_ALIGN_PARAGRAPH.RIGHT)
    doc.core_properties.title = f"伦理审查决定书 {data.number}"
    buf = BytesIO()
    doc.save(buf)
    return buf.getvalue()
