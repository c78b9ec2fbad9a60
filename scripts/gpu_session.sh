#!/usr/bin/env bash
# One call of a lent GPU does everything that needs one, in order of value:
#   1. trains the bundled SR3 model (mini preset, x4, 16->64 crops) and 2. the regression baseline,
#   3. slims both for release, 4. runs benchmarks/gpu_check.sh (CUDA tests + GPU benchmark vs diffusers, < 8 min).
# Usage (repo root, CUDA machine): OUT=out bash scripts/gpu_session.sh [SR3_MINUTES] [REG_MINUTES]
# TRAIN=0 skips 1-3 (a session for the benchmark alone: ~8 minutes of GPU time instead of ~14).
# Results land in $OUT: sr3_mini_x4.pt, regression_x4.pt, logs.tar.gz, gpu_check.log, gpu_check/ (the benchmark's
# RESULTS.md, JSON and logs), and all of it in one archive, $OUT/gpu_session.tar.gz.
# DEVICE=cpu: a dry run of the whole script on a machine without a GPU (then pass short minutes, e.g. 0.2 0.1).
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
SR3_MIN=${1:-3.5}; REG_MIN=${2:-1.0}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}  # DEVICE=cpu for a dry run of this script
RUNS=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$RUNS/gpu.txt"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)" | tee -a "$RUNS/gpu.txt"

# The flags of the bundled model (also in data/MODEL_CARD.md). Deviations from the paper's Algorithm 1 settings,
# because this run has minutes, not days: lr 3e-4 (paper 1e-4), warm-up 300 steps (paper 10k), batch 64 (paper 256);
# SR3's U-Net with head=v (eps_hat through a v estimate; sr3_mini/unet.py, notebook 05 section 7).
TRAIN=${TRAIN:-1}
COMMON="--preset mini --scale 4 --crop 64 --device $DEVICE --autocast bf16 --channels-last --batch-size 64
        --lr 3e-4 --warmup-steps 300 --log-every 100 --save-every 1000 --val-every 0 --no-progress --seed 0 ${EXTRA:-}"
[ "$TRAIN" = 1 ] && timeout $(python3 -c "print(int($SR3_MIN*60+90))") $PY -m sr3_mini train $COMMON --kind sr3 --unet head=v --minutes "$SR3_MIN" \
    --out-dir "$RUNS/sr3" 2>&1 | tail -n 25
[ "$TRAIN" = 1 ] && timeout $(python3 -c "print(int($REG_MIN*60+60))") $PY -m sr3_mini train $COMMON --kind regression --minutes "$REG_MIN" \
    --out-dir "$RUNS/regression" 2>&1 | tail -n 8
[ "$TRAIN" = 1 ] && $PY - "$RUNS" "$OUT" <<'PYEOF'
import sys
from pathlib import Path
from sr3_mini.checkpoint import export_for_release
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
for kind, name in (("sr3", "sr3_mini_x4.pt"), ("regression", "regression_x4.pt")):
    src = runs / kind / "last.pt"
    if src.exists():
        dst = export_for_release(src, out / name)
        print(f"exported {dst} ({dst.stat().st_size / 1e6:.1f} MB)")
    else:
        print(f"MISSING {src}")
PYEOF
tar -czf "$OUT/logs.tar.gz" --exclude='*.pt' -C "$RUNS" .

# 4. CUDA tests and the GPU benchmark (the table prints last)
if [ -f benchmarks/gpu_check.sh ]; then
  LIMIT=$([ "$DEVICE" = cpu ] && echo 1200 || echo 480)   # the CPU dry run compiles slowly
  OUT="$OUT/gpu_check" DEVICE=$DEVICE PYTHON=$PY timeout $LIMIT bash benchmarks/gpu_check.sh 2>&1 \
    | tee "$OUT/gpu_check.log" | tail -n 60
fi
tar -czf /tmp/gpu_session.tar.gz -C "$OUT" . && mv /tmp/gpu_session.tar.gz "$OUT/" \
  && echo "gpu_session: everything in $OUT/gpu_session.tar.gz" 
