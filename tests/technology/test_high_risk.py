"""高风险诊疗技术: editable catalogue with departments, authorised staff (own list + linked privilege grants),
and the yearly evaluation flow (dept self-evaluation → 医务处 → continue / rectify / suspend)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.errors import Forbidden, InvalidTransition, ValidationFailed
from app.technology.models import HighRiskItem
from app.technology.services import high_risk
from app.workflow import services as wf


def _item(db_session, code="HR-ORTH-01") -> HighRiskItem:
    return db_session.scalar(select(HighRiskItem).where(HighRiskItem.code == code))


def _new(user, **over):
    data = {"code": "HR-T-01", "name": "经皮椎体成形术", "category": "interventional",
            "dept_id": user("orth_doc").dept_id, "procedure_code": "81.6500", "requirements": "副主任医师及以上"}
    data.update(over)
    return high_risk.create_item(data=data, actor=user("mao"))


def test_catalogue_edit_and_retire_keep_history(user, db_session):
    item = _new(user)
    high_risk.update_item(item=item, data={"code": "HR-T-01", "name": "经皮椎体后凸成形术", "category": "interventional",
                                           "dept_id": item.dept_id}, actor=user("mao"))
    assert item.name == "经皮椎体后凸成形术" and item.procedure_code is None
    with pytest.raises(ValidationFailed) as err:
        _new(user, code="HR-T-01", name="", category="x", dept_id="999999")
    assert {e["path"] for e in err.value.errors} == {"code", "name", "category", "dept_id"}
    high_risk.retire_item(item=item, actor=user("mao"), reason="本院不再开展")
    assert item.status == "retired" and db_session.get(HighRiskItem, item.id) is not None


def test_authorisation_and_linked_privilege_grants(user, db_session):
    from app.privileges.models import Grant, PrivilegeItem
    from app.privileges.services import today

    item = _item(db_session)
    assert item is not None and item.privilege_item_id is not None
    assert high_risk.is_authorised(user_id=user("orth_doc").id, item=item)  # demo authorisation
    [demo] = [a for a in item.authorizations if a.status == "active"]
    demo_grant = db_session.get(Grant, demo.grant_id)  # held as a grant of the linked item, so HIS sees it
    assert (demo.user_id, demo_grant.user_id, demo_grant.item_id) == (user("orth_doc").id,) * 2 + (
        item.privilege_item_id,)
    assert demo.override_reason == "演示数据：按本院高风险技术考核结果授权"  # 主治医师: below the item's rules
    other = user("expert2")
    assert not high_risk.is_authorised(user_id=other.id, item=item)
    db_session.add(Grant(user_id=other.id, item_id=item.privilege_item_id, valid_from=today()))
    db_session.flush()
    assert [g.user_id for g in high_risk.linked_grants(item)] == [user("orth_doc").id, other.id]
    assert high_risk.is_authorised(user_id=other.id, item=item)
    assert db_session.get(PrivilegeItem, item.privilege_item_id).code == "SUR-81.5300"
    with pytest.raises(ValidationFailed) as err:  # 四级手术: 副主任医师 and 定期考核; not in 普外科's catalogue
        high_risk.authorize(item=item, data={"user_id": user("gs_doc2").id, "role_in_team": "助手"}, actor=user("mao"))
    assert {"eligibility/title", "eligibility/assessment", "eligibility/dept_catalogue"} <= {
        e["path"] for e in err.value.errors}
    auth = high_risk.authorize(item=item, data={"user_id": user("gs_doc2").id, "role_in_team": "助手",
                                                "override_reason": "骨科手术轮转，上级医师全程指导"}, actor=user("mao"))
    assert auth.override_reason and auth.grant_id is not None
    assert high_risk.is_authorised(user_id=user("gs_doc2").id, item=item)
    with pytest.raises(ValidationFailed):
        high_risk.authorize(item=item, data={"user_id": user("gs_doc2").id}, actor=user("mao"))
    high_risk.revoke_authorization(auth=auth, actor=user("mao"), reason="轮转离科")
    assert auth.status == "revoked" and not high_risk.is_authorised(user_id=user("gs_doc2").id, item=item)
    assert db_session.get(Grant, auth.grant_id).status == "revoked"


def test_yearly_evaluation_rectify_then_continue(user, do, ready, db_session):
    item = _item(db_session, "HR-GS-01")
    evaluation = high_risk.start_evaluation(item=item, actor=user("mao"), year=2031)
    [task] = ready(evaluation.instance_id)
    assert (task.spec_name, task.role_code, task.dept_id) == ("self_evaluation", "dept_head", item.dept_id)
    with pytest.raises(InvalidTransition):
        high_risk.start_evaluation(item=item, actor=user("mao"), year=2031)
    with pytest.raises(Forbidden):  # another department's head is not a candidate
        wf.complete(task_id=task.id, actor=user("card_head"),
                    data={"cases_year": 1, "self_assessment": "good", "summary": "x"})
    do(evaluation.instance_id, "self_evaluation", "gs_head", cases_year=36, complications=2, adverse_events=0,
       self_assessment="acceptable", summary="总体平稳")
    do(evaluation.instance_id, "mao_evaluation", "mao", decision="rectify", comment="完善术前评估流程")
    assert evaluation.status == "rectify" and item.status == "rectifying"
    do(evaluation.instance_id, "rectification", "gs_head", measures="术前评估表已修订并培训", completed_on="2031-03-01")
    do(evaluation.instance_id, "mao_evaluation", "mao", decision="continue", comment="整改到位")
    assert evaluation.status == "continue" and item.status == "active" and item.last_result == "continue"
    assert evaluation.self_evaluation["cases_year"] == 36 and evaluation.rectification["by"] == "张主任"


def test_evaluation_return_to_the_department(user, do, ready, db_session):
    item = _item(db_session, "HR-GS-02")
    evaluation = high_risk.start_evaluation(item=item, actor=user("mao"), year=2031)
    do(evaluation.instance_id, "self_evaluation", "gs_head", cases_year=5, self_assessment="good", summary="好")
    wf.send_back(task_id=ready(evaluation.instance_id, "mao_evaluation")[0].id, actor=user("mao"), reason="补充并发症数据")
    assert [t.spec_name for t in ready(evaluation.instance_id)] == ["self_evaluation"]


def test_suspension_and_yearly_start_for_due_items(user, do, db_session):
    from app.outbox.models import OutboxMessage
    from app.privileges.models import Grant
    from app.privileges.services import today

    linked = _item(db_session)  # demo item linked to a privilege item
    item = _new(user, dept_id=user("gs_head").dept_id, privilege_item_id=str(linked.privilege_item_id))
    grant = Grant(user_id=user("gs_doc").id, item_id=linked.privilege_item_id, valid_from=today())
    db_session.add(grant)
    db_session.flush()
    count = high_risk.start_due_evaluations(actor=user("mao"), year=2032)
    assert count >= 1
    evaluation = next(e for e in high_risk.evaluations(item) if e.year == 2032)
    do(evaluation.instance_id, "self_evaluation", "gs_head", cases_year=3, self_assessment="poor", summary="并发症多")
    do(evaluation.instance_id, "mao_evaluation", "mao", decision="suspend", comment="暂停开展，重新评估条件")
    assert item.status == "suspended" and evaluation.status == "suspend"
    assert grant.status == "suspended" and "年度评估决定暂停" in grant.revoked_reason  # cascades to the grant
    pushed = db_session.scalars(select(OutboxMessage).where(OutboxMessage.channel == "his")).all()
    assert any(m.payload.get("status") == "suspended" for m in pushed)  # and on to HIS through the outbox
    assert high_risk.start_due_evaluations(actor=user("mao"), year=2032) == 0
