"""The verdict per regime: for every config of the given bench runs, the most stable, the least stable and the best
of K by a learned reward against a random seed of the same config, judged by the verifier, with 95% intervals
from a bootstrap over distinct captions (the held-out prompts repeat captions). The numbers are the report's
(``stablenoise.bench.report.analyze``): with the same --bootstrap, this table and ``stablenoise report`` on the same
store say the same, digit for digit.

    python benchmarks/regimes_table.py docs/bench-shapes docs/regimes/ddim5 ... \
        --json docs/regimes/verdict.json --plot docs/regimes/verdict.png

Prompts where every seed passes (or every seed fails) are counted, not skipped: they are ties, differences of 0;
the JSON says how many of each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stablenoise.bench.methods import BASELINE, parse_methods
from stablenoise.bench.report import ALL, analyze
from stablenoise.bench.results import load_results
from stablenoise.records import write_json_atomic
from stablenoise.stats import interval_text

COLUMNS = (("most-stable", "most_stable"), ("least-stable", "least_stable"), ("best:{reward}", "best_by_reward"))


def rows_of(run: Path, judge: str, reward: str, n_boot: int, seed: int = 0) -> list[dict]:
    out = []
    methods = parse_methods([m.format(reward=reward) for m, _ in COLUMNS])
    of_k = parse_methods("most-stable-of")  # the most stable of each prompt's first k seeds, every k below K
    for table in load_results(run).tables:
        c = table.config
        if judge not in table.rewards:
            continue
        a = analyze(table, n_boot, seed, methods + of_k, judge)  # intervals are seeded per method: no interplay
        u = a.unanimous.get(judge, {}).get(ALL, {})
        row = {"run": str(run), "config": c.id, "model": c.model, "steps": c.steps, "guidance": c.guidance,
               "noise_norm": c.noise_norm, "k": c.k, "prompts": table.n_prompts, "captions": len(set(table.texts)),
               # only where it is not the model family's default (DDIM: destination, flow: source)
               "inversion_point": c.settings.get("backend", {}).get("inversion_point"),
               "random": a.level[BASELINE][judge],
               # counted in every mean: their differences are 0
               "prompts_every_seed_passes": u.get("pass"), "prompts_every_seed_fails": u.get("fail")}
        for m, (_, key) in zip(methods, COLUMNS):
            if m.id in a.vs_random:
                row[key] = a.vs_random[m.id][judge]
        row["most_stable_of"] = {i.split(":")[1]: d[judge] for i, d in a.vs_random.items()
                                 if i.startswith("most-stable-of:")}
        if a.norm_spearman is not None and c.noise_norm == "keep":
            row["rho_stability_norm"] = a.norm_spearman
        out.append(row)
    return out


def pct(ci: dict | None) -> str:
    """A difference in verifier points, marked when its interval excludes 0."""
    return interval_text(ci, 100, sign="+", mark=True)


def markdown(rows: list[dict], reward: str) -> str:
    lines = ["| model | steps | guidance | noise | K | prompts (captions) | random passes | most stable − random | "
             f"least stable − random | best of K by {reward} − random | ρ(stability, ‖ε‖) "
             "| all pass / all fail |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rho = r.get("rho_stability_norm")
        rho_text = f"{rho['mean']:+.2f}" if rho else "–"
        noise = r["noise_norm"] + (f", inverted at the {r['inversion_point']}" if r.get("inversion_point") else "")
        lines.append(f"| {r['model']} | {r['steps']} | {r['guidance']:g} | {noise} | {r['k']} | {r['prompts']} ({r['captions']}) "
                     f"| {100 * r['random']['mean']:.1f}% | {pct(r.get('most_stable'))} | {pct(r.get('least_stable'))} "
                     f"| {pct(r.get('best_by_reward'))} | {rho_text} "
                     f"| {r['prompts_every_seed_passes']} / {r['prompts_every_seed_fails']} |")
    return "\n".join(lines) + "\n"


def k_markdown(rows: list[dict]) -> str:
    """The K ablation: most stable of the first k seeds - random, for every k below K and K itself."""
    ks = sorted({int(k) for r in rows for k in r["most_stable_of"]} | {r["k"] for r in rows})
    lines = ["| model | steps | noise | prompts (captions) | random passes | "
             + " | ".join(f"most stable of {k} − random" for k in ks) + " |", "|---|---|---|---|---|" + "---|" * len(ks)]
    for r in rows:
        cells = {**{int(k): v for k, v in r["most_stable_of"].items()}, r["k"]: r.get("most_stable")}
        lines.append(f"| {r['model']} | {r['steps']} | {r['noise_norm']} | {r['prompts']} ({r['captions']}) | "
                     f"{100 * r['random']['mean']:.1f}% | " + " | ".join(pct(cells.get(k)) for k in ks) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']} · {r['steps']} steps · g {r['guidance']:g} · K {r['k']} · {r['prompts']} prompts · "
              f"{r['noise_norm']}" + (f" · inverted at the {r['inversion_point']}" if r.get("inversion_point") else "")
              for r in rows]
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
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples per interval (the report's default)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--k-table", action="store_true", help="print the K ablation (most stable of k) instead")
    args = ap.parse_args()
    rows = [r for run in args.runs for r in rows_of(run, args.judge, args.reward, args.bootstrap)]
    rows.sort(key=lambda r: (r["model"], r["steps"], r["guidance"], -r["k"], r["noise_norm"],
                             r["inversion_point"] or ""))
    text = k_markdown(rows) if args.k_table else markdown(rows, args.reward)
    print(text)
    if args.json:
        write_json_atomic(args.json, {"rows": rows, "table": text,
                                      "command": "python benchmarks/regimes_table.py " + " ".join(sys.argv[1:])})
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
