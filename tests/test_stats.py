import math

import numpy as np
import pytest

from stablenoise import stats

NAN = math.nan  # below: float64 statistics of a few numbers, so approx's rel 1e-6 >> f64 rounding


def test_mean_ci_mean_n_and_nan_skipped():
    r = stats.mean_ci([1.0, NAN, 3.0, 4.0], n_boot=500, rng=1)
    assert r["mean"] == pytest.approx(8 / 3) and r["n"] == 3
    assert 1.0 <= r["lo"] <= r["mean"] <= r["hi"] <= 4.0
    assert stats.mean_ci([NAN, NAN]) is None and stats.mean_ci([]) is None
    constant = stats.mean_ci([2.5] * 7)
    assert (constant["lo"], constant["hi"]) == (2.5, 2.5)


def test_mean_ci_is_a_95_percent_interval_that_shrinks_with_n():
    # 0..99: standard error 28.87 / sqrt(100) = 2.887, so a 95% interval is about 2 * 1.96 * 2.887 = 11.3 wide.
    r = stats.mean_ci(np.arange(100.0), n_boot=4000, rng=0)
    assert r["hi"] - r["lo"] == pytest.approx(11.3, rel=0.08)
    assert r["lo"] < 49.5 < r["hi"]
    values = np.random.default_rng(3).normal(size=2000)
    small, large = stats.mean_ci(values[:20], rng=0), stats.mean_ci(values, rng=0)
    assert (large["hi"] - large["lo"]) < (small["hi"] - small["lo"]) / 5  # ~ 1/sqrt(100)


def test_resampling_is_seeded():
    values = np.random.default_rng(0).normal(size=30)
    assert stats.mean_ci(values, rng=7) == stats.mean_ci(values, rng=7)
    assert stats.mean_ci(values, rng=7) != stats.mean_ci(values, rng=8)


def test_paired_difference_cancels_the_spread_between_prompts():
    base = np.array([0.0, 10.0, -20.0, 35.0, 3.0, -7.0])
    r = stats.paired_diff_ci(base + 1.0, base, rng=0)
    assert r["mean"] == pytest.approx(1.0)
    assert (r["lo"], r["hi"]) == pytest.approx((1.0, 1.0))  # unpaired, the interval would be ~ +-20 wide
    # only prompts where both sides are known
    r = stats.paired_diff_ci([1.0, NAN, 3.0], [0.0, 5.0, 1.0])
    assert r["mean"] == pytest.approx(1.5) and r["n"] == 2


def test_win_rate_counts_ties_half():
    r = stats.win_rate([3.0, 2.0, 2.0, 1.0], [1.0, 2.0, 0.0, 1.0], rng=0)
    assert r["mean"] == pytest.approx(0.75) and r["n"] == 4  # win, tie, win, tie
    assert stats.win_rate([1.0, 1.0], [1.0, 1.0])["mean"] == 0.5
    assert stats.win_rate([0.0, 5.0], [1.0, 4.0])["mean"] == 0.5
    r = stats.win_rate([1.0, NAN, 0.0], [0.0, 1.0, NAN])
    assert r["mean"] == 1.0 and r["n"] == 1


@pytest.mark.filterwarnings("error")  # an undefined rho is skipped, not computed as NaN
def test_spearman_hand_computed():
    # d = [-1, 1, -1, 1, 0]: rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert stats.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert math.isnan(stats.spearman([1, 2, 3], [1, 1, 1]))
    # ties take average ranks: y ranks [1.5, 1.5, 3] -> Pearson of ranks
    assert stats.spearman([1, 2, 3], [0, 0, 1]) == pytest.approx(np.sqrt(3) / 2)


@pytest.mark.filterwarnings("error")  # an undefined rho is skipped, not computed as NaN
def test_within_prompt_spearman_skips_constant_prompts():
    s = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5.0]])
    r = np.array([[2, 1, 4, 3, 5], [5, 4, 3, 2, 1], [7, 7, 7, 7, 7.0]])
    out = stats.within_prompt_spearman(s, r, rng=0)
    assert out["mean"] == pytest.approx((0.8 - 1.0) / 2)
    assert (out["n"], out["skipped"]) == (2, 1)
    assert (out["lo"], out["hi"]) == pytest.approx((-1.0, 0.8))
    assert stats.within_prompt_spearman(s[2:], r[2:]) is None


def test_within_prompt_and_pooled_spearman_differ_when_prompts_differ_in_level():
    # Within each prompt reward rises with stability; across prompts the more stable prompt scores lower.
    s = np.array([[1, 2, 3], [4, 5, 6.0]])
    r = np.array([[10, 11, 12], [0, 1, 2.0]])
    assert stats.within_prompt_spearman(s, r)["mean"] == pytest.approx(1.0)
    pooled = stats.pooled_spearman(s, r, n_boot=200, rng=0)
    assert pooled["mean"] == pytest.approx(1 - 6 * 54 / (6 * 35))  # ranks of r: 4 5 6 1 2 3
    assert pooled["n"] == 2 and pooled["lo"] <= pooled["mean"] <= pooled["hi"] == pytest.approx(1.0)
    assert stats.pooled_spearman([[1, 2]], [[3, 3]]) is None


def test_stability_deciles_put_the_least_stable_first():
    assert stats.stability_deciles(np.arange(100.0))[0].tolist() == [r // 10 + 1 for r in range(100)]
    # K = 8 < 10 bins: the least stable seed is still decile 1 and the most stable decile 10
    s = np.array([[0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, NAN, 0.6]])
    d = stats.stability_deciles(s)[0]
    assert d[1] == 1 and d[2] == 10 and d[7] == 0
    assert d[[1, 5, 3, 0, 8, 4, 6, 2]].tolist() == sorted(d[[1, 5, 3, 0, 8, 4, 6, 2]].tolist())


def test_reward_by_decile():
    rng = np.random.default_rng(0)
    stability = np.array([rng.permutation(10) for _ in range(4)], dtype=float)
    reward = stability.copy()  # reward = the seed's stability rank 0..9 -> decile d has reward d - 1
    reward[0, stability[0] == 9] = NAN  # an unknown reward leaves that prompt out of its decile
    out = stats.by_decile(stability, reward, n_boot=200, rng=0)
    assert [o["mean"] for o in out] == pytest.approx(list(range(10)))
    assert out[9]["n"] == 3 and out[0]["n"] == 4
    assert (out[0]["lo"], out[0]["hi"]) == (0.0, 0.0)
    assert stats.by_decile([[1.0, 2.0]], [[NAN, NAN]])[0] is None


def test_partial_spearman_removes_what_the_control_explains():
    rng = np.random.default_rng(0)
    z = rng.normal(size=400)
    x, y = z + 0.3 * rng.normal(size=400), z + 0.3 * rng.normal(size=400)
    assert stats.spearman(x, y) > 0.8 and abs(stats.partial_spearman(x, y, z)) < 0.1
    w = x + 0.5 * rng.normal(size=400)  # x and w share more than z
    rxw, rxz, rwz = stats.spearman(x, w), stats.spearman(x, z), stats.spearman(w, z)
    assert stats.partial_spearman(x, w, z) == pytest.approx((rxw - rxz * rwz) / np.sqrt((1 - rxz ** 2) * (1 - rwz ** 2)))
    assert stats.partial_spearman(x, w, z) > 0.3
    assert np.isnan(stats.partial_spearman(x, y, x)) and np.isnan(stats.partial_spearman(np.ones(400), y, z))
    within = stats.within_prompt_partial_spearman(np.stack([x, x]), np.stack([y, w]), np.stack([z, np.ones(400)]),
                                                  n_boot=50, rng=0)
    assert within["n"] == 2 and within["skipped"] == 0  # a constant control partials out nothing: plain rho
    assert within["mean"] == pytest.approx((stats.partial_spearman(x, y, z) + stats.spearman(x, w)) / 2)


def test_clustered_bootstrap_resamples_whole_captions():
    """66 captions repeated 3 times: resampling prompts as if independent gives too narrow an interval; resampling
    captions gives the interval of 66 independent values."""
    rng = np.random.default_rng(1)
    per_caption = rng.normal(size=66)
    values = np.repeat(per_caption, 3)  # a caption's prompts agree exactly
    captions = np.repeat(np.arange(66), 3)
    naive = stats.mean_ci(values, 2000, 0)
    clustered = stats.mean_ci(values, 2000, 0, clusters=captions)
    alone = stats.mean_ci(per_caption, 2000, 0)
    assert clustered["mean"] == pytest.approx(values.mean()) and clustered["clusters"] == 66 and clustered["n"] == 198
    assert clustered["hi"] - clustered["lo"] == pytest.approx(alone["hi"] - alone["lo"], rel=0.15)
    assert naive["hi"] - naive["lo"] < 0.7 * (clustered["hi"] - clustered["lo"])  # ~1/sqrt(3) as wide
    with_nan = stats.paired_diff_ci(np.append(values, np.nan), np.zeros(199), 100, 0, np.append(captions, 5))
    assert with_nan["n"] == 198 and with_nan["clusters"] == 66


def test_every_statistic_can_resample_captions():
    """Three prompts per caption that agree exactly: each statistic's clustered interval is as wide as over the
    captions alone, wider than the one that treats the prompts as independent; without clusters nothing changes."""
    rng = np.random.default_rng(2)
    n, k = 40, 6
    stability = np.repeat(rng.normal(size=(n, k)), 3, axis=0)
    reward = np.repeat(rng.normal(size=(n, k)), 3, axis=0) + stability
    control = np.repeat(rng.normal(size=(n, k)), 3, axis=0)
    captions = np.repeat(np.arange(n), 3)

    def width(ci):
        return ci["hi"] - ci["lo"]

    cases = {
        "win_rate": lambda c: stats.win_rate(reward[:, 0], reward[:, 1], 2000, 0, clusters=c),
        "within": lambda c: stats.within_prompt_spearman(stability, reward, 2000, 0, clusters=c),
        "partial": lambda c: stats.within_prompt_partial_spearman(stability, reward, control, 2000, 0, clusters=c),
        "pooled": lambda c: stats.pooled_spearman(stability, reward, 300, 0, clusters=c),
        "decile": lambda c: stats.by_decile(stability, reward, 2000, 0, bins=2, clusters=c)[1],
    }
    alone = {
        "win_rate": stats.win_rate(reward[::3, 0], reward[::3, 1], 2000, 0),
        "within": stats.within_prompt_spearman(stability[::3], reward[::3], 2000, 0),
        "pooled": stats.pooled_spearman(stability[::3], reward[::3], 300, 0),
    }
    for name, statistic in cases.items():
        naive, clustered = statistic(None), statistic(captions)
        assert clustered["mean"] == pytest.approx(naive["mean"]) and clustered["clusters"] == n, name
        assert width(naive) < 0.75 * width(clustered), name  # ~ 1/sqrt(3) as wide
        if name in alone:
            assert width(clustered) == pytest.approx(width(alone[name]), rel=0.25), name
    assert stats.pooled_spearman(stability, reward, 50, 3) == stats.pooled_spearman(stability, reward, 50, 3, None)
    # A caption's prompts differ: its first rises with stability, the other two fall. A resample holds whole
    # captions, so every resample keeps that mix and the interval stays around the estimate.
    seeds = np.tile(np.arange(5.0), (3 * n, 1)) + np.repeat(rng.normal(size=(n, 1)), 3, axis=0)
    mixed = np.where((np.arange(3 * n) % 3 == 0)[:, None], seeds, -seeds)
    pooled = stats.pooled_spearman(seeds, mixed, 300, 0, clusters=captions)
    assert pooled["lo"] - 0.01 <= pooled["mean"] <= pooled["hi"] + 0.01 and width(pooled) < 0.3


def test_unanimous_prompts():
    outcomes = np.array([[1, 1, 1.0], [0, 0, NAN], [1, 0, 1.0], [NAN, NAN, NAN], [0, 0, 0.0], [NAN, 1, 1.0]])
    passes, fails = stats.unanimous(outcomes)
    assert passes.tolist() == [True, False, False, False, False, True]  # unknown seeds do not break agreement
    assert fails.tolist() == [False, True, False, False, True, False]


# ----------------------------------------------------------------------------- human preference votes

def test_vote_win_rate_counts_ties_half_and_resamples_prompts_and_raters():
    # 4 votes: a win, a loss, a tie, a win -> 2.5 / 4.
    r = stats.vote_win_rate(["p1", "p1", "p2", "p2"], ["x", "y", "x", "y"], [1, 0, 0.5, 1], n_boot=400, rng=0)
    assert r["mean"] == 0.625 and r["n"] == 4
    assert 0 <= r["lo"] < 0.625 < r["hi"] <= 1
    assert stats.vote_win_rate([], [], []) is None
    # One rater who always prefers A and one who never does: the rater resampling alone spans 0 to 1, which
    # a bootstrap over prompts only (each prompt's votes averaging 0.5) would hide.
    prompts = [f"p{i}" for i in range(20) for _ in range(2)]
    raters = ["fan", "critic"] * 20
    wide = stats.vote_win_rate(prompts, raters, [1, 0] * 20, n_boot=400, rng=0)
    assert wide["mean"] == 0.5 and wide["lo"] == 0.0 and wide["hi"] == 1.0


def test_bradley_terry_recovers_known_strengths():
    rng = np.random.default_rng(0)
    truth = {"a": 1.0, "b": 0.0, "c": -1.0}
    a, b, o = [], [], []
    for _ in range(6000):
        x, y = rng.choice(list(truth), 2, replace=False)
        a.append(x), b.append(y), o.append(float(rng.random() < 1 / (1 + math.exp(truth[y] - truth[x]))))
    s = stats.bradley_terry(a, b, o, ["a", "b", "c"])
    # 2,000 games per pair: the log-strengths' standard error is about 0.05.
    assert s == pytest.approx([1.0, 0.0, -1.0], abs=0.15)
    assert s.sum() == pytest.approx(0, abs=1e-9)
    # A method that never won keeps a finite strength (the prior's virtual tie), below the others.
    never = stats.bradley_terry(["a", "a", "b"], ["c", "c", "c"], [1, 1, 1], ["a", "b", "c"])
    assert np.isfinite(never).all() and never[2] < never[1] < never[0]


def test_bradley_terry_ci_contains_its_estimate():
    ci = stats.bradley_terry_ci(["p1", "p2", "p3", "p1"], ["x", "x", "y", "y"], ["a", "a", "b", "a"],
                                ["b", "c", "c", "c"], [1, 1, 0.5, 0], ["a", "b", "c"], n_boot=50, rng=0)
    assert set(ci) == {"a", "b", "c"} and all(c["lo"] <= c["mean"] <= c["hi"] for c in ci.values())


def test_rater_agreement_fleiss_kappa():
    # Item 1: both raters say A; item 2: one A, one B; item 3: judged once (left out).
    r = stats.rater_agreement([1, 1, 2, 2, 3], [1.0, 1.0, 1.0, 0.0, 0.5])
    # observed (1 + 0) / 2 = 0.5; category shares A 3/4, B 1/4 -> chance 0.625; kappa (0.5 - 0.625) / 0.375.
    assert r == {"agreement": 0.5, "kappa": pytest.approx(-1 / 3), "items": 2}
    perfect = stats.rater_agreement([1, 1, 2, 2], [1.0, 1.0, 0.0, 0.0])
    assert perfect["agreement"] == 1.0 and perfect["kappa"] == 1.0
    assert stats.rater_agreement([1, 2], [1.0, 0.0]) is None


def test_interval_text_writes_every_report_s_interval_one_way():
    d = {"mean": 0.0123, "lo": -0.0051, "hi": 0.0342, "n": 9}
    assert stats.interval_text(d) == "0.0 [-0.0, 0.0]"
    assert stats.interval_text(d, digits=3) == "0.012 [-0.005, 0.034]"
    # a difference in percentage points: signed estimate; the bounds signed only when asked
    assert stats.interval_text(d, 100, sign="+") == "+1.2 [-0.5, 3.4]"
    assert stats.interval_text(d, 100, sign="+", bound_sign="+") == "+1.2 [-0.5, +3.4]"
    assert stats.interval_text(d, 100, unit="%") == "1.2% [-0.5, 3.4]"
    # the mark says the interval excludes 0: not here, on either side there
    assert stats.interval_text(d, 100, mark=True) == "1.2 [-0.5, 3.4]"
    assert stats.interval_text({**d, "lo": 0.001}, 100, mark=True).endswith("3.4] *")
    assert stats.interval_text({"mean": -0.2, "lo": -0.3, "hi": -0.1}, mark=True) == "-0.2 [-0.3, -0.1] *"
    # no interval, or NaN in it, is never written as a number
    assert stats.interval_text(None) == "–" and stats.interval_text({}, missing="n/a") == "n/a"
    assert stats.interval_text({**d, "hi": float("nan")}) == "–"
    assert stats.interval_text({**d, "lo": None}) == "–"  # a JSON null in a stored interval
