"""Catalogue seeding: the nine categories of seed 000 §三.1 and their items, idempotent, shared data optional."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func, select

from app.privileges import catalogue
from app.privileges.data import build
from app.privileges.models import PrivilegeCategory, PrivilegeItem

CATEGORY_CODES = ["basic", "special", "invasive", "surgery", "anesthesia", "endoscopy", "new_tech",
                  "restricted_tech", "emergency", "nursing"]  # the nine of §三.1, then 护理操作 (§三.5)


def _counts(db_session) -> dict[str, int]:
    rows = db_session.execute(select(PrivilegeCategory.code, func.count(PrivilegeItem.id))
                              .join(PrivilegeItem, isouter=True).group_by(PrivilegeCategory.code))
    return dict(rows.all())


def test_nine_categories_in_seed_order_then_nursing(db_session):
    cats = db_session.scalars(select(PrivilegeCategory).order_by(PrivilegeCategory.sort_order)).all()
    assert [c.code for c in cats] == CATEGORY_CODES
    assert cats[0].name == "基础诊疗项目授权" and cats[8].name == "紧急授权" and cats[9].name == "护理操作授权"
    assert cats[8].validity_days == 7 and all(c.validity_years > 0 for c in cats if c.code != "emergency")


def test_item_counts_per_category(db_session):
    counts = _counts(db_session)
    surgeries = build.read_csv(catalogue.DATA_DIR / build.SURGERY_SUBSET)
    invasive = build.read_csv(catalogue.DATA_DIR / build.INVASIVE_SUBSET)
    assert counts == {"basic": 4, "special": 8, "invasive": len(invasive), "surgery": len(surgeries),
                      "anesthesia": 4, "endoscopy": 4, "new_tech": 2, "restricted_tech": 12, "emergency": 2,
                      "nursing": 12}
    assert 200 <= len(surgeries) <= 500


def test_surgery_items_carry_codes_demo_grades_and_every_chapter(db_session):
    items = db_session.scalars(select(PrivilegeItem).join(PrivilegeCategory)
                               .where(PrivilegeCategory.code == "surgery")).all()
    grades = Counter(i.grade_level for i in items)
    assert set(grades) == {1, 2, 3, 4} and grades[3] > 20 and grades[4] > 20
    assert all(i.procedure_code and i.code == f"SUR-{i.procedure_code}" for i in items)
    assert all("演示" in (i.note or "") for i in items)
    assert {i.procedure_category for i in items} <= {"手术", "介入治疗"}
    chapters = {i.chapter for i in items}
    assert {"消化系统手术", "心血管系统手术", "神经系统手术", "肌肉骨骼系统手术"} <= chapters
    assert len(chapters) >= 15


def test_special_items_have_the_antibacterial_levels(item):
    assert [item(f"SP-ABX-{n}").grade for n in (1, 2, 3)] == ["非限制使用级", "限制使用级", "特殊使用级"]
    assert item("SP-ONC-2").grade == "限制使用级"
    assert item("RT-11").name == "体外膜肺氧合（ECMO）技术"


def test_seeding_again_changes_nothing(db_session):
    before = _counts(db_session)
    total = catalogue.seed_catalogue()
    assert total == sum(before.values())
    assert _counts(db_session) == before


def test_catalogue_works_without_the_shared_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDLOOP_SHARED_DATA", str(tmp_path / "missing"))
    assert catalogue.shared_data_dir() is None
    without = catalogue.catalogue_items(None)
    shared = catalogue.ROOT.parent / "shared" / "data"
    assert (shared / build.PROCEDURES_FILE).is_file(), "shared/data must sit beside the checkout (as in CI)"
    assert [i.code for i in without] == [i.code for i in catalogue.catalogue_items(shared)]


def test_committed_subset_is_what_build_selects_from_the_shared_table():
    shared = catalogue.ROOT.parent / "shared" / "data"
    assert (shared / build.PROCEDURES_FILE).is_file(), "shared/data must sit beside the checkout (as in CI)"
    rows = build.read_csv(shared / build.PROCEDURES_FILE)
    assert build.select_surgeries(rows) == build.read_csv(catalogue.DATA_DIR / build.SURGERY_SUBSET)
    assert build.select_invasive(rows) == build.read_csv(catalogue.DATA_DIR / build.INVASIVE_SUBSET)


def test_demo_grade_rule():
    assert build.demo_grade("同种异体肝移植术", "手术") == 4
    assert build.demo_grade("腹腔镜腹股沟直疝修补术，伴有移植物或假体", "手术") == 3
    assert build.demo_grade("乳房切开引流术", "手术") == 1
    assert build.demo_grade("横膈折叠术", "手术") == 2
    assert build.demo_grade("冠状动脉造影", "介入治疗") == 3
