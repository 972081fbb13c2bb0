#!/usr/bin/env bash
# One prepared device check for a session that is lent a GPU (about 16 minutes on an H100/H200: run the
# recipe loop alone, SELFSUP_SKIP_SPEED=1, when the session has less):
# the figures BENCHMARKS.md still lacks on a GPU, written into $OUT (the device tool brings that
# folder back) and into BENCHMARKS.md / benchmarks/results of the device's copy.
#   usage (device tool): cp ../shared/data/cifar10.npz data/ && carry ["data"], then
#     bash benchmarks/gpu_session.sh            # the python3 there has torch, timm, sklearn...
# Each step is bounded with `timeout`, so one slow step cannot eat the whole budget.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. OUT="${OUT:-/tmp/selfsup-gpu}"
mkdir -p "$OUT"
DATA="${SELFSUP_DATA:-data}"
log() { echo "== $*" | tee -a "$OUT/session.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

if [ -z "${SELFSUP_SKIP_SPEED:-}" ]; then
  log "augmentation: batched on the GPU vs the per-sample DataLoader (2 min)"
  timeout 150 python3 benchmarks/augment.py --device cuda --data-dir "$DATA" --seconds 4 2>&1 | tee "$OUT/augment.txt"

  log "training throughput, ResNet-18, batch 512, with the precision x layout grid and torch.compile (2-3 min)"
  timeout 200 python3 benchmarks/throughput.py --device cuda --backbone resnet18 --batch-size 512 --data-dir "$DATA" --precision-grid --compile --write 2>&1 | tee "$OUT/throughput.txt"
fi

# Every bundled CIFAR-10 recipe (selfsup/configs/<method>_cifar10.yaml, docs/recipes.md) for the same
# fixed budget of EPOCHS epochs (benchmarks/cifar10.py --compress: the recipe's warmup, milestones,
# SwAV's queue start and frozen epochs scaled into the budget), ResNet-18, full CIFAR-10, kNN against
# the random init, written to BENCHMARKS.md beside the peers' rows; its dry run beside it. Each run is
# bounded by `timeout`: about 60 s each on an H200 at 4 epochs.
EPOCHS="${SELFSUP_RECIPE_EPOCHS:-4}"
for config in simclr_cifar10 byol_cifar10 moco_v2_cifar10 moco_v3_cifar10 simsiam_cifar10 swav_cifar10 dino_cifar10 \
              moco_v1_cifar10 instdisc_cifar10 cmc_cifar10 cpc_cifar10; do
  log "cifar10 recipe: $config, compressed into $EPOCHS epochs"
  python3 -m selfsup train --config "$config" --dry-run --json data_dir="$DATA" > "$OUT/dryrun-$config.json" 2>&1
  timeout 75 python3 benchmarks/cifar10.py --config "$config" --compress "$EPOCHS" --eval-every "$EPOCHS" --device cuda \
    --data-dir "$DATA" --no-linear --quiet --write 2>&1 | tail -20 | tee "$OUT/cifar10-$config.txt"
done
cp BENCHMARKS.md "$OUT/" 2>/dev/null; cp -r benchmarks/results "$OUT/" 2>/dev/null
log "done"
