#!/usr/bin/env bash
# One GPU window's paper-scale ResNet-20 rows (experiments/gpu_paper_scale.py).
# Usage: bash experiments/gpu_paper_scale.sh OUT_DIR DATA_DIR [BUDGET]   (DATA_DIR holds cifar10_jpeg/cifar10_jpeg.tar.gz)
# Rerunning the same command resumes every finished stage (keep WORKDIRS on the same machine).
# CPU dry run at tiny sizes (what tests/tarfiles.write_tiny_cifar10 writes as DATA_DIR):
#   EXTRA_FLAGS="--num_models=3 --epochs=1 --flow_iterations=40 --num_samples=3 --probe_iterations=20 \
#     --resnet18_samples=2 --overrides=zoo.batch_size=16,bn.num_batches=2,bn.batch_size=16,flow.hidden=16" \
#   bash experiments/gpu_paper_scale.sh /tmp/dry /tmp/tiny_cifar 600
set -uo pipefail
out=${1:?output folder}
data=${2:?data folder}
budget=${3:-540}
extra=${EXTRA_FLAGS:-}
workdirs=${WORKDIRS:-/tmp/gpu_paper_scale}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
source "$(dirname "$0")/gpu_timed.sh"
timed paper_scale "$budget" python3 experiments/gpu_paper_scale.py --data_dir="$data" --budget=$((budget - 20)) \
  --workdirs="$workdirs" --name=gpu_paper_scale $extra
cp experiments/results/gpu_paper_scale.* "$out/" 2>/dev/null
