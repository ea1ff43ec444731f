#!/usr/bin/env bash
# The one-call GPU check of issue 20 (bench/README.md, "GPU check"). On a CUDA machine that has
# torch, nvcc and CMake but no internet, in under 8 minutes: print the card; build quanta into a
# venv (qkernels with its CUDA library); run the CUDA tests; compute-sanitizer memcheck and
# racecheck on bench/gpu_sanitize.py; the per-Linear table (bench/gpu_linear.py) and a
# Llama-3-8B-shaped decode (bench/gpu_generate.py); then a summary and the tables, last.
#
#   bash bench/gpu.sh          the check; reads the wheels it installs from bench/wheels/
#   bash bench/gpu.sh wheels   here, with a package index: download those wheels (< 1 MiB)
#
# Every stage runs under its own time limit (its share of GPU_SH_TOTAL seconds, 470 by default:
# a stage gets at most its MAX and leaves the later stages their MIN; the last one gets the rest).
# A failing stage is reported and the later ones still run. The exit status has one bit per
# failed stage: 1 card, 2 setup, 4 tests, 8 memcheck, 16 racecheck, 32 linear, 64 generate.
# Logs and results also go under $OUT (the device tool brings that folder back), else under
# bench/results/gpu-<time>/: gpu.log (all of this output), build.log, quanto_build.log,
# linear.jsonl/.md, generate.jsonl/.md.
# GPU_SH_STAGES="linear generate" runs some stages only (setup too, if the venv is missing).
# GPU_SH_SMOKE=1 runs the same stages on a machine without a GPU (CUDA library off, the scripts'
# --smoke mode, no sanitizer, no optimum-quanto): a check of this script; GPU_SH_PYTHON names the
# Python that has torch (default python3).
set -euo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."

# What the device lacks, as wheels (pure Python): the optimum-quanto baseline and the build
# backends of quanta's layers (versions as in constraints/cpu.txt where it pins them).
WHEELS=(
  optimum-quanto==0.2.7 scikit-build-core==1.1.2 hatchling==1.33.0 editables==0.6
  packaging==26.4 pathspec==1.1.1 pluggy==1.7.0 trove-classifiers==2026.9.21.13 tomlkit==0.15.3
)
LAYERS=(qtypes qmodules qcalib qio qintegrations quanta)  # pure Python; qkernels is built apart
STAGES=(card setup tests memcheck racecheck linear generate)
declare -A MAX=([card]=20 [setup]=180 [tests]=90 [memcheck]=90 [racecheck]=60 [linear]=120 [generate]=470)
declare -A MIN=([card]=5 [setup]=60 [tests]=30 [memcheck]=30 [racecheck]=20 [linear]=60 [generate]=60)

WORK=${GPU_SH_WORK:-/tmp/quanta-gpu}  # the venv and the background build's files
SMOKE=${GPU_SH_SMOKE:-0}
SMOKE_FLAG=$( ((SMOKE)) && echo --smoke || true)
BASE=${GPU_SH_PYTHON:-python3}
VENV=$WORK/venv
PY=$VENV/bin/python
export WORK SMOKE SMOKE_FLAG BASE VENV PY PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=$PATH:/usr/local/cuda/bin
fi

pip_install() {  # offline: only what is here and in bench/wheels
  "$PY" -m pip install --no-index --find-links bench/wheels --no-deps --no-build-isolation \
    --disable-pip-version-check "$@"
}

stage_card() {
  if ((SMOKE)); then
    "$BASE" -c 'import torch; print("torch", torch.__version__, "(smoke: no GPU)")'
    return
  fi
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  "$BASE" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
    torch.cuda.get_device_name(), "sm_%d%d" % torch.cuda.get_device_capability())'
  nvcc --version | tail -1
}

stage_setup() {
  local parent own
  rm -rf "$VENV"
  "$BASE" -m venv --system-site-packages --without-pip "$VENV"
  # The device's python3 is itself a venv: a venv made from it sees the base interpreter's
  # site-packages, not torch's, so a .pth file adds the parent's (after the venv's own).
  parent=$("$BASE" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  own=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$parent" >"$own/gpu_sh_parent.pth"
  pip_install -q "${WHEELS[@]}"  # pip is the parent's, through that .pth
  # optimum-quanto compiles its CUDA kernels on first use (minutes): start that now, beside the
  # rest; the benchmarks wait for it.
  rm -f "$WORK/quanto_build.rc"
  if ((SMOKE)); then
    echo "smoke: optimum-quanto left out" >"$WORK/quanto_build.log"
    echo 1 >"$WORK/quanto_build.rc"
  else
    local arch
    arch=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
    (
      TORCH_CUDA_ARCH_LIST=$arch "$PY" -c 'from optimum.quanto.library.extensions import \
get_extension; get_extension("quanto_cuda").lib; print("quanto_cuda built")'
      echo $? >"$WORK/quanto_build.rc"
    ) </dev/null >"$WORK/quanto_build.log" 2>&1 &
  fi
  local start=$SECONDS cuda=ON
  ((SMOKE)) && cuda=OFF
  QKERNELS_CUDA=$cuda pip_install -v -e packages/qkernels >"$OUT/build.log" 2>&1 \
    || { tail -n 60 "$OUT/build.log"; return 1; }
  echo "qkernels (CUDA $cuda) built in $((SECONDS - start)) s; log: build.log"
  pip_install -q $(printf -- '-e packages/%s ' "${LAYERS[@]}")
  "$PY" - <<'EOF'
import torch
import quanta.qkernels

ops = [op for op in ("linear_affine", "linear_symmetric", "linear_lut4", "linear_grouped")
       if hasattr(torch.ops.quanta_cuda, op)]
print("quanta.qkernels from", quanta.qkernels.__file__)
print("quanta_cuda ops loaded:", ops or "none")
try:
    from quanta.qkernels import cuda_dispatch
    print("CUDA dispatch:", cuda_dispatch.__name__)
except ImportError as error:
    print("CUDA dispatch not available:", error)
EOF
}

stage_tests() {
  # Not -x: one test module that cannot be imported here (a package version the device has)
  # must not stop the others; --maxfail still ends a cascade (a broken CUDA context).
  "$PY" -m pytest -m cuda packages tests -q -p no:cacheprovider --continue-on-collection-errors \
    --maxfail=25
}

sanitize() {  # compute-sanitizer TOOL on the small-shape script (it sets the dispatch variables)
  if ((SMOKE)); then
    "$PY" -m bench.gpu_sanitize --smoke
    return
  fi
  local sanitizer
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  # API errors are torch's own probing; a failed launch raises in the script itself.
  "$sanitizer" --tool "$1" --error-exitcode 1 --print-limit 20 \
    --report-api-errors no "$PY" -m bench.gpu_sanitize
}

stage_memcheck() {
  # Without torch's caching allocator every tensor is its own allocation, so an out-of-bounds
  # access cannot land unseen in a neighbour's memory.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 sanitize memcheck
}

stage_racecheck() {
  sanitize racecheck
}

quanto_libraries() {  # the benchmarks' --libraries: optimum-quanto only if its build is done
  local waited=0 wait_max=$1  # seconds to wait for that build
  while [[ ! -f $WORK/quanto_build.rc ]] && ((waited < wait_max)); do
    sleep 5
    waited=$((waited + 5))
  done
  cp "$WORK/quanto_build.log" "$OUT/" 2>/dev/null || true
  if [[ $(cat "$WORK/quanto_build.rc" 2>/dev/null) == 0 ]]; then
    echo "torch quanta quanto"
  else
    echo "optimum-quanto's CUDA kernels not built (waited ${waited} s; quanto_build.log):" \
      "its column is left out" >&2
    echo "torch quanta"
  fi
}

stage_linear() {
  local libraries
  libraries=$(quanto_libraries $((STAGE_LIMIT / 3)))
  # shellcheck disable=SC2086  # one word per library
  "$PY" -m bench.gpu_linear --out "$OUT/linear" --budget $((STAGE_LIMIT - SECONDS - 15)) \
    --libraries $libraries $SMOKE_FLAG
}

stage_generate() {
  local libraries
  libraries=$(quanto_libraries 0)  # the linear stage waited already
  # shellcheck disable=SC2086
  "$PY" -m bench.gpu_generate --out "$OUT/generate" --budget $((STAGE_LIMIT - SECONDS - 15)) \
    --libraries $libraries $SMOKE_FLAG
}

if [[ ${1:-} == --stage ]]; then  # one stage, run by the loop below under its time limit
  "stage_$2"
  exit
fi

if [[ ${1:-} == wheels ]]; then
  "$BASE" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    -d bench/wheels "${WHEELS[@]}"
  du -sh bench/wheels
  exit
fi

OUT=${OUT:-bench/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
export OUT
exec > >(tee -a "$OUT/gpu.log") 2>&1
[[ -d bench/wheels ]] || echo "bench/wheels/ is missing: run 'bash bench/gpu.sh wheels' here first"

read -r -a chosen <<<"${GPU_SH_STAGES:-${STAGES[*]}}"
if [[ ! -x $PY && " ${chosen[*]} " != *" setup "* ]]; then
  chosen=(setup "${chosen[@]}")
fi
deadline=$((SECONDS + ${GPU_SH_TOTAL:-470}))
declare -A STATUS TOOK
failed_bits=0
for index in "${!STAGES[@]}"; do
  stage=${STAGES[$index]}
  [[ " ${chosen[*]} " == *" $stage "* ]] || continue
  reserve=0
  for later in "${STAGES[@]:index+1}"; do
    [[ " ${chosen[*]} " == *" $later "* ]] && reserve=$((reserve + MIN[$later]))
  done
  limit=$((deadline - SECONDS - reserve))
  ((limit > MAX[$stage])) && limit=${MAX[$stage]}
  ((limit < MIN[$stage])) && limit=${MIN[$stage]}
  echo "=== $stage (limit ${limit} s) $(date -u +%T)"
  start=$SECONDS
  rc=0
  STAGE_LIMIT=$limit timeout -k 10 "$limit" bash "$SELF" --stage "$stage" || rc=$?
  TOOK[$stage]=$((SECONDS - start))
  case $rc in
    0) STATUS[$stage]=ok ;;
    124 | 137) STATUS[$stage]="timed out" ;;
    *) STATUS[$stage]="failed ($rc)" ;;
  esac
  [[ $rc == 0 ]] || failed_bits=$((failed_bits | 1 << index))
  echo "=== $stage: ${STATUS[$stage]} in ${TOOK[$stage]} s"
done

echo
echo "=== summary ($(date -u +%T), ${SECONDS} s; logs and results in $OUT)"
for stage in "${STAGES[@]}"; do
  [[ -n ${STATUS[$stage]:-} ]] && printf '%-10s %-12s %4s s\n' "$stage" "${STATUS[$stage]}" "${TOOK[$stage]}"
done
for table in generate linear; do  # the issue's per-Linear table last
  [[ -f $OUT/$table.md ]] && { echo; cat "$OUT/$table.md"; }
done
exit "$failed_bits"
