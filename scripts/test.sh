#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it.
# Usage: scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
if [ -x scripts/system-deps.sh ]; then
    scripts/system-deps.sh
fi
ruff check m2mgw tests bench twisted
exec python -m pytest "$@"
