#!/usr/bin/env bash
# The main job: migrate the embedded SQLite database (ACCUTE_DATABASE_URL to change it), then run a
# governed DP federation of 5 synthetic tenants on Flower's simulation engine (about a minute) and
# print where its validation report is. --fresh-tenants: new organizations (empty ledgers) per run,
# so the demo can be repeated.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/accute-fl db upgrade
.venv/bin/accute-fl simulate --task digits --tenants 5 --rounds 5 --steps 60 --dp local \
    --target-epsilon 4 --cap tenant-4=2 --withdraw 2:tenant-1:5 --fresh-tenants --out demo-report
