"""Data scope: which rows a permission reaches through each role assignment (本人/本科室/本院区/全集团)."""

import pytest
from sqlalchemy import select

from app.auth.models import Department, Scope, User
from app.auth.services import UserInput, data_scope, update_user
from app.errors import Forbidden


def _dept(db_session, code: str) -> Department:
    return db_session.scalar(select(Department).where(Department.code == code))


def _usernames(db_session, stmt) -> set[str]:
    return {u.username for u in db_session.scalars(stmt)}


def test_self_scope_reaches_only_the_users_own_rows(db_session, user):
    doc = user("gs_doc")
    scope = data_scope(doc, "privileges.apply")
    assert scope.level is Scope.SELF
    assert scope.allows(user_id=doc.id)
    assert not scope.allows(user_id=user("gs_doc2").id)
    assert not scope.allows(dept_id=doc.dept_id)  # a department alone is not "mine"
    assert _usernames(db_session, scope.filter(select(User), user_col=User.id, dept_col=User.dept_id)) == {"gs_doc"}
    assert _usernames(db_session, scope.filter(select(User), dept_col=User.dept_id)) == set()


def test_dept_scope_through_dept_group_reaches_the_whole_department(db_session, user):
    head = user("gs_head")
    scope = data_scope(head, "privileges.review_dept")
    assert scope.level is Scope.DEPT
    gs, card = _dept(db_session, "GS"), _dept(db_session, "CARD")
    assert scope.allows(dept_id=gs.id)
    assert not scope.allows(dept_id=card.id)
    assert not scope.allows(user_id=user("card_doc").id)
    names = _usernames(db_session, scope.filter(select(User), user_col=User.id, dept_col=User.dept_id))
    assert {"gs_head", "gs_doc", "gs_doc2", "nurse"} <= names
    assert not names & {"card_doc", "orth_doc", "mao"}


def test_widest_scope_wins_when_several_roles_grant_a_permission(db_session, user):
    # gs_head holds privileges.view as physician (本人) and as dept head / dept group (本科室)
    assert data_scope(user("gs_head"), "privileges.view").level is Scope.DEPT


def test_campus_scope_reaches_every_department_of_the_campus_only(db_session, user):
    quality = user("quality")  # 质控人员, campus scope, works in 医务处 at 总院 (HQ)
    scope = data_scope(quality, "audit.view")
    assert scope.level is Scope.CAMPUS
    gs, orth = _dept(db_session, "GS"), _dept(db_session, "ORTH")
    assert scope.allows(dept_id=gs.id)
    assert not scope.allows(dept_id=orth.id)  # 骨科 is at 东院区 (EAST)
    assert scope.allows(campus_id=gs.campus_id)
    assert not scope.allows(campus_id=orth.campus_id)
    names = _usernames(db_session, scope.filter(select(User), user_col=User.id, dept_col=User.dept_id))
    assert {"gs_doc", "card_doc", "pharm", "mao"} <= names
    assert "orth_doc" not in names
    depts = {d.code for d in db_session.scalars(scope.filter(select(Department), campus_col=Department.campus_id))}
    assert "GS" in depts and "ORTH" not in depts


def test_group_scope_reaches_everything(db_session, user):
    scope = data_scope(user("mao"), "privileges.view")
    assert scope.level is Scope.GROUP
    orth = _dept(db_session, "ORTH")
    assert scope.allows(dept_id=orth.id) and scope.allows(user_id=user("orth_doc").id) and scope.allows()
    everyone = _usernames(db_session, select(User))
    assert _usernames(db_session, scope.filter(select(User), dept_col=User.dept_id)) == everyone


def test_missing_permission_has_no_scope(db_session, user):
    with pytest.raises(Forbidden):
        data_scope(user("gs_doc"), "users.manage")


def test_scope_set_per_user_role_by_the_administrator_applies(db_session, user):
    orth_doc, admin = user("orth_doc"), user("admin")
    data = UserInput.of(orth_doc)
    data.role_scopes["physician"] = "campus"
    update_user(user=orth_doc, data=data, actor=admin)
    db_session.expire_all()
    orth_doc = user("orth_doc")
    scope = data_scope(orth_doc, "privileges.view")
    assert scope.level is Scope.CAMPUS
    assert scope.allows(dept_id=_dept(db_session, "ORTH").id)
    assert not scope.allows(dept_id=_dept(db_session, "GS").id)
