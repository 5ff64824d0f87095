#!/usr/bin/env bash
# Create the virtual environment (.venv, or $M2MGW_VENV) and install m2mgw into it.
# Sourced by scripts/run.sh and scripts/test.sh; idempotent and quiet.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${M2MGW_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
stamp="$VENV/.m2mgw-installed"
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # compat mode puts the checkout on sys.path, so twistd finds twisted/plugins/.
    "$VENV/bin/python" -m pip install -q -e '.[test]' --config-settings editable_mode=compat
    touch "$stamp"
fi
export PATH="$PWD/$VENV/bin:$PATH"
