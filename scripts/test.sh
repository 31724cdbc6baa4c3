#!/usr/bin/env bash
# Sets everything up, builds qat (scripts/build.sh) and runs every test through ctest. Exits
# non-zero on any failure. CI runs exactly this (.ci/run).
#
#   QAT_BUILD_DIR   build directory (default build/)
#   QAT_CUDA        AUTO (default: CUDA kernels when nvcc is found), ON or OFF
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/build.sh"

echo "[test] running tests"
ctest --test-dir "${QAT_BUILD_DIR:-$root/build}" --output-on-failure --timeout 900 --parallel 2
