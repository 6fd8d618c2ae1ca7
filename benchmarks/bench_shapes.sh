#!/usr/bin/env bash
# The shapes-world bench committed under docs/bench-shapes/ (docs/bench.md has the results).
# Resumable: rerun it after an interruption and it continues where it stopped.
set -euo pipefail
OUT=${1:-runs/bench-shapes}
COMMON=(--model shapes --prompts shapes-heldout --rewards shapes-verifier,shapes-clip -k 16 --batch-size 64 --no-report --out "$OUT")
SELECTION="random,most-stable,least-stable,best"
# 1. The main config (the model's 10 steps would double the cost; 5 is the few-step regime of the paper's gains).
stablenoise bench "${COMMON[@]}" --steps 5 --guidance 2 --methods "$SELECTION,inversion-ablation"
# 2. The steps sweep and the guidance sweep (selection methods: they cost nothing beyond the scores).
stablenoise bench "${COMMON[@]}" --steps 1,2,10 --guidance 2 --methods "$SELECTION"
stablenoise bench "${COMMON[@]}" --steps 5 --guidance 1.5,3 --methods "$SELECTION"
# 3. The optimizing methods on the first 60 prompts (10 per tag), main config.
stablenoise bench "${COMMON[@]}" --steps 5 --guidance 2 --optimize-prompts 60 --optimize-batch-size 30 \
    --methods "$SELECTION,reno:shapes-clip=1,optimize,optimize:lr=18.75;preserve_norm=1"
stablenoise report "$OUT"
