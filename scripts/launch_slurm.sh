#!/usr/bin/env bash
# Data-parallel `qat train` on a SLURM cluster: one task per GPU, every node's tasks started by
# srun; qat reads SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and rendezvouses at the first host
# of SLURM_JOB_NODELIST (trainers/distributed.h). Backend: NCCL on GPUs, Gloo on CPUs.
#
#   sbatch --nodes=4 scripts/launch_slurm.sh recipes/smollm2_w8a8.yaml trainer.qat.steps=2000
#   sbatch --nodes=2 --gpus-per-node=0 --ntasks-per-node=2 scripts/launch_slurm.sh recipes/digits.yaml
#   sbatch ... scripts/launch_slurm.sh RECIPE ... --resume     # continue after a time limit
#
# run.dir must be on a file system every node sees: rank 0 writes the checkpoints there and
# every rank reads them on --resume (with any world size). Build qat first (scripts/build.sh) on
# that file system, or point QAT_BIN at it. MASTER_PORT overrides the port (default: 29500 plus
# the job id modulo 1000, so that jobs sharing a node do not collide).
#
#SBATCH --job-name=qat-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: sbatch [options] scripts/launch_slurm.sh RECIPE [KEY=VALUE ...] [--resume]" >&2
  exit 2
fi
if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  echo "launch_slurm.sh: not inside a SLURM job; submit it with sbatch (or run it under salloc)" >&2
  exit 2
fi

root=${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
qat=${QAT_BIN:-$root/build/qat}
if [[ ! -x "$qat" ]]; then
  echo "launch_slurm.sh: $qat is not built; run scripts/build.sh first (or set QAT_BIN)" >&2
  exit 2
fi

export MASTER_PORT=${MASTER_PORT:-$((29500 + SLURM_JOB_ID % 1000))}
# One ATen thread pool per task, sized to the CPUs SLURM gave it.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
# NCCL reports a hung or failed peer instead of waiting for ever (the recipe's
# run.distributed.timeout_s bounds each collective).
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}

echo "qat: job $SLURM_JOB_ID, $SLURM_NTASKS tasks on $SLURM_JOB_NUM_NODES node(s) ($SLURM_JOB_NODELIST), port $MASTER_PORT"
# --kill-on-bad-exit: when one rank fails, srun ends the others (they also end by themselves
# within the recipe's timeout, naming the rank that stopped answering).
exec srun --kill-on-bad-exit=1 --cpu-bind=cores "$qat" train "$@"
