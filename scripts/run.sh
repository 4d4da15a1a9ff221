#!/usr/bin/env bash
# Start MedLoop on http://127.0.0.1:5000 with demo data, on the embedded default
# (SQLite file instance/medloop.sqlite, background work in-process; no Redis needed).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
medloop db upgrade
medloop demo
exec medloop serve --port "${PORT:-5000}"
