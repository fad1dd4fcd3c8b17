#!/usr/bin/env bash
# The GPU check in one command: bench/gpu.py, then `pytest -m gpu tests/test_gpu.py`, on this machine.
#
#   bash bench/device_check.sh                        # CUDA: at most 8 minutes on one H100 or H200
#   bash bench/device_check.sh --device cpu --tiny    # anywhere: the same path in a few minutes (CI runs it)
#
# Writes under $OUT (default bench/results/):
#   gpu_<device>.json, gpu_<device>.md    bench/gpu.py's figures (written after every part: a stop keeps them)
#   pytest_gpu.txt, pytest_gpu.xml         the pytest run (its summary ends the .txt) and its JUnit report
#   device_check.md                        what ran, on what, for how long, and each step's exit status
# Exit status: 0 when both steps succeeded, else 1.
#
# It needs Python 3 with torch, torchvision, numpy, pyarrow, scikit-learn, pyyaml and pytest; not Ray, Polars or
# Altair (the test that needs Ray skips). Pydantic, where it cannot be imported, is installed with
# `pip --no-index` from bench/device-wheels/ (CPython 3.12, manylinux x86_64; `make device-wheels` refills it)
# into a temporary folder on PYTHONPATH: the machine's own Python is left as it was, and no network is used.
#
# Options: --device cuda|cpu (default: cuda when torch sees one), --tiny (a few steps per part, tests on the CPU
# at width 1/8: checks the path, measures nothing). $PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results}
DEVICE="" TINY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=${2:-}; shift 2 ;;
        --device=*) DEVICE=${1#--device=}; shift ;;
        --tiny) TINY=1; shift ;;
        *) echo "device_check.sh: unknown argument '$1' (allowed: --device cuda|cpu, --tiny)" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
# the whole check within 8 minutes on a GPU: pytest gets at most PYTEST_S, bench/gpu.py what is left of TOTAL_S
TOTAL_S=${TOTAL_S:-470} PYTEST_S=${PYTEST_S:-240}

DEPS=$(mktemp -d) && trap 'rm -rf "$DEPS"' EXIT
if ! "$PY" -c "import pydantic" 2>/dev/null; then
    echo "pydantic: installing from bench/device-wheels (no network)"
    if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --find-links "$ROOT/bench/device-wheels" --target "$DEPS" pydantic \
            || { echo "device_check.sh: pip could not install pydantic from bench/device-wheels for $("$PY" -V)" \
                      "(the wheels are for CPython 3.12 on manylinux x86_64; refill them with make device-wheels)" >&2; exit 2; }
    else  # no pip: a wheel is a zip archive to unpack onto the path
        for w in "$ROOT"/bench/device-wheels/*.whl; do "$PY" -m zipfile -e "$w" "$DEPS"; done
    fi
fi
export PYTHONPATH="$ROOT:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
[ -n "$DEVICE" ] || DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')") || exit 2
case "$DEVICE" in cuda|cpu) ;; *) echo "device_check.sh: --device '$DEVICE' (allowed: cuda, cpu)" >&2; exit 2 ;; esac
BENCH_ARGS=(--device "$DEVICE" --out "$OUT")
[ "$TINY" = 1 ] && BENCH_ARGS+=(--tiny)
export BNSWEEP_TEST_DEVICE=$DEVICE  # tests/test_gpu.py on this device (on a CPU: VGG-16 at width 1/8)

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, record its status and time
    local name=$1 limit=$2 t0=$SECONDS status
    shift 2
    echo "== $name (at most ${limit} s): $*"
    timeout --kill-after=15 "$limit" "$@"
    status=$?
    [ $status = 124 ] && echo "== $name: stopped after ${limit} s"
    ROWS+="| $name | $status$([ $status = 124 ] && echo ' (time limit)') | $((SECONDS - t0)) s |"$'\n'
    return $status
}
ROWS=""
# -p no:cacheprovider: nothing written into the checkout
step pytest "$PYTEST_S" "$PY" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -rA \
    --junitxml="$OUT/pytest_gpu.xml" > "$OUT/pytest_gpu.txt" 2>&1
PYTEST_STATUS=$?
cat "$OUT/pytest_gpu.txt"
LEFT=$((TOTAL_S - ($(date +%s) - START)))
[ $LEFT -gt 30 ] || LEFT=30
step bench "$LEFT" "$PY" bench/gpu.py "${BENCH_ARGS[@]}"
BENCH_STATUS=$?

{
    echo "# device check: $DEVICE$([ "$TINY" = 1 ] && echo ', --tiny')"
    echo
    "$PY" -c "import platform, torch; d = torch.cuda.get_device_name() if '$DEVICE' == 'cuda' else platform.processor() or 'cpu'; print(f'{d}; Python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}')"
    echo "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown); $(date -u +%FT%TZ); $(($(date +%s) - START)) s in all"
    echo
    echo "| step | exit status | seconds |"
    echo "|---|---|---|"
    printf '%s' "$ROWS"
    echo
    echo "pytest: $(tail -n 1 "$OUT/pytest_gpu.txt")"
} > "$OUT/device_check.md"
cat "$OUT/device_check.md"
[ "$PYTEST_STATUS" = 0 ] && [ "$BENCH_STATUS" = 0 ]
