#!/usr/bin/env bash
# The main job: migrate the embedded SQLite database (ACCUTE_DATABASE_URL to change it), then run a
# governed DP federation of 5 synthetic tenants on Flower's simulation engine (a minute or two; the DP
# defaults of BENCHMARKS.md "DP quality": 20 rounds x 4 full-batch steps) and
# print where its validation report is. --fresh-tenants: new organizations (empty ledgers) per run,
# so the demo can be repeated.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/accute-fl db upgrade
.venv/bin/accute-fl simulate --task digits --tenants 5 --dp local \
    --target-epsilon 4 --cap tenant-4=2 --withdraw 2:tenant-1:5 --fresh-tenants --out demo-report
