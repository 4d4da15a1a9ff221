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


def _run(parsed, version_id, messages, *, onward: bool, monkeypatch):
    with monkeypatch.context() as patch:
        if not onward:
            patch.setattr(engine, "_run_onward", lambda wf, start: False)
        w = wf._fresh_headless(version_id, parsed, {"order_no": "O"})
        for name in messages:
            engine.deliver_and_step(w, name, {"x": 1})
        return w


def test_following_the_ready_tasks_ends_a_loop_exactly_as_do_engine_steps(app, db_session, monkeypatch):
    """The closing steps after a caught message are run by following them (engine._run_onward); every loop type,
    closed after its last node or cancelled halfway, ends in the same state as with do_engine_steps."""
    taken: list[bool] = []
    real = engine._run_onward
    monkeypatch.setattr(engine, "_run_onward", lambda w, start: taken.append(real(w, start)) or taken[-1])
    for t in services.loop_types_out():
        info = services.type_info(t["key"])
        version_id, parsed = wf._active_parsed(info.process_key)
        nodes = [k for k, _n, _m in info.nodes]
        for messages in (nodes, nodes[: len(nodes) // 2] + ["cancelled"]):
            fast = _run(parsed, version_id, messages, onward=True, monkeypatch=monkeypatch)
            full = _run(parsed, version_id, messages, onward=False, monkeypatch=monkeypatch)
            assert _shape(fast) == _shape(full), (t["key"], messages[-1])
            assert engine.is_completed(fast) and engine.is_completed(full)
            assert engine.completed_spec_names(fast, parsed) == engine.completed_spec_names(full, parsed)
    assert True in taken  # the short way was taken (not only the fallback)
