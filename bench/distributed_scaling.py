"""Samples/s of 1 process against 2 data-parallel ranks (torchrun, Gloo), and the time in c10d.

    python bench/distributed_scaling.py build/qat [--steps-scale 1.0]

Runs the real `qat train` on the digits (MLP) and quickstart (ResNet on Fashion-MNIST) recipes:
the float stage, and a QAT stage (w4a4: LSQ weight scales, moving-average activation observers
reduced across the ranks), each for a fixed number of steps with evaluation and checkpoints
off; and the KJV recipe's Llama-style decoder at W8A8 (per-token dynamic activations: no
observer traffic), distilled from the float model. The configurations share the machine's cores: 1 process with 1 thread (the baseline),
1 process with as many threads as ranks, and N ranks with 1 thread each. Throughput comes from
the `elapsed_s` that metrics.jsonl logs per step (the first steps are left out as warm-up);
`communication_s` is the time in collectives (blocking calls, plus every gradient bucket's
all-reduce from launch to completion, which overlaps backward). Prints a Markdown table.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
WARMUP = 5

CASES = [
    # name, recipe, overrides, steps
    ("digits MLP, float", "digits.yaml", ["trainer.stages=[float]"], 400),
    ("digits MLP, QAT w4a4", "digits.yaml",
     ["trainer.stages=[float,qat]", "trainer.float.steps=50", "trainer.qat.schemes=[w4a4]",
      "trainer.qat.freeze_observers_at=-1"], 400),
    ("Fashion-MNIST ResNet, float", "quickstart.yaml", ["trainer.stages=[float]"], 60),
    ("KJV Llama decoder (0.4M), QAT W8A8", "kjv.yaml",
     ["trainer.stages=[float,qat]", "trainer.float.steps=25", "trainer.qat.schemes=[w8a8]"],
     100),
    ("Fashion-MNIST ResNet, QAT w4a4", "quickstart.yaml",
     ["trainer.stages=[float,qat]", "trainer.float.steps=20", "trainer.qat.schemes=[w4a4]",
      "trainer.qat.freeze_observers_at=-1", "trainer.qat.freeze_bn_at=-1",
      "trainer.qat.distill.kl=0"], 60),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(qat, recipe, overrides, stage, steps, ranks, threads, work):
    run_dir = tempfile.mkdtemp(dir=work)
    key = "trainer.float.steps" if stage == "float" else "trainer.qat.steps"
    args = [qat, "train", os.path.join(ROOT, "recipes", recipe), f"run.dir={run_dir}",
            "run.device=cpu", f"+run.threads={threads}", *overrides, f"{key}={steps}",
            "trainer.float.eval_every=0", "trainer.qat.eval_every=0",
            "trainer.checkpoint.every=0", "trainer.float.schedule.warmup=2",
            "trainer.log_every=100000"]
    if ranks > 1:
        args = [TORCHRUN, "--no-python", f"--nproc-per-node={ranks}",
                f"--master-port={free_port()}", *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run(args, check=True, capture_output=True, env=env)
    lines = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    lines = [l for l in lines if l["stage"].startswith(stage) and l["step"] > 0
             and "elapsed_s" in l]
    first, last = lines[WARMUP - 1], lines[-1]
    seconds = last["elapsed_s"] - first["elapsed_s"]
    communication = last.get("communication_s", 0.0) - first.get("communication_s", 0.0)
    return (last["step"] - first["step"]) / seconds, communication / seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("qat")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps-scale", type=float, default=1.0)
    a = parser.parse_args()
    qat = os.path.abspath(a.qat)
    work = tempfile.mkdtemp(prefix="qat_scaling_")
    n = a.ranks
    print(f"| case | global batch | 1 process, 1 thread | 1 process, {n} threads "
          f"| {n} ranks x 1 thread | speed-up vs 1 thread | time in c10d |")
    print("|---|---|---|---|---|---|---|")
    for name, recipe, overrides, steps in CASES:
        steps = max(WARMUP + 5, int(steps * a.steps_scale))
        stage = "qat" if "trainer.stages=[float,qat]" in overrides else "float"
        batch = {"digits.yaml": 64, "kjv.yaml": 32}.get(recipe, 128)
        base, _ = run(qat, recipe, overrides, stage, steps, 1, 1, work)
        threaded, _ = run(qat, recipe, overrides, stage, steps, 1, n, work)
        parallel, share = run(qat, recipe, overrides, stage, steps, n, 1, work)
        print(f"| {name} | {batch} | {base * batch:.0f} samples/s | {threaded * batch:.0f} "
              f"| {parallel * batch:.0f} | {parallel / base:.2f}x | {100 * share:.0f}% |",
              flush=True)


if __name__ == "__main__":
    main()
