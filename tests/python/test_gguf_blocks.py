"""qat's GGUF Q8_0 / Q4_0 block rules against gguf-py, llama.cpp's own Python package.

The same float32 tensors go through gguf.quants.quantize (the stored blocks)
and gguf.quants.dequantize, and through `conformance_tool gguf` (qat's
reference block encoder and the qat::fake_quant_gguf op). The stored bytes
must be identical and the fake-quantized values bit-identical to gguf-py's
dequantized ones: a model trained with the gguf presets exports with no loss.

usage: test_gguf_blocks.py PATH/TO/conformance_tool
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from conformance import report
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from safetensors.torch import load_file, save_file


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cases = {
        "normal": rng.standard_normal((64, 256)).astype(np.float32),
        "scaled_rows": (rng.standard_normal((16, 96)) *
                        np.logspace(-6, 4, 16)[:, None]).astype(np.float32),
        "odd_row_count": rng.standard_normal((7, 32)).astype(np.float32),
    }
    # Codes that land exactly on .5 before rounding: ties for roundf / trunc.
    d = np.float32(0.25)
    ties = (np.arange(-63, 64, 2, dtype=np.float32) / 2 * d)[None, :64]
    cases["ties"] = np.concatenate([ties, ties * np.float32(1.0 / 16)])[:, :64].copy()
    # Q4_0 clips the positive end of a block whose largest magnitude is negative.
    clip = rng.uniform(-1, 1, (4, 32)).astype(np.float32)
    clip[:, 0], clip[:, 1] = -3.0, 3.0
    cases["q4_clipping"] = clip
    special = np.zeros((6, 32), np.float32)
    special[1, :] = 1e-9                     # d underflows to a subnormal half
    special[2, ::2] = 1e-6
    special[3, 5] = -7.0                     # one value, the rest zero
    special[4, :] = rng.standard_normal(32).astype(np.float32) * 1e6  # half d overflows
    special[5, 3] = 2.0                      # equal magnitudes: the first one wins
    special[5, 9] = -2.0
    cases["special"] = special
    return cases


def main(tool: str) -> int:
    cases = inputs()
    failures, checks = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
        save_file({k: torch.from_numpy(v) for k, v in cases.items()}, src)
        subprocess.run([tool, "gguf", src, dst], check=True)
        ours = {k: v.numpy() for k, v in load_file(dst).items()}
    np.seterr(over="ignore", invalid="ignore")  # the overflowing-scale case, on purpose
    for name, x in cases.items():
        for qtype in (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0):
            tag = qtype.name.lower()
            blocks = quantize(x, qtype)
            reference = dequantize(blocks, qtype).reshape(x.shape)
            checks += 2
            if not np.array_equal(ours[f"{name}.{tag}"], blocks.reshape(-1)):
                bad = np.flatnonzero(ours[f"{name}.{tag}"] != blocks.reshape(-1))
                failures.append(f"{name} {tag}: {bad.size} stored bytes differ, first at {bad[:5]}")
            fake = ours[f"{name}.fq_{tag}"]
            same = (fake.view(np.uint32) == reference.view(np.uint32)) | \
                (np.isnan(fake) & np.isnan(reference))
            if not same.all():
                i = np.argwhere(~same)[0]
                failures.append(f"{name} {tag}: {int((~same).sum())} fake-quant values differ, "
                                f"first at {tuple(i)}: {fake[tuple(i)]!r} vs {reference[tuple(i)]!r}")
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
