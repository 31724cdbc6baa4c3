"""The `qat` command end to end, through the real binary, on the digits recipe.

Checks what a user sees and keeps: the table and exit codes, the run
directory (config.yaml equal to --print-config, metrics.jsonl, summary.json,
PNG plots that a PNG decoder accepts, checkpoints, the export that Hugging
Face's safetensors reads), `qat eval` reproducing the QAT accuracy from its
checkpoint, the ONNX export that onnx's checker and ONNX Runtime accept,
halting and --resume reproducing the uninterrupted run, and usage
errors (exit 2) and recipe errors (exit 1) with their messages.

usage: test_cli.py PATH/TO/qat RECIPES_DIR
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import onnx
import onnxruntime as ort
from conformance import report
from safetensors import safe_open


def run(qat: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([qat, *args], capture_output=True, text=True, timeout=600)


def png_size(path: str) -> tuple[int, int]:
    """Decodes the chunk structure, CRCs and the zlib stream; returns (w, h)."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "PNG signature"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"CRC of {kind!r}"
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
            assert body[8:10] == b"\x08\x02", "8-bit RGB"
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width), "pixel data size"
    return width, height


def main(qat: str, recipes: str) -> int:
    checks, failures = 0, []

    def check(ok: bool, what: str) -> None:
        nonlocal checks
        checks += 1
        if not ok:
            failures.append(what)

    digits = os.path.join(recipes, "digits.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "run")
        trained = run(qat, "train", digits, f"run.dir={run_dir}")
        check(trained.returncode == 0, f"qat train exit 0 (got {trained.returncode}: {trained.stderr[-2000:]})")
        for row in ("| float |", "| PTQ int8 |", "| PTQ w4a4 |", "| QAT int8 |", "| QAT w4a4 |"):
            check(row in trained.stdout, f"table row {row!r} printed")
        summary = json.load(open(os.path.join(run_dir, "summary.json")))
        names = [r["name"] for r in summary]
        check(names == ["float", "PTQ int8", "PTQ w4a4", "QAT int8", "QAT w4a4"], f"summary rows {names}")
        accuracy = {r["name"]: r["test"]["accuracy"] for r in summary}
        check(accuracy["float"] > 85, f"float test accuracy {accuracy['float']:.2f}% > 85%")
        check(accuracy["QAT w4a4"] > accuracy["float"] - 5,
              f"QAT w4a4 {accuracy['QAT w4a4']:.2f}% within 5 points of float")

        printed = run(qat, "train", digits, f"run.dir={run_dir}", "--print-config")
        saved = open(os.path.join(run_dir, "config.yaml")).read()
        check(printed.returncode == 0 and printed.stdout.strip() == saved.strip(),
              "config.yaml equals --print-config")

        steps = {}
        for line in open(os.path.join(run_dir, "metrics.jsonl")):
            entry = json.loads(line)
            if "split" not in entry:
                steps.setdefault(entry["stage"], []).append(entry["step"])
        check(steps.get("float") == list(range(1, 151)), "metrics: float steps 1..150, one line each")
        check(steps.get("qat.w4a4") == list(range(1, 101)), "metrics: qat.w4a4 steps 1..100")
        for plot in ("loss.png", "accuracy.png"):
            try:
                check(png_size(os.path.join(run_dir, plot)) == (900, 540), f"{plot} is 900x540")
            except (AssertionError, OSError, zlib.error) as e:
                check(False, f"{plot} decodes: {e}")

        final = os.path.join(run_dir, "checkpoints", "qat.w4a4", "final.safetensors")
        evaluated = run(qat, "eval", digits, f"run.dir={run_dir}", "--checkpoint", final, "--scheme", "w4a4")
        want = f"accuracy {accuracy['QAT w4a4']:.4f}"
        check(evaluated.returncode == 0 and f"w4a4 test: {want}" in evaluated.stdout.replace("  ", " "),
              f"qat eval reproduces the QAT test {want}: {evaluated.stdout} {evaluated.stderr}")
        exported = os.path.join(tmp, "w4a4.safetensors")
        out = run(qat, "export", digits, "--checkpoint", final, "--scheme", "w4a4", "--out", exported)
        check(out.returncode == 0, f"qat export exit 0: {out.stderr}")
        with safe_open(exported, "pt") as f:
            keys = set(f.keys())
        check(any(k.endswith("weight") or "codes" in k for k in keys) and len(keys) > 3,
              f"export readable by safetensors: {sorted(keys)[:6]}")
        exported_onnx = os.path.join(tmp, "w4a4.onnx")
        out = run(qat, "export", digits, "--checkpoint", final, "--scheme", "w4a4", "--out", exported_onnx,
                  "--format", "onnx")
        check(out.returncode == 0 and "theoretical" in out.stdout,
              f"qat export --format onnx prints the sizes: {out.stdout} {out.stderr}")
        try:
            model = onnx.load(exported_onnx)
            onnx.checker.check_model(model, full_check=True)
            logits = ort.InferenceSession(exported_onnx, providers=["CPUExecutionProvider"]).run(
                ["logits"], {"images": np.zeros((3, 1, 8, 8), np.float32)})[0]
            check(logits.shape == (3, 10) and np.isfinite(logits).all(),
                  f"ONNX Runtime runs the exported w4a4 model: {logits.shape}")
        except Exception as e:  # the checker's and the runtime's errors alike
            check(False, f"exported ONNX model: {e}")
        out = run(qat, "export", digits, "--checkpoint", final, "--scheme", "w4a4", "--out",
                  os.path.join(tmp, "w4a4.gguf"), "--format", "gguf")
        check(out.returncode == 1 and "Llama-style decoder" in out.stderr
              and not os.path.exists(os.path.join(tmp, "w4a4.gguf")),
              f"qat export --format gguf of an MLP: exit 1 with the reason, no file: {out.stderr}")
        ct_dir = os.path.join(tmp, "w4a4-ct")
        out = run(qat, "export", digits, "--checkpoint", final, "--scheme", "w4a4", "--out", ct_dir,
                  "--format", "compressed-tensors")
        check(out.returncode == 1 and "Llama-style decoder" in out.stderr and not os.path.exists(ct_dir),
              f"qat export --format compressed-tensors of an MLP: exit 1 with the reason, "
              f"nothing written: {out.stderr}")
        info = run(qat, "info", digits, "--scheme", "w4a4")
        check(info.returncode == 0 and all(n in info.stdout for n in ("fc0", "fc1", "head", "int4")),
              f"qat info lists the layers and their specs: {info.stdout}")

        # Halt mid-QAT, resume: the same table as the uninterrupted run.
        halted_dir = os.path.join(tmp, "halted")
        halted = run(qat, "train", digits, f"run.dir={halted_dir}", "--halt-at", "qat.w4a4:40")
        check(halted.returncode == 0 and "halted after step 40" in halted.stdout, "--halt-at stops at 40")
        again = run(qat, "train", digits, f"run.dir={halted_dir}")
        check(again.returncode == 1 and "already holds checkpoints: pass --resume" in again.stderr,
              f"an existing run is not overwritten: {again.stderr}")
        resumed = run(qat, "train", digits, f"run.dir={halted_dir}", "--resume")
        check(resumed.returncode == 0, f"--resume exit 0: {resumed.stderr[-1000:]}")
        resumed_summary = json.load(open(os.path.join(halted_dir, "summary.json")))
        check([r["test"] for r in resumed_summary] == [r["test"] for r in summary],
              "the resumed run's results equal the uninterrupted run's")

    # Usage errors: exit 2. Recipe errors: exit 1 with the place.
    for args in ([], ["frobnicate"], ["train"], ["train", "no/such.yaml"],
                 ["train", digits, "--bogus"], ["train", digits, "--halt-at", "float"],
                 ["export", digits, "--checkpoint", digits]):
        result = run(qat, *args)
        check(result.returncode == 2, f"qat {' '.join(args)}: exit 2 (got {result.returncode})")
    check(run(qat, "train", "--help").returncode == 0, "--help exits 0")
    bad = run(qat, "train", digits, "trainer.float.stepz=3")
    check(bad.returncode == 1 and bad.stderr.startswith(
        f"error: {digits}: override 'trainer.float.stepz=3': ") and "did you mean 'trainer.float.steps'" in bad.stderr,
        f"unknown override key: {bad.stderr}")
    typed = run(qat, "train", digits, "trainer.float.steps=many")
    check(typed.returncode == 1 and "trainer.float.steps" in typed.stderr and "int" in typed.stderr,
          f"wrong override type: {typed.stderr}")
    # GGUF schemes the pinned llama.cpp cannot serve are refused by name, before any work.
    kquants = os.path.join(recipes, "smollm2_q4_k_m.yaml")
    for override, message in (
            ("quant.q4_k_m.gguf_mix=q4_k_s",
             "quant.q4_k_m.gguf_mix: unknown llama.cpp type mix 'q4_k_s' (did you mean 'q4_k_m'?)"),
            ("+quant.q4_k_m.rules=[{match: '*', weight: {gguf: q3_k}}]",
             "quant.q4_k_m.rules.0.weight.gguf"),
    ):
        refused = run(qat, "train", kquants, override, "--check")
        check(refused.returncode == 1 and message in refused.stderr
              and len(refused.stderr.strip().splitlines()) == 1,
              f"{override}: one line naming the key: {refused.stderr}")
    # A GGUF mix on a model it cannot type (the image classifier) names the key.
    mlp = run(qat, "train", digits, "+quant.mix.gguf_mix=q4_k_m", "trainer.ptq.schemes=[mix]",
              "--check")
    check(mlp.returncode == 1 and "quant.mix.gguf_mix" in mlp.stderr
          and "Llama-style decoder" in mlp.stderr, f"gguf_mix on an MLP: {mlp.stderr}")
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
