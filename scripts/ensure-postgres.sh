#!/usr/bin/env bash
# Make sure the local PostgreSQL the integration tests use is up; start the cluster if it is not.
# Exit 0 when it answers, 1 when it cannot be started (callers decide whether that is fatal).
set -uo pipefail
host=${PGHOST_FOR_TESTS:-127.0.0.1}
port=${PGPORT_FOR_TESTS:-5432}

ready() { pg_isready -q -h "$host" -p "$port" 2>/dev/null; }

if ! command -v pg_isready >/dev/null 2>&1; then
  echo "ensure-postgres: pg_isready not found; is PostgreSQL installed?" >&2
  exit 1
fi
ready && exit 0

if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  version=$(ls /etc/postgresql | head -n 1)
  echo "ensure-postgres: starting cluster $version/main" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
fi
for _ in $(seq 1 30); do
  ready && exit 0
  sleep 1
done
echo "ensure-postgres: PostgreSQL at $host:$port is not answering" >&2
exit 1
