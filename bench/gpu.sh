#!/usr/bin/env bash
# The GPU run: ONE prepared script for a lent CUDA machine (run from anywhere; it works in the repo
# root). It never runs past 475 s (GPU_BUDGET_S), under the 8 minutes a run may take, and is
# expected to take about 7 minutes on an H200:
#
#   bash bench/gpu.sh                    # every step; output in $OUT if set, else bench/out/gpu
#   GPU_STEPS="3 4" bash bench/gpu.sh    # a rerun of the steps that failed; the summary always runs
#   GPU_DRY_RUN=1 bash bench/gpu.sh      # on a CPU: tiny settings, checks the script (figures meaningless)
#
#   step                                                                   expected    limit
#   0 environment (nvidia-smi, versions, the LN-LSTM's recurrence), the    ~10 s       (pool)
#     carried wheels (.whl/), the editable install (no network, no deps)
#   1 python -m bench.triton_check: Triton LN-LSTM parity (exit 1 on a    ~90 s       150 s
#     mismatch), Triton / cuDNN nn.LSTM timings       -> triton-check.json
#   2 python -m bench --only cells --only trainer, fp32 (--amp off) and   ~25 s x 2   45 s each
#     bf16 (--amp bf16), in shorter blocks than its defaults ($BENCH_ARGS)
#                                                     -> bench-fp32.json, bench-bf16.json
#   3 jobs/throughput_sweep.yaml through the engine (python -m bench.jobs) ~15 s      40 s
#                                                     -> throughput-sweep.json
#   4 jobs/char_gpu_4min.yaml, 240 s of training (python -m bench.accuracy) ~255 s    265 s
#     against nanoGPT's 1.4697                        -> accuracy.json
#   5 python -m bench.gpu_summary: the table, printed last -> gpu-<YYYY-MM-DD>.json ~1 s  8 s
#
# Hard limits: every command runs under `timeout` (SIGKILL 5 s after SIGTERM) for the smaller of its
# own limit and what is left of GPU_BUDGET_S after step 4's and the summary's limits (and grace) are
# set aside: steps 0-3 share the first 190 s (about 165 s expected), step 4 always gets its full
# 265 s, and the script ends by 470 s whatever hangs.
# The script STOPS at the first failed step (a parity mismatch included), still prints the summary,
# and exits with that step's status. The summary shows each step as ok, failed(N), timeout,
# no-time, not-run (after a failure), skipped (not in GPU_STEPS) or kept (its file is from an
# earlier run in the same folder).
#
# Output, 7 files in $OUT_DIR (the device tool returns at most 8): gpu-log.txt (everything printed),
# the five step files above and gpu-<date>.json. Each step's file is deleted before it runs, so a
# file is always from this run or, for a step left out of GPU_STEPS, named `kept`.
#
# Tiny Shakespeare: the GPU machine has no network, so step 4 reads tinyshakespeare.txt from
# $RNN_DATA_DIR, by default .gpu-data/ in the repo root (git-ignored through .git/info/exclude; the
# device tool carries it when asked: carry [".gpu-data"]). Without it step 4 fails at once.
#
# A bare machine may lack packages and reach no registry: wheels carried in .whl/ are installed
# with --no-index, and the editable install uses no build isolation and no dependencies; nothing is
# downloaded. Steps 1-4 need neither pydantic nor Ray (specs are read plainly without pydantic).
#
# Settings (environment): PYTHON (python3), BENCH_DEVICE (cuda), BENCH_ARGS (for step 2),
# TRITON_CHECK_ARGS (for step 1), BENCH_SPEC (step 3's spec), ACCURACY_SPEC, ACCURACY_SECONDS
# (240), GPU_BUDGET_S (475), GPU_STEPS ("1 2 3 4"), GPU_INSTALL (1; 0 skips the installs).
set -u -o pipefail
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd); fi  # relative to the caller's folder
cd "$(dirname "$0")/.."
DRY="${GPU_DRY_RUN:-0}"
OUT_DIR="${OUT:-bench/out/gpu$([ "$DRY" = 1 ] && echo -dry)}"
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/gpu-log.txt") 2>&1
TEE_PID=$!

PY="${PYTHON:-python3}"
TMP_DIR=""
if [ "$DRY" = 1 ]; then
  # The dry run's defaults (a setting given in the environment still wins): tiny specs and --quick
  # everywhere, so minutes of GPU work become seconds of CPU work.
  TMP_DIR=$(mktemp -d)
  cat > "$TMP_DIR/throughput.yaml" <<'YAML'
# gpu.sh dry run: a tiny throughput spec with a grid (the plain reader expands it without pydantic).
name: gpu-dry-throughput
kind: throughput
data: {corpus: builtin, level: char, seq_len: 8}
model: {cell: lstm, embedding_dim: 8, hidden_size: 16, num_layers: 1, dropout: 0.0, layer_norm: true}
train: {device: cpu}
throughput: {batch_sizes: [4, 8], warmup_steps: 1, measure_steps: 2}
sweep: {grid: {train.amp: ["off"]}}
YAML
  cat > "$TMP_DIR/accuracy.yaml" <<'YAML'
# gpu.sh dry run: a tiny char LSTM on the built-in corpus; the schedule is fitted to the seconds given.
name: gpu-dry-accuracy
kind: train
data: {corpus: builtin, level: char, seq_len: 32, val_fraction: 0.02}
model: {cell: lstm, embedding_dim: 16, hidden_size: 32, num_layers: 1, dropout: 0.0}
train: {batch_size: 8, max_steps: 100, max_time_s: 3, eval_every: 200, scheduler: cosine, compile: "off", device: cpu}
YAML
  # As on the GPU image: no pydantic and no Ray (importing either raises ImportError).
  for m in pydantic ray; do
    mkdir -p "$TMP_DIR/bare/$m"
    echo "raise ImportError('$m is hidden in the gpu.sh dry run, as on the bare GPU image')" > "$TMP_DIR/bare/$m/__init__.py"
  done
  export PYTHONPATH="$TMP_DIR/bare${PYTHONPATH:+:$PYTHONPATH}"
  : "${BENCH_DEVICE:=cpu}" "${BENCH_ARGS=--quick}" "${TRITON_CHECK_ARGS=--quick}"
  : "${BENCH_SPEC:=$TMP_DIR/throughput.yaml}" "${ACCURACY_SPEC:=$TMP_DIR/accuracy.yaml}" "${ACCURACY_SECONDS:=3}"
  : "${GPU_INSTALL:=0}"   # never touch the developer's environment
fi
DEVICE="${BENCH_DEVICE:-cuda}"
BENCH_ARGS="${BENCH_ARGS---steps 10 --rounds 3 --warmup 5}"   # -, not :-, so BENCH_ARGS= means none
TRITON_CHECK_ARGS="${TRITON_CHECK_ARGS-}"
BENCH_SPEC="${BENCH_SPEC:-jobs/throughput_sweep.yaml}"
ACCURACY_SPEC="${ACCURACY_SPEC:-jobs/char_gpu_4min.yaml}"
ACCURACY_SECONDS="${ACCURACY_SECONDS:-240}"
GPU_INSTALL="${GPU_INSTALL:-1}"
GPU_STEPS="${GPU_STEPS:-1 2 3 4}"
export RNN_DATA_DIR="${RNN_DATA_DIR:-$PWD/.gpu-data}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # works even if the editable install fails

GPU_BUDGET_S="${GPU_BUDGET_S:-475}"
GRACE=5                                  # timeout's SIGTERM -> SIGKILL delay, counted in every limit
SUMMARY_LIMIT=8                          # the summary reads JSON files: about a second
ACCURACY_LIMIT=$(( ${ACCURACY_SECONDS%.*} + 25 ))   # import, data, fitting the schedule, last write
MIN_STEP_S=5
declare -A STATUS=() SECS=()
KEYS=(triton bench-fp32 bench-bf16 throughput accuracy)
STOPPED=0
RC=0
FINISHED=0

log() { echo "[gpu.sh $(date +%H:%M:%S) +${SECONDS}s] $*"; }
selected() { [[ " $GPU_STEPS " == *" $1 "* ]]; }

# The seconds a command starting now may run: its own limit, or less so that step 4 (if still to
# come) and the summary keep theirs before GPU_BUDGET_S.
limit() {
  local cap=$1 number=$2 reserve=$(( SUMMARY_LIMIT + 2 ))
  if [ "$number" -lt 4 ] && selected 4; then reserve=$(( reserve + ACCURACY_LIMIT + GRACE )); fi
  local left=$(( GPU_BUDGET_S - SECONDS - reserve - GRACE ))
  [ "$left" -lt 1 ] && left=1   # timeout 0 would mean no limit at all
  echo $(( cap < left ? cap : left ))
}

# step KEY NUMBER LIMIT FILE COMMAND...: run COMMAND under its limit, record its status and seconds,
# and stop the run at the first failure.
step() {
  local key=$1 number=$2 cap=$3 file=$4 lim t0 rc=0
  shift 4
  if ! selected "$number"; then return 0; fi
  if [ "$STOPPED" = 1 ]; then STATUS[$key]=${STATUS[$key]:-not-run}; return 0; fi
  rm -f "$OUT_DIR/$file"
  lim=$(limit "$cap" "$number")
  if [ "$lim" -lt "$MIN_STEP_S" ]; then
    log "step $number ($key): only ${lim}s left of the ${GPU_BUDGET_S}s budget; stopping"
    STATUS[$key]=no-time; STOPPED=1; RC=1
    return 0
  fi
  log "step $number ($key), limit ${lim}s: $*"
  t0=$SECONDS
  timeout -k "$GRACE" "$lim" "$@" || rc=$?
  SECS[$key]=$(( SECONDS - t0 ))
  case $rc in
    0) STATUS[$key]=ok ;;
    124|137) STATUS[$key]=timeout ;;
    *) STATUS[$key]="failed($rc)" ;;
  esac
  if [ "$rc" != 0 ]; then
    local n rest=""
    for n in $GPU_STEPS; do [ "$n" -ge "$number" ] && rest="$rest $n"; done
    log "step $number ($key) ${STATUS[$key]} after ${SECS[$key]}s; stopping here (rerun: GPU_STEPS=\"${rest# }\")"
    STOPPED=1; RC=$rc
  fi
}

# Always the last thing: the summary table (a plain list of statuses if Python itself fails).
finish() {
  local status=$? args=() k
  [ "$FINISHED" = 1 ] && return
  FINISHED=1
  [ "$RC" = 0 ] && RC=$status
  [ -n "$TMP_DIR" ] && rm -rf "$TMP_DIR"
  for k in "${KEYS[@]}"; do
    [ -n "${STATUS[$k]:-}" ] && args+=(--step "$k=${STATUS[$k]}:${SECS[$k]:-}")
  done
  local files
  files=$(find "$OUT_DIR" -maxdepth 1 -type f | wc -l)
  [ "$files" -gt 7 ] && log "note: $OUT_DIR holds $files files; the device tool returns at most 8"
  log "done in ${SECONDS}s (status $RC); output in $OUT_DIR"
  if ! timeout -k 2 "$SUMMARY_LIMIT" "$PY" -m bench.gpu_summary "$OUT_DIR" --total-s "$SECONDS" "${args[@]}"; then
    echo
    echo "== GPU run summary (bench.gpu_summary failed; statuses only) =="
    for k in "${KEYS[@]}"; do printf '%-12s %-12s %ss\n' "$k" "${STATUS[$k]:-skipped}" "${SECS[$k]:--}"; done
  fi
  exec 1>&- 2>&-          # end tee's input, and wait until it has written everything out
  wait "$TEE_PID" 2>/dev/null
  exit "$RC"
}
trap finish EXIT
trap 'RC=130; exit 130' INT
trap 'RC=143; exit 143' TERM

log "=== bash bench/gpu.sh: steps \"$GPU_STEPS\" on $DEVICE, budget ${GPU_BUDGET_S}s$([ "$DRY" = 1 ] && echo ', DRY RUN'); output in $OUT_DIR"

log "step 0: environment"
timeout -k 2 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || log "nvidia-smi: not available"
if [ "$GPU_INSTALL" = 1 ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    log "installing carried wheels from .whl/ (no index)"
    if timeout -k "$GRACE" "$(limit 60 0)" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl; then
      export PYTHONPATH="/tmp/site:$PYTHONPATH"   # carried wheels win over the image's packages
    else
      log "carried wheels failed to install (continuing: no step needs them)"
    fi
  fi
  if timeout -k "$GRACE" "$(limit 30 0)" "$PY" -m pip install -q -e . --no-deps --no-build-isolation --no-index \
      >/dev/null 2>&1; then
    log "installed the project (editable, no deps)"
  else
    log "editable install failed or timed out; running from the source tree (PYTHONPATH)"
  fi
fi
timeout -k "$GRACE" "$(limit 40 0)" "$PY" - "$DEVICE" <<'PY' || log "environment probe failed (status $?)"
import importlib
import sys

import torch

from rnn.config import ModelConfig
from rnn.models import build_model

cuda = torch.cuda.is_available()
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version(), "|", torch.cuda.get_device_name(0) if cuda else "no CUDA device")


def present(module: str) -> str:
    try:
        importlib.import_module(module)
    except ImportError:
        return "NO"
    return "yes"


print("modules:", ", ".join(f"{m} {present(m)}" for m in ("numpy", "yaml", "tokenizers", "triton", "pydantic", "ray")))
device = torch.device(sys.argv[1])
model = build_model(ModelConfig(cell="lstm", layer_norm=True), 65)
print(f"layer-norm LSTM recurrence on {device}: fp32 {model.recurrence_path(device, 'fp32')}, "
      f"bf16 {model.recurrence_path(device, 'bf16')}")
PY
log "Tiny Shakespeare: $RNN_DATA_DIR/tinyshakespeare.txt $([ -f "$RNN_DATA_DIR/tinyshakespeare.txt" ] && echo found || echo MISSING)"

# shellcheck disable=SC2086  # the *_ARGS settings are lists of words
step triton 1 150 triton-check.json \
  "$PY" -m bench.triton_check --device "$DEVICE" $TRITON_CHECK_ARGS --out "$OUT_DIR/triton-check.json"
# shellcheck disable=SC2086
step bench-fp32 2 45 bench-fp32.json \
  "$PY" -m bench --device "$DEVICE" --only cells --only trainer --amp off $BENCH_ARGS --out "$OUT_DIR/bench-fp32.json"
# shellcheck disable=SC2086
step bench-bf16 2 45 bench-bf16.json \
  "$PY" -m bench --device "$DEVICE" --only cells --only trainer --amp bf16 $BENCH_ARGS --out "$OUT_DIR/bench-bf16.json"
step throughput 3 40 throughput-sweep.json \
  "$PY" -m bench.jobs "$BENCH_SPEC" --device "$DEVICE" --out "$OUT_DIR/throughput-sweep.json"
if selected 4 && [ "$STOPPED" = 0 ] && grep -Eq '^[[:space:]]*corpus:[[:space:]]*shakespeare' "$ACCURACY_SPEC" \
    && [ ! -f "$RNN_DATA_DIR/tinyshakespeare.txt" ]; then
  log "step 4 (accuracy): $RNN_DATA_DIR/tinyshakespeare.txt is missing and this machine cannot download it;" \
      "copy it to .gpu-data/ and carry that folder, or set RNN_DATA_DIR"
  rm -f "$OUT_DIR/accuracy.json"
  STATUS[accuracy]=no-corpus; STOPPED=1; RC=1
fi
step accuracy 4 "$ACCURACY_LIMIT" accuracy.json \
  "$PY" -m bench.accuracy "$ACCURACY_SPEC" --device "$DEVICE" --max-time-s "$ACCURACY_SECONDS" \
  --out "$OUT_DIR/accuracy.json"
# finish (the EXIT trap) prints the summary and exits with the first failure's status.
