#!/usr/bin/env bash
# The main job on a fresh machine: sets everything up, builds the `qat` command and runs the
# quickstart recipe (a small ResNet on Fashion-MNIST: float training, PTQ at int8 and 4 bits,
# QAT at both, the table, plots, export). About 6 minutes on 2 CPU cores after set-up; uses the
# GPU when there is one.
#
#   scripts/quickstart.sh [KEY=VALUE ...]   # recipe overrides, e.g. trainer.float.steps=600
#
# The run lands in runs/quickstart/ (QAT_RUNS=DIR moves it); an earlier run there is continued
# with --resume, so an interrupted quickstart picks up where it stopped.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/build.sh" qat
cd "$root"
resume=()
[[ -d ${QAT_RUNS:-runs}/quickstart/checkpoints ]] && resume=(--resume)
exec "${QAT_BUILD_DIR:-$root/build}/qat" train recipes/quickstart.yaml "${resume[@]}" "$@"
