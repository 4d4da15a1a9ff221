"""The applier's and intake's process caches are read by several threads of a web worker at once (gunicorn
gthread): a thread must never see a half-built cache while another builds or clears it."""

from __future__ import annotations

import threading

from app.auth.models import Department
from app.loops import services


def test_org_cache_is_never_seen_half_built(app):
    """No db_session here: each thread uses its own pooled connection to the committed demo data."""
    from app.db import db

    with app.app_context():
        dept = db.session.query(Department).order_by(Department.id).first()
        code = dept.his_code or dept.code
        expected = services.org_of(code, None)
        db.session.remove()
    errors: list[BaseException] = []
    wrong: list[tuple] = []
    stop = threading.Event()

    def reader() -> None:
        with app.app_context():
            try:
                for _ in range(300):
                    got = services.org_of(code, None)
                    if got != expected:
                        wrong.append(got)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                from app.db import db

                db.session.remove()

    def clearer() -> None:
        while not stop.is_set():
            services._ORG.clear()
            services._MAPPINGS.clear()

    threads = [threading.Thread(target=reader) for _ in range(4)]
    churn = threading.Thread(target=clearer)
    churn.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    churn.join()
    assert errors == [] and wrong == []
