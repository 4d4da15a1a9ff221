"""The permission catalogue and the roles shipped with MedLoop (editable data once seeded)."""

from __future__ import annotations

PERMISSIONS: dict[str, str] = {
    "tasks.work": "处理待办任务",
    "workflow.admin": "流程定义管理（上传 BPMN、迁移实例）",
    "workflow.view_all": "查看流程实例",
    "forms.admin": "表单模板管理",
    "users.manage": "用户与角色管理",
    "audit.view": "查看审计日志",
    "privileges.apply": "申请医疗权限",
    "privileges.view": "查看医疗授权",
    "privileges.review_dept": "科室授权考核",
    "privileges.review_mao": "医务处审核授权",
    "privileges.approve": "授权管理小组批准",
    "privileges.manage": "医疗权限管理（目录、暂停、停止）",
    "archives.view": "查看医师档案",
    "archives.manage": "维护医师档案",
    "loops.view": "查看闭环",
    "loops.admin": "闭环配置",
}

# role code -> (name, permissions, default data scope)
ROLES: dict[str, tuple[str, list[str], str]] = {
    "admin": ("系统管理员", list(PERMISSIONS), "group"),
    "process_admin": ("流程管理员", ["workflow.admin", "workflow.view_all", "forms.admin", "tasks.work"], "group"),
    "mao": (
        "医务处",
        ["tasks.work", "privileges.view", "privileges.review_mao", "privileges.manage", "archives.view",
         "archives.manage", "workflow.view_all", "audit.view", "loops.view"],
        "group",
    ),
    "committee": ("医师资格和授权管理小组", ["tasks.work", "privileges.view", "privileges.approve"], "group"),
    "dept_group": ("科室授权考核小组", ["tasks.work", "privileges.view", "privileges.review_dept"], "dept"),
    "dept_head": ("科主任", ["tasks.work", "privileges.view", "archives.view", "loops.view"], "dept"),
    "physician": ("医师", ["tasks.work", "privileges.apply", "privileges.view"], "self"),
    "nurse": ("护士", ["tasks.work", "loops.view"], "dept"),
    "pharmacist": ("药师", ["tasks.work", "loops.view"], "dept"),
    "quality": ("质控人员", ["tasks.work", "loops.view", "audit.view"], "campus"),
}
