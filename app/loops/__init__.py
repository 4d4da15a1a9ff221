"""Closed loops (医疗流程闭环): loop types as BPMN, event intake, per-order timelines, metrics, embed views."""


def register(app):
    from app.demo import EXTRA_LOADERS
    from app.loops import api, services

    app.register_blueprint(api.bp)
    EXTRA_LOADERS.setdefault("闭环类型", services.seed_loop_types)
