"""Build the committed catalogue subsets in this folder from the shared reference data.

Run from the project root after the shared CSVs change::

    .venv/bin/python -m app.privileges.data.build [SHARED_DATA_DIR]

Sources (see ../shared/data/SOURCES.md): 手术操作分类代码国家临床版2.0 (ICD-9-CM-3, 国卫办医函〔2019〕371号
附件2) and 国家限制类技术目录（2022年版）. The national code table carries NO surgery grade (手术级别): the
grades written here are DEMO values from a keyword rule (`demo_grade`), to be replaced by the hospital's own
手术分级目录 before real use. The selection is deterministic, so the same input always gives the same files.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROCEDURES_FILE = "icd9cm3_guolin_v2.0_procedures.csv"
RESTRICTED_FILE = "national_restricted_medical_technologies_2022.csv"
SURGERY_SUBSET = "surgery_procedures.csv"
INVASIVE_SUBSET = "invasive_procedures.csv"
SURGERY_COLUMNS = ["code", "name_zh", "category", "chapter", "demo_grade"]
INVASIVE_COLUMNS = ["code", "name_zh", "category", "chapter"]

# ICD-9-CM-3 chapters by the first two digits of the code: (first, last, Chinese name)
CHAPTERS: list[tuple[int, int, str]] = [
    (0, 0, "操作和介入NEC"), (1, 5, "神经系统手术"), (6, 7, "内分泌系统手术"), (8, 16, "眼的手术"),
    (17, 17, "其他各类操作和介入"), (18, 20, "耳部手术"), (21, 29, "鼻、口、咽手术"), (30, 34, "呼吸系统手术"),
    (35, 39, "心血管系统手术"), (40, 41, "血液和淋巴系统手术"), (42, 54, "消化系统手术"),
    (55, 59, "泌尿系统手术"), (60, 64, "男性生殖器官手术"), (65, 71, "女性生殖器官手术"), (72, 75, "产科操作"),
    (76, 84, "肌肉骨骼系统手术"), (85, 86, "体被系统手术"), (87, 99, "各种诊断性和治疗性操作"),
]

# demo grade rule: first matching list wins (highest grade first); anything else is grade 2
GRADE_KEYWORDS: list[tuple[int, tuple[str, ...]]] = [
    (4, ("移植", "根治", "全切除", "置换", "体外循环", "搭桥", "胰十二指肠", "半肝", "肝叶", "肺叶", "全肺",
         "食管切除", "颅内", "脊髓", "动脉瘤", "瓣膜", "主动脉", "再植", "全喉", "盆腔廓清", "心室辅助")),
    (3, ("腹腔镜", "胸腔镜", "关节镜", "宫腔镜", "支架", "成形", "重建", "吻合", "部分切除", "修补", "固定术",
         "血管内", "经皮", "栓塞", "消融", "切除术")),
    (1, ("切开引流", "缝合", "清创", "拆除", "去除", "取出", "结扎", "切开术", "拔除", "引流术", "包皮",
         "活组织检查", "探查术", "抽吸")),
]

INVASIVE_KEYWORDS = ("穿刺", "置管", "插管", "引流", "导管", "阻滞", "灌洗", "切开", "置入")
PER_GRADE_PER_CHAPTER = 5
INVASIVE_PER_CHAPTER = 4


def chapter_of(code: str) -> str:
    try:
        head = int(code[:2])
    except ValueError:
        return "其他"
    for first, last, name in CHAPTERS:
        if first <= head <= last:
            return name
    return "其他"


def demo_grade(name: str, category: str) -> int:
    """Keyword rule giving a plausible DEMO grade (1–4); 介入治疗 is at least grade 3."""
    probe = name.replace("移植物", "")  # "伴有移植物或假体" is a mesh, not a transplant
    for grade, words in GRADE_KEYWORDS:
        if any(w in probe for w in words):
            return max(grade, 3) if category == "介入治疗" else grade
    return 3 if category == "介入治疗" else 2


def _stable(code: str) -> str:
    return hashlib.sha1(code.encode()).hexdigest()


def _main_codes(rows: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if r.get("code_type") == "主要编码" and r.get("code") and r.get("name_zh")]


def select_surgeries(rows: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """A few hundred 手术/介入治疗 codes: up to PER_GRADE_PER_CHAPTER of each demo grade in every chapter."""
    buckets: dict[tuple[str, int], list[dict[str, str]]] = defaultdict(list)
    for r in _main_codes(rows):
        if r["category"] not in ("手术", "介入治疗"):
            continue
        grade = demo_grade(r["name_zh"], r["category"])
        buckets[(chapter_of(r["code"]), grade)].append(r)
    out = []
    for (chapter, grade), items in buckets.items():
        for r in sorted(items, key=lambda x: _stable(x["code"]))[:PER_GRADE_PER_CHAPTER]:
            out.append({"code": r["code"], "name_zh": r["name_zh"], "category": r["category"], "chapter": chapter,
                        "demo_grade": str(grade)})
    return sorted(out, key=lambda x: x["code"])


def select_invasive(rows: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """Invasive procedures (治疗性操作, and 诊断性操作 that puncture): up to INVASIVE_PER_CHAPTER per chapter."""
    buckets: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in _main_codes(rows):
        name = r["name_zh"]
        if r["category"] == "治疗性操作" and any(w in name for w in INVASIVE_KEYWORDS):
            pass
        elif r["category"] == "诊断性操作" and "穿刺" in name:
            pass
        else:
            continue
        buckets[chapter_of(r["code"])].append(r)
    out = []
    for chapter, items in buckets.items():
        for r in sorted(items, key=lambda x: _stable(x["code"]))[:INVASIVE_PER_CHAPTER]:
            out.append({"code": r["code"], "name_zh": r["name_zh"], "category": r["category"], "chapter": chapter})
    return sorted(out, key=lambda x: x["code"])


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def write_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def default_shared_dir() -> Path:
    env = os.environ.get("MEDLOOP_SHARED_DATA")
    if env:
        return Path(env)
    return HERE.parents[3] / "shared" / "data"  # <repo>/../shared/data


def build(shared: Path, out: Path = HERE) -> dict[str, int]:
    procedures = read_csv(shared / PROCEDURES_FILE)
    surgeries = select_surgeries(procedures)
    invasive = select_invasive(procedures)
    write_csv(out / SURGERY_SUBSET, SURGERY_COLUMNS, surgeries)
    write_csv(out / INVASIVE_SUBSET, INVASIVE_COLUMNS, invasive)
    restricted = read_csv(shared / RESTRICTED_FILE)
    write_csv(out / RESTRICTED_FILE, list(restricted[0].keys()), restricted)
    return {SURGERY_SUBSET: len(surgeries), INVASIVE_SUBSET: len(invasive), RESTRICTED_FILE: len(restricted)}


if __name__ == "__main__":
    shared_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default_shared_dir()
    for name, count in build(shared_dir).items():
        print(f"{name}: {count}")
