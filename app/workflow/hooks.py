"""Registries through which domains react to workflow events without importing SpiffWorkflow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

END_HOOKS: dict[str, list[Callable[..., Any]]] = {}
CONTEXT_RENDERERS: dict[str, Callable[..., Any]] = {}
COMPLETE_HOOKS: dict[str, list[Callable[..., Any]]] = {}


def on_end(key: str) -> Callable:
    """Decorator: fn(*, instance, data, actor) runs in the same transaction when an instance of `key` ends."""

    def deco(fn: Callable) -> Callable:
        END_HOOKS.setdefault(key, [])
        if fn not in END_HOOKS[key]:
            END_HOOKS[key].append(fn)
        return fn

    return deco


def on_task_complete(key: str) -> Callable:
    """Decorator: fn(*, instance, task, data, actor) runs after a user task of `key` is completed."""

    def deco(fn: Callable) -> Callable:
        COMPLETE_HOOKS.setdefault(key, [])
        if fn not in COMPLETE_HOOKS[key]:
            COMPLETE_HOOKS[key].append(fn)
        return fn

    return deco


def context_renderer(key: str) -> Callable:
    """Decorator: fn(instance) -> Markup, the business summary shown above task forms and on the instance page."""

    def deco(fn: Callable) -> Callable:
        CONTEXT_RENDERERS[key] = fn
        return fn

    return deco
