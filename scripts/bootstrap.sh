#!/usr/bin/env bash
# Create the virtual environment (.venv, or $M2MGW_VENV) and install m2mgw into it,
# then put its bin/ first on PATH. Idempotent and quiet.
#
# Safe to source from an interactive shell (`source scripts/bootstrap.sh`): the work
# runs in a subshell, so the caller's options (set -e ...), working directory and
# variables stay as they were; only PATH changes. scripts/run.sh and scripts/test.sh
# source it too: when the set-up fails it says so and returns non-zero.

_m2mgw_bootstrap() {
    unset -f _m2mgw_bootstrap
    local root venv
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return
    venv=${M2MGW_VENV:-.venv}
    case $venv in
        /*) ;;
        *) venv=$root/$venv ;;
    esac
    # Every step ends the subshell on failure explicitly: `set -e` would be ignored
    # here, in the left operand of ||.
    (
        cd "$root" || exit
        if [ ! -x "$venv/bin/python" ]; then
            python3 -m venv "$venv" || exit
        fi
        stamp=$venv/.m2mgw-installed
        if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
            "$venv/bin/python" -m pip install -q --upgrade pip || exit
            # An editable install: setup.cfg's `package_dir = =.` makes it a plain .pth
            # entry for the checkout, where twistd finds twisted/plugins/ (D-148).
            "$venv/bin/python" -m pip install -q -e '.[test]' || exit
            touch "$stamp"
        fi
    ) || {
        echo "scripts/bootstrap.sh: setting up $venv failed" >&2
        return 1
    }
    case ":$PATH:" in
        *":$venv/bin:"*) ;;
        *) export PATH="$venv/bin:$PATH" ;;
    esac
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    _m2mgw_bootstrap
    return  # with the status of the set-up
fi
_m2mgw_bootstrap
