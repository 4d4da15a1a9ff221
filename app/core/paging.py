"""Pagination of select() statements for list pages and APIs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import request
from sqlalchemy import func, select

from app.db import db


@dataclass
class Page:
    items: list[Any]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, (self.total + self.per_page - 1) // self.per_page)

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def paginate(stmt, *, per_page: int | None = None, scalars: bool = True) -> Page:
    try:
        page = max(1, int(request.args.get("page", 1)))
    except ValueError:
        page = 1
    try:
        per_page = per_page or min(200, max(1, int(request.args.get("per_page", 20))))
    except ValueError:
        per_page = 20
    total = db.session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    query = stmt.limit(per_page).offset((page - 1) * per_page)
    items = list(db.session.scalars(query)) if scalars else list(db.session.execute(query))
    return Page(items=items, total=total, page=page, per_page=per_page)
