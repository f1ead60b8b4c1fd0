#!/usr/bin/env bash
# Sets up everything Bulwark needs on a fresh machine, idempotently:
#   scripts/bootstrap.sh          the virtualenv with Bulwark installed (editable)
#   scripts/bootstrap.sh --test   plus test tools and what the test suite needs from the system
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=false
[[ "${1:-}" == "--test" ]] && want_tests=true

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if $want_tests; then
    .venv/bin/python -m pip install --quiet -e '.[dev]'
else
    .venv/bin/python -m pip install --quiet -e .
fi
