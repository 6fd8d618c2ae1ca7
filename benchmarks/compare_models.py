"""Two models on the same captions and seeds: each selection method's reward on each model, its paired
gain over a random seed, the within-prompt Spearman of stability with each reward, and the paired
difference between the models (same prompt, same method). Both runs must hold a config with the same
prompts, seeds, steps and guidance (e.g. the shapes and shapes-flow benches of benchmarks/bench_shapes.sh).

    python benchmarks/compare_models.py RUN_A RUN_B [--config-a 1] [--config-b 1] [--json OUT.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from stablenoise.bench.methods import derive_methods
from stablenoise.bench.results import load_results
from stablenoise.records import write_json_atomic
from stablenoise.stats import interval_text, mean_ci, paired_diff_ci, within_prompt_spearman

METHODS = ("random", "most-stable", "least-stable", "most-stable-of:4")  # method ids


def _table(run: Path, config_id: int):
    results = load_results(run)
    for t in results.tables:
        if t.config.id == config_id:
            return t
    raise SystemExit(f"{run}: no config {config_id}")


def compare(run_a: Path, run_b: Path, config_a: int = 1, config_b: int = 1) -> dict:
    a, b = _table(run_a, config_a), _table(run_b, config_b)
    if a.texts != b.texts or not np.array_equal(a.seeds.seed, b.seeds.seed):
        raise SystemExit("the two configs differ in prompts or seeds: a paired comparison needs the same ones")
    rewards = [r for r in a.rewards if r in b.rewards]
    ma, mb = derive_methods(a), derive_methods(b)
    out = {"a": {"run": str(run_a), "config": config_a, "model": a.config.model},
           "b": {"run": str(run_b), "config": config_b, "model": b.config.model},
           "prompts": a.n_prompts, "k": a.config.k, "steps": a.config.steps, "guidance": a.config.guidance,
           "methods": {}, "spearman": {}}
    for name in METHODS:
        if name not in ma or name not in mb:
            continue
        row = {}
        for r in rewards:
            va, vb = ma[name].values[r], mb[name].values[r]
            ra, rb = ma["random"].values[r], mb["random"].values[r]
            row[r] = {"a": mean_ci(va, rng=0), "b": mean_ci(vb, rng=0),
                      "a_vs_random": paired_diff_ci(va, ra, rng=0), "b_vs_random": paired_diff_ci(vb, rb, rng=0),
                      "b_minus_a": paired_diff_ci(vb, va, rng=0)}
        row["stability"] = {"a": float(np.nanmean(ma[name].stability)), "b": float(np.nanmean(mb[name].stability))}
        out["methods"][ma[name].method.title] = row
    for r in rewards:
        out["spearman"][r] = {"a": within_prompt_spearman(a.seeds.stability, a.seeds.scores[r], rng=0),
                              "b": within_prompt_spearman(b.seeds.stability, b.seeds.scores[r], rng=0)}
    return out


def print_markdown(c: dict) -> None:
    a, b = c["a"]["model"], c["b"]["model"]
    print(f"{c['prompts']} prompts, K = {c['k']}, {c['steps']} steps, guidance {c['guidance']:g}; "
          f"A = {a}, B = {b}; mean [95% bootstrap CI over prompts]; gains are paired against a random seed\n")
    for r in c["spearman"]:
        scale, unit = (100.0, "%") if r.endswith("verifier") else (1.0, "")
        print(f"| method | {r} ({a}) | vs random | {r} ({b}) | vs random | {b} − {a} | stability {a} | stability {b} |")
        print("|---|---|---|---|---|---|---|---|")
        for name, row in c["methods"].items():
            v = row[r]
            print(f"| {name} | {interval_text(v['a'], scale)}{unit} | {interval_text(v['a_vs_random'], scale)} | {interval_text(v['b'], scale)}{unit} "
                  f"| {interval_text(v['b_vs_random'], scale)} | {interval_text(v['b_minus_a'], scale)} | {row['stability']['a']:.3f} "
                  f"| {row['stability']['b']:.3f} |")
        s = c["spearman"][r]
        print(f"\nwithin-prompt Spearman(stability, {r}): {a} {interval_text(s['a'], digits=3)}, {b} {interval_text(s['b'], digits=3)}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--config-a", type=int, default=1)
    ap.add_argument("--config-b", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    c = compare(args.run_a, args.run_b, args.config_a, args.config_b)
    print_markdown(c)
    if args.json:
        write_json_atomic(args.json, c)


if __name__ == "__main__":
    main()
