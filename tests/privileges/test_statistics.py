"""授权统计 (seed 000 §三.8): the workload kinds the seed names (会诊、辅助诊断、一般/特殊药物处方、特殊检查、POCT、麻醉准入 …)
and the catalogue items as dimensions with 环比/同比, the drill-down from every cell to its grants, Excel exports."""

from __future__ import annotations

from datetime import datetime, timedelta
from io import BytesIO

import pytest
from openpyxl import load_workbook
from sqlalchemy import func, select

from app.core.timefmt import SHANGHAI
from app.errors import ValidationFailed
from app.privileges import catalogue, services
from app.privileges.models import (
    EmergencyGrant,
    Grant,
    GrantStatus,
    PrivilegeApplication,
    PrivilegeApplicationItem,
    PrivilegeCategory,
    PrivilegeItem,
)

STATS = "/privileges/manage/stats"


def _at(y, m, d=10):
    return datetime(y, m, d, 12, tzinfo=SHANGHAI)


@pytest.fixture
def grant(db_session):
    def _grant(holder, it, when, *, emergency: bool = False) -> Grant:
        g = Grant(user_id=holder.id, item_id=it.id, status=GrantStatus.ACTIVE, valid_from=when.date(),
                  valid_until=when.date() + timedelta(days=700), granted_at=when)
        db_session.add(g)
        db_session.flush()
        if emergency:
            db_session.add(EmergencyGrant(grant_id=g.id, starts_at=when, expires_at=when + timedelta(hours=2), hours=2,
                                          reason="抢救"))
            db_session.flush()
        return g

    return _grant


@pytest.fixture
def month_of_grants(db_session, user, item, surgery_item, grant):
    """13 grants in 2032-05, one in the month before, two in the same month of 2031."""
    gs, gs2, card, nurse = user("gs_doc"), user("gs_doc2"), user("card_doc"), user("nurse")
    grant(gs, item("BASIC-CONSULT"), _at(2032, 5, 3))
    grant(card, item("BASIC-CONSULT"), _at(2032, 5, 31))
    grant(gs2, item("BASIC-CONSULT"), _at(2032, 4, 20))  # 上月
    grant(gs, item("BASIC-AUXDIAG"), _at(2032, 5, 4))
    grant(gs, item("BASIC-RX"), _at(2032, 5, 5))
    grant(gs2, item("BASIC-RX"), _at(2031, 5, 5))  # 去年同月
    grant(gs2, item("BASIC-RX"), _at(2031, 5, 6))
    grant(gs, item("SP-ABX-1"), _at(2032, 5, 6))
    grant(card, item("SP-ONC-2"), _at(2032, 5, 7))
    grant(card, item("SP-NARC"), _at(2032, 5, 8))
    grant(card, item("SP-EXAM"), _at(2032, 5, 9))
    grant(gs2, item("SP-POCT"), _at(2032, 5, 10))
    grant(card, item("ANES-2"), _at(2032, 5, 11))
    grant(gs, surgery_item(3), _at(2032, 5, 12))
    grant(nurse, item("NUR-CVAD"), _at(2032, 5, 13))
    grant(gs2, item("SP-ABX-3"), _at(2032, 5, 14), emergency=True)  # 紧急授权, not 特殊药物
    grant(gs, item("BASIC-DIAG"), _at(2032, 6, 1))  # next month: nowhere
    application = PrivilegeApplication(applicant_id=gs.id, dept_id=gs.dept_id, status="in_review", reason="x",
                                       submitted_at=_at(2032, 5, 2))
    db_session.add(application)
    db_session.flush()
    for code in ("SP-ABX-1", "SP-ONC-1", "BASIC-RX"):  # two 特殊药物 items: the application counts once there
        db_session.add(PrivilegeApplicationItem(application_id=application.id, item_id=item(code).id))
    db_session.flush()


def _rows(stats, dim):
    return {r.label: (r.grants, r.applications) for r in stats.tables[dim]}


def test_every_item_falls_in_a_workload_kind_and_the_seed_kinds_are_all_there(db_session):
    rows = db_session.execute(select(PrivilegeItem.code, PrivilegeCategory.code).join(PrivilegeCategory)).all()
    kinds = {catalogue.workload_kind(code, cat) for code, cat in rows}
    assert "other" not in kinds
    seed_kinds = {k.code for k in catalogue.WORKLOAD_KINDS if k.in_seed}
    assert seed_kinds <= kinds
    assert [k.name for k in catalogue.WORKLOAD_KINDS if k.in_seed] == [
        "手术准入", "基础诊疗权限", "会诊权限", "麻醉准入", "辅助诊断", "处方（一般药物）", "处方（特殊药物）", "特殊检查", "POCT"]
    # the mapping is data beside the catalogue: a prefix entry covers every level, an office-added item its category
    assert catalogue.workload_kind("SP-ABX-3", "special") == "rx_special"
    assert catalogue.workload_kind("SP-BLOOD", "special") == "special_other"
    assert catalogue.workload_kind("NUR-NEW", "nursing") == "nursing"
    assert catalogue.workload_kind("X-1", "unknown") == "other"


def test_statistics_by_workload_kind_and_item_with_mom_and_yoy(db_session, user, item, month_of_grants):
    stats = services.privilege_statistics(viewer=user("mao"), year=2032, month=5)
    assert stats.totals.grants == (13, 1, 2) and stats.totals.applications == (1, 0, 0)
    kinds = _rows(stats, "kind")
    assert kinds["会诊权限"] == ((2, 1, 0), (0, 0, 0))
    assert kinds["辅助诊断"] == ((1, 0, 0), (0, 0, 0))
    assert kinds["处方（一般药物）"] == ((1, 0, 2), (1, 0, 0))
    assert kinds["处方（特殊药物）"] == ((3, 0, 0), (1, 0, 0))  # ABX-1, ONC-2, 麻精; the emergency ABX-3 is not here
    assert kinds["特殊检查"] == ((1, 0, 0), (0, 0, 0)) and kinds["POCT"] == ((1, 0, 0), (0, 0, 0))
    assert kinds["麻醉准入"] == ((1, 0, 0), (0, 0, 0)) and kinds["手术准入"] == ((1, 0, 0), (0, 0, 0))
    assert kinds["护理操作"] == ((1, 0, 0), (0, 0, 0)) and kinds["紧急授权"] == ((1, 0, 0), (0, 0, 0))
    assert sum(g[0] for g, _a in kinds.values()) == stats.totals.grants[0]  # each grant in exactly one kind
    labels = [r.label for r in stats.tables["kind"]]
    assert labels.index("手术准入") < labels.index("会诊权限") < labels.index("POCT") < labels.index("紧急授权")
    consult = next(r for r in stats.tables["kind"] if r.label == "会诊权限")
    assert (consult.key, consult.grants_mom, consult.grants_yoy) == ("consultation", 100.0, None)
    rx = next(r for r in stats.tables["kind"] if r.label == "处方（一般药物）")
    assert rx.grants_yoy == -50.0

    items = _rows(stats, "item")
    assert items["会诊权限（BASIC-CONSULT）"] == ((2, 1, 0), (0, 0, 0))
    assert items[f"{item('SP-ABX-3').name}（SP-ABX-3）"] == ((1, 0, 0), (0, 0, 0))  # an emergency grant's own item
    assert items[f"{item('SP-ONC-1').name}（SP-ONC-1）"] == ((0, 0, 0), (1, 0, 0))
    assert sum(g[0] for g, _a in items.values()) == stats.totals.grants[0]
    nursing = _rows(stats, "category")["护理操作授权"]
    assert nursing == ((1, 0, 0), (0, 0, 0))
    assert _rows(stats, "title")["主管护师"] == ((1, 0, 0), (0, 0, 0))


def test_every_cell_drills_down_to_exactly_its_grants(db_session, user, month_of_grants):
    mao = user("mao")
    stats = services.privilege_statistics(viewer=mao, year=2032, month=5)
    for dim, _title in services.STAT_DIMENSIONS:
        assert stats.tables[dim], dim
        for row in stats.tables[dim]:
            for slot, (y, m) in enumerate(stats.months):
                drill = services.statistics_drill(viewer=mao, year=y, month=m, dimension=dim, key=row.key)
                total = db_session.scalar(select(func.count()).select_from(drill.query.order_by(None).subquery()))
                assert total == row.grants[slot], (dim, row.label, slot)
                assert drill.label == row.label
    everything = services.statistics_drill(viewer=mao, year=2032, month=5, dimension="all", key="")
    assert len(db_session.scalars(everything.query).unique().all()) == 13
    for dimension, key in (("nope", ""), ("kind", "nope"), ("item", "abc"), ("dept", "999999"), ("surgery_grade", "5"),
                           ("category", "")):
        with pytest.raises(ValidationFailed):
            services.statistics_drill(viewer=mao, year=2032, month=5, dimension=dimension, key=key)


def test_statistics_and_drill_down_keep_to_the_viewers_scope(db_session, user, month_of_grants):
    head = user("gs_head")  # privileges.view for 普外科 only
    stats = services.privilege_statistics(viewer=head, year=2032, month=5)
    assert set(_rows(stats, "dept")) == {"普外科"}
    drill = services.statistics_drill(viewer=head, year=2032, month=5, dimension="kind", key="consultation")
    assert [g.user.username for g in db_session.scalars(drill.query).unique()] == ["gs_doc"]


def test_pages_link_each_count_to_its_grants_and_export_them(client, login, db_session, user, item,
                                                            month_of_grants):
    db_session.commit()
    login("mao")
    html = client.get(STATS, query_string={"month": "2032-05"}).get_data(as_text=True)
    assert "按工作量类别" in html and "按授权项目" in html and "会诊权限（BASIC-CONSULT）" in html
    assert "dimension=kind&amp;key=consultation&amp;month=2032-05" in html or \
        "month=2032-05&amp;dimension=kind&amp;key=consultation" in html
    assert "month=2032-04&amp;dimension=kind&amp;key=consultation" in html  # 上月 cell
    page = client.get(f"{STATS}/grants", query_string={"month": "2032-05", "dimension": "kind",
                                                        "key": "consultation"})
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and 'id="drill-label">会诊权限<' in body and 'id="drill-total">2<' in body
    assert "陈医生" in body and "孙医生" in body and "刘医生" not in body
    nurse_item = item("NUR-CVAD")
    body = client.get(f"{STATS}/grants", query_string={"month": "2032-05", "dimension": "item",
                                                        "key": str(nurse_item.id)}).get_data(as_text=True)
    assert "吴护士" in body and "主管护师" in body
    resp = client.get(f"{STATS}/grants/export.xlsx", query_string={"month": "2032-05", "dimension": "kind",
                                                                    "key": "rx_special"})
    assert resp.status_code == 200
    ws = load_workbook(BytesIO(resp.data)).active
    codes = sorted(r[4] for r in ws.iter_rows(min_row=2, values_only=True))
    assert codes == ["SP-ABX-1", "SP-NARC", "SP-ONC-2"]
    wb = load_workbook(BytesIO(client.get(f"{STATS}/export.xlsx", query_string={"month": "2032-05"}).data))
    kinds = {r[0]: r[1:6] for r in wb["按工作量类别"].iter_rows(min_row=3, values_only=True)}
    assert kinds["会诊权限"] == (2, 1, "+100.0%", 0, "—") and kinds["合计"][0] == 13
    assert "会诊权限（BASIC-CONSULT）" in {r[0] for r in wb["按授权项目"].iter_rows(min_row=3, values_only=True)}
    bad = client.get(f"{STATS}/grants", query_string={"month": "2032-05", "dimension": "kind", "key": "nope"})
    assert bad.status_code == 400 and "统计项目无效" in bad.get_data(as_text=True)
    assert client.get(f"{STATS}/grants", query_string={"month": "2032-13", "dimension": "all"}).status_code == 400
    login("gs_doc")
    assert client.get(f"{STATS}/grants", query_string={"month": "2032-05", "dimension": "all"}).status_code == 403
