# Study B's shared settings (sourced by run.sh and run_more.sh from the repository root); every one can be
# overridden from the environment.
FP4LAB=${FP4LAB:-fp4lab}
SHARED=${SHARED:-../shared/data}
DATA=${DATA:-data/gutenberg}
OUT=${OUT:-runs/gutenberg}
# the 60M Llama on 30M tokens, 20 validation batches every 100 steps
TRAIN=(--preset 60m --data "$DATA" --tokens 30000000 --eval-every 100 --eval-batches 20)
