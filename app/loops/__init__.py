"""Closed loops (医疗流程闭环): loop types as BPMN, event intake, per-order timelines, metrics, embed views."""

from importlib import import_module
from pathlib import Path

# optional page/feature modules, each exposing register(app); loaded when present
FEATURES = ("views", "embed", "alerts", "dashboard", "config", "docs")


def register(app):
    from app.demo import EXTRA_LOADERS
    from app.jobs import register_job
    from app.loops import api, services, tasks

    app.register_blueprint(api.bp)
    EXTRA_LOADERS.setdefault("闭环类型", services.seed_loop_types)
    register_job("loops.apply", tasks.sweep)
    tasks.register_cli(app)
    here = Path(__file__).parent
    for name in FEATURES:
        if (here / f"{name}.py").exists():
            import_module(f"app.loops.{name}").register(app)
