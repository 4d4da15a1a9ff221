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
    "loops.patient_identity": "查看患者身份信息（闭环视图中的姓名、患者 ID、住院号）",
    "loops.alert_handle": "处理闭环风险预警（确认为风险事件或排除）",
    "technology.apply": "申请医疗技术（新技术新项目、限制类技术、日间手术资质、伦理审查）",
    "technology.view": "查看医疗技术管理",
    "technology.review": "医疗技术专家评审",
    "technology.manage": "医疗技术管理（组织评审、目录、授权、评估）",
    "technology.day_surgery": "日间手术病例登记",
    "ethics.review": "伦理审查（委员意见）",
    "integration.admin": "接口管理",
}

# role code -> (name, permissions, default data scope)
ROLES: dict[str, tuple[str, list[str], str]] = {
    "admin": ("系统管理员", list(PERMISSIONS), "group"),
    "process_admin": ("流程管理员", ["workflow.admin", "workflow.view_all", "forms.admin", "tasks.work"], "group"),
    "mao": (
        "医务处",
        ["tasks.work", "privileges.view", "privileges.review_mao", "privileges.manage", "archives.view",
         "archives.manage", "workflow.view_all", "audit.view", "loops.view", "loops.admin", "forms.admin"],
        "group",
    ),
    "committee": ("医师资格和授权管理小组", ["tasks.work", "privileges.view", "privileges.approve"], "group"),
    "dept_group": ("科室授权考核小组", ["tasks.work", "privileges.view", "privileges.review_dept"], "dept"),
    "dept_head": ("科主任", ["tasks.work", "privileges.view", "archives.view", "loops.view"], "dept"),
    "physician": ("医师", ["tasks.work", "privileges.apply", "privileges.view"], "self"),
    "nurse": ("护士", ["tasks.work", "loops.view"], "dept"),
    "pharmacist": ("药师", ["tasks.work", "loops.view"], "dept"),
    "quality": ("质控人员", ["tasks.work", "loops.view", "audit.view"], "campus"),
    "expert": ("技术评审专家", ["tasks.work", "technology.review"], "group"),
    "ethics_member": ("伦理委员", ["tasks.work", "ethics.review"], "group"),
}

# 医疗技术管理 (seed 000 §二): what the shipped roles add for it
ROLES["mao"][1].extend(["technology.view", "technology.manage", "technology.day_surgery"])
ROLES["dept_head"][1].extend(["technology.view", "technology.day_surgery"])
ROLES["physician"][1].extend(["technology.apply", "technology.view"])
ROLES["nurse"][1].extend(["technology.day_surgery"])
# 护理操作授权 (seed 000 §三.5, §三.7): a nurse applies for and follows her own nursing privileges; privileges.view
# is left out on purpose, as the role's department scope would show the whole department's grants
ROLES["nurse"][1].extend(["privileges.apply"])
ROLES["quality"][1].extend(["technology.view"])

# 医疗流程闭环 (seed 003 §二.2, 安全性): who sees patient identity in loop views, who handles alerts
ROLES["nurse"][1].extend(["loops.patient_identity"])
ROLES["dept_head"][1].extend(["loops.patient_identity", "loops.alert_handle"])
ROLES["mao"][1].extend(["loops.patient_identity", "loops.alert_handle"])
ROLES["quality"][1].extend(["loops.alert_handle"])

# physician archives (医师技术档案): department staff submit changes for their colleagues, through review
PERMISSIONS["archives.edit"] = "代本科室人员提交档案变更（需审核的栏目经医务处审核）"
ROLES["dept_head"][1].append("archives.edit")

# 科室技术目录 (seed 000 §三.9(1)): the head keeps the own department's list, 医务处 every department's
PERMISSIONS["privileges.dept_catalogue"] = "维护科室技术目录（科主任本科室，医务处全院）"
ROLES["dept_head"][1].append("privileges.dept_catalogue")
ROLES["mao"][1].append("privileges.dept_catalogue")
