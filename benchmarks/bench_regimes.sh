#!/usr/bin/env bash
# Where does inversion stability help? The regimes of issue #20 on the shipped models, each arm its own store:
# the noise as drawn ("keep") and every noise on the sqrt(d) shell ("shell"), so that a random seed of the same
# arm is each arm's baseline. Resumable: rerun it and every bench continues where it stopped.
# Usage: bash benchmarks/bench_regimes.sh [OUT_ROOT] [STAGES]  (default runs/regimes, all stages)
# The "keep" arms of the 5-step configs are docs/bench-shapes and docs/bench-shapes-flow (same captions, seeds).
set -euo pipefail
ROOT=${1:-runs/regimes}
STAGES=${2:-"ddim5 flow5 ddim10 flow10 ddim20 ddim50 turbo1 turbo2 turbo4"}
COMMON=(--prompts shapes-heldout --rewards shapes-verifier,shapes-clip --batch-size 64 --no-report
        --methods random,most-stable,least-stable,best)
run() {  # NAME MODEL STEPS K LIMIT NORMS [GUIDANCE, default 2]
    [[ " $STAGES " == *" $1 "* ]] || return 0
    stablenoise bench "${COMMON[@]}" --model "$2" --steps "$3" -k "$4" ${5:+--limit "$5"} --noise-norm "$6" \
        --guidance "${7:-2}" --out "$ROOT/$1"
}
run ddim5 shapes 5 16 "" shell            # 200 captions x 16 seeds
run flow5 shapes-flow 5 16 "" shell
run ddim10 shapes 10 8 "" keep,shell      # 200 captions x 8 seeds
run flow10 shapes-flow 10 8 "" keep,shell
run ddim20 shapes 20 8 100 keep,shell     # the converged regime: 100 captions x 8 seeds
run ddim50 shapes 50 8 100 keep,shell
