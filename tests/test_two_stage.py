"""Two-stage selection (a proxy prunes K seeds to `keep`, the full score re-ranks) and the seed bank."""

import pytest

import stablenoise as sn
from stablenoise.bank import SeedBank, build_bank
from stablenoise.errors import StablenoiseError
from stablenoise.selection import Proxy
from tests.tolerance import TOY, f32
from tests.toy import ToyBackend

SEEDS = list(range(10, 22))


def full(backend, prompt="a cat", **kw):
    return sn.select(backend, prompt, seeds=SEEDS, batch_size=1, progress=False, **kw)


def test_keeping_every_seed_is_plain_selection():
    b = ToyBackend()
    plain = full(b)
    two = full(b, proxy=Proxy(steps=1), keep=len(SEEDS))
    assert two.scores == plain.scores and two.best_seed == plain.best_seed and two.worst_seed == plain.worst_seed


def test_the_proxy_decides_which_seeds_get_the_full_score():
    b = ToyBackend()
    truth = dict(zip(SEEDS, full(b).scores))
    # A proxy that ranks the seeds in reverse: the full score only sees the truly worst three.
    reverse = {s: -v for s, v in truth.items()}
    worst_three = sorted(SEEDS, key=truth.get)[:3]
    b.calls = 0
    r = full(b, proxy=reverse, keep=3)
    assert b.calls == 3  # batch size 1: one denoising call per fully scored seed
    assert [s for s, v in zip(r.seeds, r.scores) if v is not None] == sorted(worst_three)
    assert r.best_seed == max(worst_three, key=truth.get) and r.worst_seed == min(worst_three, key=truth.get)
    assert r.proxy_scores == [reverse[s] for s in SEEDS]
    # A proxy that ranks them truly: the same winner as full selection at a quarter of the cost.
    b.calls = 0
    assert full(b, proxy=truth, keep=3).best_seed == max(SEEDS, key=truth.get) and b.calls == 3


def test_a_proxy_setting_scores_with_that_setting():
    b = ToyBackend()
    r = full(b, proxy=Proxy(steps=1, prompt=""), keep=2)
    expected = sn.stability(b, "", sn.noises_from_seeds(SEEDS, b.latent_shape), steps=1).tolist()
    tol = f32(TOY)  # the proxy's batches against one of 12: the toy's float32 cosine over d
    assert r.proxy_scores == pytest.approx(expected, abs=tol)
    assert r.proxy_scores != pytest.approx(full(b).scores, abs=tol)  # and not the full score


SETTINGS = {"steps": 3, "guidance": 2.0, "inversion_guidance": 1.5}  # none of them the toy's default (2, 1.0, 1.0)


@pytest.mark.parametrize("proxy, changed", [(Proxy(steps=1), {"steps": 1}), (Proxy(guidance=3.0), {"guidance": 3.0}),
                                             (Proxy(inversion_guidance=0.5), {"inversion_guidance": 0.5}),
                                             (Proxy(prompt="a"), {"prompt": "a"})])  # "a" and "a cat": other toy shifts
def test_a_proxy_changes_the_settings_it_sets_and_keeps_the_others(proxy, changed):
    b = ToyBackend()
    r = full(b, proxy=proxy, keep=3, **SETTINGS)
    used = {"prompt": "a cat", **SETTINGS, **changed}
    expected = sn.stability(b, used.pop("prompt"), sn.noises_from_seeds(SEEDS, b.latent_shape), **used).tolist()
    assert r.proxy_scores == pytest.approx(expected, abs=f32(TOY))  # other batches: the float32 cosine over d
    top = sorted(range(len(SEEDS)), key=lambda i: -expected[i])[:3]
    plain = full(b, **SETTINGS).scores  # the full score of the kept seeds: the select() settings, not the proxy's
    assert r.scores == [v if i in top else None for i, v in enumerate(plain)]


class _Sizes(ToyBackend):
    def __init__(self):
        super().__init__()
        self.sizes = []

    def denoise(self, noise, cond, steps, guidance, checkpoint=False):
        self.sizes.append(noise.shape[0])
        return super().denoise(noise, cond, steps, guidance, checkpoint)


def test_keep_one_fully_scores_only_the_proxy_best_in_batches_of_the_given_size():
    b = _Sizes()
    r = sn.select(b, "a cat", seeds=SEEDS, batch_size=5, proxy=Proxy(steps=1), keep=1, progress=False)
    assert b.sizes == [5, 5, 2, 1]  # the proxy's batches are the given size too, then one full score
    proxy = sn.stability(ToyBackend(), "a cat", sn.noises_from_seeds(SEEDS, b.latent_shape), steps=1).tolist()
    winner = SEEDS[max(range(len(SEEDS)), key=proxy.__getitem__)]
    assert r.best_seed == r.worst_seed == winner
    assert r.scores == [v if s == winner else None for s, v in zip(SEEDS, full(ToyBackend()).scores)]


def test_seed_bank_round_trip_and_selection(tmp_path):
    b = ToyBackend()
    bank = build_bank(b, 12, first_seed=10, batch_size=5, progress=False)
    expected = sn.stability(b, "", sn.noises_from_seeds(SEEDS, b.latent_shape)).tolist()
    assert bank.seeds == SEEDS and bank.stability == pytest.approx(expected, abs=f32(TOY))  # batches of 5 vs 12
    assert bank.top(2) == sorted(SEEDS, key=dict(zip(SEEDS, expected)).get, reverse=True)[:2]
    bank.save(tmp_path / "bank.json")
    again = SeedBank.load(tmp_path / "bank.json")
    assert again.scores == bank.scores and again.prompt == "" and again.steps == 2
    r = sn.select(b, "a cat", seeds=again.seeds, proxy=again.scores, keep=2, batch_size=4, progress=False)
    assert {s for s, v in zip(r.seeds, r.scores) if v is not None} == set(bank.top(2))


@pytest.mark.parametrize("kwargs, match", [
    ({"proxy": Proxy(steps=1)}, "^two-stage selection needs both proxy and keep$"),
    ({"keep": 2}, "^two-stage selection needs both proxy and keep$"),
    ({"proxy": Proxy(steps=1), "keep": 0}, "^keep must be >= 1, got 0$"),
    ({"proxy": {10: 0.5}, "keep": 2}, r"^the proxy scores have no score for 11 of the seeds \(first: 11\)$"),
    ({"proxy": {s: float("nan") for s in SEEDS}, "keep": 2}, "^the proxy scored every one of the 12 seeds NaN or inf$"),
])
def test_bad_two_stage_input(kwargs, match):
    with pytest.raises(StablenoiseError, match=match):
        full(ToyBackend(), **kwargs)


def test_bad_bank_files(tmp_path):
    with pytest.raises(StablenoiseError, match="not found"):
        SeedBank.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"seeds": [1, 2], "stability": [0.5]}')
    with pytest.raises(StablenoiseError, match="not a seed bank"):
        SeedBank.load(tmp_path / "bad.json")
    with pytest.raises(StablenoiseError, match="n >= 1"):
        build_bank(ToyBackend(), 0)


@pytest.mark.model
def test_bank_and_two_stage_cli(tmp_path):
    import json

    from click.testing import CliRunner

    from stablenoise.cli import main

    bank_file = tmp_path / "bank.json"
    r = CliRunner().invoke(main, ["bank", "-n", "6", "--steps", "2", "--out", str(bank_file)])
    assert r.exit_code == 0, r.output
    bank = SeedBank.load(bank_file)
    assert bank.seeds == list(range(6)) and bank.prompt == ""
    out = tmp_path / "sel"
    r = CliRunner().invoke(main, ["select", "--prompt", "a red circle", "--bank", str(bank_file), "--keep", "2",
                                  "--steps", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    record = json.loads(next(out.glob("*/record.json")).read_text())
    assert [s for s, v in zip(record["seeds"], record["scores"]) if v is not None] == sorted(bank.top(2))
    r = CliRunner().invoke(main, ["select", "--prompt", "a red circle", "--keep", "2", "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "needs --keep and a proxy" in r.output
