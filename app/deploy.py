"""Deploy what ships with the product: form files and BPMN processes (only what is new)."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import inspect


def deploy_shipped() -> dict[str, int]:
    """Sync forms/ and deploy processes/ when their checksums are new. Returns counts."""
    from app.db import db
    from app.forms import services as forms
    from app.workflow import services as wf

    if not inspect(db.engine).has_table("process_versions"):
        return {"forms": 0, "processes": 0}
    n_forms = forms.sync_files(current_app.config["FORMS_DIR"])
    versions = wf.deploy_directory(current_app.config["PROCESSES_DIR"])
    return {"forms": n_forms, "processes": len(versions)}
