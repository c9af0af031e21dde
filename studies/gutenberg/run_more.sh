#!/usr/bin/env bash
# Study B, round 2 (issue #8): more seeds, the nvfp4 ablations and the end-of-training forward-only switch,
# with the settings of run.sh. Run run.sh first (data). Resumable: finished runs are skipped, others resume.
# The runs go 3 at a time (JOBS) on one GPU, so their tokens/s are not speed numbers.
#   SHARED=../shared/data bash studies/gutenberg/run_more.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. studies/gutenberg/settings.sh
JOBS=${JOBS:-3}
COMMON=("${TRAIN[@]}" --ckpt-every 100 --no-progress --resume)
one() { # recipe seed run-dir [extra]: train, then the validation and WikiText-2 perplexities
  local r=$1 s=$2 d=$3; shift 3
  mkdir -p "$d"
  [ -f "$d/final.json" ] || $FP4LAB train "${COMMON[@]}" --recipe "$r" --seed "$s" --out "$d" "$@" > "$d.log" 2>&1
  [ -f "$d/gutenberg_valid.json" ] || $FP4LAB eval "$d/model" --data "$SHARED/gutenberg_valid.txt.xz" --ctx 1024 --json "$d/gutenberg_valid.json"
  [ -f "$d/wikitext2.json" ] || $FP4LAB eval "$d/model" --data "$SHARED/wikitext-2-raw_wiki.test.raw.xz" --ctx 1024 --json "$d/wikitext2.json"
}
R=$OUT/runs
jobs_list=(
  "bf16 1 $R/bf16/seed1" "bf16 2 $R/bf16/seed2" "nvfp4 1 $R/nvfp4/seed1" "mxfp4 1 $R/mxfp4/seed1"
  "nvfp4:rht=false 0 $R/nvfp4_rht=false/seed0"
  "nvfp4:stochastic_rounding=false 0 $R/nvfp4_stochastic_rounding=false/seed0"
  "nvfp4:weight_2d=false 0 $R/nvfp4_weight_2d=false/seed0"
  "nvfp4:bf16_layers=none 0 $R/nvfp4_bf16_layers=none/seed0"
  "nvfp4 0 $OUT/runs-switch/nvfp4/seed0 --switch-at 0.82 --switch-to bf16 --forward-only"
)
for j in "${jobs_list[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  one $j &
done
wait
# one report over both rounds: widen run.sh's comparison plan to the round-2 recipes and seeds (missing
# (recipe, seed) pairs are skipped by the report), marked as sharing the GPU so tokens/s is left out
python3 - "$R/compare.json" <<'PY'
import json, sys
p = sys.argv[1]; plan = json.load(open(p))
plan["recipes"] += [r for r in ["nvfp4:rht=false", "nvfp4:stochastic_rounding=false", "nvfp4:weight_2d=false",
                                "nvfp4:bf16_layers=none"] if r not in plan["recipes"]]
plan.update(seeds=3, shared_device=True)
open(p, "w").write(json.dumps(plan, indent=2) + "\n")
PY
$FP4LAB report "$R"
