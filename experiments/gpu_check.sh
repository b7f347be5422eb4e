#!/usr/bin/env bash
# One GPU session's checks: the Iris and MNIST main jobs at the paper's settings, then the test suite.
# Usage: bash experiments/gpu_check.sh OUT_DIR DATA_DIR   (DATA_DIR holds mnist/ IDX files)
# Logs and timings go to OUT_DIR; each part has its own time limit so one slow part cannot eat the rest.
set -uo pipefail
out=${1:?output folder}
data=${2:?data folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false  # tests start subprocesses that share the GPU
source "$(dirname "$0")/gpu_timed.sh"
timed iris 60 python3 -m dwf_jax.main --config=configs/iris_mlp.py --workdir="$out/work/iris" --noprogress
timed mnist 120 python3 -m dwf_jax.main --config=configs/mnist_mlp.py --config.data.dir="$data" --workdir="$out/work/mnist" --noprogress
for run in iris mnist; do cp "$out/work/$run/report.json" "$out/${run}_report.json"; done
rm -rf "$out/work"  # stage files need not travel back
timed pytest 380 python3 -m pytest -q -x -p no:cacheprovider --durations=15
