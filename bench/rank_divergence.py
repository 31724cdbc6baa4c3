"""Where 2 data-parallel ranks and 1 process part ways, step by step (docs/DISTRIBUTED.md).

    python bench/rank_divergence.py build/qat [--scale qmax|half_range] [--steps N] [KEY=VALUE ...]

Trains the digits recipe's float model once, then its QAT w4a4 stage from it twice, as 1 process
and as 2 Gloo ranks under torchrun, with a checkpoint after every step. For each step it prints
the worst relative difference over the parameters and buffers and the tensor it is in. At the
steps up to the first one past 1e-5 it recomputes the weights' codes of each step's forward as the
kernels do (x * (1 / scale), round half to even, clamp) in both runs and shows those that differ:
with torch.ao's half_range rule, rows' largest values sit on x / scale = 127.5 or 7.5 and one ulp
of the weight decides their code and whether they are clamped (and get a gradient).
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "digits.yaml")
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
COMMON = ["trainer.float.eval_every=0", "trainer.qat.eval_every=0", "+run.threads=1"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(qat, run_dir, overrides, ranks=1):
    args = [qat, "train", RECIPE, f"run.dir={run_dir}", *COMMON, *overrides]
    if ranks > 1:
        args = [TORCHRUN, "--no-python", f"--nproc-per-node={ranks}",
                f"--master-port={free_port()}", *args]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{run_dir}: {done.stderr[-2000:]}")


def state(path):
    return {k[len("model/"):]: v for k, v in load_file(path).items()
            if k.startswith("model/") and not k.endswith("observed_shape")}


def worst(a, b):
    best, where = 0.0, ""
    for k in a:
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        if x.size:
            r = float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12))
            if r > best:
                best, where = r, k
    return best, where


def codes(w, scale, qmin, qmax):
    """qat's fake_quant_affine per channel with zero point 0, as the kernels compute it:
    x * (1 / scale) in float32, rounded half to even; the code and whether it is in range
    (the clamp mask: the straight-through gradient passes only there)."""
    inv = (np.float32(1) / scale.astype(np.float32)).reshape(-1, 1)
    scaled = (w.astype(np.float32) * inv).astype(np.float32)
    code = np.rint(scaled)
    return scaled, code, (code >= qmin) & (code <= qmax)


def code_report(before, after, layers):
    """The codes of the forward of the step from `before` to `after` (pairs: 1 process, 2 ranks).
    That forward saw the weights of `before`, and the scale an observer computed from them (saved
    in `after`) or a learned scale (saved in `before`). Returns how many codes differ."""
    flipped = 0
    for name, (bits, learned) in layers.items():
        w1, w2 = (b[name + ".weight"] for b in before)
        s1, s2 = (s[name + ".weight_quantizer.scale"] for s in (before if learned else after))
        qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        (x1, c1, m1), (x2, c2, m2) = codes(w1, s1, qmin, qmax), codes(w2, s2, qmin, qmax)
        bitwise = int((w1.view(np.uint32) != w2.view(np.uint32)).sum())
        flipped += int((c1 != c2).sum())
        if not (c1 != c2).any():
            continue
        line = (f"  {name}.weight ({bits} bits): {bitwise} of {w1.size} elements differ in their last "
                f"bits; {int((c1 != c2).sum())} codes and {int((m1 != m2).sum())} clamp masks differ")
        for i in list(zip(*np.nonzero(c1 != c2)))[:3]:
            i = tuple(int(j) for j in i)
            line += (f"\n    [{i[0]}, {i[1]}]: x / scale = {x1[i]!r} vs {x2[i]!r} -> code {c1[i]:.0f} "
                     f"vs {c2[i]:.0f}" + (", clamped in one run" if m1[i] != m2[i] else ""))
        print(line)
    return flipped


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("qat")
    parser.add_argument("--scale", default="qmax", choices=["qmax", "half_range"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("overrides", nargs="*")
    a = parser.parse_intermixed_args()
    work = tempfile.mkdtemp(prefix="qat_divergence_")
    float_dir = os.path.join(work, "float")
    train(a.qat, float_dir, ["trainer.stages=[float]", "trainer.float.steps=40",
                             "trainer.checkpoint.every=0"])
    weights = os.path.join(float_dir, "checkpoints", "float", "final.safetensors")
    scale = [f"+quant.w4a4.rules.{r}.weight.symmetric_scale={a.scale}" for r in (0, 1)]
    qat = ["trainer.stages=[float,qat]", f"+trainer.float.load={weights}",
           "trainer.qat.schemes=[w4a4]", f"trainer.qat.steps={a.steps}",
           "trainer.qat.freeze_observers_at=10", "trainer.checkpoint.every=1",
           f"trainer.checkpoint.keep={a.steps + 1}", *scale, *a.overrides]
    runs = {}
    for ranks in (1, 2):
        runs[ranks] = os.path.join(work, f"ranks{ranks}")
        train(a.qat, runs[ranks], qat, ranks)
    folder = lambda r: os.path.join(runs[r], "checkpoints", "qat.w4a4")
    # recipes/quant/w4a4.yaml: fc0 and the head at 8 bits with observed scales, fc1 at 4 with
    # LSQ's learned ones.
    layers = {"fc0": (8, False), "fc1": (4, True), "head": (8, False)}
    previous, reported = None, False  # reported: a step past 1e-5 was seen
    flipped = 0
    print(f"symmetric scale rule: {a.scale} ({'amax / qmax' if a.scale == 'qmax' else 'amax / 127.5, 7.5'})")
    for step in range(1, a.steps + 1):
        name = f"step-{step:09d}.safetensors" if step < a.steps else "final.safetensors"
        one, two = state(os.path.join(folder(1), name)), state(os.path.join(folder(2), name))
        r, where = worst(one, two)
        print(f"step {step:3d}: worst relative difference {r:.2e} ({where})")
        if not reported and previous is not None:
            flipped += code_report(previous, (one, two), layers)  # this step's forward
        reported |= r > 1e-5
        previous = (one, two)
    print(f"final: worst relative difference {r:.2e} ({where}); weight codes that differed "
          f"{'before the first step past 1e-5' if reported else 'in all'}: {flipped}")
    print(f"runs in {work}")


if __name__ == "__main__":
    main()
