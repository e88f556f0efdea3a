#!/usr/bin/env bash
# The main job: migrate the embedded SQLite database (ACCUTE_DATABASE_URL to change it) and show status.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/accute-fl db upgrade
.venv/bin/accute-fl status
