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
mypy m2mgw/protocol m2mgw/core m2mgw/transport m2mgw/sms m2mgw/app
exec python -m pytest "$@"
