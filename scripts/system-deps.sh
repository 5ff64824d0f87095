#!/usr/bin/env bash
# Install the Debian packages the test suite drives: gammu for the SMS modem tests,
# promtool (package prometheus) for the metrics test, chromium and chromium-driver for
# the console's browser test, systemd-analyze (package systemd) for the unit files,
# postgresql for the throw-away clusters of the PostgreSQL registry's tests (tests/pgcluster.py).
# Idempotent and quiet: exits 0 at once when everything is already installed.
set -euo pipefail
PACKAGES=(gammu prometheus chromium chromium-driver systemd postgresql iproute2)
missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Output is shown only when a step fails, so a normal run prints nothing.
if ! { $SUDO apt-get update -qq && \
       $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
