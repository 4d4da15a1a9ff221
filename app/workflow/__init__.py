"""Workflow core: the only package that imports SpiffWorkflow. Deploys BPMN, runs instances, projects tasks."""


def register(app):
    from app.web import add_nav
    from app.workflow import api, views

    app.register_blueprint(views.tasks_bp)
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    add_nav("tasks.inbox", "我的待办", None, order=10)
    add_nav("tasks.group", "可认领任务", None, order=11)
    add_nav("workflow.mine", "我的申请", None, order=12)
    add_nav("workflow.processes", "流程管理", "workflow.admin", order=85)
