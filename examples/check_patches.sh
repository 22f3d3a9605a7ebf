#!/usr/bin/env bash
# Apply this project's patch to a checkout of official REPA, SiT or DiT and run a few training
# steps on CPU with a tiny configuration and synthetic data, without any download.
#
#   examples/check_patches.sh DIR            # DIR: a checkout of sihyun-yu/REPA, willisma/SiT or
#                                            #      facebookresearch/DiT at the pinned commit
#   PYTHON=/path/to/python examples/check_patches.sh DIR
#
# DIR itself is not modified: the patch is checked against it with `git apply --check`, then
# applied to a copy in a temporary directory. Arms, one after the other (examples/check_driver.py):
#   repa, vrpo   the A/B arms (--alignment repa / vrpo)
#   all-heads    every reward head on: perceptual (SD-VAE decoder from its config, random weights;
#                LPIPS-VGG with a random backbone), decodability, sample weights
#   ddp          two processes on gloo (accelerate launch for REPA, torchrun for SiT and DiT): the
#                alignment state is equal on both ranks, and the step-3 checkpoint reloads strictly
#                and replays step 4 with identical losses
# Each also checks the x0 formulas against the host's own path functions and x0_pred against the
# host's denoising loss at every step. Needs torch, torchvision, timm, PIL, lpips, diffusers and
# accelerate (REPA); wandb and torchdiffeq are stubbed when missing; nothing is downloaded.
set -euo pipefail

if [ $# -lt 1 ] || [ ! -d "$1" ]; then
    echo "usage: $0 DIR   (DIR: a checkout of official REPA, SiT or DiT)" >&2
    exit 2
fi
DIR=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=${PYTHON:-python}

if [ -f "$DIR/loss.py" ] && grep -q "class SILoss" "$DIR/loss.py"; then
    KIND=repa
elif [ -d "$DIR/transport" ] && [ -f "$DIR/train.py" ]; then
    KIND=sit
elif [ -d "$DIR/diffusion" ] && [ -f "$DIR/train.py" ]; then
    KIND=dit
else
    echo "error: $DIR is not a checkout of REPA (loss.py with SILoss), SiT (transport/) or DiT (diffusion/)" >&2
    exit 2
fi
PATCH="$HERE/$KIND/$KIND.patch"
echo "[check] $KIND checkout at $DIR ($(git -C "$DIR" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"

# Check this source tree's package, whatever vrpo_loss may be installed.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

(cd "$DIR" && git apply --check "$PATCH")
echo "[check] git apply --check $(basename "$PATCH"): clean"

WORK=$(mktemp -d -t "vrpo-check-$KIND.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/repo"
(cd "$DIR" && tar --exclude=.git -cf - .) | (cd "$WORK/repo" && tar -xf -)
(cd "$WORK/repo" && git apply --stat "$PATCH" && git apply "$PATCH")

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
LOG="$WORK/summary"
: > "$LOG"
for ARM in repa vrpo all-heads; do
    "$PY" "$HERE/check_driver.py" "$KIND" "$WORK/repo" --arm "$ARM" --work "$WORK" 2>&1 | tee "$WORK/$ARM.log" | grep '^\[check\]'
    echo "  $ARM: $(grep -c 'alignment loss [+-]' "$WORK/$ARM.log") steps, $(grep -q -- "--arm $ARM: OK" "$WORK/$ARM.log" && echo OK)" >> "$LOG"
done
# Two processes on gloo, launched as each host expects: accelerate (REPA), torchrun (SiT, DiT).
PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
if [ "$KIND" = repa ]; then
    export ACCELERATE_USE_CPU=1  # REPA's Accelerator() then runs MULTI_CPU on gloo
    HOW="accelerate launch --multi_gpu --num_processes 2"
    LAUNCH=("$PY" -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --main_process_port "$PORT" --mixed_precision no --dynamo_backend no)
else
    HOW="torchrun --nproc_per_node 2"
    LAUNCH=("$PY" -m torch.distributed.run --nproc_per_node 2 --master_port "$PORT")
fi
"${LAUNCH[@]}" "$HERE/check_driver.py" "$KIND" "$WORK/repo" --arm ddp --work "$WORK" 2>&1 | tee "$WORK/ddp.log" | grep '^\[check\]'
echo "  ddp ($HOW, gloo): $(grep -c 'alignment loss [+-]' "$WORK/ddp.log") steps, $(grep -q -- '--arm ddp: OK' "$WORK/ddp.log" && echo OK)" >> "$LOG"
echo "[check] $KIND: patch applies cleanly; arms run:"
cat "$LOG"
