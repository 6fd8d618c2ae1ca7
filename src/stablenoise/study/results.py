"""A study's statistics (win rates, Bradley–Terry, rater and reward agreement), as JSON for the app and as
report blocks for ``stablenoise report``. The statistics themselves live in ``stablenoise.stats``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import stats
from .store import Study, studies


def outcome(pair, choice: str, left_method: str) -> float:
    """The vote's outcome for side A: 1 A preferred, 0 B preferred, 0.5 a tie or both bad."""
    if choice in ("tie", "bad"):
        return 0.5
    winner = left_method if choice == "left" else ({pair.a_method, pair.b_method} - {left_method}).pop()
    return 1.0 if winner == pair.a_method else 0.0


def _prompt_key(pair) -> str:
    """A prompt as the bootstrap's unit: the same prompt text in two configs is two units."""
    return f"{pair.config_id}/{pair.prompt_idx}"


def analyze(study: Study, n_boot: int = 1000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    votes = [(study.pairs[v[0]], *v[1:]) for v in study.votes()]
    out = {"name": study.path.name, "pairs": len(study.pairs), "votes": len(votes),
           "raters": len({v[1] for v in votes}), "left_out": study.meta.get("left_out", {}), "comparisons": [],
           "bradley_terry": None, "rater_agreement": None, "reward_agreement": []}
    rows = [(p, rater, choice, outcome(p, choice, left)) for p, rater, choice, left, _, _ in votes]
    for comparison in study.meta.get("comparisons", []):
        mine = [r for r in rows if r[0].comparison == comparison]
        a, b = comparison.split(" vs ", 1) if " vs " in comparison else (comparison, "")
        counts = {c: sum(1 for r in mine if r[2] == c) for c in ("tie", "bad")}
        out["comparisons"].append({
            "comparison": comparison, "a": a, "b": b, "votes": len(mine),
            "pairs": sum(1 for p in study.pairs.values() if p.comparison == comparison),
            "raters": len({r[1] for r in mine}), "prompts": len({(r[0].config_id, r[0].prompt_idx) for r in mine}),
            "a_wins": sum(1 for r in mine if r[3] == 1), "b_wins": sum(1 for r in mine if r[3] == 0), **counts,
            "win_rate": stats.vote_win_rate([_prompt_key(r[0]) for r in mine],
                                            [r[1] for r in mine], [r[3] for r in mine], n_boot, rng)})
    methods = list(dict.fromkeys(m for r in rows for m in (r[0].a_method, r[0].b_method)))  # those judged
    if len(methods) > 2 and rows:
        out["bradley_terry"] = stats.bradley_terry_ci(
            [_prompt_key(r[0]) for r in rows], [r[1] for r in rows],
            [r[0].a_method for r in rows], [r[0].b_method for r in rows], [r[3] for r in rows], methods,
            max(1, n_boot // 5), rng)
    out["rater_agreement"] = stats.rater_agreement([r[0].id for r in rows], [r[3] for r in rows])
    out["reward_agreement"] = _reward_agreement(rows, n_boot, rng)
    return out


def _reward_agreement(rows, n_boot: int, rng) -> list[dict]:
    """Per score (stability and each reward): how often it prefers the side the raters' majority preferred,
    over the pairs with a majority (mean outcome != 0.5) where the score differs between the sides."""
    by_pair: dict = {}
    for p, _, _, o in rows:
        by_pair.setdefault(p.id, (p, []))[1].append(o)
    names = list(dict.fromkeys(n for p, _ in by_pair.values() for n in p.a_scores if n in p.b_scores))
    out = []
    for name in names:
        agree = []
        for p, outcomes in by_pair.values():
            majority = np.mean(outcomes) - 0.5
            diff = p.a_scores.get(name, np.nan) - p.b_scores.get(name, np.nan)
            if majority != 0 and np.isfinite(diff) and diff != 0:
                agree.append(float((majority > 0) == (diff > 0)))
        out.append({"score": name, "agreement": stats.mean_ci(agree, n_boot, rng) if agree else None})
    return out


def _pct(ci) -> str:
    from ..bench.report import fmt_ci

    return fmt_ci(ci, percent=True)


def report_blocks(run_dir: Path, n_boot: int = 1000, seed: int = 0, only: Path | None = None) -> list:
    """The report's section on each study of the run folder (none: no blocks), or on ``only``. Read-only."""
    from ..bench.document import Heading, Table, Text
    from ..bench.report import MISSING

    blocks = []
    for path in [only] if only is not None else studies(run_dir):
        a = analyze(Study(path, readonly=True), n_boot, seed)
        blocks += [Heading(f"Human preference study ({a['name']})"),
                   Text(f"{a['votes']} votes by {a['raters']} rater(s) on {a['pairs']} blind pairs. Win rate: the "
                        "share of votes for the first method, a tie or 'both bad' counting half, with a 95% "
                        "bootstrap interval over prompts and raters."),
                   Table(["comparison", "votes", "raters", "prompts", "first wins", "second wins", "ties",
                          "both bad", "win rate of the first"],
                         [[c["comparison"], str(c["votes"]), str(c["raters"]), str(c["prompts"]), str(c["a_wins"]),
                           str(c["b_wins"]), str(c["tie"]), str(c["bad"]), _pct(c["win_rate"])]
                          for c in a["comparisons"]], "Win rates")]
        if a["bradley_terry"]:
            from ..bench.report import fmt_ci

            blocks.append(Table(["method", "log-strength [95% CI]"],
                                [[m, fmt_ci(ci, signed=True)] for m, ci in a["bradley_terry"].items()],
                                "Bradley–Terry strengths (mean 0; P(i beats j) = 1 / (1 + exp(s_j - s_i)))"))
        ra = a["rater_agreement"]
        blocks.append(Text("Rater agreement: " + (
            f"{100 * ra['agreement']:.1f}% of rater pairs agree, Fleiss' kappa {ra['kappa']:.3f}, over "
            f"{ra['items']} pairs judged by two or more raters." if ra else "no pair was judged by two raters.")))
        if a["reward_agreement"]:
            blocks.append(Table(["score", "agrees with the human majority"],
                                [[r["score"], _pct(r["agreement"]) if r["agreement"] else MISSING]
                                 for r in a["reward_agreement"]], "Scores against the raters' majority"))
    return blocks
