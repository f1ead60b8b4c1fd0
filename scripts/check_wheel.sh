#!/usr/bin/env bash
# Builds the wheel, installs it into a fresh virtualenv and runs `bulwark demo` from it, outside
# the source tree: what `pip install .` gives a user must work without the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Build from the files git knows (tracked, or new and not ignored): a build/ folder or a stale
# egg-info left in the checkout cannot leak into the wheel.
mkdir "$work/source"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/source"
python3 -m pip wheel --quiet --no-deps -w "$work/dist" "$work/source"

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "$work"/dist/bulwark-*.whl
cd "$work"
"$work/venv/bin/bulwark" demo --db "sqlite:///$work/demo.db" --events 5000 | tee "$work/demo.out"
grep -q "incident" "$work/demo.out"
"$work/venv/bin/bulwark" incidents list --db "sqlite:///$work/demo.db" >/dev/null
echo "wheel check: installed $(basename "$work"/dist/bulwark-*.whl) and ran the demo from it"
