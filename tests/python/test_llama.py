"""qat's decoder against Hugging Face transformers, one case per architecture option.

transformers builds randomly initialised LlamaForCausalLM (grouped-query attention,
tied and untied embeddings, head_dim, rope_theta, Llama 3.1's llama3 rope scaling,
linear rope scaling, attention and MLP biases), MistralForCausalLM (a sliding window
longer than the context), Qwen2ForCausalLM (q/k/v biases) and Qwen3ForCausalLM
(per-head q/k norms) and saves them as checkpoint folders, in float32 and bfloat16,
in one file and sharded (model.safetensors.index.json), as real checkpoints ship.
`conformance_tool llama` loads each folder into qat's decoder and computes logits in
one forward and through the KV cache, and a greedy continuation: logits must be
within 1e-5 of transformers' (relative to their largest magnitude, both in float32;
a bf16 checkpoint is compared with transformers' model loaded from it as float32),
generations identical.

Then the loader's refusals: each bad checkpoint must fail with a one-line error
naming the file and the key or tensor, exit 1, and no stack trace.

usage: test_llama.py PATH/TO/conformance_tool
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from conformance import report
from safetensors.torch import load_file, save_file
from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config,
                          Qwen3Config)
from transformers.utils import logging

logging.disable_progress_bar()
logging.set_verbosity_error()

SMALL = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

CASES = {
    "llama_gqa_tied": (LlamaConfig, dict(SMALL, tie_word_embeddings=True)),
    "llama_mha_untied": (LlamaConfig, dict(SMALL, vocab_size=300, hidden_size=96,
                                           num_attention_heads=3, num_key_value_heads=3,
                                           num_hidden_layers=3, tie_word_embeddings=False,
                                           rope_theta=100000.0)),
    "llama_head_dim_32": (LlamaConfig, dict(SMALL, vocab_size=128, intermediate_size=128,
                                            num_hidden_layers=1, num_key_value_heads=1,
                                            head_dim=32, tie_word_embeddings=False,
                                            rms_norm_eps=1e-6)),
    # Llama 3.1 / 3.2: rope_type llama3 (original context shorter than the test's
    # positions, so all three frequency bands occur).
    "llama3_rope": (LlamaConfig, dict(SMALL, tie_word_embeddings=True, rope_theta=500000.0,
                                      max_position_embeddings=256,
                                      rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                    "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 64})),
    "llama_linear_rope": (LlamaConfig, dict(SMALL, tie_word_embeddings=False,
                                            rope_scaling={"rope_type": "linear",
                                                          "factor": 2.0})),
    "llama_biases": (LlamaConfig, dict(SMALL, attention_bias=True, mlp_bias=True,
                                       tie_word_embeddings=False)),
    "mistral": (MistralConfig, dict(SMALL, head_dim=16, sliding_window=64,
                                    tie_word_embeddings=False)),
    "qwen2": (Qwen2Config, dict(SMALL, tie_word_embeddings=True)),
    "qwen3": (Qwen3Config, dict(SMALL, head_dim=32, tie_word_embeddings=False)),
}

# (dtype of the saved checkpoint, shard size): every architecture in float32 whole,
# and in bfloat16 sharded in pieces of 100 kB.
STORAGE = [("float32", None), ("bfloat16", "100KB")]


def build(config_class, kwargs, dtype, shard, folder):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_class(**kwargs)).eval()
    # Larger weights than the 0.02 initialisation, so that attention, RoPE and
    # the biases and norms matter to the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
            elif "bias" in name:
                p.normal_(0.0, 0.5)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    model = model.to(getattr(torch, dtype))
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    # The reference: transformers' model as loaded from the folder, in float32.
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def run_tool(tool, *args):
    return subprocess.run([tool, *args], capture_output=True, text=True)


def conformance(tool, failures):
    checks = 0
    for name, (config_class, kwargs) in CASES.items():
        for dtype, shard in STORAGE:
            case = f"{name} {dtype}{' sharded' if shard else ''}"
            with tempfile.TemporaryDirectory() as tmp:
                reference = build(config_class, kwargs, dtype, shard, tmp)
                sharded = os.path.exists(os.path.join(tmp, "model.safetensors.index.json"))
                if bool(shard) != sharded:
                    failures.append(f"{case}: transformers did not shard as asked")
                tokens = torch.randint(0, reference.config.vocab_size, (2, 40))
                src, dst = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
                save_file({"tokens": tokens}, src)
                done = run_tool(tool, "llama", tmp, src, dst)
                checks += 1
                if done.returncode != 0:
                    failures.append(f"{case}: conformance_tool failed: {done.stderr.strip()}")
                    continue
                ours = load_file(dst)
            with torch.no_grad():
                want = reference(tokens).logits
                generated = reference.generate(tokens, max_new_tokens=8, do_sample=False,
                                               attention_mask=torch.ones_like(tokens))
            scale = want.abs().max().item()
            for what in ("logits", "cached_logits"):
                checks += 1
                got = ours[what]
                rel = (got - want).abs().max().item() / scale
                if got.shape != want.shape or rel > 1e-5:
                    failures.append(f"{case} {what}: relative difference {rel:.3g} > 1e-5")
                else:
                    print(f"{case} {what}: relative difference {rel:.2g}")
            checks += 1
            if not torch.equal(ours["generated"], generated):
                failures.append(f"{case} generated {ours['generated'].tolist()} != "
                                f"{generated.tolist()}")
    return checks


def refusals(tool, failures):
    """Each broken checkpoint: exit 1, one line naming the file and what is wrong."""
    checks = 0
    with tempfile.TemporaryDirectory() as tmp:
        good = os.path.join(tmp, "good")
        build(LlamaConfig, dict(SMALL, tie_word_embeddings=False), "float32", "100KB", good)
        tokens = os.path.join(tmp, "tokens.safetensors")
        save_file({"tokens": torch.zeros(1, 4, dtype=torch.long)}, tokens)
        index = "model.safetensors.index.json"
        shards = sorted(f for f in os.listdir(good) if f.endswith(".safetensors"))

        def variant(name, change):
            folder = os.path.join(tmp, name)
            shutil.copytree(good, folder)
            change(folder)
            return folder

        def edit_json(folder, file, change):
            path = os.path.join(folder, file)
            with open(path) as f:
                data = json.load(f)
            change(data)
            with open(path, "w") as f:
                json.dump(data, f)

        def truncate(folder):
            path = os.path.join(folder, shards[0])
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.truncate(size // 2)

        def corrupt_header(folder):
            with open(os.path.join(folder, shards[0]), "r+b") as f:
                f.seek(8)
                f.write(b"{\"bad\": ")

        def wrong_shape(folder):
            path = os.path.join(folder, shards[-1])
            tensors = load_file(path)
            name = sorted(tensors)[0]
            tensors[name] = torch.zeros(3, 3, dtype=tensors[name].dtype)
            save_file(tensors, path, metadata={"format": "pt"})
            return name

        def wrong_dtype(folder):
            path = os.path.join(folder, shards[-1])
            tensors = load_file(path)
            name = sorted(tensors)[0]
            tensors[name] = torch.zeros_like(tensors[name], dtype=torch.int8)
            save_file(tensors, path, metadata={"format": "pt"})

        cases = [
            ("missing config.json", lambda f: os.remove(os.path.join(f, "config.json")),
             "config.json: missing"),
            ("missing shard", lambda f: os.remove(os.path.join(f, shards[0])),
             f"names the missing shard"),
            ("no weights", lambda f: [os.remove(os.path.join(f, s)) for s in shards + [index]],
             "no model.safetensors or model.safetensors.index.json"),
            ("index not JSON", lambda f: open(os.path.join(f, index), "w").write("{"),
             "model.safetensors.index.json: not valid JSON"),
            ("truncated shard", truncate, "lie outside the"),
            ("corrupt shard header", corrupt_header, "header is not valid JSON"),
            ("tensor of the wrong shape", wrong_shape, "[3, 3]"),
            ("tensor of the wrong dtype", wrong_dtype, "of dtype I8"),
            ("unsupported architecture",
             lambda f: edit_json(f, "config.json", lambda c: c.update(architectures=["MixtralForCausalLM"])),
             "'architectures' names MixtralForCausalLM, which is not supported"),
            ("unsupported rope type",
             lambda f: edit_json(f, "config.json", lambda c: c.update(
                 rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0})),
             "'rope_parameters.rope_type' 'yarn' is not supported"),
            ("unsupported activation",
             lambda f: edit_json(f, "config.json", lambda c: c.update(hidden_act="gelu")),
             "'hidden_act' is 'gelu'"),
            ("missing key",
             lambda f: edit_json(f, "config.json", lambda c: c.pop("hidden_size")),
             "'hidden_size' is missing"),
        ]
        for name, change, expected in cases:
            folder = variant(name.replace(" ", "_"), change)
            done = run_tool(tool, "llama", folder, tokens, os.path.join(tmp, "out.safetensors"))
            checks += 1
            lines = done.stderr.strip().splitlines()
            if done.returncode != 1 or len(lines) != 1 or expected not in lines[0] \
                    or folder not in lines[0]:
                failures.append(f"refusal '{name}': exit {done.returncode}, stderr "
                                f"{done.stderr.strip()!r}, expected one line naming {folder!r} "
                                f"and {expected!r}")
            else:
                print(f"refusal '{name}': {lines[0]}")
    return checks


def main(tool: str) -> int:
    failures = []
    checks = conformance(tool, failures)
    checks += refusals(tool, failures)
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
