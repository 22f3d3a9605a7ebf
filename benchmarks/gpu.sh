#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one go: SiT-B/2 and SiT-XL/2 shapes, batch 32,
# bf16, eager; then with the model compiled; then with the alignment modules compiled too; then the
# perceptual head's per-call cost against its subset size.
# Needs a CUDA GPU and the bench extra (pip install ".[bench]": lpips, diffusers for SD-VAE's decoder,
# built with random weights, which cost the same).
#
#   bash benchmarks/gpu.sh [OUTDIR [STEP...]]   # OUTDIR default benchmarks/results; STEPs default all:
#                                               # eager compile compile-align lpips (each has a time limit)
set -uo pipefail
out=${1:-benchmarks/results}
shift || true
steps=${*:-eager compile compile-align lpips}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
run() {  # run NAME LIMIT_S ARGS...: one benchmark, its log and its JSON in $out, if NAME is wanted
  local name=$1 limit=$2
  shift 2
  [[ " $steps " == *" $name "* ]] || return 0
  echo "== $name: python benchmarks/overhead.py $*"
  timeout "$limit" python3 benchmarks/overhead.py "$@" --json "$out/gpu-$name.json" 2>&1 | grep -v "^USDT" | tee "$out/gpu-$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu-device.txt"
run eager 150 --gpu-shapes --warmup 5 --steps 30 --decoder sd-vae
run compile 300 --gpu-shapes --warmup 5 --steps 30 --compile --arms none repa vrpo novalidate gaussian --groups 8 32
run compile-align 300 --gpu-shapes --warmup 5 --steps 30 --compile --compile-align --arms repa vrpo novalidate
run lpips 100 --gpu-shapes --presets XL/2 --arms repa --warmup 1 --steps 1 --no-memory --decoder sd-vae --lpips-sweep 1 2 4 8 --lpips-reps 5
