#!/usr/bin/env bash
# One prepared device check for a session that is lent a GPU (one H100/H200, about 9 minutes; first run 2026-11-30, BENCHMARKS.md "First GPU session"):
# the figures BENCHMARKS.md still lacks on a GPU, written into $OUT (the device tool brings that
# folder back) and into BENCHMARKS.md / benchmarks/results of the device's copy.
#   usage (device tool): cp ../shared/data/cifar10.npz data/ and, for the lightly rows,
#     pip download --no-deps lightly==1.6.0 lightning_utilities aenum -d data/wheels; carry ["data"]; then
#     bash benchmarks/gpu_session.sh            # the python3 there has torch, timm, sklearn...
# Each step is bounded with `timeout`, and no step starts after SELFSUP_GPU_DEADLINE seconds
# (default 520), so one slow step cannot eat the device budget and what finished still comes back.
set -uo pipefail
cd "$(dirname "$0")/.."
# The device tool brings back only a few files from $OUT: the logs go to $LOGS, and after every step
# save() packs them (and the results) into $OUT/session.tar.gz beside BENCHMARKS.md.
export PYTHONPATH=. OUT="${OUT:-/tmp/selfsup-gpu}"
LOGS="$(mktemp -d)"
mkdir -p "$OUT"
DATA="${SELFSUP_DATA:-data}"
DEADLINE="${SELFSUP_GPU_DEADLINE:-520}"
log() { echo "== $((SECONDS))s $*" | tee -a "$LOGS/session.log"; }
left() { echo $((DEADLINE - SECONDS)); }
save() {
  cp BENCHMARKS.md "$OUT/" 2>/dev/null; cp -r benchmarks/results "$LOGS/" 2>/dev/null
  tar czf "$OUT/session.tar.gz" -C "$LOGS" . 2>/dev/null
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOGS/gpu.txt"
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name())" | tee -a "$LOGS/gpu.txt"
# lightly is a benchmark-only dependency: installed from carried wheels when they are there.
[ -d "$DATA/wheels" ] && { python3 -m pip install -q --no-index --no-deps "$DATA"/wheels/*.whl 2>&1 || python3 -m pip install -q --break-system-packages --no-index --no-deps "$DATA"/wheels/*.whl 2>&1; } | tail -2
LIGHTLY=(); python3 -c "import lightly" 2>/dev/null || LIGHTLY=(--no-lightly)

# A smoke run through the command line first: the whole path (config, device data, train, kNN, checkpoint).
log "smoke: simclr, 1 epoch of 5,000 images on cuda"
timeout 60 python3 -m selfsup train --method simclr --data cifar10 --data-dir "$DATA" --epochs 1 --device cuda \
  --run-dir /tmp/selfsup-smoke train_subset=5000 2>&1 | tail -15 | tee "$LOGS/smoke.txt"; save

if [ -z "${SELFSUP_SKIP_SPEED:-}" ]; then
  log "training throughput, ResNet-18, batch 512: selfsup vs DataLoader vs lightly, precision x layout grid"
  timeout 120 python3 benchmarks/throughput.py --device cuda --backbone resnet18 --batch-size 512 --data-dir "$DATA" \
    --precision-grid --lightly-bf16 "${LIGHTLY[@]}" --write 2>&1 | tee "$LOGS/throughput.txt"; save
  log "augmentation: batched on the GPU vs the per-sample DataLoader"
  timeout 90 python3 benchmarks/augment.py --device cuda --data-dir "$DATA" --seconds 2 2>&1 | tee "$LOGS/augment.txt"; save
fi

# Every bundled CIFAR-10 recipe (selfsup/configs/<method>_cifar10.yaml, docs/recipes.md) for the same
# fixed budget of EPOCHS epochs (benchmarks/cifar10.py --compress: the recipe's warmup, milestones,
# SwAV's queue start and frozen epochs scaled into the budget), ResNet-18, full CIFAR-10, kNN against
# the random init, written to BENCHMARKS.md beside the peers' rows; its dry run beside it.
EPOCHS="${SELFSUP_RECIPE_EPOCHS:-2}"
for config in simclr_cifar10 byol_cifar10 moco_v2_cifar10 swav_cifar10 dino_cifar10 simsiam_cifar10 moco_v3_cifar10 \
              barlow_twins_cifar10 vicreg_cifar10 moco_v1_cifar10 instdisc_cifar10 cmc_cifar10 cpc_cifar10 mae_cifar10; do
  [ -f "selfsup/configs/$config.yaml" ] || { log "no config $config"; continue; }
  [ "$(left)" -lt 40 ] && { log "deadline: $config and the rest not run"; break; }
  log "cifar10 recipe: $config, compressed into $EPOCHS epochs"
  python3 -m selfsup train --config "$config" --dry-run --json data_dir="$DATA" > "$LOGS/dryrun-$config.json" 2>&1
  t=$(left); [ "$t" -gt 70 ] && t=70
  timeout "$t" python3 benchmarks/cifar10.py --config "$config" --compress "$EPOCHS" --eval-every "$EPOCHS" --device cuda \
    --data-dir "$DATA" --no-linear --quiet --write 2>&1 | tail -25 | tee "$LOGS/cifar10-$config.txt"
  save
done
log "done"
save
