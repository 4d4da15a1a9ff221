"""Layering rules from STYLE.md, checked by walking the imports."""

import ast
from pathlib import Path

import sqlalchemy as sa

from app.db import db

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_workflow_package_imports_spiffworkflow():
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / "app").rglob("*.py")
        if "workflow" not in p.relative_to(ROOT / "app").parts[:1]
        and any(n.split(".")[0] == "SpiffWorkflow" for n in _imports(p))
    ]
    assert offenders == []


def test_services_never_import_flask_request_or_werkzeug():
    offenders = []
    for p in (ROOT / "app").rglob("services.py"):
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "flask":
                if any(a.name == "request" for a in node.names):
                    offenders.append(str(p))
        if any(n.startswith("werkzeug.exceptions") for n in _imports(p)):
            offenders.append(str(p))
    assert offenders == []


def test_domains_do_not_import_each_others_views():
    offenders = []
    for p in (ROOT / "app").rglob("*.py"):
        rel = p.relative_to(ROOT / "app").parts
        if len(rel) < 2:  # the factory and shared modules wire the domains together
            continue
        own = rel[0]
        for name in _imports(p):
            parts = name.split(".")
            if len(parts) >= 3 and parts[0] == "app" and parts[2] in ("views", "api") and parts[1] != own:
                offenders.append(f"{p.relative_to(ROOT)} -> {name}")
    assert offenders == []


def test_every_table_and_column_has_a_chinese_comment(app):
    missing = []
    for table in db.metadata.sorted_tables:
        if not table.comment:
            missing.append(table.name)
        missing += [f"{table.name}.{c.name}" for c in table.columns if not c.comment]
    assert missing == []


def test_models_and_migrations_agree(app, db_session):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with app.app_context():
        conn = db_session.connection()
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, db.metadata)
    assert diff == [], f"models differ from migrations/: {diff}"
    assert isinstance(sa.__version__, str)
