#!/usr/bin/env bash
# The GPU check, on a CUDA machine, in under 5 minutes: the CUDA-marked tests, then the GPU benchmark
# (benchmarks/run.py --device cuda), whose table is printed last. Arguments go to run.py (e.g. --quick).
# Outputs (test log, RESULTS.md with the GPU section, bench_cuda.json) land in ${OUT:-benchmarks/out}.
# Works on a bare machine with torch: sr3_mini is taken from this checkout (PYTHONPATH), diffusers from the
# wheels in .whl/ when it is not installed (no internet needed), and test files whose imports are missing
# (hypothesis, scipy, ...) are left out and named.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
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
  timeout 110 "$PY" -m pytest -m cuda -p no:cacheprovider -o addopts="" -q --continue-on-collection-errors \
    "${files[@]}" 2>&1 | tee "$OUT/gpu_tests.txt" | tail -n 25
  test_rc=${PIPESTATUS[0]}
else
  echo "gpu_check: no pytest or no runnable CUDA-marked test files: tests skipped"
fi

timeout 170 "$PY" benchmarks/run.py --device cuda --out "$OUT" "$@" >"$OUT/bench_log.txt" 2>&1
bench_rc=$?
echo "gpu_check: tests rc=$test_rc, benchmark rc=$bench_rc, $(( $(date +%s) - start )) s (log: $OUT/bench_log.txt)"
[ $bench_rc -eq 0 ] || tail -n 30 "$OUT/bench_log.txt"
# the table last: run.py saves it as soon as the main measurements are done, so a run cut short keeps it
[ -f "$OUT/RESULTS.md" ] && sed -n '/^<!-- BEGIN cuda -->/,/^<!-- END cuda -->/p' "$OUT/RESULTS.md" | sed '1d;$d'
exit $(( test_rc != 0 || bench_rc != 0 ))
