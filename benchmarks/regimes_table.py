"""The verdict per regime: for every config of the given bench runs, the most stable, the least stable and the best
of K by a learned reward against a random seed of the same config, judged by the verifier, with 95% intervals
from a bootstrap over distinct captions (the held-out prompts repeat captions).

    python benchmarks/regimes_table.py docs/bench-shapes docs/regimes/ddim5 ... \
        --json docs/regimes/verdict.json --plot docs/regimes/verdict.png

Prompts where every seed passes (or every seed fails) are counted, not skipped: they are ties, differences of 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from stablenoise import stats
from stablenoise.bench.results import derive_methods, load_results, seed_norms
from stablenoise.records import write_json_atomic



def rows_of(run: Path, judge: str, reward: str, n_boot: int) -> list[dict]:
    out = []
    for table in load_results(run).tables:
        c = table.config
        if judge not in table.rewards:
            continue
        methods = derive_methods(table)
        random = methods["random"].values[judge]
        clusters = np.array(table.texts, dtype=object)
        rng = np.random.default_rng([c.id, c.steps])
        row = {"run": str(run), "config": c.id, "model": c.model, "steps": c.steps, "guidance": c.guidance,
               "noise_norm": c.noise_norm,
               "k": c.k, "prompts": table.n_prompts, "captions": len(set(table.texts)),
               "random": stats.mean_ci(random, n_boot, rng, clusters)}
        for name, key in [("most stable", "most_stable"), ("least stable", "least_stable"),
                          (f"best of K by {reward}", "best_by_reward")]:
            if name in methods:
                row[key] = stats.paired_diff_ci(methods[name].values[judge], random, n_boot, rng, clusters)
        s = table.seeds
        all_same = np.isfinite(s.scores[judge]).all(axis=1) & (np.nanstd(s.scores[judge], axis=1) == 0)
        row["prompts_all_seeds_agree"] = int(all_same.sum())  # counted in every mean: their differences are 0
        norms = seed_norms(table)
        if norms is not None and c.noise_norm == "keep":
            row["rho_stability_norm"] = stats.within_prompt_spearman(s.stability, norms, n_boot, rng)
        out.append(row)
    return out


def pct(ci: dict | None) -> str:
    if ci is None:
        return "–"
    star = " *" if ci["lo"] > 0 or ci["hi"] < 0 else ""
    return f"{100 * ci['mean']:+.1f} [{100 * ci['lo']:.1f}, {100 * ci['hi']:.1f}]{star}"


def markdown(rows: list[dict], reward: str) -> str:
    lines = ["| model | steps | guidance | noise | K | prompts (captions) | random passes | most stable − random | "
             f"least stable − random | best of K by {reward} − random | ρ(stability, ‖ε‖) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rho = r.get("rho_stability_norm")
        rho_text = f"{rho['mean']:+.2f}" if rho else "–"
        lines.append(f"| {r['model']} | {r['steps']} | {r['guidance']:g} | {r['noise_norm']} | {r['k']} | {r['prompts']} ({r['captions']}) "
                     f"| {100 * r['random']['mean']:.1f}% | {pct(r.get('most_stable'))} | {pct(r.get('least_stable'))} "
                     f"| {pct(r.get('best_by_reward'))} | {rho_text} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']} · {r['steps']} steps · g {r['guidance']:g} · K {r['k']} · {r['prompts']} prompts · "
              f"{r['noise_norm']}" for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.2))
    for j, (key, colour) in enumerate([("most_stable", "C3"), ("least_stable", "C0"), ("best_by_reward", "C2")]):
        for i, r in enumerate(rows):
            ci = r.get(key)
            if ci:
                y = len(rows) - 1 - i + (j - 1) * 0.22
                ax.errorbar(100 * ci["mean"], y, xerr=[[100 * (ci["mean"] - ci["lo"])], [100 * (ci["hi"] - ci["mean"])]],
                            fmt="o", color=colour, ms=4, capsize=2, label=key.replace("_", " ") if i == 0 else None)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(rows)), labels[::-1], fontsize=8)
    ax.set_xlabel("minus a random seed (verifier points; 95% CI over captions)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--judge", default="shapes-verifier")
    ap.add_argument("--reward", default="shapes-clip")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    rows = [r for run in args.runs for r in rows_of(run, args.judge, args.reward, args.bootstrap)]
    rows.sort(key=lambda r: (r["model"], r["steps"], r["guidance"], -r["k"], r["noise_norm"]))
    text = markdown(rows, args.reward)
    print(text)
    if args.json:
        write_json_atomic(args.json, {"rows": rows, "table": text,
                                      "command": "python benchmarks/regimes_table.py " + " ".join(sys.argv[1:])})
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
