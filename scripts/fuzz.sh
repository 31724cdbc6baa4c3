#!/usr/bin/env bash
# Builds the libFuzzer target for the GGUF and safetensors readers (clang with
# address and undefined-behaviour sanitizers) and runs it for SECONDS (default
# 60) from a seed corpus of valid files written by gguf-py and safetensors.
# Exits non-zero on any finding; crash inputs land in build/fuzz/.
#
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-60}
cache=${QAT_CACHE:-$HOME/.cache/qat}
python=${QAT_VENV:-$cache/venv}/bin/python
out=${QAT_BUILD_DIR:-$root/build}/fuzz
mkdir -p "$out/corpus"
torch=$("$python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')

binary=$out/fuzz_readers
sources=("$root/tests/fuzz/fuzz_readers.cpp" "$root/qat/export/gguf.cpp" "$root/qat/export/atomic_file.cpp"
         "$root/qat/export/safetensors.cpp" "$root/qat/export/mapped_file.cpp" "$root/kernels/ref/gguf_ref.cpp"
         "$root/kernels/ref/gguf_kquant_ref.cpp" "$root/kernels/ref/microscale_ref.cpp"
         "$root/trainers/text/hf_tokenizer.cpp" "$root/trainers/text/chat_template.cpp")
if [[ ! -x $binary || -n $(find "${sources[@]}" "$root"/qat/export/*.h "$root"/kernels/*.h "$root"/kernels/ref/*.h "$root"/trainers/text/*.h "$root"/trainers/text/*.inc -newer "$binary") ]]; then
  echo "[fuzz] building $binary"
  clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -D_GLIBCXX_USE_CXX11_ABI=1 -I"$root" -isystem "$torch/include" \
    -isystem "$torch/include/torch/csrc/api/include" "${sources[@]}" \
    -L"$torch/lib" -Wl,-rpath,"$torch/lib" -ltorch_cpu -lc10 -o "$binary"
fi

# Seeds: small valid files of both formats, several tensor types.
"$python" - "$out/corpus" <<'PY'
import sys, numpy as np
from gguf import GGUFWriter, GGMLQuantizationType
from gguf.quants import quantize
from safetensors.numpy import save_file
out = sys.argv[1]
rng = np.random.default_rng(0)
w = GGUFWriter(f"{out}/seed.gguf", "llama")
w.add_uint32("llama.block_count", 1)
w.add_array("tokenizer.ggml.tokens", ["a", "b", "<s>"])
x = rng.standard_normal((2, 64)).astype(np.float32)
w.add_tensor("f32", x)
w.add_tensor("f16", x.astype(np.float16))
for name, t in (("q8", GGMLQuantizationType.Q8_0), ("q4", GGMLQuantizationType.Q4_0), ("q41", GGMLQuantizationType.Q4_1)):
    w.add_tensor(name, quantize(x, t), raw_dtype=t)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
save_file({"a": x, "b": np.arange(6, dtype=np.int64).reshape(2, 3)}, f"{out}/seed.safetensors", {"k": "v"})
# A small byte-level BPE and a SentencePiece-style one, trained by Hugging Face tokenizers, and a
# chat template in the style of SmolLM2's.
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
text = ["In the beginning God created the heaven and the earth. 1234 caf\u00e9"] * 20
bl = Tokenizer(models.BPE())
bl.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                            pre_tokenizers.ByteLevel(add_prefix_space=False)])
bl.decoder = decoders.ByteLevel()
bl.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_end|>"],
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
bl.save(f"{out}/seed-bytelevel.tokenizer.json")
sp = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
sp.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
sp.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                decoders.Fuse(), decoders.Strip(" ", 1, 0)])
sp.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>"]))
sp.save(f"{out}/seed-sentencepiece.tokenizer.json")
open(f"{out}/seed.jinja", "w").write(
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nHi<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] "
    "+ '\\n' + message['content'] | trim + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
PY

echo "[fuzz] running for ${seconds} s"
ASAN_OPTIONS=detect_odr_violation=0:detect_leaks=0 "$binary" -max_total_time="$seconds" \
  -max_len=65536 -timeout=10 -rss_limit_mb=4096 -artifact_prefix="$out/" -print_final_stats=1 \
  "$out/corpus" 2>&1 | tail -25
