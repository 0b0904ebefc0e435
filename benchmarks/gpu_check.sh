#!/usr/bin/env bash
# The GPU check of the "Fast for real" issue, as one script for a lent GPU machine (about 5-8 minutes on
# one GPU; never run on GPU hardware so far -- no device was lent to that issue's sessions):
#
#   benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]          # on the GPU machine; OUT_DIR default docs/benchmarks/gpu
#   DEVICE=cpu QUICK=1 benchmarks/gpu_check.sh DATA_DIR /tmp/gpu-smoke   # the same commands, shortened, on a CPU
#
# 1. ML-100K paper protocol with --optimizer scipy (a host round trip per evaluation) and the default
#    lbfgsb (everything on the device), in one run: the ">= 3x" ratio and the wall times;
# 2. ML-1M paper protocol with the default optimiser (the 5-minute target), its wall time and peak memory;
# 3. one loss + gradient per stage on ML-100K and ML-1M (benchmarks/run.py's passes section, dense and
#    sparse paths, peak GPU memory), written as OUT_DIR/PERFORMANCE.md.
# Every step writes under OUT_DIR; a failing step is recorded and the next one still runs.
set -uo pipefail
DATA=${1:?usage: benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]}
OUT=${2:-docs/benchmarks/gpu}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
step() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
quick_opt=(); quick_epochs=(); quick_run=()
if [ "$QUICK" = 1 ]; then
  quick_opt=(--quick); quick_epochs=(--epoch-p 1 --epoch-f 1 --iter-p 2 --iter-f 2); quick_run=(--reps 1 --warmup 0)
fi

step "device: $(python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')")"
step "1. ML-100K protocol, scipy vs lbfgsb on $DEVICE"
python benchmarks/optimizers.py --data-dir "$DATA" --seeds 1 --device "$DEVICE" --out-dir "$OUT" "${quick_opt[@]}" \
  >> "$LOG" 2>&1 || step "step 1 failed (exit $?)"
step "2. ML-1M protocol, default optimiser, on $DEVICE"
start=$(date +%s)
python -m glocalk train --dataset ml-1m --data-dir "$DATA" --seed 1 --device "$DEVICE" --out "$OUT/ml-1m" --quiet \
  "${quick_epochs[@]}" >> "$LOG" 2>&1 || step "step 2 failed (exit $?)"
step "step 2 took $(( $(date +%s) - start )) s (the run's own figures: $OUT/ml-1m/summary.json)"
step "3. passes on ML-100K and ML-1M, on $DEVICE"
python benchmarks/run.py --data-dir "$DATA" --device "$DEVICE" --sections passes --datasets ml-100k,ml-1m \
  --out "$OUT/PERFORMANCE.md" "${quick_run[@]}" >> "$LOG" 2>&1 || step "step 3 failed (exit $?)"
step "done; record the figures in docs/PERFORMANCE.md (GPU run)"
