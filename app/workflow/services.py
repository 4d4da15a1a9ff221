"""Workflow operations (being built)."""


def fire_due_timers() -> int:
    return 0
