#!/usr/bin/env bash
# bench/llmcompressor_env.sh: create (idempotently) the virtual environment in
# which bench/llmcompressor_compare.py runs PyPI's llmcompressor (GPTQ, AWQ,
# SmoothQuant) on CPU, apart from the test venv (~/.cache/qat/venv, which this
# script never touches).
#
#   bash bench/llmcompressor_env.sh            # create or check; prints the venv's python
#   bash bench/llmcompressor_env.sh --force    # remove and rebuild
#   nice -n 19 "$(bash bench/llmcompressor_env.sh | tail -1)" bench/llmcompressor_compare.py
#
# Environment: QAT_LLMC_VENV (default ~/.cache/qat/llmc-venv), QAT_LLMC_PYTHON
# (the interpreter the venv is made from, default python3; 3.10 or later),
# QAT_LLMC_WHEELS (default ~/.cache/qat/llmc-wheels: the downloaded wheels,
# kept so that a rebuild downloads nothing again; pip's own HTTP cache stays
# empty here because the package mirror sends no cache headers).
#
# Why the install is done by hand: llmcompressor 0.14.0.1 (the newest on PyPI)
# accepts torch 2.10.0 to 2.14.0, and PyPI has no CPU-only torch build (the
# +cpu wheels live on PyTorch's own index, which this machine cannot reach).
# PyPI's torch 2.11.0 (CUDA 13.0 build) is the one qat's own venv pins
# (scripts/requirements.txt), so both sides run the same CPU kernels, and its
# wheel is copied from qat's wheel cache when present instead of downloaded.
# It goes in --no-deps in qat's slim form: only the three NVIDIA libraries the
# CUDA toolkit at /usr/local/cuda lacks (cusparselt, nvshmem, cufile), not the
# ~2.7 GB of CUDA wheels, triton, cuda-toolkit or cuda-bindings (none is used
# on CPU). Everything is therefore installed with --no-deps from the exact
# versions below, resolved once with pip from llmcompressor 0.14.0.1's own
# requirements (transformers<=5.17.0, compressed-tensors==0.19.0, datasets,
# accelerate, auto-round) on top of that torch.
set -euo pipefail

venv=${QAT_LLMC_VENV:-$HOME/.cache/qat/llmc-venv}
py=${QAT_LLMC_PYTHON:-python3}
wheels=${QAT_LLMC_WHEELS:-$HOME/.cache/qat/llmc-wheels}
qat_wheels=${QAT_CACHE:-$HOME/.cache/qat}/wheels
export PIP_DISABLE_PIP_VERSION_CHECK=1

lock=$(cat <<'LOCK'
accelerate==1.16.0
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
auto-round==0.15.1
certifi==2026.10.19.post1
charset-normalizer==3.5.3
click==8.5.1
compressed-tensors==0.19.0
datasets==5.2.0
dill==0.4.1
filelock==4.2.11
fsspec==2026.9.0
h11==0.16.0
hf-xet==1.8.0
httpcore==1.0.9
httpx==0.29.0
huggingface_hub==1.33.0
idna==3.20
Jinja2==3.1.6
llmcompressor==0.14.0.1
loguru==0.7.3
markdown-it-py==4.3.0
MarkupSafe==3.0.3
mdurl==0.1.2
mpmath==1.3.0
multiprocess==0.70.19
networkx==3.6.1
numpy==2.4.6
nvidia-cufile==1.15.1.6
nvidia-cusparselt-cu13==0.8.0
nvidia-ml-py==13.615.71
nvidia-nvshmem-cu13==3.4.5
packaging==26.4
pandas==3.1.1
pillow==13.0.0
psutil==7.2.2
py-cpuinfo==9.0.0
pyarrow==26.0.1
pydantic==2.14.4
pydantic_core==2.50.5
Pygments==2.21.0
python-dateutil==4.0.0
PyYAML==6.0.4
regex==2026.11.19
requests==2.34.2
rich==15.0.0
safetensors==0.8.0
setuptools==80.9.0
shellingham==1.5.4
sympy==1.14.0
tokenizers==0.23.3
torch==2.11.0
tqdm==4.70.1
transformers==5.17.0
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
xxhash==4.1.0
LOCK
)
stamp=$(printf '%s\n' "$lock" | sha256sum | cut -c1-16)

smoke() {
  "$venv/bin/python" - <<'PY'
import importlib.metadata as md
import torch, transformers, compressed_tensors
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
from llmcompressor.modifiers.awq import AWQModifier
from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
print(f"llmcompressor {md.version('llmcompressor')}, compressed-tensors "
      f"{md.version('compressed-tensors')}, transformers {transformers.__version__}, "
      f"torch {torch.__version__}, {torch.get_num_threads()} threads")
PY
}

if [[ ${1:-} == --force ]]; then rm -rf "$venv"; fi

if [[ -f $venv/.qat-llmc-lock && $(cat "$venv/.qat-llmc-lock") == "$stamp" ]] && smoke 2>/dev/null; then
  echo "llmcompressor_env: $venv is up to date ($(du -sh "$venv" | cut -f1))"
  echo "$venv/bin/python"
  exit 0
fi

start=$(date +%s)
if [[ ! -x $venv/bin/python ]]; then
  "$py" -c 'import sys; assert sys.version_info[:2] >= (3, 10), sys.version' \
    || { echo "llmcompressor_env: $py is not Python 3.10 or later (set QAT_LLMC_PYTHON)" >&2; exit 2; }
  "$py" -m venv "$venv"
fi
mkdir -p "$wheels"
# Wheels qat's own setup already downloaded (torch 2.11.0 among them: 0.9 GB)
# are hard-linked (else copied) into the wheelhouse, where pip download finds
# them and fetches nothing.
for line in $lock; do
  name=${line%%==*} version=${line#*==}
  norm=$(printf '%s' "$name" | tr 'A-Z-' 'a-z_')
  for f in "$qat_wheels/${norm}-${version}-"*.whl; do
    [[ -e $f && ! -e $wheels/$(basename "$f") ]] || continue
    ln "$f" "$wheels/" 2>/dev/null || cp "$f" "$wheels/"
  done
done
lockfile=$(mktemp "${TMPDIR:-/tmp}/llmc_lock.XXXXXX")
trap 'rm -f "$lockfile"' EXIT
printf '%s\n' "$lock" >"$lockfile"
pip=("$venv/bin/python" -m pip)
# Download what the wheelhouse lacks (pip reuses files already there), then
# install from it alone. The venv's pip is not upgraded: 23.2 or later works.
"${pip[@]}" download -q --no-deps --only-binary=:all: -d "$wheels" -r "$lockfile"
"${pip[@]}" install -q --no-deps --no-index --find-links "$wheels" -r "$lockfile"
smoke
echo "$stamp" >"$venv/.qat-llmc-lock"
echo "llmcompressor_env: set up in $(( $(date +%s) - start )) s; venv $(du -sh "$venv" | cut -f1), wheelhouse $(du -sh "$wheels" | cut -f1)"
echo "$venv/bin/python"
