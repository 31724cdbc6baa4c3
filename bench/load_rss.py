"""Peak memory while qat loads a multi-GB Hugging Face checkpoint: the safetensors shards are
memory-mapped and each tensor goes from the mapping straight into its parameter, so what loading
adds to the process should stay near the float32 model's size (the target: at most 1.25x).

Builds (once, in WORK_DIR) a random Llama with TinyLlama-1.1B's shape, saved by transformers in
bf16 as 1 GB shards, and a 1-layer model of the same family as the baseline (LibTorch's own
resident memory). Runs `conformance_tool llama DIR TOKENS OUT` (load, one forward, a short
greedy generation) on each under /usr/bin/time -v and prints peak RSS against the checkpoint's
size and the float32 model's.

usage: load_rss.py PATH/TO/conformance_tool [WORK_DIR]
"""
import os
import re
import subprocess
import sys

CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
              num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
              tie_word_embeddings=False)


def build(folder, layers, hidden, intermediate):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    if os.path.exists(os.path.join(folder, "config.json")):
        return
    torch.manual_seed(0)
    config = LlamaConfig(**{**CONFIG, "num_hidden_layers": layers, "hidden_size": hidden,
                            "intermediate_size": intermediate})
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="1GB")


def parameters(folder):
    import json
    c = json.load(open(os.path.join(folder, "config.json")))
    h, i, v, n = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
    return n * per_layer + v * h * (1 if c["tie_word_embeddings"] else 2) + h


def peak_rss_mib(tool, folder, work):
    import torch
    from safetensors.torch import save_file
    tokens = os.path.join(work, "tokens.safetensors")
    save_file({"tokens": torch.arange(1, 17, dtype=torch.int64).reshape(1, 16)}, tokens)
    done = subprocess.run(["/usr/bin/time", "-v", tool, "llama", folder, tokens,
                           os.path.join(work, "out.safetensors")],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"conformance_tool llama failed: {done.stderr[-2000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return kb / 1024


def checkpoint_bytes(folder):
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
               if f.endswith(".safetensors"))


def main(tool, work="/tmp/qat-load-rss"):
    os.makedirs(work, exist_ok=True)
    big, small = os.path.join(work, "tinyllama-shape-bf16"), os.path.join(work, "baseline")
    print("building the checkpoints with transformers (once) ...", flush=True)
    build(big, CONFIG["num_hidden_layers"], CONFIG["hidden_size"], CONFIG["intermediate_size"])
    build(small, 1, 64, 128)
    baseline = peak_rss_mib(tool, small, work)
    peak = peak_rss_mib(tool, big, work)
    fp32_mib = parameters(big) * 4 / 2**20
    added = peak - baseline
    print(f"checkpoint: {checkpoint_bytes(big) / 2**20:.0f} MiB bf16 in "
          f"{sum(f.endswith('.safetensors') for f in os.listdir(big))} shards; "
          f"float32 model {fp32_mib:.0f} MiB")
    print(f"peak RSS {peak:.0f} MiB; baseline (1-layer model) {baseline:.0f} MiB; "
          f"loading added {added:.0f} MiB = {added / fp32_mib:.2f}x the float32 model "
          f"(target <= 1.25x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
