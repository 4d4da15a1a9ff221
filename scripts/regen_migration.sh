#!/usr/bin/env bash
# Regenerate the initial Alembic migration from the models (only while nothing is deployed).
# Usage: scripts/regen_migration.sh   (run from the project root, with .venv set up)
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
rm -f migrations/versions/0001_initial.py
DATABASE_URL="sqlite:///$tmp/gen.sqlite" .venv/bin/medloop db migrate -m "initial schema" --rev-id 0001 >/dev/null 2>&1
mv migrations/versions/0001_initial_schema.py migrations/versions/0001_initial.py
rm -rf "$tmp"
echo "migrations/versions/0001_initial.py regenerated"
