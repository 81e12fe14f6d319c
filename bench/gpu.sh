#!/usr/bin/env bash
# The GPU benchmark run: ONE prepared script for a lent CUDA machine (run from the repo root).
#
#   bash bench/gpu.sh            # writes to $OUT if set, else bench/out/gpu
#
# 1. python -m bench on CUDA at full steps and full shapes (ratios 1-3; the sweep-dispatch and
#    via-run parts are CPU measurements and are skipped here), amp auto (the engine's default).
#    The LN-LSTM line is LN-LSTM / cuDNN nn.LSTM at the seed (B 2048) and char-rnn (B 64) shapes;
#    the log says which recurrence the layer-norm model used (triton where Triton imports);
# 2. ratios 1-2 again with amp off, so the layer-norm LSTM's fp32 figure is on record too;
# 3. jobs/throughput_sweep.yaml through the engine directly (rnn.throughput.measure_throughput
#    per trial, no Ray), as a table with the CPU guard's memory estimate beside the measured peak;
# 4. jobs/throughput_amp.yaml the same way: fp32 vs bf16 for plain and layer-norm LSTM, the
#    measurement behind `amp: auto`;
# 5. only with BENCH_COMPILE=1 (up to 7 more minutes): python -m bench.compile, eager vs
#    torch.compile(mode="reduce-overhead") training steps, the measurement behind `compile: auto`.
#
# A dry run on a machine without a GPU checks the script itself (figures meaningless):
#   BENCH_DEVICE=cpu BENCH_ARGS=--quick BENCH_SPEC=small.yaml bash bench/gpu.sh
#
# Output: $OUT_DIR/gpu-log.txt (everything printed, tables included) and one JSON per step.
# A bare machine may lack packages and reach no registry: wheels carried in .whl/ are
# installed if present, the editable install uses no build isolation and no dependencies, and
# every step tolerates failure so the later ones still run. Expected 2-3 minutes on an H100;
# the step timeouts (220 + 80 + 120 s) keep the worst case near 7 minutes.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/out/gpu}"
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/gpu-log.txt") 2>&1
PY="${PYTHON:-python3}"
DEVICE="${BENCH_DEVICE:-cuda}"
EXTRA="${BENCH_ARGS:-}"
SPEC="${BENCH_SPEC:-jobs/throughput_sweep.yaml}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # works even if the install below fails
log() { echo "[gpu.sh $(date +%H:%M:%S)] $*"; }
START=$(date +%s)

log "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
  "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
if ls .whl/*.whl >/dev/null 2>&1; then
  log "installing carried wheels from .whl/"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  else
    log "carried wheels failed to install (continuing)"
  fi
fi
if "$PY" -m pip install -q -e . --no-deps --no-build-isolation >/dev/null 2>&1; then
  log "installed the project (editable, no deps)"
else
  log "editable install failed; running from the source tree (PYTHONPATH)"
fi
for pair in numpy:numpy yaml:pyyaml tokenizers:tokenizers pydantic:pydantic triton:triton; do
  mod="${pair%%:*}"; pkg="${pair##*:}"
  "$PY" -c "import $mod" 2>/dev/null && continue
  log "$mod missing; trying pip install $pkg"
  "$PY" -m pip install -q "$pkg" >/dev/null 2>&1 || log "could not install $pkg (offline?); steps that need it may fail"
done

log "layer-norm LSTM recurrence on $DEVICE (fp32, bf16)"
"$PY" -c "import torch; from rnn.config import ModelConfig; from rnn.models import build_model
m = build_model(ModelConfig(cell='lstm', layer_norm=True), 65); d = torch.device('$DEVICE')
print('recurrence:', m.recurrence_path(d, 'fp32'), m.recurrence_path(d, 'bf16'))" || log "recurrence check failed"

log "1/3 bench, amp auto"
timeout 220 "$PY" -m bench --device "$DEVICE" $EXTRA --skip dispatch --skip via-run -v --out "$OUT_DIR/bench-gpu.json" 2>&1 \
  | grep -v ' INFO rnn.data' || log "bench (amp auto) failed or timed out (status $?)"

log "2/3 bench, amp off, ratios 1-2"
timeout 80 "$PY" -m bench --device "$DEVICE" $EXTRA --only cells --amp off --out "$OUT_DIR/bench-gpu-fp32.json" \
  || log "bench (amp off) failed or timed out (status $?)"

log "3/3 throughput sweep: $SPEC"
timeout 120 "$PY" -m bench.jobs "$SPEC" --device "$DEVICE" --out "$OUT_DIR/throughput-sweep-gpu.json" 2>&1 \
  | grep -v ' INFO rnn.data' || log "throughput sweep failed or timed out (status $?)"

log "4/4 precision policy: jobs/throughput_amp.yaml (fp32 vs bf16, plain vs layer-norm LSTM)"
timeout 100 "$PY" -m bench.jobs jobs/throughput_amp.yaml --device "$DEVICE" --out "$OUT_DIR/throughput-amp-gpu.json" 2>&1 \
  | grep -v ' INFO rnn.data' || log "amp sweep failed or timed out (status $?)"

if [ "${BENCH_COMPILE:-0}" = 1 ]; then
  # Optional (BENCH_COMPILE=1): train.compile's figures on this device, eager vs torch.compile with
  # reduce-overhead, char-rnn shape at B 64. The ln-torch case compiles for minutes.
  log "5/5 train.compile: python -m bench.compile (reduce-overhead)"
  timeout 420 "$PY" -m bench.compile --device "$DEVICE" --out "$OUT_DIR/compile-gpu.json" 2>&1 \
    | grep -v ' INFO rnn.data' || log "compile bench failed or timed out (status $?)"
fi

log "done in $(( $(date +%s) - START ))s; output in $OUT_DIR"
ls -l "$OUT_DIR"
