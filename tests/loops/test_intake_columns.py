"""The PostgreSQL intake writes rows with one unnest statement, which skips the models' Python-side defaults:
every column that needs a value on a new row must be in its column list."""

from __future__ import annotations

from app.loops import services
from app.loops.models import LoopEvent, LoopOrder


def _needed(table) -> set[str]:
    return {c.name for c in table.columns
            if not c.primary_key and (c.default is not None or not c.nullable) and c.server_default is None}


def test_unnest_column_lists_cover_every_column_a_new_row_needs():
    assert _needed(LoopEvent.__table__) <= set(services.EVENT_COLUMNS)
    assert _needed(LoopOrder.__table__) <= set(services.ORDER_COLUMNS)
