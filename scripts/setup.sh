#!/usr/bin/env bash
# Installs everything MedLoop needs into this checkout: .venv from requirements.lock, node_modules from
# package-lock.json. Safe to run again; used by run.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.medloop-lock
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
nstamp=node_modules/.medloop-lock
nwant=$(sha256sum package-lock.json | cut -c1-16)
if [ "$(cat "$nstamp" 2>/dev/null)" != "$nwant" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$nwant" > "$nstamp"
fi
