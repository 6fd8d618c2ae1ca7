"""Where should inversion evaluate the model? (issue #20.5) Two bench stores of one model that differ only in the
inversion point (``--inversion-point destination|source``), compared on the seeds they share (same captions, same
seeds): how exact the round trip is under each (the stability score is the round-trip cosine, so its mean is the
exactness), how the two rank each prompt's seeds (within-prompt Spearman between the two scores; how often they
pick the same most stable seed), and what picking the most stable seed does under each (verifier points against a
random seed of the same store, clustered over distinct captions, as in the report). Writes JSON and prints Markdown.

    python benchmarks/inversion_point.py docs/bench-shapes docs/regimes/ddim5-source \
        docs/bench-shapes-flow docs/regimes/flow5-destination --json docs/regimes/inversion-point.json

Arguments come in pairs: the store at the model's default point, then the store at the other point.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from stablenoise.bench.methods import parse_methods, pick
from stablenoise.bench.report import analyze
from stablenoise.bench.results import ConfigTable, Rows, load_results
from stablenoise.records import write_json_atomic
from stablenoise.stats import interval_text, mean_ci, within_prompt_spearman

MOST_STABLE = parse_methods("most-stable")


def point(table: ConfigTable) -> str:
    """The inversion point a store's config ran at; configs record it only when it is not the family's default,
    which is then named as the other point of the pair."""
    return table.config.settings.get("backend", {}).get("inversion_point", "default")


def _rows(rows: Rows, idx: list[int]) -> Rows:
    return Rows(**{f.name: ({k: v[idx] for k, v in value.items()} if isinstance(value, dict) else value[idx])
                   for f in fields(rows) for value in [getattr(rows, f.name)]})


def subset(table: ConfigTable, idx: list[int]) -> ConfigTable:
    """The table's prompts ``idx`` only (in that order)."""
    return replace(table, prompt_idx=[table.prompt_idx[i] for i in idx], texts=[table.texts[i] for i in idx],
                   tags=[table.tags[i] for i in idx], seeds=_rows(table.seeds, idx),
                   optimized={k: _rows(v, idx) for k, v in table.optimized.items()},
                   starts={k: _rows(v, idx) for k, v in table.starts.items()})


def shared(a: ConfigTable, b: ConfigTable) -> tuple[ConfigTable, ConfigTable]:
    """Both tables cut to the prompts they share with the same seeds (same caption, same seeds), row for row."""
    rows_b = {(text, tuple(seeds)): i for i, (text, seeds) in enumerate(zip(b.texts, b.seeds.seed.tolist()))}
    pairs = [(i, rows_b[(text, tuple(seeds))]) for i, (text, seeds) in enumerate(zip(a.texts, a.seeds.seed.tolist()))
             if (text, tuple(seeds)) in rows_b]
    if not pairs:
        raise SystemExit(f"{a.config.label()} and {b.config.label()} share no prompt with the same seeds")
    ia, ib = map(list, zip(*pairs))
    return subset(a, ia), subset(b, ib)


def compare(run_a: Path, run_b: Path, judge: str, n_boot: int) -> dict:
    (a,), (b,) = load_results(run_a).tables, load_results(run_b).tables  # one config each
    a, b = shared(a, b)  # every number below is over the shared prompts only
    sa, sb, captions = a.seeds.stability, b.seeds.stability, a.texts
    same_pick = (pick(sa) == pick(sb)).astype(float)  # a NaN score never wins, as in the report
    out = {"model": a.config.model, "steps": a.config.steps, "k": sa.shape[1], "prompts": len(captions),
           "captions": len(set(captions)),
           "spearman_between_points": within_prompt_spearman(sa, sb, n_boot, 0, captions),
           "same_most_stable_seed": mean_ci(same_pick, n_boot, 0, captions), "points": {}}
    other = point(b)
    names = {"default": {"source": "destination", "destination": "source"}.get(other, "default"), other: other}
    for run, table, s in ((run_a, a, sa), (run_b, b, sb)):
        verdict = analyze(table, n_boot, 0, MOST_STABLE, judge).vs_random.get("most-stable", {}).get(judge)
        out["points"][names[point(table)]] = {"run": str(run), "round_trip_cosine": mean_ci(s.ravel(), n_boot, 0),
                                       "round_trip_cosine_min": float(np.min(s)),
                                       "most_stable_minus_random": verdict}
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| model | steps | K | prompts (captions) | inversion point | mean round-trip cosine | lowest | "
             "most stable − random (verifier points) | Spearman between the points | same most stable seed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, p in r["points"].items():
            lines.append(f"| {r['model']} | {r['steps']} | {r['k']} | {r['prompts']} ({r['captions']}) | {name} | "
                         f"{interval_text(p['round_trip_cosine'], digits=4)} | {p['round_trip_cosine_min']:.4f} | "
                         f"{interval_text(p['most_stable_minus_random'], 100, sign='+')} | {interval_text(r['spearman_between_points'], digits=3, sign='+')} | "
                         f"{interval_text(r['same_most_stable_seed'], 100, 0)}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="pairs: default point's store, other point's store")
    ap.add_argument("--judge", default="shapes-verifier")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if len(args.runs) % 2:
        ap.error("give the stores in pairs (default point, other point)")
    rows = [compare(a, b, args.judge, args.bootstrap) for a, b in zip(args.runs[::2], args.runs[1::2])]
    text = markdown(rows)
    print(text)
    if args.json:
        write_json_atomic(args.json, {"rows": rows, "table": text,
                                      "command": "python benchmarks/inversion_point.py " + " ".join(sys.argv[1:])})


if __name__ == "__main__":
    main()
