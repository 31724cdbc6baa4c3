"""qat's safetensors reader and writer against Hugging Face's safetensors.

A file written by the reference implementation goes through qat's reader and
writer (`conformance_tool roundtrip`) and is read back by the reference:
every tensor must come back bit for bit, with its dtype, shape and the
metadata. A malformed file must make the program fail with a message naming
the file.

usage: test_safetensors.py PATH/TO/conformance_tool
"""
import os
import subprocess
import sys
import tempfile

import torch
from conformance import report
from safetensors.torch import load_file, save_file


def main(tool: str) -> int:
    torch.manual_seed(0)
    base = torch.randn(7, 9) * 50
    tensors = {
        f"t.{dtype}".replace("torch.", ""): base.to(dtype)
        for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16,
                      torch.int64, torch.int32, torch.int16, torch.int8,
                      torch.uint8, torch.bool, torch.float8_e4m3fn,
                      torch.float8_e5m2)
    }
    tensors["model.layers.0.self_attn.q_proj.weight"] = torch.randn(16, 8)
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.empty(0, 3)
    metadata = {"format": "pt", "qat": "conformance"}
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "ref.safetensors"), os.path.join(tmp, "qat.safetensors")
        save_file(tensors, src, metadata=metadata)
        subprocess.run([tool, "roundtrip", src, dst], check=True)
        back = load_file(dst)
        for name, t in tensors.items():
            got = back.get(name)
            if got is None or got.dtype != t.dtype or got.shape != t.shape or \
                    not torch.equal(got.reshape(-1).view(torch.uint8), t.contiguous().reshape(-1).view(torch.uint8)):
                failures.append(f"{name}: {None if got is None else (got.dtype, tuple(got.shape))}")
        from safetensors import safe_open
        with safe_open(dst, framework="pt") as f:
            if f.metadata() != metadata:
                failures.append(f"metadata {f.metadata()} != {metadata}")
        bad = os.path.join(tmp, "bad.safetensors")
        with open(bad, "wb") as f:
            f.write((10**9).to_bytes(8, "little") + b"{}")
        result = subprocess.run([tool, "roundtrip", bad, dst], capture_output=True, text=True)
        if result.returncode == 0 or bad not in result.stderr:
            failures.append(f"malformed file: rc={result.returncode} stderr={result.stderr!r}")
    checks = len(tensors) + 2
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
