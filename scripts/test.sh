#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest on SQLite and PostgreSQL. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

export ACCUTE_TEST_POSTGRES_URL=${ACCUTE_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}
if ! scripts/ensure-postgres.sh; then
  if [ "${CI:-}" = "true" ]; then
    echo "test: PostgreSQL is required in CI" >&2
    exit 1
  fi
  echo "test: PostgreSQL is down; its tests will be skipped with the reason" >&2
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"
