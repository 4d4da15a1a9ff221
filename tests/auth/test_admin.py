"""People-and-access administration pages: users, roles, campuses and departments, passwords."""

from datetime import timedelta
from io import BytesIO

import pytest
from openpyxl import load_workbook
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.auth.models import Campus, Department, Role, User
from app.db import utcnow
from app.demo import DEMO_PASSWORD
from tests.conftest import csrf_from

STRONG = "Ward#2026round"


def _dept_id(db_session, code: str) -> int:
    return db_session.scalar(select(Department.id).where(Department.code == code))


def _user_count(db_session) -> int:
    return db_session.scalar(select(func.count(User.id)))


def _audits(db_session, action: str) -> list[AuditLog]:
    return list(db_session.scalars(select(AuditLog).where(AuditLog.action == action)))


def _login_raw(client, username: str, password: str):
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"username": username, "password": password, "csrf_token": token})


def _new_user_form(db_session, token: str, **overrides) -> dict:
    form = {
        "csrf_token": token, "username": "gs_new", "name": "钱医生", "staff_no": "D1099",
        "dept_id": str(_dept_id(db_session, "GS")), "title": "住院医师", "phone": "13912345678",
        "roles": ["physician", "dept_group"], "scope-physician": "self", "scope-dept_group": "dept",
        "password": STRONG, "confirm_password": STRONG,
    }
    form.update(overrides)
    return form


@pytest.fixture
def as_admin(client, login):
    login("admin")
    return csrf_from(client.get("/admin/users/new").get_data(as_text=True))


# --- users -----------------------------------------------------------------------------------------


def test_admin_creates_a_user_with_per_role_data_scope(client, as_admin, db_session, user):
    resp = client.post("/admin/users/new", data=_new_user_form(db_session, as_admin))
    assert resp.status_code == 302, resp.get_data(as_text=True)[:800]
    db_session.expire_all()
    created = user("gs_new")
    assert created.name == "钱医生" and created.staff_no == "D1099" and created.dept.code == "GS"
    assert {ur.role.code: ur.scope for ur in created.roles} == {"physician": "self", "dept_group": "dept"}
    assert created.must_change_password is True
    assert created.password_hash and STRONG not in created.password_hash
    log = _audits(db_session, "user.created")[-1]
    assert log.entity_id == str(created.id) and log.after["roles"] == {"physician": "self", "dept_group": "dept"}
    assert "password_hash" not in log.after


def test_duplicate_username_is_refused_next_to_the_field_and_nothing_is_saved(client, as_admin, db_session):
    before = _user_count(db_session)
    resp = client.post("/admin/users/new", data=_new_user_form(db_session, as_admin, username="gs_doc"))
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert 'id="err-username"' in html and "登录名已存在" in html
    assert 'value="钱医生"' in html  # the form keeps what was typed
    assert STRONG not in html  # but never echoes a password
    db_session.expire_all()
    assert _user_count(db_session) == before
    assert db_session.scalar(select(User).where(User.staff_no == "D1099")) is None
    assert _audits(db_session, "user.created") == []


def test_every_bad_field_is_reported_at_once(client, as_admin, db_session):
    before = _user_count(db_session)
    form = _new_user_form(db_session, as_admin, username="x y", name="", staff_no="D1002", dept_id="",
                          phone="12345", password="weakpass", confirm_password="other", roles=[])
    resp = client.post("/admin/users/new", data=form)
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    for message in ("登录名为 2–64 位", "请填写姓名", "工号已存在", "请选择所属科室", "手机号应为 1 开头的 11 位数字",
                    "请至少选择一个角色", "密码至少 8 位", "两次输入的密码不一致"):
        assert message in html, message
    db_session.expire_all()
    assert _user_count(db_session) == before


def test_password_containing_the_username_is_refused(client, as_admin, db_session):
    resp = client.post("/admin/users/new",
                       data=_new_user_form(db_session, as_admin, password="Gs_new#2026", confirm_password="Gs_new#2026"))
    assert resp.status_code == 400 and "密码不能包含登录名" in resp.get_data(as_text=True)


def test_user_pages_refuse_someone_without_users_manage(client, login):
    login("mao")
    for path in ("/admin/users", "/admin/users/new", "/admin/roles", "/admin/departments", "/admin/users/export.xlsx"):
        assert client.get(path).status_code == 403, path


def test_user_list_masks_phone_numbers(client, as_admin, db_session, user):
    user("gs_doc").phone = "13812341234"
    db_session.flush()
    html = client.get("/admin/users?q=gs_doc").get_data(as_text=True)
    assert "138****1234" in html
    assert "13812341234" not in html


def test_user_list_searches_and_filters(client, as_admin, db_session, user):
    html = client.get("/admin/users?q=D1002").get_data(as_text=True)
    assert "陈医生" in html and "张主任" not in html
    html = client.get(f"/admin/users?dept={_dept_id(db_session, 'CARD')}&role=physician").get_data(as_text=True)
    assert "孙医生" in html and "赵主任" in html and "陈医生" not in html
    user("gs_doc2").locked_until = utcnow() + timedelta(minutes=10)
    user("nurse").is_active = False
    db_session.flush()
    html = client.get("/admin/users?status=locked").get_data(as_text=True)
    assert "刘医生" in html and "陈医生" not in html
    html = client.get("/admin/users?status=disabled").get_data(as_text=True)
    assert "吴护士" in html and "刘医生" not in html
    html = client.get("/admin/users?status=normal&dept=" + str(_dept_id(db_session, "GS"))).get_data(as_text=True)
    assert "陈医生" in html and "刘医生" not in html and "吴护士" not in html
    html = client.get("/admin/users?q=nobody-like-this").get_data(as_text=True)
    assert "没有符合条件的用户" in html


def test_user_list_exports_to_excel_with_masked_phones(client, as_admin, db_session, user):
    user("gs_doc").phone = "13812341234"
    db_session.flush()
    resp = client.get("/admin/users/export.xlsx?q=gs_doc")
    assert resp.status_code == 200 and "spreadsheetml" in resp.headers["Content-Type"]
    rows = list(load_workbook(BytesIO(resp.data)).active.iter_rows(values_only=True))
    assert rows[0][:3] == ("登录名", "姓名", "工号")
    by_name = {r[0]: r for r in rows[1:]}
    assert by_name["gs_doc"][6] == "138****1234"
    assert "gs_head" not in by_name


def test_editing_a_user_changes_roles_and_scopes(client, as_admin, db_session, user):
    doc = user("gs_doc")
    page = client.get(f"/admin/users/{doc.id}").get_data(as_text=True)
    assert 'value="gs_doc"' in page
    form = {"csrf_token": as_admin, "username": "gs_doc", "name": "陈医生", "staff_no": "D1002",
            "dept_id": str(_dept_id(db_session, "ORTH")), "title": "副主任医师", "phone": "",
            "roles": ["physician"], "scope-physician": "dept"}
    resp = client.post(f"/admin/users/{doc.id}", data=form)
    assert resp.status_code == 302, resp.get_data(as_text=True)[:800]
    db_session.expire_all()
    doc = user("gs_doc")
    assert doc.dept.code == "ORTH" and doc.title == "副主任医师"
    assert [(ur.role.code, ur.scope) for ur in doc.roles] == [("physician", "dept")]
    log = _audits(db_session, "user.updated")[-1]
    assert log.before["roles"] == {"physician": "self"} and log.after["roles"] == {"physician": "dept"}


def test_disabled_user_cannot_log_in_and_can_be_enabled_again(client, as_admin, db_session, user):
    target = user("gs_doc2")
    resp = client.post(f"/admin/users/{target.id}/disable", data={"csrf_token": as_admin})
    assert resp.status_code == 302
    db_session.expire_all()
    assert user("gs_doc2").is_active is False
    assert _audits(db_session, "user.disabled")
    client.post("/logout", data={"csrf_token": as_admin})
    resp = _login_raw(client, "gs_doc2", DEMO_PASSWORD)
    assert resp.status_code == 401 and "停用" in resp.get_data(as_text=True)

    _login_raw(client, "admin", DEMO_PASSWORD)
    token = csrf_from(client.get("/admin/users").get_data(as_text=True))
    assert client.post(f"/admin/users/{target.id}/enable", data={"csrf_token": token}).status_code == 302
    client.post("/logout", data={"csrf_token": token})
    assert _login_raw(client, "gs_doc2", DEMO_PASSWORD).status_code == 302


def test_disabling_takes_effect_on_an_open_session(client, login, db_session, user):
    login("gs_doc2")
    assert client.get("/notifications/").status_code == 200
    user("gs_doc2").is_active = False
    db_session.flush()
    resp = client.get("/notifications/")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_admin_cannot_disable_their_own_account(client, as_admin, db_session, user):
    me = user("admin")
    resp = client.post(f"/admin/users/{me.id}/disable", data={"csrf_token": as_admin}, follow_redirects=True)
    assert "不能停用自己的账号" in resp.get_data(as_text=True)
    db_session.expire_all()
    assert user("admin").is_active is True


def test_unlock_lets_a_locked_user_log_in(client, as_admin, db_session, user):
    locked = user("gs_doc2")
    locked.locked_until = utcnow() + timedelta(minutes=15)
    locked.failed_logins = 3
    db_session.flush()
    assert "锁定" in client.get("/admin/users?status=locked").get_data(as_text=True)
    resp = client.post(f"/admin/users/{locked.id}/unlock", data={"csrf_token": as_admin})
    assert resp.status_code == 302
    db_session.expire_all()
    locked = user("gs_doc2")
    assert locked.locked_until is None and locked.failed_logins == 0
    assert _audits(db_session, "user.unlocked")
    client.post("/logout", data={"csrf_token": as_admin})
    assert _login_raw(client, "gs_doc2", DEMO_PASSWORD).status_code == 302


def test_reset_password_forces_a_change_at_next_login(client, as_admin, db_session, user):
    target = user("gs_doc")
    resp = client.post(f"/admin/users/{target.id}/reset-password",
                       data={"csrf_token": as_admin, "new_password": STRONG, "confirm_password": STRONG})
    assert resp.status_code == 302
    assert _audits(db_session, "user.password_reset")
    client.post("/logout", data={"csrf_token": as_admin})
    assert _login_raw(client, "gs_doc", DEMO_PASSWORD).status_code == 401
    resp = _login_raw(client, "gs_doc", STRONG)
    assert resp.status_code == 302

    # every page sends the user to the change-password page until the password is changed
    for path in ("/notifications/", "/audit/"):
        resp = client.get(path)
        assert resp.status_code == 302 and "/account/password" in resp.headers["Location"], path
    assert client.get("/api/v1/me").status_code == 403
    page = client.get("/account/password").get_data(as_text=True)
    assert "管理员设置或重置" in page
    token = csrf_from(page)
    new = "Clinic@2027z"
    resp = client.post("/account/password", data={"csrf_token": token, "old_password": STRONG,
                                                  "new_password": new, "confirm_password": new})
    assert resp.status_code == 302
    assert client.get("/notifications/").status_code == 200
    db_session.expire_all()
    assert user("gs_doc").must_change_password is False


def test_weak_reset_password_is_refused_and_nothing_changes(client, as_admin, db_session, user):
    target = user("gs_doc")
    old_hash = target.password_hash
    resp = client.post(f"/admin/users/{target.id}/reset-password",
                       data={"csrf_token": as_admin, "new_password": "abc", "confirm_password": "abc"})
    assert resp.status_code == 400 and "密码至少 8 位" in resp.get_data(as_text=True)
    db_session.expire_all()
    assert user("gs_doc").password_hash == old_hash and user("gs_doc").must_change_password is False


def test_expired_password_forces_a_change(client, app, db_session, user):
    doc = user("gs_doc")
    doc.password_changed_at = utcnow() - timedelta(days=app.config["PASSWORD_MAX_AGE_DAYS"] + 1)
    db_session.flush()
    assert _login_raw(client, "gs_doc", DEMO_PASSWORD).status_code == 302
    resp = client.get("/notifications/")
    assert resp.status_code == 302 and "/account/password" in resp.headers["Location"]
    assert "天未修改" in client.get("/account/password").get_data(as_text=True)


def test_self_service_password_change_checks_old_and_new(client, login, db_session, user):
    token = login("gs_doc")
    resp = client.post("/account/password", data={"csrf_token": token, "old_password": "wrong",
                                                  "new_password": "short", "confirm_password": "other"})
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert "原密码不正确" in html and "密码至少 8 位" in html and "两次输入的密码不一致" in html
    resp = client.post("/account/password", data={"csrf_token": token, "old_password": DEMO_PASSWORD,
                                                  "new_password": DEMO_PASSWORD, "confirm_password": DEMO_PASSWORD})
    assert resp.status_code == 400 and "新密码不能与原密码相同" in resp.get_data(as_text=True)
    resp = client.post("/account/password", data={"csrf_token": token, "old_password": DEMO_PASSWORD,
                                                  "new_password": STRONG, "confirm_password": STRONG})
    assert resp.status_code == 302
    assert _audits(db_session, "user.password_changed")[-1].actor_id == user("gs_doc").id


# --- roles -----------------------------------------------------------------------------------------


def test_role_permission_change_takes_effect_immediately(client, login, db_session):
    login("gs_doc")
    assert client.get("/audit/").status_code == 403
    token = login("admin")
    role = db_session.scalar(select(Role).where(Role.code == "physician"))
    page = client.get(f"/admin/roles/{role.id}").get_data(as_text=True)
    assert "申请医疗权限" in page
    perms = [rp.permission for rp in role.permissions] + ["audit.view"]
    resp = client.post(f"/admin/roles/{role.id}", data={"csrf_token": token, "name": role.name, "permissions": perms})
    assert resp.status_code == 302, resp.get_data(as_text=True)[:800]
    assert "查看审计日志" in client.get("/admin/roles").get_data(as_text=True)
    login("gs_doc")
    assert client.get("/audit/").status_code == 200
    log = _audits(db_session, "role.updated")[-1]
    assert "audit.view" in log.after["permissions"] and "audit.view" not in log.before["permissions"]


def test_roles_list_shows_chinese_permission_names_and_user_counts(client, as_admin):
    html = client.get("/admin/roles").get_data(as_text=True)
    assert "医务处审核授权" in html and "科室授权考核小组" in html
    assert "/admin/users?role=physician" in html


def test_new_role_code_must_be_lowercase_and_unique(client, as_admin, db_session):
    bad = client.post("/admin/roles/new", data={"csrf_token": as_admin, "code": "Infection-Ctl", "name": "院感科"})
    assert bad.status_code == 400 and "小写字母" in bad.get_data(as_text=True)
    dup = client.post("/admin/roles/new", data={"csrf_token": as_admin, "code": "mao", "name": "重复"})
    assert dup.status_code == 400 and "角色编码已存在" in dup.get_data(as_text=True)
    ok = client.post("/admin/roles/new", data={"csrf_token": as_admin, "code": "infection_ctl", "name": "院感科",
                                               "permissions": ["tasks.work", "loops.view"]})
    assert ok.status_code == 302
    role = db_session.scalar(select(Role).where(Role.code == "infection_ctl"))
    assert role.name == "院感科" and {rp.permission for rp in role.permissions} == {"tasks.work", "loops.view"}
    assert _audits(db_session, "role.created")


def test_the_last_user_manager_cannot_be_removed(client, as_admin, db_session):
    role = db_session.scalar(select(Role).where(Role.code == "admin"))
    keep = [rp.permission for rp in role.permissions if rp.permission != "users.manage"]
    resp = client.post(f"/admin/roles/{role.id}", data={"csrf_token": as_admin, "name": role.name, "permissions": keep})
    assert resp.status_code == 400 and "至少要保留一个" in resp.get_data(as_text=True)
    db_session.expire_all()
    role = db_session.scalar(select(Role).where(Role.code == "admin"))
    assert "users.manage" in {rp.permission for rp in role.permissions}
    assert client.get("/admin/users").status_code == 200


# --- campuses and departments ----------------------------------------------------------------------


def test_departments_page_lists_campuses_and_departments(client, as_admin):
    html = client.get("/admin/departments").get_data(as_text=True)
    assert "东院区" in html and "骨科" in html and "2001" in html


def test_create_department_validates_and_audits(client, as_admin, db_session):
    east = db_session.scalar(select(Campus.id).where(Campus.code == "EAST"))
    bad = client.post("/admin/departments/new", data={"csrf_token": as_admin, "code": "GS", "name": "",
                                                      "campus_id": "", "his_code": "1001", "kind": "x"})
    assert bad.status_code == 400
    html = bad.get_data(as_text=True)
    for message in ("科室编码已存在", "请填写科室名称", "请选择所属院区", "该 HIS 科室编码已被其他科室使用", "请选择科室类别"):
        assert message in html, message
    ok = client.post("/admin/departments/new", data={"csrf_token": as_admin, "code": "URO", "name": "泌尿外科",
                                                     "campus_id": str(east), "his_code": "2002", "kind": "clinical"})
    assert ok.status_code == 302
    dept = db_session.scalar(select(Department).where(Department.code == "URO"))
    assert dept.campus.code == "EAST" and dept.is_active
    assert _audits(db_session, "department.created")


def test_deactivated_department_is_kept_but_no_longer_offered(client, as_admin, db_session):
    orth = db_session.scalar(select(Department).where(Department.code == "ORTH"))
    resp = client.post(f"/admin/departments/{orth.id}/deactivate", data={"csrf_token": as_admin})
    assert resp.status_code == 302
    db_session.expire_all()
    orth = db_session.scalar(select(Department).where(Department.code == "ORTH"))
    assert orth is not None and orth.is_active is False
    assert f'value="{orth.id}"' not in client.get("/admin/users/new").get_data(as_text=True)
    form = _new_user_form(db_session, as_admin, dept_id=str(orth.id))
    resp = client.post("/admin/users/new", data=form)
    assert resp.status_code == 400 and "该科室已停用" in resp.get_data(as_text=True)
    assert _audits(db_session, "department.deactivated")[-1].after["is_active"] is False


def test_campus_with_active_departments_cannot_be_deactivated(client, as_admin, db_session):
    east = db_session.scalar(select(Campus).where(Campus.code == "EAST"))
    resp = client.post(f"/admin/campuses/{east.id}/deactivate", data={"csrf_token": as_admin}, follow_redirects=True)
    assert "仍有 1 个启用的科室" in resp.get_data(as_text=True)
    db_session.expire_all()
    assert db_session.get(Campus, east.id).is_active is True


def test_create_and_rename_a_campus(client, as_admin, db_session):
    resp = client.post("/admin/campuses/new", data={"csrf_token": as_admin, "code": "HQ", "name": "重复"})
    assert resp.status_code == 400 and "院区编码已存在" in resp.get_data(as_text=True)
    resp = client.post("/admin/campuses/new", data={"csrf_token": as_admin, "code": "WEST", "name": "西院区"})
    assert resp.status_code == 302
    west = db_session.scalar(select(Campus).where(Campus.code == "WEST"))
    resp = client.post(f"/admin/campuses/{west.id}", data={"csrf_token": as_admin, "code": "WEST", "name": "西院区（新）"})
    assert resp.status_code == 302
    db_session.expire_all()
    assert db_session.get(Campus, west.id).name == "西院区（新）"
    assert _audits(db_session, "campus.updated")[-1].before["name"] == "西院区"
