#!/usr/bin/env bash
# Study A (issue #8): nanoGPT's shakespeare-char run in every recipe and ablation, 2 seeds, on one GPU.
# The runs are small, so JOBS of them share the GPU at once: their tokens/s are not speed numbers.
# Resumable: rerunning the script skips finished runs and continues unfinished ones from checkpoints.
#   bash studies/shakespeare-char/run.sh            # writes runs/shakespeare-char/{runs,runs-switch}
set -euo pipefail
cd "$(dirname "$0")/../.."
FP4LAB=${FP4LAB:-fp4lab}
OUT=${OUT:-runs/shakespeare-char}
JOBS=${JOBS:-9}
SEEDS=${SEEDS:-2}
COMMON=(--preset shakespeare-char --tokens 81920000 --warmup 100 --eval-every 250 --eval-batches 50
        --ckpt-every 250 ${EXTRA:-})
RECIPES=bf16,nvfp4,mxfp4,fp8,nvfp4:rht=false,nvfp4:stochastic_rounding=false,nvfp4:weight_2d=false
RECIPES=$RECIPES,nvfp4:bf16_layers=none,nvfp4:bf16_layers=last:4
$FP4LAB compare "${COMMON[@]}" --recipes "$RECIPES" --seeds "$SEEDS" --jobs "$JOBS" --out "$OUT/runs" &
main=$!
# the paper's end-of-training switch (forward pass only, last 18% of steps) is comparison-wide
$FP4LAB compare "${COMMON[@]}" --recipes nvfp4 --switch-at 0.82 --switch-to bf16 --forward-only \
  --seeds "$SEEDS" --jobs "$SEEDS" --out "$OUT/runs-switch" &
switch=$!
wait $main
wait $switch
