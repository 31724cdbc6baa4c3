"""qat's GGUF block rules (Q8_0, Q4_0, Q5_0, Q5_1 and the K-quants Q4_K, Q5_K, Q6_K) against
llama.cpp itself and gguf-py, its own Python package.

The same float32 tensors go through `conformance_tool gguf` (qat's reference block encoder and
the qat::fake_quant_gguf op) and through
- ggml_quantize_chunk of the libggml-base that llama-cpp-python installs (llama.cpp's own
  quantizer, the one llama-quantize calls; without an importance matrix it runs
  quantize_row_*_ref): the stored bytes must be identical;
- gguf.quants.dequantize of those bytes: the fake-quantized values must be bit-identical, so a
  model trained with the gguf presets exports with no loss;
- gguf.quants.quantize where gguf-py has it (not for the K-quants): identical bytes too.

usage: test_gguf_blocks.py PATH/TO/conformance_tool
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from conformance import ggml, ggml_quantize, report
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from safetensors.torch import load_file, save_file

TYPES = ["q8_0", "q4_0", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"]
BLOCK = {"q4_k": 256, "q5_k": 256, "q6_k": 256}


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cases = {
        "normal": rng.standard_normal((64, 256)).astype(np.float32),
        "scaled_rows": (rng.standard_normal((16, 96)) *
                        np.logspace(-6, 4, 16)[:, None]).astype(np.float32),
        "odd_row_count": rng.standard_normal((7, 32)).astype(np.float32),
        # K-quant super-blocks: sub-blocks of very different scales, weights' heavy tails,
        # one-signed blocks (the mins), and rows scaled from subnormal to huge halves.
        "mixed_sub_blocks": (rng.standard_normal((32, 512)) *
                             np.repeat(np.logspace(-3, 1, 16), 32)[None, :]).astype(np.float32),
        "student_t": rng.standard_t(3, (32, 256)).astype(np.float32),
        "positive": np.abs(rng.standard_normal((8, 256))).astype(np.float32) + 0.5,
        "negative": -np.abs(rng.standard_normal((8, 256))).astype(np.float32) - 0.5,
        "row_scales": (rng.standard_normal((24, 256)) *
                       np.logspace(-9, 4, 24)[:, None]).astype(np.float32),
    }
    # Codes that land exactly on .5 before rounding: ties for roundf / trunc / nearest_int.
    d = np.float32(0.25)
    ties = (np.arange(-63, 64, 2, dtype=np.float32) / 2 * d)[None, :64]
    cases["ties"] = np.concatenate([ties, ties * np.float32(1.0 / 16)])[:, :64].copy()
    grid = np.tile(np.arange(256, dtype=np.float32) % 32 / 2, (4, 1))
    grid[1] -= 7.75
    grid[2] *= -1
    grid[3] = np.round(grid[3]) + 0.5
    cases["ties_256"] = grid
    # Q4_0 / Q5_0 clip the positive end of a block whose largest magnitude is negative.
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
    k_special = np.zeros((6, 256), np.float32)
    k_special[1, :] = 0.75                    # constant super-block
    k_special[2, 40:72] = 3.0                 # zero sub-blocks beside a constant one
    k_special[3, ::17] = -5.0                 # sparse
    k_special[4] = rng.standard_normal(256).astype(np.float32) * 1e-7
    k_special[5] = rng.standard_normal(256).astype(np.float32) * 3e4
    cases["k_special"] = k_special
    return cases


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


def main(tool: str) -> int:
    cases = inputs()
    lib = ggml()
    failures, checks = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
        save_file({k: torch.from_numpy(v) for k, v in cases.items()}, src)
        subprocess.run([tool, "gguf", src, dst], check=True)
        ours = {k: v.numpy() for k, v in load_file(dst).items()}
    np.seterr(over="ignore", invalid="ignore")  # the overflowing-scale case, on purpose
    for name, x in cases.items():
        for tag in TYPES:
            if x.shape[-1] % BLOCK.get(tag, 32):
                continue
            qtype = GGMLQuantizationType[tag.upper()]
            stored = ours[f"{name}.{tag}"]
            references = {"llama.cpp": ggml_quantize(lib, x, qtype)}
            if tag not in BLOCK:
                references["gguf-py"] = quantize(x, qtype).reshape(-1)
            for who, blocks in references.items():
                checks += 1
                if not np.array_equal(stored, blocks):
                    bad = np.flatnonzero(stored != blocks)
                    failures.append(f"{name} {tag}: {bad.size} stored bytes differ from "
                                    f"{who}'s, first at {bad[:5]}")
            reference = dequantize(stored, qtype).reshape(x.shape)
            fake = ours[f"{name}.fq_{tag}"]
            checks += 1
            same = same_bits(fake, reference)
            if not same.all():
                i = np.argwhere(~same)[0]
                failures.append(f"{name} {tag}: {int((~same).sum())} fake-quant values differ "
                                f"from gguf-py's dequantized bytes, first at {tuple(i)}: "
                                f"{fake[tuple(i)]!r} vs {reference[tuple(i)]!r}")
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
