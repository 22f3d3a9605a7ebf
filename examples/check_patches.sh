#!/usr/bin/env bash
# Apply this project's patch to a checkout of official REPA, SiT or DiT and run a few training
# steps on CPU with a tiny configuration and synthetic data, without any download.
#
#   examples/check_patches.sh DIR            # DIR: a checkout of sihyun-yu/REPA, willisma/SiT or
#                                            #      facebookresearch/DiT at the pinned commit
#   PYTHON=/path/to/python examples/check_patches.sh DIR
#
# DIR itself is not modified: the patch is checked against it with `git apply --check`, then
# applied to a copy in a temporary directory. Both A/B arms (--alignment repa and vrpo) are run.
# Needs torch, torchvision, timm, accelerate (REPA) and PIL; diffusers, wandb and torchdiffeq are
# stubbed when missing, and nothing is downloaded (see examples/check_driver.py).
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

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
for ARM in repa vrpo; do
    "$PY" "$HERE/check_driver.py" "$KIND" "$WORK/repo" --alignment "$ARM" --work "$WORK"
done
echo "[check] $KIND: patch applies cleanly and trains with --alignment repa and vrpo"
