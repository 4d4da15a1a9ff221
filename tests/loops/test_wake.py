"""Wake-ups are folded: a burst of intake commits sends one at once and one after the gap, never none."""

from __future__ import annotations

import time

from app.loops import tasks


def test_a_burst_of_wakes_sends_one_now_and_one_trailing(app, monkeypatch):
    sent: list[float] = []
    monkeypatch.setattr(tasks.apply_task, "delay", lambda: sent.append(time.monotonic()))
    monkeypatch.setitem(app.config, "CELERY_ALWAYS_EAGER", False)
    monkeypatch.setattr(tasks, "_last_wake", [0.0])
    monkeypatch.setattr(tasks, "_trailing", [False])
    with app.app_context():
        for _ in range(50):
            tasks.wake()
        assert len(sent) == 1  # the first at once
        for _ in range(100):  # the trailing one follows when the gap ends
            if len(sent) == 2:
                break
            time.sleep(tasks.WAKE_GAP)
        assert len(sent) == 2
        time.sleep(tasks.WAKE_GAP * 3)
        assert len(sent) == 2  # nothing more without new commits
        tasks.wake()  # a later commit wakes at once again
        assert len(sent) == 3
