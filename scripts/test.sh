#!/usr/bin/env bash
# The test command (README, CI): setup, static checks, then the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k ipam
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
VENV="${BARYON_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH"

echo "== generated code is up to date"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
cp -r baryon controller/etcd "$tmp/"
./scripts/gen-protos.sh >/dev/null
if ! diff -rq "$tmp/baryon" baryon >/dev/null || ! diff -rq "$tmp/etcd" controller/etcd >/dev/null; then
  echo "generated code was stale; run scripts/gen-protos.sh and commit" >&2
  exit 1
fi
echo "== buf lint";        buf lint protos
echo "== buf breaking";    buf breaking protos --against protos/baseline.binpb
echo "== ruff";            ruff check . && ruff format --check .
echo "== mypy";            mypy
echo "== pytest"
exec pytest -q -p no:cacheprovider "$@"
