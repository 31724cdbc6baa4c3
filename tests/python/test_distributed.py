"""Data-parallel training on c10d (Gloo over loopback), checked against one process.

    python tests/python/test_distributed.py build/qat

Every run is the real `qat train` on the digits recipe, two ranks started by torchrun (or, for
the failure cases, by hand with torchrun's variables, so that no launcher kills the survivor for
us). What is checked:

  equivalence   2 ranks with half of each batch end with the weights, learned LSQ scales and
                observer state of 1 process with the whole batch, for the float stage and for
                QAT (moving-average observers reduced across ranks, LSQ weight scales), with
                gradient accumulation too, and on ATen's scalar kernels (other summation
                orders); both ranks' models are identical (their CRC-32 digests, which this
                script recomputes from rank 0's checkpoint). The tolerance holds on any CPU
                for the reason in docs/DISTRIBUTED.md ("Why 2 ranks equal 1 process")
  SLURM         scripts/launch_slurm.sh, srun standing in, gives the same model from SLURM's
                variables (rank, task count, the node list's first host)
  resume        a QAT stage halted by 2 ranks and resumed by 1 ends as the uninterrupted run
  sync BN       a ResNet with run.distributed.sync_bn over 2 ranks matches 1 process; without
                it, it does not (the check can tell)
  failures      a killed or hung (SIGSTOP) rank 1, then rank 0 (the store's host): the survivor exits
                within the timeout with an error naming the rank, and every checkpoint left
                behind still verifies; ranks started with different recipes refuse to train
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np
from safetensors.numpy import load_file

QAT = os.path.abspath(sys.argv[1])
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(ROOT, "recipes", "digits.yaml")
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
WORK = tempfile.mkdtemp(prefix="qat_distributed_")
# Short runs without evaluations in between; one ATen thread per rank (2 cores).
COMMON = ["trainer.float.eval_every=0", "trainer.qat.eval_every=0", "+run.threads=1",
          "trainer.checkpoint.keep=10"]
TOLERANCE = 1e-5  # relative, per tensor: float summation order, nothing more

failures = []


def check(condition, message):
    print(("ok   " if condition else "FAIL ") + message, flush=True)
    if not condition:
        failures.append(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(name, overrides, ranks=1, extra=(), env=None):
    """Runs `qat train` in WORK/name with 1 process, or `ranks` under torchrun."""
    run_dir = os.path.join(WORK, name)
    args = [QAT, "train", RECIPE, f"run.dir={run_dir}", *COMMON, *overrides, *extra]
    if ranks > 1:
        args = [TORCHRUN, "--no-python", f"--nproc-per-node={ranks}",
                f"--master-port={free_port()}", *args]
    start = time.time()
    done = subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, **(env or {})))
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:])
        raise SystemExit(f"{name}: qat train failed ({done.returncode})")
    print(f"     {name}: {ranks} rank(s), {time.time() - start:.1f} s", flush=True)
    return run_dir


def model_state(path):
    """The checkpoint's parameters and buffers, by name (observed_shape records the local
    batch's shape, which differs with the world size by design)."""
    return {k[len("model/"):]: v for k, v in load_file(path).items()
            if k.startswith("model/") and not k.endswith("observed_shape")}


def worst_difference(a, b):
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    worst, where = 0.0, ""
    for k in a:
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        if x.size == 0:
            continue
        r = float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12))
        if r > worst:
            worst, where = r, k
    return worst, where


def compare(label, path_a, path_b, tolerance=TOLERANCE):
    worst, where = worst_difference(model_state(path_a), model_state(path_b))
    check(worst <= tolerance, f"{label}: worst relative difference {worst:.2e} ({where}), "
                              f"tolerance {tolerance:.0e}")
    return worst


def final(run_dir, stage):
    return os.path.join(run_dir, "checkpoints", stage, "final.safetensors")


def digests(run_dir, stage):
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        j = json.loads(line)
        if j["stage"] == stage and "rank_digests" in j:
            return j["rank_digests"].split(",")
    return []


def crc_of(path):
    """qat's digest: CRC-32 of every parameter and buffer, raw bytes in name order."""
    tensors = {k[len("model/"):]: v for k, v in load_file(path).items() if k.startswith("model/")}
    crc = 0
    for name in sorted(tensors):
        crc = zlib.crc32(np.ascontiguousarray(tensors[name]).tobytes(), crc)
    return f"{crc:08x}"


def complete_checkpoints(folder):
    """The checkpoint files in `folder`: each is renamed into place once written, so a name
    without the writer's temporary suffix is a whole checkpoint."""
    return sorted(f for f in os.listdir(folder) if ".safetensors.tmp." not in f)


def verify_checkpoints(run_dir, stage):
    """Every checkpoint of the stage reads and verifies (qat eval checks the CRC). A writer
    killed mid-write may leave its temporary file, which is no checkpoint's name (and which
    the next save removes); nothing else may be there."""
    folder = os.path.join(run_dir, "checkpoints", stage)
    files = complete_checkpoints(folder)
    others = [f for f in files if not (f.startswith("step-") and f.endswith(".safetensors"))]
    check(len(files) >= 2 and not others,
          f"{stage}: only step checkpoints in {folder} ({files})")
    for f in files:
        done = subprocess.run(
            [QAT, "eval", RECIPE, "--checkpoint", os.path.join(folder, f), "--scheme", "w4a4",
             f"run.dir={run_dir}", "+run.threads=1"], capture_output=True, text=True)
        check(done.returncode == 0, f"{stage}/{f} verifies and evaluates"
              + ("" if done.returncode == 0 else ": " + done.stderr.strip()[-300:]))
    return files


# -- equivalence --------------------------------------------------------------------------------

FLOAT = ["trainer.stages=[float]", "trainer.float.steps=40", "trainer.checkpoint.every=0"]
one_float = train("float_1", FLOAT)
two_float = train("float_2", FLOAT, ranks=2)
compare("float stage, 2 ranks vs 1", final(one_float, "float"), final(two_float, "float"))
float_weights = final(one_float, "float")

# QAT from the same float model: moving-average activation observers (reduced across the ranks)
# until step 10, LSQ weight scales learned throughout, distillation from the float model.
QAT_STAGE = ["trainer.stages=[float,qat]", f"+trainer.float.load={float_weights}",
             "trainer.qat.schemes=[w4a4]", "trainer.qat.steps=20",
             "trainer.qat.freeze_observers_at=10", "trainer.checkpoint.every=10"]
one_qat = train("qat_1", QAT_STAGE)
two_qat = train("qat_2", QAT_STAGE, ranks=2)
compare("QAT w4a4 (observers, LSQ), 2 ranks vs 1", final(one_qat, "qat.w4a4"),
        final(two_qat, "qat.w4a4"))
rank_digests = digests(two_qat, "qat.w4a4")
check(len(rank_digests) == 2 and len(set(rank_digests)) == 1,
      f"both ranks end with the same model (digests {rank_digests})")
check(rank_digests[:1] == [crc_of(final(two_qat, "qat.w4a4"))],
      "rank 0's digest is that of the checkpoint it wrote")
before = model_state(os.path.join(one_qat, "checkpoints", "qat.w4a4", "step-000000010.safetensors"))
after = model_state(final(one_qat, "qat.w4a4"))
moved = {k: worst_difference({k: after[k]}, {k: before[k]})[0]
         for k in ("fc1.weight", "fc1.weight_quantizer.scale")}
check(min(moved.values()) > 10 * TOLERANCE,
      f"QAT's last 10 steps moved the weights and LSQ scales far beyond the tolerance ({moved})")

# The same with ATen's scalar CPU kernels: other summation orders, as another CPU's kernels have
# (with torch.ao's amax / 127.5 scales this case diverges on an AMD EPYC, 5e-3 in fc0.weight:
# bench/rank_divergence.py, docs/DISTRIBUTED.md).
SCALAR = {"ATEN_CPU_CAPABILITY": "default"}
compare("QAT w4a4 on ATen's scalar kernels, 2 ranks vs 1",
        final(train("scalar_1", QAT_STAGE, env=SCALAR), "qat.w4a4"),
        final(train("scalar_2", QAT_STAGE, ranks=2, env=SCALAR), "qat.w4a4"))

ACCUMULATE = QAT_STAGE + ["+trainer.qat.accumulate=2", "data.batch_size=32"]
compare("QAT with 2 micro-batches per step, 2 ranks vs 1",
        final(train("accumulate_1", ACCUMULATE), "qat.w4a4"),
        final(train("accumulate_2", ACCUMULATE, ranks=2), "qat.w4a4"))

# -- SLURM ---------------------------------------------------------------------------------------
# scripts/launch_slurm.sh as sbatch would run it, with a stand-in for srun that starts the tasks
# as srun does (SLURM_PROCID, SLURM_LOCALID per task); qat finds its rank and the rendezvous host
# (the node list's first) from SLURM's variables alone.
fake_bin = os.path.join(WORK, "fake_slurm_bin")
os.makedirs(fake_bin, exist_ok=True)
with open(os.path.join(fake_bin, "srun"), "w") as f:
    f.write("""#!/usr/bin/env bash
while [[ $1 == --* ]]; do shift; done   # srun's own options
pids=()
for ((task = 0; task < SLURM_NTASKS; task++)); do
  SLURM_PROCID=$task SLURM_LOCALID=$task "$@" & pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
""")
os.chmod(os.path.join(fake_bin, "srun"), 0o755)
slurm_dir = os.path.join(WORK, "slurm")
env = dict(os.environ, PATH=fake_bin + os.pathsep + os.environ["PATH"], SLURM_JOB_ID="4242",
           SLURM_NTASKS="2", SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="localhost",
           SLURM_SUBMIT_DIR=ROOT, QAT_BIN=QAT, MASTER_PORT=str(free_port()))
for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
    env.pop(variable, None)
done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "launch_slurm.sh"), RECIPE,
                       f"run.dir={slurm_dir}", *COMMON, *QAT_STAGE],
                      env=env, capture_output=True, text=True, timeout=600)
check(done.returncode == 0, "scripts/launch_slurm.sh runs 2 ranks from SLURM's variables"
      + ("" if done.returncode == 0 else ": " + done.stderr[-800:]))
if done.returncode == 0:
    check("2 ranks over gloo" in done.stdout, "they formed one Gloo group of 2")
    compare("QAT launched by SLURM vs 1 process", final(one_qat, "qat.w4a4"),
            final(slurm_dir, "qat.w4a4"))

# -- resume with another world size --------------------------------------------------------------

halted = train("resume", QAT_STAGE, ranks=2, extra=["--halt-at", "qat.w4a4:10"])
check(not os.path.exists(final(halted, "qat.w4a4")), "the 2-rank run halted at step 10")
train("resume", QAT_STAGE, extra=["--resume"])
compare("halted by 2 ranks at step 10, resumed by 1, vs uninterrupted", final(one_qat, "qat.w4a4"),
        final(halted, "qat.w4a4"))

# -- synchronous BN ------------------------------------------------------------------------------

BN = ["model=cnn", "trainer.stages=[float]", "trainer.float.steps=6", "trainer.float.schedule.warmup=2",
      "trainer.checkpoint.every=0"]
bn_one = final(train("bn_1", BN), "float")
synced = compare("ResNet with sync_bn, 2 ranks vs 1", bn_one,
                 final(train("bn_2", BN + ["+run.distributed.sync_bn=true"], ranks=2), "float"),
                 tolerance=1e-4)
local = worst_difference(model_state(bn_one),
                         model_state(final(train("bn_local", BN, ranks=2), "float")))[0]
check(local > 100 * max(synced, 1e-7),
      f"without sync_bn the ranks normalise locally and end elsewhere ({local:.2e})")

# -- failures ------------------------------------------------------------------------------------


def start_ranks(name, timeout_s):
    """Two ranks launched by hand (torchrun would kill the survivor itself), training until
    stopped; returns the processes once rank 0 has written its second checkpoint."""
    run_dir = os.path.join(WORK, name)
    port = free_port()
    args = [QAT, "train", RECIPE, f"run.dir={run_dir}", *COMMON, "trainer.stages=[float,qat]",
            f"+trainer.float.load={float_weights}", "trainer.qat.schemes=[w4a4]",
            "trainer.qat.steps=1000000", "trainer.checkpoint.every=20",
            f"+run.distributed.timeout_s={timeout_s}"]
    ranks = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        ranks.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    folder = os.path.join(run_dir, "checkpoints", "qat.w4a4")
    deadline = time.time() + 120
    while time.time() < deadline:
        # Complete checkpoints only: a writer's temporary file also starts with "step-", and
        # counting it let the test stop rank 0 half-way through its second checkpoint.
        if os.path.isdir(folder) and len(complete_checkpoints(folder)) >= 2:
            return run_dir, ranks
        if any(p.poll() is not None for p in ranks):
            break
        time.sleep(0.2)
    for p in ranks:
        p.kill()
    raise SystemExit(f"{name}: the ranks did not reach their second checkpoint: "
                     + " | ".join(p.communicate()[1][-500:] for p in ranks))


def survivor_ends(label, survivor, limit_s, must_name):
    start = time.time()
    try:
        _, err = survivor.communicate(timeout=limit_s + 30)
    except subprocess.TimeoutExpired:
        survivor.kill()
        check(False, f"{label}: the survivor is still running {limit_s + 30} s later")
        return
    took = time.time() - start
    print("     survivor's error: " + err.strip().splitlines()[-1][:400])
    check(survivor.returncode == 1, f"{label}: the survivor exits with 1 "
                                    f"(got {survivor.returncode})")
    check(took <= limit_s, f"{label}: within {limit_s} s (took {took:.1f} s)")
    names = must_name if isinstance(must_name, tuple) else (must_name,)
    check(any(n in err for n in names), f"{label}: its error says '{' or '.join(names)}'")


run_dir, (rank0, rank1) = start_ranks("killed", timeout_s=60)
rank1.send_signal(signal.SIGKILL)
rank1.wait()
survivor_ends("rank 1 killed", rank0, 10, "rank 1 did not answer")
verify_checkpoints(run_dir, "qat.w4a4")

run_dir, (rank0, rank1) = start_ranks("hung", timeout_s=5)
rank1.send_signal(signal.SIGSTOP)
survivor_ends("rank 1 hung (SIGSTOP), timeout 5 s", rank0, 5 + 4 + 6, "rank 1 did not answer")
rank1.kill()
rank1.wait()
verify_checkpoints(run_dir, "qat.w4a4")

run_dir, (rank0, rank1) = start_ranks("killed_0", timeout_s=60)
rank0.send_signal(signal.SIGKILL)
rank0.wait()
survivor_ends("rank 0 killed", rank1, 15, ("rank 0, which hosts the store", "rank 0 did not answer"))
verify_checkpoints(run_dir, "qat.w4a4")

run_dir, (rank0, rank1) = start_ranks("hung_0", timeout_s=5)
rank0.send_signal(signal.SIGSTOP)
survivor_ends("rank 0 hung (SIGSTOP), timeout 5 s", rank1, 5 + 4 + 6, ("rank 0, which hosts the store", "rank 0 did not answer"))
rank0.kill()
rank0.wait()
verify_checkpoints(run_dir, "qat.w4a4")

# Ranks started with different overrides: both refuse before training.
port = free_port()
mismatched = []
for rank, steps in enumerate((20, 21)):
    env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    mismatched.append(subprocess.Popen(
        [QAT, "train", RECIPE, f"run.dir={os.path.join(WORK, 'mismatch')}", *COMMON, *QAT_STAGE,
         f"trainer.qat.steps={steps}"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True))
errors = [p.communicate(timeout=120)[1] for p in mismatched]
check(all(p.returncode == 1 for p in mismatched)
      and all("started with different recipes" in e for e in errors),
      "ranks with different recipes both stop, saying so: " + errors[0].strip()[-200:])
check(not os.path.exists(os.path.join(WORK, "mismatch", "checkpoints")),
      "and write nothing")

if failures:
    raise SystemExit(f"{len(failures)} check(s) failed; runs kept in {WORK}")
print(f"all distributed checks passed (runs in {WORK})")
