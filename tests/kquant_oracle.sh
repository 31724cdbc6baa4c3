#!/usr/bin/env bash
# Builds tests/kquant_oracle.cpp against ggml's own reference C code and runs it:
# our Q4_K / Q5_K / Q6_K (kernels/ref/gguf_kquant_ref.cpp) against
# quantize_row_q*_K_ref / dequantize_row_q*_K from the llama.cpp that the
# pinned llama-cpp-python sdist vendors. Torch-free; needs only gcc and g++.
#
#   tests/kquant_oracle.sh [oracle options, e.g. --blocks-scale 4 --max-print 0]
#
# ggml-quants.c is compiled (with a small shim for the four ggml.c functions it
# references and never calls here) in these modes:
#   release       -O3 -DNDEBUG -std=gnu11: how llama-cpp-python builds
#                 libggml-base (Release; GGML_NATIVE's -march reaches only
#                 ggml-cpu, so ggml-quants.c is built for baseline x86-64 and
#                 GCC's default -ffp-contract=fast has no FMA to contract to)
#   native-nofma  the same with -march=native -ffp-contract=off
#   native-fma    the same with -march=native alone: GCC then fuses a * b + c
#                 into FMAs (GNU C's default is -ffp-contract=fast). Reported,
#                 not required to match: ggml's output itself changes.
#   installed     the libggml-base.so of the project's venv, if there is one
# and ours is also built with -O3 -march=native -ffp-contract=off (AVX-512 on
# the machines that have it) against the release mode, to show that the
# vectoriser does not change our bits.
# Exit status 1 if any mode other than native-fma mismatches.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
sdist=${QAT_LLAMA_CPP_SDIST:-$HOME/.cache/qat/wheels/llama_cpp_python-0.3.36.tar.gz}
venv=${QAT_VENV:-$HOME/.cache/qat/venv}
CC=${CC:-gcc}
CXX=${CXX:-g++}
[[ -f $sdist ]] || { echo "kquant_oracle: no sdist at $sdist (set QAT_LLAMA_CPP_SDIST)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/kquant_oracle.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar xzf "$sdist" -C "$work" --wildcards '*/vendor/llama.cpp/ggml/*'
ggml=$(echo "$work"/*/vendor/llama.cpp/ggml)
ggml_inc=(-I"$ggml/include" -I"$ggml/src" -I"$ggml/src/ggml-cpu")

# The shim: ggml-impl.h's fp32 -> fp16 conversion for --fp16-sweep and, where
# ggml-quants.c is linked alone, stubs for the ggml.c functions it references
# (ggml_validate_row_data and the abort paths; never reached here).
cat >"$work/shim.c" <<'EOF'
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include "ggml.h"
#include "ggml-impl.h"

uint16_t kquant_oracle_ggml_fp32_to_fp16(float f) { return GGML_FP32_TO_FP16(f); }

#ifdef KQUANT_ORACLE_STUBS
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "ggml_abort at %s:%d: ", file, line);
    vfprintf(stderr, fmt, args);
    va_end(args);
    abort();
}
size_t ggml_type_size(enum ggml_type type) { (void) type; abort(); }
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void) type; (void) ne; abort(); }
const char * ggml_type_name(enum ggml_type type) { (void) type; abort(); }
#endif
EOF

ours_flags=(-std=c++17 -O2 -ffp-contract=off -Wall -Wextra -Wno-unused-parameter -I"$repo")
ggml_c=(-std=gnu11 -O3 -DNDEBUG -D_GNU_SOURCE -D_XOPEN_SOURCE=700 "${ggml_inc[@]}")
declare -A mode_flags=(
  [release]=""
  [native-nofma]="-march=native -ffp-contract=off"
  [native-fma]="-march=native"
)
modes=(release native-nofma native-fma)

# Two compiles at a time (ggml-quants.c takes a while at -O3).
pids=()
build() { "$@" || { echo "kquant_oracle: build failed: $*" >&2; exit 3; }; }
build "$CXX" "${ours_flags[@]}" -c "$repo/kernels/ref/gguf_kquant_ref.cpp" -o "$work/ours.o" &
pids+=($!)
build "$CXX" "${ours_flags[@]}" -O3 -march=native -c "$repo/kernels/ref/gguf_kquant_ref.cpp" \
  -o "$work/ours-native.o" &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
build "$CXX" "${ours_flags[@]}" -c "$repo/tests/kquant_oracle.cpp" -o "$work/oracle.o"
# The shim once per mode, so that --fp16-sweep checks each mode's own build of
# ggml's fp16 conversion (under -march=native GCC fuses one of its multiplies
# and adds too).
"$CC" "${ggml_c[@]}" -c "$work/shim.c" -o "$work/shim.o"
for m in "${modes[@]}"; do
  # shellcheck disable=SC2086
  "$CC" "${ggml_c[@]}" ${mode_flags[$m]} -DKQUANT_ORACLE_STUBS -c "$work/shim.c" -o "$work/shim-$m.o"
done
pids=()
for m in "${modes[@]}"; do
  # shellcheck disable=SC2086
  build "$CC" "${ggml_c[@]}" ${mode_flags[$m]} -c "$ggml/src/ggml-quants.c" -o "$work/ggml-$m.o" &
  pids+=($!)
  if ((${#pids[@]} == 2)); then
    for p in "${pids[@]}"; do wait "$p"; done
    pids=()
  fi
done
for p in "${pids[@]}"; do wait "$p"; done

link() { # name ours.o ggml objects/flags...
  local name=$1 ours=$2
  shift 2
  "$CXX" -o "$work/$name" "$work/oracle.o" "$work/$ours" "$@" -lm
}
for m in "${modes[@]}"; do
  link "oracle-$m" ours.o "$work/ggml-$m.o" "$work/shim-$m.o"
done
link oracle-ours-native ours-native.o "$work/ggml-release.o" "$work/shim-release.o"
runs=(release native-nofma native-fma ours-native)
lib=$(find "$venv"/lib/python3*/site-packages/llama_cpp/lib -name libggml-base.so 2>/dev/null | head -1 || true)
if [[ -n $lib ]]; then
  link oracle-installed ours.o "$work/shim.o" -L"$(dirname "$lib")" -lggml-base \
    -Wl,-rpath,"$(dirname "$lib")"
  runs+=(installed)
else
  echo "kquant_oracle: no installed libggml-base.so under $venv; skipping that mode"
fi

status=0
for r in "${runs[@]}"; do
  case $r in
    release) label="ggml -O3 (llama-cpp-python's build of ggml-quants.c)" ;;
    native-nofma) label="ggml -O3 -march=native -ffp-contract=off" ;;
    native-fma) label="ggml -O3 -march=native (FMA contraction)" ;;
    ours-native) label="ours -O3 -march=native -ffp-contract=off vs ggml -O3" ;;
    installed) label="ggml from $lib" ;;
  esac
  echo "=== $r: $label"
  extra=()
  [[ $r == native-fma ]] && extra+=(--report-only)
  # The exhaustive fp32 -> fp16 check (20 s) where ggml's conversion is built
  # differently: without and with FMA.
  [[ $r == release || $r == native-fma ]] && extra+=(--fp16-sweep)
  if ! "$work/oracle-$r" --label "$label" "${extra[@]}" "$@"; then
    status=1
  fi
done
exit $status
