#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest on SQLite and PostgreSQL. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

# SoftHSM for the PKCS#11 key-provider tests: installed in CI when missing (outside CI they skip).
if [ "${CI:-}" = "true" ] && ! command -v softhsm2-util >/dev/null 2>&1; then
  echo "test: installing softhsm2 for the PKCS#11 tests" >&2
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq softhsm2 >/dev/null
fi

# Chromium for the admin console's browser tests (Playwright drives Debian's /usr/bin/chromium):
# installed in CI when missing (outside CI they skip with the reason).
if [ "${CI:-}" = "true" ] && [ ! -x /usr/bin/chromium ]; then
  echo "test: installing chromium for the admin console's browser tests" >&2
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi

export ACCUTE_TEST_POSTGRES_URL=${ACCUTE_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}
if ! scripts/ensure-postgres.sh; then
  if [ "${CI:-}" = "true" ]; then
    echo "test: PostgreSQL is required in CI" >&2
    exit 1
  fi
  echo "test: PostgreSQL is down; its tests will be skipped with the reason" >&2
fi

if ! scripts/ensure-rabbitmq.sh; then
  if [ "${CI:-}" = "true" ]; then
    echo "test: RabbitMQ is required in CI" >&2
    exit 1
  fi
  echo "test: RabbitMQ is down; the hub tests will be skipped with the reason" >&2
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Two workers (pytest-xdist): much of the suite waits on real processes (Flower, uvicorn, Chromium), and
# on a busy machine two workers get twice the CPU share. ACCUTE_TEST_WORKERS=0 runs in one process.
# The slowest tests are listed at the end, to keep the suite's time in view.
.venv/bin/pytest -n "${ACCUTE_TEST_WORKERS:-2}" --durations=25 "$@"
