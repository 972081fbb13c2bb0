#!/usr/bin/env bash
# One prepared device check for a session that is lent a GPU (about 10 minutes on an H100/H200):
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

log "augmentation: batched on the GPU vs the per-sample DataLoader (2 min)"
timeout 150 python3 benchmarks/augment.py --device cuda --data-dir "$DATA" --seconds 4 2>&1 | tee "$OUT/augment.txt"

log "training throughput, ResNet-18, batch 512 (1 min)"
timeout 90 python3 benchmarks/throughput.py --device cuda --data-dir "$DATA" --write 2>&1 | tee "$OUT/throughput.txt"

# The learning checks the CPU could not settle (SwAV, SimSiam; see BENCHMARKS.md), then two that it
# did, as controls: ResNet-18, full CIFAR-10, a few epochs each, kNN against the random init.
for method in swav simsiam byol simclr; do
  log "cifar10: $method, ResNet-18, 8 epochs"
  timeout 100 python3 benchmarks/cifar10.py --method "$method" --epochs 8 --eval-every 4 --device cuda \
    --data-dir "$DATA" --no-linear --quiet --write 2>&1 | tail -20 | tee "$OUT/cifar10-$method.txt"
done
cp BENCHMARKS.md "$OUT/" 2>/dev/null; cp -r benchmarks/results "$OUT/" 2>/dev/null
log "done"
