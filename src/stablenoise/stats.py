"""The package's statistics: bootstrap intervals over prompts, paired differences, win rates, Spearman
correlations and stability deciles, and the one way an interval is written as text. Pure numpy/scipy.

Prompts are the independent units: a prompt's K seeds share the prompt, so resampling seeds instead of
prompts would give intervals that are too narrow. Where prompts repeat a caption, they are not independent
either: every interval can resample whole clusters instead (``clusters``: a label per prompt, e.g. its caption). Every resampling draws from a seeded numpy Generator
(``rng``: a Generator, an int seed, or None for seed 0), so a report is reproducible to the digit.

Every interval is a dict ``{"mean", "lo", "hi", "n"}``: ``mean`` is the estimate (for the pooled Spearman,
the pooled rho), ``lo``/``hi`` the 95% percentile interval and ``n`` the prompts it rests on. NaN values
(missing scores) are skipped and counted out of ``n``; with nothing left the answer is None, never NaN.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

ALPHA = 0.05  # two-sided: 95% intervals
DECILES = 10


def interval_text(ci: dict | None, scale: float = 1.0, digits: int = 1, sign: str = "", bound_sign: str = "",
                  unit: str = "", mark: bool = False, missing: str = "–") -> str:
    """An interval as text, "0.25 [0.24, 0.27]": each number times ``scale`` with ``digits`` decimals; ``sign``
    "+" signs the estimate and ``bound_sign`` "+" the bounds (a difference's); ``unit`` follows the estimate;
    ``mark`` appends " *" when the interval excludes 0. No interval, or a non-finite one, reads ``missing``: a
    report never shows NaN."""
    if not ci or not all(ci[k] is not None and math.isfinite(ci[k]) for k in ("mean", "lo", "hi")):
        return missing
    m, lo, hi = (scale * ci[k] for k in ("mean", "lo", "hi"))
    star = " *" if mark and (ci["lo"] > 0 or ci["hi"] < 0) else ""
    return f"{m:{sign}.{digits}f}{unit} [{lo:{bound_sign}.{digits}f}, {hi:{bound_sign}.{digits}f}]{star}"


def _rng(rng) -> np.random.Generator:
    return np.random.default_rng(0 if rng is None else rng)


def _interval(estimate: float, replicates: np.ndarray, n: int) -> dict:
    replicates = replicates[np.isfinite(replicates)]
    lo, hi = np.percentile(replicates, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)]) if len(replicates) else (
        estimate, estimate)
    return {"mean": float(estimate), "lo": float(lo), "hi": float(hi), "n": int(n)}


def _bootstrap(statistic, n: int, n_boot: int, rng, clusters=None) -> np.ndarray:
    """``statistic(indices)`` on n_boot resamples (with replacement) of the n prompts, or of whole clusters
    (a label per prompt) when given."""
    rng = _rng(rng)
    if clusters is None:
        return np.array([statistic(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=float)
    ids = _cluster_ids(clusters)
    members = [np.flatnonzero(ids == c) for c in range(ids.max() + 1)]
    return np.array([statistic(np.concatenate([members[c] for c in rng.integers(0, len(members), len(members))]))
                     for _ in range(n_boot)], dtype=float)


def _cluster_ids(clusters) -> np.ndarray:
    """0..C-1 per value, one per distinct label."""
    return np.unique(np.asarray(clusters, dtype=object).ravel().astype(str), return_inverse=True)[1].ravel()


def mean_ci(values, n_boot: int = 1000, rng=None, clusters=None) -> dict | None:
    """Mean over prompts with a 95% bootstrap percentile interval; NaN values skipped.

    ``clusters``: a label per value (e.g. each prompt's caption, when a prompt set repeats captions): the
    bootstrap then resamples whole clusters, since prompts of one caption are not independent; the interval
    gains ``"clusters"``, their count."""
    v = np.asarray(values, dtype=float).ravel()
    known = ~np.isnan(v)
    v = v[known]
    if len(v) == 0:
        return None
    if clusters is None:
        # All resamples at once: an (n_boot, n) index matrix is small next to the reports' prompt counts.
        replicates = v[_rng(rng).integers(0, len(v), (n_boot, len(v)))].mean(axis=1)
        return _interval(v.mean(), replicates, len(v))
    ids = _cluster_ids(np.asarray(clusters, dtype=object).ravel()[known])
    sums, counts = np.bincount(ids, weights=v), np.bincount(ids)
    picks = _rng(rng).integers(0, len(sums), (n_boot, len(sums)))
    replicates = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    return {**_interval(v.mean(), replicates, len(v)), "clusters": int(len(sums))}


def paired_diff_ci(a, b, n_boot: int = 1000, rng=None, clusters=None) -> dict | None:
    """Mean of a - b over the prompts where both are known. Resampling the per-prompt differences keeps
    each prompt's pair together, so the prompt-to-prompt spread that a and b share cancels out."""
    return mean_ci(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), n_boot, rng, clusters)


def win_rate(a, b, n_boot: int = 1000, rng=None, clusters=None) -> dict | None:
    """Share of prompts where a beats b, a tie counting half (so identical methods score exactly 0.5).
    ``clusters``: as in :func:`mean_ci`."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    wins = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    wins[np.isnan(a) | np.isnan(b)] = np.nan
    return mean_ci(wins, n_boot, rng, clusters)


def spearman(x, y) -> float:
    """Spearman's rho (average ranks for ties) of the pairs where both are finite; NaN when either side is
    constant, where rho is undefined."""
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    rx, ry = rankdata(x[keep]), rankdata(y[keep])
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def within_prompt_spearman(stability, reward, n_boot: int = 1000, rng=None, clusters=None) -> dict | None:
    """Mean over prompts of each prompt's Spearman between its seeds' stability and reward (arrays of
    shape (prompts, K)), with a bootstrap interval over prompts. Within a prompt, because prompts differ in
    both stability and reward level, and a pooled correlation mixes that in. Prompts whose stability or
    reward is constant have no rho and are skipped (counted in ``skipped``). ``clusters``: a label per prompt,
    as in :func:`mean_ci`."""
    s, r = np.atleast_2d(np.asarray(stability, dtype=float)), np.atleast_2d(np.asarray(reward, dtype=float))
    rhos = np.array([spearman(si, ri) for si, ri in zip(s, r)])
    out = mean_ci(rhos, n_boot, rng, clusters)
    return None if out is None else {**out, "skipped": int(np.isnan(rhos).sum())}


def partial_spearman(x, y, z) -> float:
    """Spearman's rho of x and y with z partialled out (the partial correlation of their ranks,
    (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))), over the triples where all three are finite. A constant
    z explains nothing: plain rho. NaN where undefined (x or y constant, or z ranking x or y exactly)."""
    x, y, z = (np.asarray(v, dtype=float).ravel() for v in (x, y, z))
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    x, y, z = x[keep], y[keep], z[keep]
    rxy = spearman(x, y)
    if len(z) and np.all(z == z[0]):
        return rxy
    rxz, ryz = spearman(x, z), spearman(y, z)
    denominator = (1 - rxz ** 2) * (1 - ryz ** 2)
    if not np.isfinite(rxy + rxz + ryz) or denominator < 1e-12:  # ranks agree exactly, up to float rounding
        return float("nan")
    return float((rxy - rxz * ryz) / np.sqrt(denominator))


def within_prompt_partial_spearman(stability, reward, control, n_boot: int = 1000, rng=None,
                                   clusters=None) -> dict | None:
    """As :func:`within_prompt_spearman`, with ``control`` (e.g. each seed's noise norm) partialled out within
    each prompt."""
    s, r, c = (np.atleast_2d(np.asarray(v, dtype=float)) for v in (stability, reward, control))
    rhos = np.array([partial_spearman(si, ri, ci) for si, ri, ci in zip(s, r, c)])
    out = mean_ci(rhos, n_boot, rng, clusters)
    return None if out is None else {**out, "skipped": int(np.isnan(rhos).sum())}


def pooled_spearman(stability, reward, n_boot: int = 1000, rng=None, clusters=None) -> dict | None:
    """Spearman over all (prompt, seed) pairs pooled; the interval resamples whole prompts (whole clusters of
    prompts, a label per prompt, when given)."""
    s, r = np.atleast_2d(np.asarray(stability, dtype=float)), np.atleast_2d(np.asarray(reward, dtype=float))
    rho = spearman(s, r)
    if np.isnan(rho):
        return None
    replicates = _bootstrap(lambda idx: spearman(s[idx], r[idx]), len(s), n_boot, rng, clusters)
    out = _interval(rho, replicates, len(s))
    return out if clusters is None else {**out, "clusters": int(_cluster_ids(clusters).max() + 1)}


def stability_deciles(stability, bins: int = DECILES) -> np.ndarray:
    """Each seed's within-prompt stability decile, 1 = least stable tenth (0 where stability is unknown).

    A seed of rank r (0 = least stable) among a prompt's m known seeds falls in decile
    floor(bins * (r + 0.5) / m) + 1: with m = 100 these are exact tenths, and with fewer seeds than bins
    the least stable seed is still decile 1 and the most stable decile ``bins``."""
    s = np.atleast_2d(np.asarray(stability, dtype=float))
    out = np.zeros(s.shape, dtype=int)
    for row, values in zip(out, s):
        known = np.flatnonzero(np.isfinite(values))
        rank = np.empty(len(known), dtype=int)
        rank[np.argsort(values[known], kind="stable")] = np.arange(len(known))
        row[known] = np.floor(bins * (rank + 0.5) / len(known)).astype(int) + 1
    return out


def by_decile(stability, reward, n_boot: int = 1000, rng=None, bins: int = DECILES,
              clusters=None) -> list[dict | None]:
    """Mean reward per within-prompt stability decile (index 0 = decile 1, the least stable), each with a
    bootstrap interval over prompts (over clusters of prompts, as in :func:`mean_ci`, when given): a prompt
    contributes the mean reward of its seeds in that decile."""
    rng = _rng(rng)
    decile = stability_deciles(stability, bins)
    r = np.atleast_2d(np.asarray(reward, dtype=float))
    out = []
    for d in range(1, bins + 1):
        in_d = (decile == d) & np.isfinite(r)
        counts = in_d.sum(axis=1)
        per_prompt = np.where(in_d, r, 0.0).sum(axis=1) / np.maximum(counts, 1)
        out.append(mean_ci(np.where(counts > 0, per_prompt, np.nan), n_boot, rng, clusters))
    return out


def unanimous(outcomes) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt (a row of a (prompts, K) array of 0/1 outcomes, NaN where unknown): do all its known seeds
    pass, do all fail; both False for a prompt without a known seed. Such prompts belong in every mean, not
    skipped: choosing among seeds that agree changes nothing, a difference of exactly 0."""
    v = np.atleast_2d(np.asarray(outcomes, dtype=float))
    known = np.isfinite(v)
    some = known.any(axis=1)
    return some & np.where(known, v == 1, True).all(axis=1), some & np.where(known, v == 0, True).all(axis=1)


# ----------------------------------------------------------------------------- human preference votes
# A vote's outcome for side A: 1 (A preferred), 0 (B preferred), 0.5 (a tie or "both bad": no preference).
# Votes are neither independent over prompts nor over raters (a rater's taste runs through all their votes),
# so their intervals resample prompts and raters at once (a two-way bootstrap).

def vote_win_rate(prompts, raters, outcomes, n_boot: int = 1000, rng=None) -> dict | None:
    """Share of votes won by side A, ties half, with a 95% interval that resamples prompts and raters
    independently: a resample weights each (prompt, rater) cell by how often its prompt and its rater were
    drawn. ``n`` is the number of votes."""
    o = np.asarray(outcomes, dtype=float)
    if len(o) == 0:
        return None
    p_ids, p = np.unique(np.asarray(prompts), return_inverse=True)
    r_ids, r = np.unique(np.asarray(raters), return_inverse=True)
    total = np.zeros((len(p_ids), len(r_ids)))
    count = np.zeros_like(total)
    np.add.at(total, (p, r), o)
    np.add.at(count, (p, r), 1)
    gen = _rng(rng)
    wp = np.stack([np.bincount(gen.integers(0, len(p_ids), len(p_ids)), minlength=len(p_ids))
                   for _ in range(n_boot)]).astype(float)
    wr = np.stack([np.bincount(gen.integers(0, len(r_ids), len(r_ids)), minlength=len(r_ids))
                   for _ in range(n_boot)]).astype(float)
    num = np.einsum("bp,pr,br->b", wp, total, wr)
    den = np.einsum("bp,pr,br->b", wp, count, wr)
    replicates = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return _interval(o.mean(), replicates, len(o))


def bradley_terry(a, b, outcomes, methods, prior: float = 1.0, iterations: int = 1000) -> np.ndarray:
    """Bradley–Terry log-strengths (mean 0) of ``methods`` from comparisons a[i] vs b[i] with A's outcome
    (ties half a win each way), by Hunter's (2004) MM iteration. ``prior`` adds that many virtual ties to
    every compared pair of methods, so a method that never won keeps a finite strength; P(i beats j) is
    1 / (1 + exp(s_j - s_i))."""
    index = {m: i for i, m in enumerate(methods)}
    k = len(methods)
    wins, games = np.zeros((k, k)), np.zeros((k, k))
    for x, y, o in zip(a, b, outcomes):
        i, j = index[x], index[y]
        wins[i, j] += o
        wins[j, i] += 1 - o
        games[i, j] += 1
        games[j, i] += 1
    compared = games > 0
    wins += np.where(compared, prior / 2, 0)
    games += np.where(compared, prior, 0)
    strength = np.ones(k)
    for _ in range(iterations):
        denom = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        new = np.where(denom > 0, wins.sum(axis=1) / np.where(denom > 0, denom, 1), strength)
        new /= np.exp(np.log(new).mean())
        if np.allclose(new, strength, rtol=1e-10, atol=0):
            strength = new
            break
        strength = new
    log = np.log(strength)
    return log - log.mean()


def bradley_terry_ci(prompts, raters, a, b, outcomes, methods, n_boot: int = 200, rng=None) -> dict:
    """Each method's Bradley–Terry log-strength with a 95% interval from the two-way (prompts × raters)
    bootstrap: {method: interval}."""
    prompts, raters = np.asarray(prompts), np.asarray(raters)
    a, b, o = np.asarray(a, dtype=object), np.asarray(b, dtype=object), np.asarray(outcomes, dtype=float)
    estimate = bradley_terry(a, b, o, methods)
    p_ids, p = np.unique(prompts, return_inverse=True)
    r_ids, r = np.unique(raters, return_inverse=True)
    gen = _rng(rng)
    reps = []
    for _ in range(n_boot):
        wp = np.bincount(gen.integers(0, len(p_ids), len(p_ids)), minlength=len(p_ids))
        wr = np.bincount(gen.integers(0, len(r_ids), len(r_ids)), minlength=len(r_ids))
        take = np.repeat(np.arange(len(o)), wp[p] * wr[r])
        reps.append(bradley_terry(a[take], b[take], o[take], methods) if len(take) else np.full(len(methods), np.nan))
    reps = np.array(reps)
    return {m: _interval(estimate[i], reps[:, i], len(o)) for i, m in enumerate(methods)}


def rater_agreement(items, labels) -> dict | None:
    """Agreement between raters who judged the same item: the share of agreeing rater pairs, and Fleiss'
    kappa (chance-corrected; with a varying number of raters per item, each item's agreement is its share of
    agreeing rater pairs). Items judged once are left out; None when no item was judged twice."""
    by_item: dict = {}
    for item, label in zip(items, labels):
        by_item.setdefault(item, []).append(label)
    categories = sorted({label for ls in by_item.values() for label in ls}, key=str)
    per_item, pooled = [], np.zeros(len(categories))
    for ls in by_item.values():
        if len(ls) < 2:
            continue
        n = np.array([ls.count(c) for c in categories], dtype=float)
        per_item.append(((n * (n - 1)).sum() / (len(ls) * (len(ls) - 1))))
        pooled += n
    if not per_item:
        return None
    observed = float(np.mean(per_item))
    share = pooled / pooled.sum()
    expected = float((share ** 2).sum())
    kappa = (observed - expected) / (1 - expected) if expected < 1 else float("nan")
    return {"agreement": observed, "kappa": kappa, "items": len(per_item)}
