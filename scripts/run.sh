#!/usr/bin/env bash
# Run the gateway in the foreground on the embedded default (SQLite, no modem).
# Usage: scripts/run.sh [--config FILE]   (default etc/m2mgw.ini)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec twistd -n --pidfile= m2mgw "${@:---config=etc/m2mgw.ini}"
