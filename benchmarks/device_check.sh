#!/usr/bin/env bash
# The prepared GPU check: `pgolf gpu-check` on a bare lent H200 (or any CUDA pod) in one call,
# writing its JSON report and log to $OUT (or ./gpu-check-out). Budget: under 8 minutes in all.
#
# The machine has Python 3.12, torch 2.11+cu130, triton, numpy, sentencepiece, click, safetensors,
# huggingface_hub and tqdm, but not zstandard (pgolf's artifact compressor) and no network. So,
# on the developer machine, in the repo root, once per session (none of it is committed: .gitignore):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl zstandard==0.25.0
#   mkdir -p .ref && git -C /work/.mirror/openai+parameter-golf/repo show HEAD:train_gpt.py > .ref/train_gpt.py
#       # (the challenge's baseline script: `fetch github:openai/parameter-golf` first; any copy will do)
#   pgolf data sample && pgolf data sample --vocab 8192      # optional: carried, the pod skips the ~1-2 min build
#
# and then the one device call (the `run` tool), 570 s leaves time for the report to come back:
#
#   run(command="bash benchmarks/device_check.sh", carry=[".whl", ".ref", "data/sample"], timeout_s=570)
#
# Its files come back as gpu_check.json and gpu_check.log. Without .ref/train_gpt.py the reference
# comparison is skipped; without data/sample the check builds the sample datasets itself.
# Environment knobs: GPU_CHECK_SECONDS (timed seconds per config, default 10 here, to stay inside the budget), GPU_CHECK_ARGS (more flags).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/pgolf-inductor}"
PY="${PYTHON:-python3}"
SITE="${SITE:-/tmp/site}"  # the carried wheels and pgolf go here (pip --target)
t0=$(date +%s)
{
  echo "== device_check.sh $(date -u +%FT%TZ) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  # Wheels the image lacks, then pgolf itself without dependencies (the image's torch stays).
  if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 3
  fi
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" . \
    || echo "pip install of pgolf failed; running it from the checkout (PYTHONPATH)"
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "== installed in $(( $(date +%s) - t0 )) s"
  $PY -c "import torch, zstandard, shared; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 4
  REF=()
  [ -f .ref/train_gpt.py ] && REF=(--reference .ref/train_gpt.py)
  rm -f "$OUT/gpu_check.json"
  # shellcheck disable=SC2086
  $PY -m shared.cli gpu-check --seconds "${GPU_CHECK_SECONDS:-10}" "${REF[@]}" --json "$OUT/gpu_check.json" \
      ${GPU_CHECK_ARGS:-}
  rc=$?
  echo "== gpu-check exit code $rc after $(( $(date +%s) - t0 )) s"
  exit $rc
} 2>&1 | tee "$LOG"
