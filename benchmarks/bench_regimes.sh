#!/usr/bin/env bash
# Where does inversion stability help? The regimes of issue #20 on the shipped models, each arm its own store:
# the noise as drawn ("keep") and every noise on the sqrt(d) shell ("shell"), so that a random seed of the same
# arm is each arm's baseline. Resumable: rerun it and every bench continues where it stopped.
# Usage: bash benchmarks/bench_regimes.sh [OUT_ROOT] [STAGES]  (default runs/regimes, all stages)
# The "keep" arms of the 5-step configs are docs/bench-shapes and docs/bench-shapes-flow (same captions, seeds).
set -euo pipefail
ROOT=${1:-runs/regimes}
STAGES=${2:-"ddim5 flow5 ddim10 flow10 ddim20 ddim50 flow20 kablation ddim5-source flow5-destination turbo1 turbo2 turbo4 turbo4-cfg turbo2-cfg turbo1-cfg"}
COMMON=(--prompts shapes-heldout --rewards shapes-verifier,shapes-clip --batch-size 64 --no-report
        --methods random,most-stable,least-stable,best)
run() {  # NAME MODEL STEPS K LIMIT NORMS [GUIDANCE, default 2] [MORE BENCH OPTIONS...]
    [[ " $STAGES " == *" $1 "* ]] || return 0
    stablenoise bench "${COMMON[@]}" --model "$2" --steps "$3" -k "$4" ${5:+--limit "$5"} --noise-norm "$6" \
        --guidance "${7:-2}" --out "$ROOT/$1" "${@:8}"
}
run ddim5 shapes 5 16 "" shell            # 200 captions x 16 seeds
run flow5 shapes-flow 5 16 "" shell
run ddim10 shapes 10 8 "" keep,shell      # 200 captions x 8 seeds
run flow10 shapes-flow 10 8 "" keep,shell
run ddim20 shapes 20 8 100 keep,shell     # the converged regime: 100 captions x 8 seeds
run ddim50 shapes 50 8 100 keep,shell
run flow20 shapes-flow 20 8 100 shell      # the keep arm: docs/bench-shapes-flow-sweep (same captions, seeds)
# K ablation on the shell (K = 4, 16, 64): "most stable of k" takes each prompt's first k of the 64 seeds
run kablation shapes 5 64 100 shell 2 --methods random,most-stable,least-stable,best,most-stable-of:4,most-stable-of:16
# The inversion convention: the other point than each model family's default (the default's stores are the
# 5-step keep arms above, whose first 100 captions have the same seeds)
run ddim5-source shapes 5 16 100 keep 2 --inversion-point source
run flow5-destination shapes-flow 5 16 100 keep 2 --inversion-point destination
# The distilled regime (shapes-turbo: no CFG, guidance 1), both arms, 100 captions x 16 seeds
run turbo1 shapes-turbo 1 16 100 keep,shell 1
run turbo2 shapes-turbo 2 16 100 keep,shell 1
run turbo4 shapes-turbo 4 16 100 keep,shell 1
# ... and at its default CFG 1.5 over its own unconditional branch (two network calls a step): the setting at
# which it meets the accuracy and grain bar (docs/regimes/turbo-quality-cfg.json)
run turbo4-cfg shapes-turbo 4 16 100 keep,shell 1.5
run turbo2-cfg shapes-turbo 2 16 100 keep,shell 1.5
run turbo1-cfg shapes-turbo 1 16 100 keep,shell 1.5
