#!/usr/bin/env bash
# The GPU check, on one CUDA machine (H100/H200), in under 8 minutes: the CUDA-marked tests (at most 110 s), then
# the GPU benchmark (benchmarks/run.py --device cuda: eager rows, compiled rows with CUDA graphs, the fused
# GroupNorm kernel, each network's best path; its --budget keeps it under 6 minutes), whose table prints last.
# Arguments go to run.py (e.g. --quick). Outputs (test log, benchmark log, RESULTS.md with the GPU section,
# bench_cuda.json) land in ${OUT:-benchmarks/out}, and all of them in one archive, $OUT/gpu_check.tar.gz.
# DEVICE=cpu: a dry run of this script on a machine without a GPU (tiny preset, CUDA tests skipped).
# Works on a bare machine with torch: sr3_mini is taken from this checkout (PYTHONPATH), diffusers from the
# wheels in .whl/ when it is not installed (no internet needed), and test files whose imports are missing
# (hypothesis, scipy, ...) are left out and named.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1
start=$(date +%s)

if ! "$PY" -c "import diffusers" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/sr3_mini_site .whl/*.whl \
      && export PYTHONPATH="$PYTHONPATH:/tmp/sr3_mini_site"
  fi
  "$PY" -c "import diffusers" 2>/dev/null || echo "gpu_check: diffusers is missing and .whl/ has no wheel for it"
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null || true
"$PY" -c "import torch, importlib.util as u; print('torch', torch.__version__, '| triton', \
bool(u.find_spec('triton')), '| cuda', torch.cuda.is_available())"

# The test files holding CUDA-marked tests, minus those whose module-level imports fail here.
mapfile -t files < <("$PY" - <<'EOF'
import ast, importlib.util, pathlib, sys
for path in sorted(pathlib.Path("tests").glob("test_*.py")):
    src = path.read_text()
    if "mark.cuda" not in src:
        continue
    tops = set()
    for node in ast.parse(src).body:  # module level only: imports inside tests or importorskip are fine
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    missing = sorted(m for m in tops if importlib.util.find_spec(m) is None)
    if missing:
        print(f"gpu_check: leaving out {path} (needs {', '.join(missing)})", file=sys.stderr)
    else:
        print(path)
EOF
)
test_rc=0
if "$PY" -c "import pytest" 2>/dev/null && [ ${#files[@]} -gt 0 ]; then
  timeout 110 "$PY" -m pytest -m cuda -p no:cacheprovider -o addopts="" -q -rs --continue-on-collection-errors \
    "${files[@]}" 2>&1 | tee "$OUT/gpu_tests.txt" | tail -n 25
  test_rc=${PIPESTATUS[0]}
  [ "$DEVICE" = cpu ] && [ "$test_rc" -eq 5 ] && test_rc=0   # dry run: every CUDA test skipped or deselected
else
  echo "gpu_check: no pytest or no runnable CUDA-marked test files: tests skipped"
fi

if [ "$DEVICE" = cpu ]; then  # the dry run: every phase of run.py on the tiny preset
  BENCH=(--device cpu --quick --preset tiny --size 16 --batch 2 --threads 1 --no-extras --compile --budget 900
         --results "$OUT/RESULTS.md")
  [ -f "$OUT/RESULTS.md" ] || cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
  LIMIT=1000
else
  BENCH=(--device cuda --budget 330)
  LIMIT=350
fi
timeout $LIMIT "$PY" benchmarks/run.py "${BENCH[@]}" --out "$OUT" "$@" >"$OUT/bench_log.txt" 2>&1
bench_rc=$?
echo "gpu_check: tests rc=$test_rc, benchmark rc=$bench_rc, $(( $(date +%s) - start )) s (log: $OUT/bench_log.txt)"
[ $bench_rc -eq 0 ] || tail -n 30 "$OUT/bench_log.txt"
tar -czf "$OUT/gpu_check.tar.gz" -C "$OUT" --exclude=gpu_check.tar.gz . 2>/dev/null \
  && echo "gpu_check: everything in $OUT/gpu_check.tar.gz"
# the table last: run.py saves it after each phase, so a run cut short keeps what it measured
sect=$([ "$DEVICE" = cpu ] && echo cpu || echo cuda)
[ -f "$OUT/RESULTS.md" ] && sed -n "/^<!-- BEGIN $sect -->/,/^<!-- END $sect -->/p" "$OUT/RESULTS.md" | sed '1d;$d'
exit $(( test_rc != 0 || bench_rc != 0 ))
