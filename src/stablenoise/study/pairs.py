"""Blind pairs from a bench run: for each requested comparison of two methods, one pair per (config, prompt)
with both methods' shown images, the left side drawn at random and recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bench.report import inside_run
from ..bench.methods import Outcome, derive_methods, grid_methods
from ..bench.results import load_results
from ..errors import StablenoiseError


def method_ids(methods: dict[str, Outcome]) -> dict[str, str]:
    """The ids a --pair may use -> derived method ids: those an image grid shows (random, most-stable,
    least-stable, best:REWARD, each optimizing method as stored)."""
    return {i: i for i in grid_methods(methods)}


def parse_pair(spec: str, ids: dict[str, str]) -> tuple[str, str]:
    """"A:B" -> (A, B). A label or best:REWARD may hold a colon itself: the one split into two known ids wins."""
    splits = [(spec[:i], spec[i + 1:]) for i, c in enumerate(spec) if c == ":"]
    known = [(a, b) for a, b in splits if a in ids and b in ids]
    if len(known) != 1:
        what = "is ambiguous" if known else "does not name two methods of the run"
        raise StablenoiseError(f"--pair {spec!r} {what}: use A:B with A, B among {', '.join(sorted(ids))}")
    a, b = known[0]
    if a == b:
        raise StablenoiseError(f"--pair {spec!r} compares a method with itself")
    return a, b


def _scores(m: Outcome, p: int) -> dict:
    values = {"stability": m.shown_stability[p], **{r: v[p] for r, v in m.shown_values.items()}}
    return {k: float(v) for k, v in values.items() if np.isfinite(v)}


def build_pairs(run_dir: Path, specs: list[str], seed: int = 0) -> tuple[list[dict], dict]:
    """Every pair of the comparisons ``specs`` over every config of the run; and what was left out: prompts
    where a side has no image inside the run folder, and where both methods show the same image (nothing
    to judge; such a prompt is a tie by construction and is reported as left out)."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    rng = np.random.default_rng(seed)
    pairs, left_out = [], {"no image": 0, "same image": 0}
    comparisons = []
    for t in results.tables:
        methods = derive_methods(t)
        ids = method_ids(methods)
        wanted = [parse_pair(s, ids) for s in specs]
        for a, b in wanted:
            comparison = f"{a} vs {b}"
            comparisons.append(comparison)
            ma, mb = methods[ids[a]], methods[ids[b]]
            for p, (idx, text) in enumerate(zip(t.prompt_idx, t.texts)):
                ia, ib = ma.image[p], mb.image[p]
                if inside_run(run_dir, ia) is None or inside_run(run_dir, ib) is None \
                        or not inside_run(run_dir, ia).is_file() or not inside_run(run_dir, ib).is_file():
                    left_out["no image"] += 1
                    continue
                if inside_run(run_dir, ia) == inside_run(run_dir, ib):
                    left_out["same image"] += 1
                    continue
                pairs.append({"comparison": comparison, "config_id": t.config.id, "prompt_idx": int(idx),
                              "prompt": text, "a_method": a, "b_method": b, "a_image": ia, "b_image": ib,
                              "a_scores": _scores(ma, p), "b_scores": _scores(mb, p),
                              "left_is_a": bool(rng.integers(2))})
    if not pairs:
        raise StablenoiseError(f"{run_dir}: no pair to judge (left out: {left_out['no image']} without an image, "
                               f"{left_out['same image']} where both methods show the same image)")
    return pairs, {"comparisons": list(dict.fromkeys(comparisons)), "left_out": left_out, "seed": seed,
                   "pairs_requested": specs}
