"""A new loop's workflow copied from the version's cached fresh run is the same as one built and run anew."""

from __future__ import annotations

from app.loops import services
from app.workflow import engine
from app.workflow import services as wf


def _shape(workflow) -> list[tuple[str, str, str, tuple]]:
    """Everything but the task ids: (workflow, spec, state, data) of every task, in tree order."""
    out = []
    for name, w in (("", workflow), *((str(i), s) for i, s in enumerate(workflow.subprocesses.values()))):
        for t in w.get_tasks():
            out.append((name, t.task_spec.name, t.state, tuple(sorted(t.data.items()))))
    return out


def test_every_loop_type_starts_the_same_from_the_template(app, db_session):
    for t in services.loop_types_out():
        info = services.type_info(t["key"])
        version_id, parsed = wf._active_parsed(info.process_key)
        data = {"order_no": f"T-{t['key']}"}
        fresh = engine.new_workflow(parsed, dict(data))
        engine.run(fresh)
        copy = wf._fresh_headless(version_id, parsed, dict(data))
        assert _shape(copy) == _shape(fresh), t["key"]
        again = wf._fresh_headless(version_id, parsed, {"order_no": "other"})  # copies do not share state
        assert _shape(copy) == _shape(fresh)
        first = info.nodes[0][0]
        engine.deliver_and_step(copy, first, {"x": 1})
        engine.deliver_and_step(fresh, first, {"x": 1})
        assert _shape(copy) == _shape(fresh), t["key"]
        assert _shape(again) != _shape(copy)
