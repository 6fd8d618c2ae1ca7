"""Selection by a reward with a cheap proxy: how often does two-stage best-of-K keep full best-of-K's seed, at what
cost, and how do its picks fare with the exact verifier?

    python benchmarks/reward_proxy.py docs/bench-shapes --reward shapes-clip --judge shapes-verifier \
        --proxy-steps 1,2 --keep 1,2,4,8 --check-prompts 10 --json docs/perf-shapes/reward_proxy.json

Full best-of-K is read off a bench store (its seed rows carry the reward and the verifier of every seed's image
at the store's steps). The proxy scores the same seeds with a fewer-step image (``sn.score_seeds`` with a
``RewardScorer``), resumably (``--state``); two-stage selection keeps the ``keep`` seeds the proxy ranks highest
and takes the best of them by the stored full score. Real ``sn.select(scorer=..., proxy=Proxy(steps=p),
keep=m)`` runs on the first prompts check the simulation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import stablenoise as sn
from stablenoise import stats
from stablenoise.bench.results import load_results
from stablenoise.records import versions, write_json_atomic


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--reward", default="shapes-clip")
    ap.add_argument("--judge", default="shapes-verifier")
    ap.add_argument("--proxy-steps", type=numbers, default=[1, 2])
    ap.add_argument("--keep", type=numbers, default=[1, 2, 4, 8])
    ap.add_argument("--check-prompts", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--state", type=Path, default=Path("runs/reward_proxy_state.json"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_flush_denormal(True)

    table = load_results(args.run).tables[0]
    c = table.config
    full, judge = table.seeds.scores[args.reward], table.seeds.scores[args.judge]
    seeds, k = table.seeds.seed, table.seeds.seed.shape[1]
    backend = sn.load(c.model)
    scorer = sn.RewardScorer(sn.load_reward(args.reward))
    state = json.loads(args.state.read_text()) if args.state.exists() else {}
    for p in args.proxy_steps:
        done = state.setdefault(str(p), {})
        t0 = time.perf_counter()
        for i, text in enumerate(table.texts):
            if str(i) not in done:
                done[str(i)] = sn.score_seeds(backend, text, [int(s) for s in seeds[i]], scorer, args.batch_size,
                                              p, c.guidance, progress=False)
                if i % 20 == 19:
                    write_json_atomic(args.state, state)
        write_json_atomic(args.state, state)
        print(f"proxy {p} step(s): {len(table.texts)} prompts scored ({time.perf_counter() - t0:.0f} s this run)")

    rng = np.random.default_rng(0)
    best_full = full.argmax(axis=1)
    image_calls = 2 * c.steps  # CFG: two UNet evaluations a step
    rows = [{"method": "random seed", "unet_calls": image_calls, "reward_calls": 0,
             "judge": stats.mean_ci(judge.mean(axis=1), 1000, rng)},
            {"method": f"best of {k} by {args.reward}", "unet_calls": k * image_calls, "reward_calls": k,
             "judge": stats.mean_ci(judge[np.arange(len(judge)), best_full], 1000, rng), "agreement": 1.0}]
    for p in args.proxy_steps:
        proxy = np.array([state[str(p)][str(i)] for i in range(len(table.texts))], dtype=float)
        for m in args.keep:
            if m >= k:
                continue
            kept = np.argsort(-proxy, axis=1, kind="stable")[:, :m]
            pick = kept[np.arange(len(kept)), full[np.arange(len(full))[:, None], kept].argmax(axis=1)]
            calls = k * 2 * p + m * image_calls
            rows.append({"method": f"proxy {p}-step image, keep {m}", "proxy_steps": p, "keep": m,
                         "unet_calls": calls, "reward_calls": k + m, "cost_ratio": k * image_calls / calls,
                         "agreement": float((pick == best_full).mean()),
                         "judge": stats.mean_ci(judge[np.arange(len(judge)), pick], 1000, rng),
                         "vs_full": stats.paired_diff_ci(judge[np.arange(len(judge)), pick],
                                                         judge[np.arange(len(judge)), best_full], 1000, rng)})

    checks = []
    for p in args.proxy_steps:
        for m in args.keep:
            if m >= k:
                continue
            proxy = np.array([state[str(p)][str(i)] for i in range(args.check_prompts)], dtype=float)
            kept = np.argsort(-proxy, axis=1, kind="stable")[:, :m]
            sim = kept[np.arange(len(kept)), full[np.arange(len(kept))[:, None], kept].argmax(axis=1)]
            same = 0
            for i in range(args.check_prompts):
                r = sn.select(backend, table.texts[i], seeds=[int(s) for s in seeds[i]], scorer=scorer,
                              proxy=sn.Proxy(steps=p), keep=m, steps=c.steps, guidance=c.guidance,
                              batch_size=args.batch_size, progress=False)
                same += r.best_seed == int(seeds[i][sim[i]])
            checks.append({"proxy_steps": p, "keep": m, "prompts": args.check_prompts, "same_seed": same})
    result = {"run": str(args.run), "config": c.label(), "reward": args.reward, "judge": args.judge, "k": k,
              "prompts": len(table.texts), "rows": rows, "checks": checks, "versions": versions(),
              "command": "python benchmarks/reward_proxy.py " + " ".join(map(str, __import__("sys").argv[1:]))}
    print(json.dumps({"rows": rows, "checks": checks}, indent=1, default=str))
    if args.json:
        write_json_atomic(args.json, result)


if __name__ == "__main__":
    main()
