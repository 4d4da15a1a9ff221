#!/usr/bin/env bash
# The whole test suite: lint, types, and pytest against this machine's real PostgreSQL, Redis and
# MariaDB (and the embedded SQLite path), with browser tests in Debian's Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ] || ! fc-list 2>/dev/null | grep -qi "noto sans cjk"; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium fonts-noto-cjk >/dev/null
fi
# the services this kind of machine starts; start any that is down
pg_isready -q -h 127.0.0.1 || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
mariadb-admin -h 127.0.0.1 -uroot status >/dev/null 2>&1 || start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd

./scripts/setup.sh
.venv/bin/ruff check app tests bench connectors reports
.venv/bin/mypy
.venv/bin/pytest "$@"
