#!/usr/bin/env bash
# The prepared device check for a lent H100/H200 (one `run` call, under 10 minutes), aimed at what a
# record run needs first. Each step writes one JSON file to $OUT (or ./gpu-check-out):
#
#   pod_env.json    the pod's environment against the pins (benchmarks/pod_env.py: torch, triton, FA3,
#                   zstandard, brotli, zpaq), first, so every later number says what it ran on
#   gpu_check.json  `pgolf gpu-check --config configs/record.toml`: ms/step of the record's whole step
#                   before and after depth recurrence (speed.orders.plain|looped), peak memory, the
#                   attention kernel that ran (environment.attention), the compiled step against eager
#                   and whether the fused Triton kernels ran (speed.fused_kernels, train.fused_kernels = "auto":
#                   the line "== fused_kernels" in the log)
#   kernels.json, kernels_time.json  only with DEVICE_CHECK_KERNELS=1: the kernels against eager on the GPU
#                   (benchmarks/kernel_check.py units) and fused vs eager ms at the record's shapes (... time)
#   ttt.json        one TTT batch at 64 x 2048 (benchmarks/device_probe.py ttt): seconds per chunk, peak memory
#   pack.json       Hessians on the GPU + packing the 36M record-shaped checkpoint (device_probe.py pack)
#   device_check.log  everything printed
#
# The image has torch 2.11 and triton but not zstandard, brotli or zpaq (pgolf's compressors) and no network.
# Once per session, on the developer machine, in the repo root (nothing of it is committed):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_34_x86_64 \
#       -d .whl zstandard==0.25.0 brotli==1.2.1 zpaq==0.3.7
#   pgolf data sample --vocab 8192      # optional, carried: the check otherwise builds it (~1-2 min)
#
# then the one device call (the `run` tool):
#
#   run(command="bash benchmarks/device_check.sh", carry=[".whl", "data/sample"], timeout_s=590)
#
# A CPU dry run of the same steps at tiny sizes (no GPU: gpu-check shrinks itself, the probes take --tiny,
# the pack probe on configs/small-record.toml):
#
#   DEVICE_CHECK_TINY=1 OUT=/tmp/dc bash benchmarks/device_check.sh
#
# Knobs: GPU_CHECK_SECONDS (timed seconds per layer order, default 8), GPU_CHECK_ARGS (more flags).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
LOG="$OUT/device_check.log"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/pgolf-inductor}"
PY="${PYTHON:-python3}"
SITE="${SITE:-/tmp/site}"  # the carried wheels go here (pip --target)
TINY=() PACK_TINY=()
[ -n "${DEVICE_CHECK_TINY:-}" ] && TINY=(--tiny) && PACK_TINY=(--tiny --config configs/small-record.toml)
t0=$(date +%s)
step() {  # step NAME SECONDS CMD...: run with a time limit, log its exit code and time
  local name=$1 limit=$2; shift 2
  local s=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@"
  local rc=$?
  echo "== $name exit $rc in $(( $(date +%s) - s )) s (total $(( $(date +%s) - t0 )) s)"
  return 0
}
{
  echo "== device_check.sh $(date -u +%FT%TZ) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 3
  fi
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  step pod_env 60 $PY -m benchmarks.pod_env --json "$OUT/pod_env.json"
  rm -f "$OUT/gpu_check.json"
  # shellcheck disable=SC2086
  step gpu_check 300 $PY -m shared.cli gpu-check --config configs/record.toml --seconds "${GPU_CHECK_SECONDS:-8}" \
      --json "$OUT/gpu_check.json" ${GPU_CHECK_ARGS:-}
  $PY -c 'import json, sys; r = json.load(open(sys.argv[1]))
print("== fused_kernels:", {n: (c.get("speed") or {}).get("fused_kernels") for n, c in (r.get("configs") or {}).items()})' \
      "$OUT/gpu_check.json" 2>/dev/null || echo "== fused_kernels: no gpu_check.json"
  if [ -n "${DEVICE_CHECK_KERNELS:-}" ]; then
    step kernels 90 $PY -m benchmarks.kernel_check units --json "$OUT/kernels.json"
    step kernels_time 90 $PY -m benchmarks.kernel_check time --json "$OUT/kernels_time.json"
  fi
  step ttt 120 $PY -m benchmarks.device_probe ttt "${TINY[@]}" --json "$OUT/ttt.json"
  step pack 150 $PY -m benchmarks.device_probe pack "${PACK_TINY[@]}" --json "$OUT/pack.json"
  echo "== done in $(( $(date +%s) - t0 )) s"
} 2>&1 | tee "$LOG"
