"""The 11 typical closed loops of seed 003 §二.1 with their nodes in the seed's order.

Standard durations are demo defaults (minutes from the previous node); hospitals edit them per campus.
Keys are stable identifiers used by the integration contract; names are what users see.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeDef:
    key: str
    name: str
    standard_minutes: int


@dataclass(frozen=True)
class LoopDef:
    key: str
    name: str
    order_category: str  # 药品/检验/检查/手术/会诊/输血/入出院 — the "医嘱类型" the dashboards group by
    nodes: tuple[NodeDef, ...]
    grace_minutes: int = 5


def _n(*items: tuple[str, str, int]) -> tuple[NodeDef, ...]:
    return tuple(NodeDef(k, n, m) for k, n, m in items)


ORDER_ISSUED = ("order_issued", "开立医嘱", 0)
ORDER_SIGNED = ("order_signed", "签收医嘱", 30)
PHARM_REVIEW = ("pharmacist_review", "药师审方", 30)
EXEC_SHEET = ("exec_sheet", "生成执行单", 30)
WARD_STOCK = ("ward_stock", "住院备药", 60)
DELIVERY = ("delivery", "药品配送", 60)
NURSE_RECEIVE = ("nurse_receive", "护士接收", 30)
ADMINISTER = ("administer", "执行用药", 60)
ATTENDING_REVIEW = ("senior_review", "上级医师审核", 30)
NURSE_CHECK = ("nurse_check", "护士核对执行医嘱", 30)

LOOPS: tuple[LoopDef, ...] = (
    LoopDef("iv_admixture", "配液", "药品", _n(
        ORDER_ISSUED, ORDER_SIGNED, PHARM_REVIEW, EXEC_SHEET, WARD_STOCK,
        ("admix", "配药间配药", 60), ("admix_out", "配药间出药", 30), NURSE_RECEIVE, ADMINISTER)),
    LoopDef("oral_medication", "住院口服药", "药品", _n(
        ORDER_ISSUED, ORDER_SIGNED, PHARM_REVIEW, EXEC_SHEET, ("oral_pack", "口服药包药", 120), DELIVERY,
        NURSE_RECEIVE, ADMINISTER)),
    LoopDef("unit_dose", "住院摆药", "药品", _n(
        ORDER_ISSUED, ORDER_SIGNED, PHARM_REVIEW, EXEC_SHEET, WARD_STOCK, DELIVERY, NURSE_RECEIVE, ADMINISTER,
        ("medication_end", "用药结束", 120))),
    LoopDef("ward_admixture", "住院病区冲配", "药品", _n(
        ORDER_ISSUED, ORDER_SIGNED, PHARM_REVIEW, EXEC_SHEET, WARD_STOCK, DELIVERY, NURSE_RECEIVE,
        ("ward_admix", "病区冲配", 30), ADMINISTER, ("rounds", "巡视用药", 60), ("medication_end", "用药结束", 120))),
    LoopDef("critical_value", "危急值", "检验", _n(
        ("request", "检验/检查申请", 0), ATTENDING_REVIEW, NURSE_CHECK, ("print_barcode", "打印检验/检查条码", 15),
        ("collect", "采集标本", 30), ("receive_specimen", "接收标本", 30), ("perform", "执行检验/检查", 60),
        ("report_print", "检验/检查报告自助打印", 60)), grace_minutes=2),
    LoopDef("transfusion", "输血", "输血", _n(
        ("request", "配血申请", 0), ATTENDING_REVIEW, ("sign", "签收配血医嘱", 30), ("collect", "采集标本", 30),
        ("receive_specimen", "接收标本", 30), ("crossmatch", "执行配血", 60), ("issue_blood", "配发血液", 30),
        ("pre_check", "输血前核对", 15), ("start", "开始输血", 15), ("rounds", "巡视输血", 15),
        ("finish", "结束输血", 240))),
    LoopDef("lab", "检验", "检验", _n(
        ("request", "检验申请", 0), ATTENDING_REVIEW, NURSE_CHECK, ("print_barcode", "打印检验条码", 15),
        ("identify", "核对患者身份", 10), ("collect", "采集标本", 30), ("transfer", "接转标本", 30),
        ("receive_specimen", "接收标本", 30), ("perform", "执行检验", 120), ("report_print", "检验报告自助打印", 60),
        ("report_feedback", "报告自动反馈医生站", 5))),
    LoopDef("exam", "检查", "检查", _n(
        ("request", "检查申请", 0), ATTENDING_REVIEW, NURSE_CHECK, ("booking", "检查预约", 60),
        ("exam_review", "检查审核", 30), ("identify", "核对患者身份", 10), ("perform", "执行检查", 60),
        ("report_print", "检查报告打印", 240), ("report_feedback", "报告自动反馈医生站", 5))),
    LoopDef("surgery", "手术", "手术", _n(
        ("request", "手术申请", 0), ("schedule", "手术安排", 720), ("pre_visit", "术前访视", 480),
        ("or_check_in", "手术室接收核对", 30), ("enter_or", "进入手术", 15), ("anesthesia_start", "麻醉开始", 15),
        ("operating", "手术进行", 15), ("anesthesia_end", "麻醉结束", 120), ("surgery_end", "手术结束", 15),
        ("pacu_in", "进入术后恢复室", 15), ("pacu_out", "出术后恢复室", 60), ("post_visit", "术后访视", 1440))),
    LoopDef("consultation", "会诊", "会诊", _n(
        ("request", "会诊申请", 0), ("order", "开立会诊医嘱", 15), ("send", "会诊发送", 10),
        ("appointment", "预约会诊时间", 60), ("accept", "接受会诊申请", 60), ("opinion", "会诊处理意见", 120),
        ("report", "会诊报告", 60))),
    LoopDef("admission_discharge", "入出院一站式", "入出院", _n(
        ("admission", "入院登记", 0), ("ward_in", "入住科室", 120), ("ward_out", "患者出区", 7200),
        ("payment_notice", "缴费通知", 60), ("settlement", "结算出院", 120))),
)

RESERVED_NODES = {"cancelled": "医嘱取消/停止", "abnormal": "环节异常"}


def loop_def(key: str) -> LoopDef | None:
    return next((d for d in LOOPS if d.key == key), None)
