#!/usr/bin/env bash
# The shapes-world bench committed under docs/bench-shapes/ (docs/bench.md has the results).
# Resumable: rerun it after an interruption and it continues where it stopped. Sizes are what two CPU
# cores afford in about 80 minutes; a GPU runs the full sizes with the same commands (raise -k, drop the limits).
# Environment: MODEL (default shapes; shapes-flow for the flow-matching model), EXTRA (more bench options for
# every run, e.g. "--device cuda"), STAGES (default "1 2 3": which of the numbered runs below to do).
set -euo pipefail
OUT=${1:-runs/bench-shapes}
SWEEP_OUT=${2:-runs/bench-shapes-sweep}
read -ra EXTRA_ARGS <<< "${EXTRA:-}"
STAGES=${STAGES:-1 2 3}
COMMON=(--model "${MODEL:-shapes}" --prompts shapes-heldout --rewards shapes-verifier,shapes-clip --batch-size 64
        --no-report "${EXTRA_ARGS[@]}")
SELECTION="random,most-stable,least-stable,best"
# 1. The main config, K = 16: every selection method and the inversion-guidance ablation (5 steps: the few-step
#    regime of the paper's gains, half the cost of the model's 10).
if [[ $STAGES == *1* ]]; then
stablenoise bench "${COMMON[@]}" --out "$OUT" -k 16 --steps 5 --guidance 2 --methods "$SELECTION,inversion-ablation"
fi
# 2. The optimizing methods, from each prompt's first seed, on the first 30 prompts (5 per tag): ReNO-style
#    reward optimization through the learned shapes-clip reward, and the paper's stability optimization.
if [[ $STAGES == *2* ]]; then
stablenoise bench "${COMMON[@]}" --out "$OUT" -k 16 --steps 5 --guidance 2 --optimize-prompts 30 \
    --optimize-batch-size 10 --methods "$SELECTION,inversion-ablation,reno:shapes-clip=1,optimize,optimize:lr=18.75;preserve_norm=1"
fi
stablenoise report "$OUT"
# 3. The steps and guidance sweeps, K = 8 (selection methods only: they cost nothing beyond the scores).
if [[ $STAGES == *3* ]]; then
stablenoise bench "${COMMON[@]}" --out "$SWEEP_OUT" -k 8 --steps 1,2,5,10 --guidance 2 --methods "$SELECTION"
stablenoise bench "${COMMON[@]}" --out "$SWEEP_OUT" -k 8 --steps 5 --guidance 1.5,3 --methods "$SELECTION"
stablenoise report "$SWEEP_OUT"
fi
