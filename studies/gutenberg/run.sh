#!/usr/bin/env bash
# Study B (issue #8): a 60M-parameter Llama on 30M tokens of Project Gutenberg, bf16/nvfp4/mxfp4/fp8,
# one run at a time on one GPU (so tokens/s and peak memory are per-recipe measurements), then the
# validation and WikiText-2 test perplexities of every trained model.
#   SHARED=../shared/data bash studies/gutenberg/run.sh      # writes data/gutenberg, runs/gutenberg
set -euo pipefail
cd "$(dirname "$0")/../.."
. studies/gutenberg/settings.sh
RECIPES=${RECIPES:-bf16,nvfp4,mxfp4,fp8}
if [ ! -f "$DATA/meta.json" ]; then
  # the committed tokenizer (BPE 16384, trained on gutenberg_train.txt by `data prepare --tokenizer bpe:16384`)
  $FP4LAB data prepare "$SHARED/gutenberg_train.txt.xz" --valid "$SHARED/gutenberg_valid.txt.xz" \
    --tokenizer studies/gutenberg/tokenizer.json --out "$DATA"
fi
$FP4LAB compare "${TRAIN[@]}" --recipes "$RECIPES" --seeds 1 --jobs 1 --out "$OUT/runs" ${EXTRA:-}
for run in "$OUT"/runs/*/seed0; do
  [ -f "$run/model/config.json" ] || continue
  [ -f "$run/wikitext2.json" ] || $FP4LAB eval "$run/model" --data "$SHARED/wikitext-2-raw_wiki.test.raw.xz" \
    --ctx 1024 --json "$run/wikitext2.json"
  [ -f "$run/gutenberg_valid.json" ] || $FP4LAB eval "$run/model" --data "$SHARED/gutenberg_valid.txt.xz" \
    --ctx 1024 --json "$run/gutenberg_valid.json"
done
