#!/usr/bin/env bash
# Make sure the local Redis the rate-limit and cache tests use is up; start it if it is not (never
# stops it). Exit 0 when it answers PING, 1 when it cannot be started.
set -uo pipefail
host=${ACCUTE_TEST_REDIS_HOST:-127.0.0.1}
port=${ACCUTE_TEST_REDIS_PORT:-6379}

ready() { redis-cli -h "$host" -p "$port" ping 2>/dev/null | grep -q PONG; }

ready && exit 0
if ! command -v redis-server >/dev/null 2>&1; then
  echo "ensure-redis: redis-server not found; is Redis installed?" >&2
  exit 1
fi
echo "ensure-redis: starting Redis on $host:$port" >&2
if command -v service >/dev/null 2>&1 && [ -x /etc/init.d/redis-server ]; then
  service redis-server start >/dev/null 2>&1 || true
fi
ready || redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no >/dev/null 2>&1 || true
for _ in $(seq 1 30); do
  ready && exit 0
  sleep 1
done
echo "ensure-redis: Redis at $host:$port is not answering" >&2
exit 1
