"""Medical technology (医疗技术管理, seed 000 §二): new technology, ethics review, restricted, high-risk, day surgery."""

AUDIT_LABELS = {
    "technology.project_submitted": "提交新技术新项目申请",
    "technology.project_status": "新技术新项目状态变更",
    "technology.project_revised": "修改新技术新项目申请",
    "technology.expert_reviewed": "专家评审",
    "technology.progress_reported": "提交新技术新项目进展报告",
    "technology.progress_reviewed": "审核新技术新项目进展",
    "technology.project_routine_item": "新技术新项目转常规授权类别",
    "technology.ethics_applied": "提交伦理审查申请",
    "technology.ethics_opened": "发起伦理审查",
    "technology.ethics_setup": "确定伦理审查方式与委员",
    "technology.ethics_opinion": "伦理委员审查意见",
    "technology.ethics_decided": "伦理委员会决定",
    "technology.ethics_revised": "修改伦理审查申请",
    "technology.ethics_closed": "伦理审查办结",
    "technology.ethics_withdrawn": "伦理审查撤回",
    "technology.ethics_not_delivered": "伦理审查决定未能回传",
    "technology.restricted_applied": "提交限制类技术申请",
    "technology.restricted_status": "限制类技术状态变更",
    "technology.restricted_revised": "修改限制类技术申请",
    "technology.restricted_case_report": "限制类技术季度病例报告",
    "technology.restricted_annual_summary": "限制类技术年度总结",
    "technology.restricted_annual_reviewed": "审核限制类技术年度总结",
    "technology.restricted_item_linked": "限制类技术关联医疗权限项目",
    "technology.restricted_grants_suspended": "限制类技术停止开展，暂停科室医师授权",
    "technology.restricted_grants_resumed": "限制类技术重新备案，恢复科室医师授权",
    "technology.high_risk_created": "新增高风险诊疗技术",
    "technology.high_risk_updated": "修改高风险诊疗技术",
    "technology.high_risk_retired": "停用高风险诊疗技术",
    "technology.high_risk_relinked": "高风险诊疗技术更换对应医疗权限项目",
    "technology.high_risk_authorized": "高风险诊疗技术授权",
    "technology.high_risk_revoked": "取消高风险诊疗技术授权",
    "technology.high_risk_eligibility_overridden": "高风险诊疗技术授权资格特批",
    "technology.high_risk_grants_resumed": "高风险技术恢复开展，恢复授权",
    "technology.high_risk_evaluation_started": "发起高风险技术年度评估",
    "technology.high_risk_self_evaluated": "高风险技术科室自评",
    "technology.high_risk_evaluated": "高风险技术医务处评估",
    "technology.high_risk_rectified": "高风险技术整改",
    "technology.high_risk_evaluation_closed": "高风险技术评估办结",
    "technology.high_risk_evaluation_withdrawn": "高风险技术评估撤回",
    "technology.day_surgery_applied": "提交日间手术资质申请",
    "technology.day_surgery_returned": "日间手术资质申请退回",
    "technology.day_surgery_revised": "修改日间手术资质申请",
    "technology.day_surgery_qualified": "授予日间手术资质",
    "technology.day_surgery_qualification_suspended": "暂停日间手术资质",
    "technology.day_surgery_qualification_resumed": "恢复日间手术资质",
    "technology.day_surgery_qualification_revoked": "取消日间手术资质",
    "technology.day_surgery_procedure_updated": "核定日间手术目录（级别、在用）",
    "technology.day_surgery_rejected": "日间手术资质申请未通过",
    "technology.day_surgery_withdrawn": "日间手术资质申请撤回",
    "technology.day_surgery_case_recorded": "登记日间手术病例",
    "technology.day_surgery_case_voided": "作废日间手术病例",
    "task.assigned": "按流程数据指派任务",
}


def register(app):
    from app.audit.services import ACTION_LABELS
    from app.demo import EXTRA_LOADERS
    from app.jobs import register_job
    from app.technology import api, flow, models, tasks, views  # noqa: F401 - models complete the metadata
    from app.technology.catalogue import seed_catalogues, seed_demo_cases
    from app.web import add_nav

    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    ACTION_LABELS.update(AUDIT_LABELS)
    EXTRA_LOADERS["医疗技术目录"] = seed_catalogues
    EXTRA_LOADERS["日间手术演示病例"] = seed_demo_cases
    add_nav("technology.home", "医疗技术", "technology.view", order=40)
    add_nav("technology.ethics_reviews", "伦理审查", "ethics.review", order=41)
    add_nav("technology.day_surgery_cases", "日间手术病例", "technology.day_surgery", order=42)
    app.extensions["technology_flow_hooks"] = flow.install()
    register_job("technology.high_risk_yearly", tasks.high_risk_yearly)
