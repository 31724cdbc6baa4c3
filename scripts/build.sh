#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and builds qat (Release with assertions) in build/.
#
#   scripts/build.sh [TARGET ...]   # default: everything
#
#   QAT_BUILD_DIR   build directory (default build/)
#   QAT_CUDA        AUTO (default: CUDA kernels when nvcc is found), ON or OFF
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${QAT_CACHE:-$HOME/.cache/qat}
build=${QAT_BUILD_DIR:-$root/build}

"$root/scripts/setup.sh"

# ccache outlives clones: the cache sits in the user's cache directory, paths are made relative
# to the checkout, and the precompiled headers are accepted as ccache inputs.
export CCACHE_DIR=${CCACHE_DIR:-$cache/ccache}
export CCACHE_BASEDIR=$root
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}

echo "[build] configuring $build"
cmake -S "$root" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE=-O2 -DCMAKE_CUDA_FLAGS_RELEASE=-O2 \
  -DQAT_CUDA="${QAT_CUDA:-AUTO}" -DQAT_PYTHON="${QAT_VENV:-$cache/venv}/bin/python"

echo "[build] building ${*:-everything}"
ccache --zero-stats >/dev/null 2>&1 || true
start=$(date +%s)
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build "$build" --parallel "$(nproc)" "${targets[@]}"
echo "[build] took $(( $(date +%s) - start )) s; ccache: $(ccache --print-stats 2>/dev/null | awk -F'\t' '/^direct_cache_hit|^preprocessed_cache_hit|^cache_miss/{printf "%s=%s ", $1, $2}')"
