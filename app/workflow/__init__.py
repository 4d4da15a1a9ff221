"""Workflow core: the only package that imports SpiffWorkflow. Deploys BPMN, runs instances, projects tasks."""


def register(app):
    pass
