#!/usr/bin/env bash
# The whole chain on scikit-learn's real handwritten digits, on CPU, in a few minutes:
# data -> train (after its data check) -> export (ONNX, preprocessing in the graph; no flip TTA: a mirrored digit is
# another digit) -> verify (its golden set) -> eval (.pt vs .onnx) -> submit.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
OUT=${DEMO_DIR:-demo}
EPOCHS=${DEMO_EPOCHS:-8}
vr data digits "$OUT/digits" --overwrite
rm -rf "$OUT/run"
vr train "$OUT/digits" --model resnet18 --img-size 32 --epochs "$EPOCHS" --opt adamw --lr 2e-3 \
  --sched onecycle --out "$OUT/run"
vr export "$OUT/run/best.pt" --out "$OUT/run/model.onnx"
vr verify "$OUT/run/model.onnx"
vr eval "$OUT/run/best.pt" "$OUT/run/model.onnx" --data "$OUT/digits/val" --out "$OUT/report"
vr submit "$OUT/run/model.onnx" --test-dir "$OUT/digits/test" --out "$OUT/prediction.csv" --zip
echo "demo done: run in $OUT/run, report in $OUT/report/report.md, submission in $OUT/prediction.zip"
