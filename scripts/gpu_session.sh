#!/usr/bin/env bash
# One call of a lent GPU (at most 10 minutes a command, 15 minutes a task, the machine's start included) does what
# needs one, in order of value for issue #17 (an SR3 that samples):
#   1. trains SR3 on the gpu64 preset (8.5M parameters, 3x the bundled mini, 4x its width at full resolution)
#      with loss (6) at p = 2, then
#   2. the regression baseline on the same network, 3. exports both, slim (EMA, fp16), and
#   4. measures both on the two held-out sets on the GPU (the issue's goals: diversity, sharpness, grain, PSNR),
#   5. only with BENCH=1: benchmarks/gpu_check.sh (CUDA tests and the benchmark against diffusers, ~8 minutes: a
#      call of its own).
# Usage (repo root, CUDA machine): OUT=out bash scripts/gpu_session.sh [SR3_MINUTES] [REG_MINUTES]
# Results, written as soon as each exists, so that a call stopped at its limit still returns what was done:
#   $OUT/models.tar.gz.part00, part01, ... right after training: the two models, sr3_gpu64_x4.pt and
#     regression_gpu64_x4.pt (17 MB each; PRESET=... trains another preset), and logs.tar.gz (the runs' log.jsonl,
#     config.json, loss.png), as one archive cut into parts of 15 MiB (a lent machine returns files of 16 MiB at
#     most); join them with `cat models.tar.gz.part* | tar -xz`;
#   $OUT/quality.csv and measure.log: the measurement (its time is capped so that the whole call ends by DEADLINE,
#     570 s after the start by default; a call may last 600).
# TRAIN=0 skips 1-4. DEVICE=cpu: a dry run of the whole script without a GPU (pass short minutes, e.g. 0.2 0.1;
# QUICK=1 then measures one small crop per set with two 5-step draws, so that the dry run takes about a minute).
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
SR3_MIN=${1:-4.0}; REG_MIN=${2:-1.0}; DEADLINE=${DEADLINE:-570}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}; TRAIN=${TRAIN:-1}; BENCH=${BENCH:-0}; QUICK=${QUICK:-0}
RUNS=$(mktemp -d)
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$RUNS/gpu.txt"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)" | tee -a "$RUNS/gpu.txt"

# The flags of both runs. Deviations from the paper's Algorithm 1 settings, because this run has minutes, not days:
# the gpu64 preset (unet.PRESETS) instead of Table 1's networks; lr 2e-4 (paper 1e-4), warm-up 500 (paper 10k),
# batch 64 (paper 256); the bundled model's two deviations, target=residual and head=v (data/MODEL_CARD.md).
# SR3 trains with p = 2: L1's optimum is the median of eps, which shrinks y^_0 and makes draws too alike
# (data/MODEL_CARD.md, "Sampling or averaging?"). Seeds differ from the CPU runs' so the two are not confused.
PRESET=${PRESET:-gpu64}
COMMON="--preset $PRESET --unet target=residual --scale 4 --crop 64 --device $DEVICE --autocast bf16 --batch-size 64
        --lr 2e-4 --warmup-steps 500 --log-every 100 --save-every 1000 --val-every 0 --no-progress --seed 7 ${EXTRA:-}"
if [ "$TRAIN" = 1 ]; then
  timeout $($PY -c "print(int($SR3_MIN*60+120))") $PY -m sr3_mini train $COMMON --kind sr3 --unet head=v --loss-p 2 \
      --minutes "$SR3_MIN" --out-dir "$RUNS/sr3" 2>&1 | tail -n 12
  timeout $($PY -c "print(int($REG_MIN*60+90))") $PY -m sr3_mini train $COMMON --kind regression --minutes "$REG_MIN" \
      --out-dir "$RUNS/regression" 2>&1 | tail -n 6
  mkdir -p "$RUNS/export"
  $PY - "$RUNS" "$PRESET" <<'PYEOF'
import sys
from pathlib import Path
from sr3_mini.checkpoint import export_for_release
runs, preset = Path(sys.argv[1]), sys.argv[2]
for kind in ("sr3", "regression"):
    src = runs / kind / "last.pt"
    if src.exists():
        dst = export_for_release(src, runs / "export" / f"{kind}_{preset}_x4.pt")
        print(f"exported {dst.name} ({dst.stat().st_size / 1e6:.1f} MB)")
    else:
        print(f"MISSING {src}")
PYEOF
  tar -czf "$RUNS/export/logs.tar.gz" --exclude='*.pt' --exclude=export -C "$RUNS" .
  tar -czf - -C "$RUNS/export" . | split -b 15M -d - "$OUT/models.tar.gz.part"
  echo "gpu_session: trained and exported in $(( $(date +%s) - start )) s"

  # 4. The issue's goals, measured here: both held-out sets, whole photos, seeds 0 1 2, the default sampler and
  # the paper's variance (QUICK=1, the dry run: one 32x32 crop per set, seeds 0 1, 5 steps).
  SR3="$RUNS/export/sr3_${PRESET}_x4.pt"; REG="$RUNS/export/regression_${PRESET}_x4.pt"
  LEFT=$(( DEADLINE - ($(date +%s) - start) ))
  if [ -f "$SR3" ] && [ -f "$REG" ] && [ "$LEFT" -gt 20 ]; then
    if [ "$QUICK" = 1 ]; then M="--size 32 --limit 1 --seeds 0 1 --samplers ddpm:posterior:5"
    else M="--seeds 0 1 2 --samplers ddpm:posterior:100 ddpm:paper:100"; fi
    timeout "$LEFT" $PY scripts/measure_quality.py --sets eval other $M --device "$DEVICE" --checkpoint "$SR3" \
        --regression-checkpoint "$REG" --csv "$OUT/quality.csv" > "$OUT/measure.log" 2>&1
    tail -n 12 "$OUT/measure.log"
  else
    echo "gpu_session: no measurement (models missing, or only $LEFT s left)"
  fi
fi

# 5. CUDA tests and the GPU benchmark (the table prints last): a call of its own (BENCH=1 TRAIN=0)
if [ "$BENCH" = 1 ] && [ -f benchmarks/gpu_check.sh ]; then
  LIMIT=$([ "$DEVICE" = cpu ] && echo 1200 || echo 480)   # the CPU dry run compiles slowly
  OUT="$OUT/gpu_check" DEVICE=$DEVICE PYTHON=$PY timeout $LIMIT bash benchmarks/gpu_check.sh 2>&1 \
    | tee "$OUT/gpu_check.log" | tail -n 60
fi
ls -l "$OUT"; echo "gpu_session: done in $(( $(date +%s) - start )) s"
