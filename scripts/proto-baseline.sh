#!/usr/bin/env bash
# Record the current protos as the published contract that `buf breaking` guards.
# Run only when deliberately publishing a new contract; commit protos/baseline.binpb.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/buf build protos -o protos/baseline.binpb
echo "wrote protos/baseline.binpb"
