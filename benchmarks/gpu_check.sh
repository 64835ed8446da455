#!/usr/bin/env bash
# One prepared GPU check for a machine with CUDA, torch and triton already installed and no network
# (the device tool's H100: torch 2.11, triton 3.6, Python 3.12). Run from the repository root:
#
#     bash benchmarks/gpu_check.sh            # results under $OUT (default ./gpu_out)
#
# Steps, each under its own `timeout` and inside one overall budget (GPU_CHECK_BUDGET seconds,
# default 480), in priority order; a failing step is recorded and the script goes on:
#   1. environment: nvidia-smi, Python / torch / triton / CUDA versions
#   2. install: wheels carried in .whl/ (lark is not in the GPU image; pyssht for the tests) into
#      /tmp/sphc-site, then `pip install --no-deps --no-build-isolation -e .`, else PYTHONPATH=$PWD
#   3. GPU tests: tests/test_kernels*.py and tests/test_compile.py (those that exist), then every
#      test marked `gpu`
#   4. benchmarks/bench_kernels.py --parts layer,roofline at the GPU sizes (batch 256, L = 16 32 64)
#   5. the examples/mnist.sph training step (steps/s per backend)
#   6. `sphc tune examples/mnist.sph --batch 32 -o $OUT/tuning.json`
#   7. the growth benchmark on the GPU (full / mst / rmst, L = 8 16 32 64)
#
# Preparing the wheels (once, on a machine with PyPI; /.whl/ is in .git/info/exclude, so name it in
# the device tool's `carry`):
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl lark==1.3.1 pyssht==1.5.3
#
# GPU_CHECK_STEPS="tests-kernels mnist" runs only the named steps (names as in summary.txt).
#
# Local dry run (no GPU, nothing installed): GPU_CHECK_NO_INSTALL=1 BENCH_ARGS="--cpu-quick --L 8" \
#     OUT=/tmp/gpu_out bash benchmarks/gpu_check.sh   (BENCH_ARGS is appended to every bench_kernels call)
#
# Files written to $OUT (the device tool returns at most 8): summary.txt (environment, each step's
# exit code and wall time), tests.log, kernels.log, kernels.json, mnist.log, tune.log, tuning.json,
# growth.log.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-480}"
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
export PYTHONUNBUFFERED=1
export SPHC_CACHE_DIR="${SPHC_CACHE_DIR:-/tmp/sphc-gpu-cache}"
: >"$SUMMARY"

log() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME CAP LOGFILE CMD...: run CMD under timeout min(CAP, budget left - 5 s), record rc and time
step() {
    local name=$1 cap=$2 logf=$3
    shift 3
    if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " $GPU_CHECK_STEPS " != *" $name "* ]]; then
        log "step $name: not selected (GPU_CHECK_STEPS=$GPU_CHECK_STEPS)"
        return 0
    fi
    local rem
    rem=$(($(left) - 5))
    if [ "$rem" -lt 15 ]; then
        log "step $name: SKIPPED (overall budget of ${BUDGET}s spent)"
        return 0
    fi
    [ "$cap" -gt "$rem" ] && cap=$rem
    local t0=$(date +%s)
    echo "### $name (timeout ${cap}s): $*" >>"$logf"
    timeout -s INT -k 15 "$cap" "$@" >>"$logf" 2>&1  # SIGINT: pytest and Python print where they were
    local rc=$?
    local note=""
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && note=" (TIMED OUT after ${cap}s)"
    log "step $name: rc=$rc$note, $(($(date +%s) - t0)) s, log $(basename "$logf")"
    return 0
}

# ---- 1. environment
log "gpu_check.sh started $(date -Is) on $(hostname); budget ${BUDGET}s; OUT=$OUT"
log "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l) changed files"
{
    nvidia-smi 2>&1 || echo "nvidia-smi failed"
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv 2>&1
    "$PY" - <<'EOF' 2>&1
import platform, sys
print("python", platform.python_version(), sys.executable)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print("device", p.name, f"{p.total_memory / 2**30:.1f} GiB", p.multi_processor_count, "SMs", "cc", p.major, p.minor)
except Exception as e:
    print("torch import failed:", e)
for name in ("triton", "e3nn", "numpy", "jinja2", "lark", "sympy", "pyssht", "hypothesis", "pytest"):
    try:
        m = __import__(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:
        print(name, "MISSING", type(e).__name__)
EOF
} >>"$SUMMARY" 2>&1

# ---- 2. install (no network)
{
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sphc-site .whl/*.whl \
            && echo "installed carried wheels: $(ls .whl)"
    else
        echo "no .whl/ carried"
    fi
} >>"$SUMMARY" 2>&1
[ -d /tmp/sphc-site ] && export PYTHONPATH="/tmp/sphc-site${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${GPU_CHECK_NO_INSTALL:-}" ] && timeout 120 "$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$SUMMARY" 2>&1 \
    && (cd /tmp && "$PY" -c "import sphc") >/dev/null 2>&1; then
    log "install: pip install -e . OK"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    log "install: pip install -e . failed or skipped (hatchling missing offline?); using PYTHONPATH=$PYTHONPATH"
fi
"$PY" -c "import sphc, lark; print('sphc importable from', sphc.__file__)" >>"$SUMMARY" 2>&1 \
    || log "WARNING: sphc not importable: later steps will fail (carry .whl/ with lark)"

# ---- 3. GPU tests
# kernel tests first (they are what only a GPU can check), test_compile (inductor, slow to build) last
TESTS=$(ls tests/test_kernels*.py 2>/dev/null; ls tests/test_compile.py 2>/dev/null)
TESTS=$(echo $TESTS)
PYTEST_OPTS="-v -p no:cacheprovider --continue-on-collection-errors -rfE --durations=10"
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_OPTS="$PYTEST_OPTS --timeout=120"
# Triton's JIT compile is CPU-bound and dominated the first run (2026-11-28, H200): spread the
# tests over the machine's cores with pytest-xdist where it is installed
"$PY" -c "import xdist" 2>/dev/null && PYTEST_OPTS="$PYTEST_OPTS -n ${GPU_CHECK_WORKERS:-8}"
IGNORE=""
if [ -n "$TESTS" ]; then
    # shellcheck disable=SC2086
    step tests-kernels 150 "$OUT/tests.log" "$PY" -m pytest $PYTEST_OPTS $TESTS
    for t in $TESTS; do IGNORE="$IGNORE --ignore=$t"; done
else
    log "step tests-kernels: no tests/test_kernels*.py or tests/test_compile.py in this tree"
fi
# every other test marked gpu (pytest exits 5 when none is selected)
# shellcheck disable=SC2086
step tests-gpu-marked 50 "$OUT/tests.log" "$PY" -m pytest $PYTEST_OPTS -m gpu $IGNORE tests

# inner budget for bench_kernels (it starts no new L after it): the step's cap minus a margin
inner() { local c=$1 r; r=$(($(left) - 5)); [ "$r" -lt "$c" ] && c=$r; [ "$c" -lt 20 ] && c=20; echo $((c - $2)); }

# ---- 4. kernels: layer + roofline at GPU sizes
# shellcheck disable=SC2086
step kernels 200 "$OUT/kernels.log" "$PY" benchmarks/bench_kernels.py --parts layer,roofline \
    --json "$OUT/kernels.json" --budget-s "$(inner 200 60)" ${BENCH_ARGS:-}

# ---- 5. mnist training step
# shellcheck disable=SC2086
step mnist 150 "$OUT/mnist.log" "$PY" benchmarks/bench_kernels.py --parts mnist ${BENCH_ARGS:-}

# ---- 6. sphc tune
step tune 45 "$OUT/tune.log" "$PY" -m sphc tune examples/mnist.sph --batch 32 -o "$OUT/tuning.json"

# ---- 7. growth with L on the GPU
# shellcheck disable=SC2086
step growth 90 "$OUT/growth.log" "$PY" benchmarks/bench_kernels.py --parts growth --budget-s "$(inner 90 35)" \
    ${BENCH_ARGS:-}

log "gpu_check.sh done after $(($(date +%s) - START)) s (budget ${BUDGET}s)"
exit 0
