#!/usr/bin/env bash
# One GPU session's ViT checks: Table 5's ViT row on a reduced zoo, the transformer tests, then a longer zoo
# sized by the first run's measured zoo time so the whole script ends within BUDGET seconds.
# Usage: bash experiments/gpu_vit.sh OUT_DIR DATA_DIR [BUDGET]   (DATA_DIR holds cifar10_jpeg/cifar10_jpeg.tar.gz)
set -uo pipefail
out=${1:?output folder}
data=${2:?data folder}
budget=${3:-540}
models=${MODELS:-10}
first_epochs=${FIRST_EPOCHS:-5}
extra=${EXTRA_FLAGS:-}  # e.g. "--depth=1 --batch_size=16" for a dry run on a CPU
mkdir -p "$out"
export PYTHONUNBUFFERED=1
source "$(dirname "$0")/gpu_timed.sh"
vit() {  # vit EPOCHS LIMIT: the three alignment methods on one zoo of $models models
  rm -f experiments/results/table5_vit_gpu_e"$1".*  # a failed run must not pass off committed results as its own
  timed "vit_e$1" "$2" python3 experiments/table5_vit.py --data_dir="$data" --num_models=$models --epochs="$1" \
    --name="table5_vit_gpu_e$1" --workdirs=/tmp/vit_workdirs $extra
  cp experiments/results/table5_vit_gpu_e"$1".* "$out/" 2>/dev/null
}
vit $first_epochs 300
timed transformer_tests 150 python3 -m pytest -q -x -p no:cacheprovider ${TESTS:-tests/test_transformers.py}
# Epochs of the second zoo: what the time left allows at the first zoo's measured seconds per epoch.
epochs=$(python3 - "$out/table5_vit_gpu_e$first_epochs.json" "$((budget - SECONDS))" "$first_epochs" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
left, first = float(sys.argv[2]), int(sys.argv[3])
zoo = rows[0]["timings"]["zoo"] / first
rest = sum(sum(r["timings"].values()) - r["timings"]["zoo"] for r in rows)  # later runs copy the zoo's time
print(max(0, min(60, int((left - 1.3 * rest - 30) / zoo))))
EOF
)
echo "second zoo: ${epochs:-0} epochs" | tee -a "$out/timings.txt"
if [ "${epochs:-0}" -gt "$first_epochs" ]; then
  vit "$epochs" $((budget - SECONDS))
fi
