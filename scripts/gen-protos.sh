#!/usr/bin/env bash
# The one command that produces all generated code. Never edit its output.
#   protos/baryon/v1/*.proto        -> baryon/v1/*_pb2.py, *_pb2_grpc.py, *.pyi
#   controller/etcd/etcd_rpc.proto  -> controller/etcd/etcd_rpc_pb2*.py (our subset of etcd's v3 API)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BARYON_VENV:-.venv}"
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"
rm -rf baryon/v1
"$PY" -m grpc_tools.protoc -I protos \
  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
  protos/baryon/v1/*.proto
"$PY" -m grpc_tools.protoc -I . \
  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
  controller/etcd/etcd_rpc.proto
echo "generated: baryon/v1 controller/etcd/etcd_rpc_pb2*"
