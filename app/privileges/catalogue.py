"""The privilege catalogue: the nine categories of seed 000 §三.1, 护理操作 (§三.5), and their items (idempotent
seeding); and the workload kinds of §三.8 the statistics count items under (WORKLOAD_KINDS, a data mapping).

Procedure items come from 手术操作分类代码国家临床版2.0 (ICD-9-CM-3); surgery grades are NOT published
per code, so the grades here are demo values (see app/privileges/data/build.py) and say so in `note`.
The shared reference folder (../shared/data, or $MEDLOOP_SHARED_DATA) is used when present; otherwise the
committed subsets in app/privileges/data/ give the same catalogue.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from app.config import ROOT
from app.db import db
from app.privileges.data import build
from app.privileges.models import PrivilegeCategory, PrivilegeItem

DATA_DIR = Path(build.__file__).resolve().parent
GRADE_NAMES = {1: "一级", 2: "二级", 3: "三级", 4: "四级"}
DEMO_GRADE_NOTE = ("手术级别为演示数据：国家未发布按编码的手术分级目录，本级别由关键词规则生成，"
                   "正式使用前须按本院手术分级目录核定")
ICD_SOURCE = "手术操作分类代码国家临床版2.0（国卫办医函〔2019〕371号附件2）"


@dataclass(frozen=True)
class CategorySeed:
    code: str
    name: str
    validity_years: int
    description: str
    validity_days: int | None = None


# order = seed 000 §三.1; validity periods are the shipped defaults, editable per hospital
CATEGORIES: list[CategorySeed] = [
    CategorySeed("basic", "基础诊疗项目授权", 3, "诊疗权限、会诊权限、辅助诊断权限、一般药物处方权等"),
    CategorySeed("special", "特殊项目授权", 2, "抗菌药物、抗肿瘤药物、麻醉药品和第一类精神药品处方权，特殊检查，POCT 等"),
    CategorySeed("invasive", "有创操作与治疗项目授权", 2, "穿刺、置管、引流等有创操作与治疗项目"),
    CategorySeed("surgery", "手术（介入）分级及治疗性操作授权", 2,
                 "按手术操作编码（ICD-9-CM-3）与手术级别（一至四级）授权"),
    CategorySeed("anesthesia", "麻醉分级授权", 2, "按麻醉分级（一至四级）授权"),
    CategorySeed("endoscopy", "内镜操作分级授权", 2, "按内镜诊疗技术分级（一至四级）授权"),
    CategorySeed("new_tech", "新技术新项目授权", 1, "院内立项的新技术新项目，按项目授权，随项目转常规后重新授权"),
    CategorySeed("restricted_tech", "限制类医疗技术授权", 2, "国家限制类技术目录（2022年版）所列技术"),
    CategorySeed("emergency", "紧急授权", 0, "紧急情况下超出已有权限的临时授权，限时有效，事后补充审核",
                 validity_days=7),
    # seed 000 §三.5 names 护理操作 among the main kinds of business privilege applied for online; it is not one of
    # the nine physician categories of §三.1, so it follows them as a category of its own (check API code `nursing`)
    CategorySeed("nursing", "护理操作授权", 2,
                 "护士执业范围内须经培训考核授权的护理技术操作（静脉治疗、血液净化、人工气道、专科护理等）"),
]


@dataclass(frozen=True)
class ItemSeed:
    category: str
    code: str
    name: str
    grade: str | None = None
    grade_level: int | None = None
    requirements: str | None = None
    note: str | None = None
    source: str | None = None
    procedure_code: str | None = None
    procedure_category: str | None = None
    chapter: str | None = None


ABX = "《抗菌药物临床应用管理办法》（卫生部令第84号）"
ONC = "《抗肿瘤药物临床应用管理办法（试行）》"
FIXED_ITEMS: list[ItemSeed] = [
    ItemSeed("basic", "BASIC-DIAG", "诊疗权限", requirements="取得医师资格并在本院注册执业，经科室考核合格"),
    ItemSeed("basic", "BASIC-CONSULT", "会诊权限", requirements="主治医师及以上；急会诊可由本院注册执业满一年的住院医师承担"),
    ItemSeed("basic", "BASIC-AUXDIAG", "辅助诊断权限", requirements="相应医技专业执业注册（检验、影像、病理、心电等报告签发），经科室考核合格"),
    ItemSeed("basic", "BASIC-RX", "一般药物处方权", requirements="本院注册执业的执业医师，经药事管理与处方管理培训考核合格",
             source="《处方管理办法》"),
    ItemSeed("special", "SP-ABX-1", "抗菌药物处方权（非限制使用级）", "非限制使用级", 1,
             "具有初级及以上专业技术职务任职资格，经抗菌药物培训考核合格", source=ABX),
    ItemSeed("special", "SP-ABX-2", "抗菌药物处方权（限制使用级）", "限制使用级", 2,
             "具有中级及以上专业技术职务任职资格，经抗菌药物培训考核合格", source=ABX),
    ItemSeed("special", "SP-ABX-3", "抗菌药物处方权（特殊使用级）", "特殊使用级", 3,
             "具有高级专业技术职务任职资格，经抗菌药物培训考核合格", source=ABX),
    ItemSeed("special", "SP-ONC-1", "抗肿瘤药物处方权（普通使用级）", "普通使用级", 1,
             "具有中级及以上专业技术职务任职资格，经抗肿瘤药物培训考核合格", source=ONC),
    ItemSeed("special", "SP-ONC-2", "抗肿瘤药物处方权（限制使用级）", "限制使用级", 2,
             "具有高级专业技术职务任职资格，经抗肿瘤药物培训考核合格", source=ONC),
    ItemSeed("special", "SP-NARC", "麻醉药品和第一类精神药品处方权",
             requirements="执业医师经麻醉药品和精神药品使用知识与规范化管理培训考核合格",
             source="《麻醉药品和精神药品管理条例》《处方管理办法》"),
    ItemSeed("special", "SP-EXAM", "特殊检查申请权", requirements="主治医师及以上，经相应特殊检查适应证与风险培训考核合格",
             note="含大型设备检查及有创、高风险检查，具体项目按本院特殊检查目录"),
    ItemSeed("special", "SP-POCT", "POCT（即时检验）操作与报告权", requirements="经检验科 POCT 操作与质控培训考核合格"),
]
for _lvl, _req, _scope in [
    (1, "住院医师（规范化培训中）在上级医师指导下", "ASA Ⅰ–Ⅱ 级患者的一、二级手术麻醉"),
    (2, "住院医师（规范化培训合格）及以上", "ASA Ⅰ–Ⅲ 级患者的三级手术麻醉"),
    (3, "主治医师及以上", "ASA Ⅲ–Ⅳ 级患者、四级手术及特殊人群的麻醉"),
    (4, "副主任医师及以上", "危重、疑难病例及新开展手术的麻醉"),
]:
    FIXED_ITEMS.append(ItemSeed("anesthesia", f"ANES-{_lvl}", f"麻醉分级授权（{GRADE_NAMES[_lvl]}）", GRADE_NAMES[_lvl],
                                _lvl, f"{_req}；适用范围：{_scope}", note="分级口径为演示，按本院麻醉分级管理制度调整"))
for _lvl, _req, _scope in [
    (1, "住院医师经内镜基础培训考核合格", "常规诊断性内镜检查"),
    (2, "主治医师及以上", "内镜下活检、止血、息肉切除等常规治疗"),
    (3, "主治医师及以上，独立完成二级内镜诊疗满规定例数", "内镜下黏膜切除（EMR）、ERCP 等复杂治疗"),
    (4, "副主任医师及以上", "内镜黏膜下剥离（ESD）、经口内镜肌切开（POEM）等高难度治疗"),
]:
    FIXED_ITEMS.append(ItemSeed("endoscopy", f"ENDO-{_lvl}", f"内镜诊疗技术（{GRADE_NAMES[_lvl]}）", GRADE_NAMES[_lvl],
                                _lvl, f"{_req}；适用范围：{_scope}", note="分级口径为演示，按本院内镜诊疗技术分级目录调整"))
FIXED_ITEMS += [
    ItemSeed("new_tech", "NT-ROBOT-LAP", "机器人辅助腹腔镜手术（新技术新项目）",
             requirements="项目负责人及团队成员，经医院新技术新项目立项与伦理审查", note="演示项目"),
    ItemSeed("new_tech", "NT-3DPRINT-GUIDE", "3D 打印导板辅助骨科手术（新技术新项目）",
             requirements="项目负责人及团队成员，经医院新技术新项目立项与伦理审查", note="演示项目"),
    ItemSeed("emergency", "EM-SURG", "紧急情况下超权限手术或操作",
             requirements="抢救生命垂危患者等紧急情况，无相应权限医师在场时；事后 24 小时内报医务处补充审核"),
    ItemSeed("emergency", "EM-ABX", "紧急情况下越级使用抗菌药物",
             requirements="因抢救生命垂危患者等紧急情况越级使用，处方量不得超过 1 日用量，并于 24 小时内补办审核手续",
             source=ABX),
]
# 护理操作 (seed 000 §三.5): operations a nurse performs only once authorised; the list and the titles asked for
# (app.privileges.eligibility.ITEM_DEFAULTS) are demo values to be replaced by the hospital's nursing catalogue
NURSING_NOTE = "护理操作项目为演示数据，按本院护理技术操作授权目录调整"
IV = "《静脉治疗护理技术操作标准》（WS/T 433—2023）"
FIXED_ITEMS += [
    ItemSeed("nursing", "NUR-BASIC", "基础护理技术操作",
             requirements="取得护士执业证书并在本院注册；静脉输液、各类注射、吸氧、吸痰、导尿、鼻饲等，经科室考核合格",
             note=NURSING_NOTE, source="《护士条例》"),
    ItemSeed("nursing", "NUR-FIRSTAID", "急救技术（心肺复苏、电除颤、简易呼吸器）",
             requirements="经心肺复苏与急救技能培训考核合格，每年复训", note=NURSING_NOTE),
    ItemSeed("nursing", "NUR-TRANSFUSION", "静脉输血护理操作",
             requirements="经临床输血知识与输血核对、不良反应处置培训考核合格",
             note=NURSING_NOTE, source="《临床输血技术规范》"),
    ItemSeed("nursing", "NUR-ABG", "动脉穿刺采血", requirements="护师及以上，经动脉穿刺技术培训并在带教下完成规定例数",
             note=NURSING_NOTE),
    ItemSeed("nursing", "NUR-CHEMO", "抗肿瘤药物（化疗药物）静脉给药",
             requirements="护师及以上，经抗肿瘤药物安全给药、职业防护与外渗处置培训考核合格", note=NURSING_NOTE, source=IV),
    ItemSeed("nursing", "NUR-CVAD", "中心静脉通路装置维护（PICC、CVC、输液港）",
             requirements="护师及以上，经中心静脉通路装置维护培训考核合格", note=NURSING_NOTE, source=IV),
    ItemSeed("nursing", "NUR-PICC", "经外周静脉置入中心静脉导管（PICC）置管",
             requirements="主管护师及以上，取得 PICC 专科护士培训合格证书，在带教下完成规定例数", note=NURSING_NOTE,
             source=IV),
    ItemSeed("nursing", "NUR-AIRWAY", "人工气道护理（气管插管、气管切开吸痰与气囊管理）",
             requirements="护师及以上，经人工气道管理与机械通气护理培训考核合格", note=NURSING_NOTE),
    ItemSeed("nursing", "NUR-HD", "血液透析护理操作",
             requirements="护师及以上，经血液净化专科护士培训考核合格", note=NURSING_NOTE,
             source="《血液净化标准操作规程（2021 版）》"),
    ItemSeed("nursing", "NUR-CRRT", "连续性肾脏替代治疗（CRRT）护理操作",
             requirements="护师及以上，经重症或血液净化专科护士培训考核合格", note=NURSING_NOTE,
             source="《血液净化标准操作规程（2021 版）》"),
    ItemSeed("nursing", "NUR-ECMO", "体外膜肺氧合（ECMO）护理",
             requirements="主管护师及以上，经 ECMO 护理专项培训考核合格", note=NURSING_NOTE),
    ItemSeed("nursing", "NUR-WOUND", "伤口、造口与失禁专科护理",
             requirements="主管护师及以上，取得伤口造口失禁专科护士培训合格证书", note=NURSING_NOTE),
]


def shared_data_dir() -> Path | None:
    """The shared reference-data folder: $MEDLOOP_SHARED_DATA, app config SHARED_DATA_DIR, or <repo>/../shared/data."""
    candidates: list[Path] = []
    if os.environ.get("MEDLOOP_SHARED_DATA"):
        candidates.append(Path(os.environ["MEDLOOP_SHARED_DATA"]))
    else:
        try:
            from flask import current_app, has_app_context

            if has_app_context() and current_app.config.get("SHARED_DATA_DIR"):
                candidates.append(Path(current_app.config["SHARED_DATA_DIR"]))
        except ImportError:  # pragma: no cover - flask is always installed
            pass
        candidates.append(ROOT.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


def _read(name: str, shared: Path | None) -> list[dict[str, str]]:
    for folder in (shared, DATA_DIR):
        if folder is not None and (folder / name).is_file():
            return build.read_csv(folder / name)
    return []


def surgery_rows(shared: Path | None = None) -> list[dict[str, str]]:
    """The surgery subset: selected from the full code table when available, else the committed copy."""
    if shared is not None and (shared / build.PROCEDURES_FILE).is_file():
        return build.select_surgeries(build.read_csv(shared / build.PROCEDURES_FILE))
    return _read(build.SURGERY_SUBSET, None)


def invasive_rows(shared: Path | None = None) -> list[dict[str, str]]:
    if shared is not None and (shared / build.PROCEDURES_FILE).is_file():
        return build.select_invasive(build.read_csv(shared / build.PROCEDURES_FILE))
    return _read(build.INVASIVE_SUBSET, None)


def catalogue_items(shared: Path | None = None) -> list[ItemSeed]:
    """Every item the shipped catalogue holds, in display order."""
    items = list(FIXED_ITEMS)
    for row in _read(build.RESTRICTED_FILE, shared):
        seq = int(row["seq"])
        new = "；2022年版新增" if row.get("new_in_2022_vs_2017") == "是" else ""
        items.append(ItemSeed(
            "restricted_tech", f"RT-{seq:02d}", row["technology_name"],
            requirements=f"符合《{row['management_spec_title'].strip('《》')}》的人员、设备与技术要求",
            note=f"质控指标：{row.get('qc_indicator_title', '')}{new}；规范名称部分为推定，以国家卫生健康委发布文本为准",
            source=f"国家限制类技术目录（2022年版），{row.get('effective_date', '')} 起施行"))
    for row in surgery_rows(shared):
        level = int(row["demo_grade"])
        items.append(ItemSeed(
            "surgery", f"SUR-{row['code']}", row["name_zh"], GRADE_NAMES[level], level,
            requirements=SURGERY_REQUIREMENTS[level], note=DEMO_GRADE_NOTE, source=ICD_SOURCE,
            procedure_code=row["code"], procedure_category=row["category"], chapter=row["chapter"]))
    for row in invasive_rows(shared):
        items.append(ItemSeed(
            "invasive", f"INV-{row['code']}", row["name_zh"],
            requirements="经科室培训考核合格，在上级医师指导下完成规定例数后独立操作",
            source=ICD_SOURCE, procedure_code=row["code"], procedure_category=row["category"],
            chapter=row["chapter"]))
    return items


# typical hospital rules for who may hold each surgery grade (《医疗机构手术分级管理办法》 leaves them to the hospital)
SURGERY_REQUIREMENTS = {
    1: "住院医师及以上",
    2: "取得执业资格满 3 年的住院医师或主治医师及以上",
    3: "主治医师及以上",
    4: "副主任医师及以上",
}


# ---------------------------------------------------------------- workload kinds (统计分析, seed 000 §三.8)


@dataclass(frozen=True)
class WorkloadKind:
    code: str
    name: str
    in_seed: bool  # named in seed 000 §三.8's list of 各类授权工作量


# §三.8 counts 授权工作量 by these kinds. The kinds it names come first; the others complete the catalogue so that
# every grant falls in exactly one kind (各级手术/职称/科室 are the statistics' own dimensions, not kinds)
WORKLOAD_KINDS: tuple[WorkloadKind, ...] = (
    WorkloadKind("surgery", "手术准入", True),
    WorkloadKind("basic_care", "基础诊疗权限", True),
    WorkloadKind("consultation", "会诊权限", True),
    WorkloadKind("anesthesia", "麻醉准入", True),
    WorkloadKind("aux_diagnosis", "辅助诊断", True),
    WorkloadKind("rx_general", "处方（一般药物）", True),
    WorkloadKind("rx_special", "处方（特殊药物）", True),
    WorkloadKind("special_exam", "特殊检查", True),
    WorkloadKind("poct", "POCT", True),
    WorkloadKind("special_other", "特殊项目（其他）", False),
    WorkloadKind("invasive", "有创操作与治疗", False),
    WorkloadKind("endoscopy", "内镜操作", False),
    WorkloadKind("nursing", "护理操作", False),
    WorkloadKind("new_tech", "新技术新项目", False),
    WorkloadKind("restricted_tech", "限制类医疗技术", False),
    WorkloadKind("emergency", "紧急授权", False),
    WorkloadKind("other", "其他", False),
)
WORKLOAD_KIND_NAMES = {k.code: k.name for k in WORKLOAD_KINDS}
WORKLOAD_KIND_ORDER = {k.code: i for i, k in enumerate(WORKLOAD_KINDS)}
# item code -> kind, first match wins: an entry ending in "-" matches every code it begins (SP-ABX-1 … SP-ABX-3)
ITEM_WORKLOAD_KINDS: tuple[tuple[str, str], ...] = (
    ("BASIC-DIAG", "basic_care"),
    ("BASIC-CONSULT", "consultation"),
    ("BASIC-AUXDIAG", "aux_diagnosis"),
    ("BASIC-RX", "rx_general"),
    ("SP-ABX-", "rx_special"),
    ("SP-ONC-", "rx_special"),
    ("SP-NARC", "rx_special"),  # 麻醉药品和第一类精神药品
    ("SP-EXAM", "special_exam"),
    ("SP-POCT", "poct"),
)
# the kind of an item no entry above names (an item the office added later): its category's
CATEGORY_WORKLOAD_KINDS: dict[str, str] = {
    "basic": "basic_care",
    "special": "special_other",
    "invasive": "invasive",
    "surgery": "surgery",
    "anesthesia": "anesthesia",
    "endoscopy": "endoscopy",
    "new_tech": "new_tech",
    "restricted_tech": "restricted_tech",
    "emergency": "emergency",
    "nursing": "nursing",
}


def workload_kind(item_code: str, category_code: str) -> str:
    """The §三.8 workload kind (a WORKLOAD_KINDS code) a catalogue item counts under."""
    for pattern, kind in ITEM_WORKLOAD_KINDS:
        if item_code == pattern or (pattern.endswith("-") and item_code.startswith(pattern)):
            return kind
    return CATEGORY_WORKLOAD_KINDS.get(category_code, "other")


def seed_catalogue() -> int:
    """Create or refresh the categories and the shipped items (idempotent). Returns the item count."""
    shared = shared_data_dir()
    categories = {c.code: c for c in db.session.scalars(select(PrivilegeCategory))}
    for order, seed in enumerate(CATEGORIES, start=1):
        cat = categories.get(seed.code)
        if cat is None:
            cat = PrivilegeCategory(code=seed.code)
            db.session.add(cat)
            categories[seed.code] = cat
        cat.name, cat.description, cat.sort_order = seed.name, seed.description, order * 10
        if cat.id is None:  # keep a hospital's own validity settings on re-seed
            cat.validity_years, cat.validity_days = seed.validity_years, seed.validity_days
    db.session.flush()
    existing = {i.code: i for i in db.session.scalars(select(PrivilegeItem))}
    for order, spec in enumerate(catalogue_items(shared), start=1):
        item = existing.get(spec.code)
        if item is None:
            item = PrivilegeItem(code=spec.code, is_active=True)
            db.session.add(item)
            existing[spec.code] = item
        item.category_id = categories[spec.category].id
        item.name, item.grade, item.grade_level = spec.name, spec.grade, spec.grade_level
        item.requirements, item.note, item.source = spec.requirements, spec.note, spec.source
        item.procedure_code, item.procedure_category, item.chapter = (
            spec.procedure_code, spec.procedure_category, spec.chapter)
        item.sort_order = order
    db.session.flush()
    return len(existing)
