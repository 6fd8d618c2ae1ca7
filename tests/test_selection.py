import numpy as np
import pytest
import torch

import stablenoise as sn
from stablenoise.errors import StablenoiseError
from tolerance import TINY_SD, TOY, cfg, f32, round_trip_n
from toy import ToyBackend


def test_ranks_agree_with_scores(sd):
    seen = []
    r = sn.select(sd, "a red cube", k=6, batch_size=4, steps=3, progress=False, callback=seen.append)
    assert r.seeds == list(range(6))
    assert [len(c["seeds"]) for c in seen] == [4, 2]
    direct = sn.stability(sd, "a red cube", sn.noises_from_seeds(range(6), sd.latent_shape), steps=3)
    # batches of 4 and 2 against one of 6: a 3-step round trip of the tiny UNet under its default CFG
    assert torch.allclose(torch.tensor(r.scores), direct, rtol=0, atol=f32(round_trip_n(TINY_SD, 3), cfg(7.5)))
    assert r.best_seed == int(direct.argmax()) and r.worst_seed == int(direct.argmin())
    assert r.ranked()[0] == (r.best_seed, max(r.scores))
    assert torch.equal(r.best_noise, sn.noises_from_seeds([r.best_seed], sd.latent_shape))
    assert torch.equal(r.worst_noise, sn.noises_from_seeds([r.worst_seed], sd.latent_shape))
    assert r.best_seed != r.worst_seed


def test_explicit_seeds(sd):
    r = sn.select(sd, "a cat", seeds=[10, 3, 99], steps=2, progress=False)
    assert r.seeds == [10, 3, 99] and r.best_seed in r.seeds
    s = sn.stability(sd, "a cat", sn.noise_from_seed(99, sd.latent_shape), steps=2)
    assert abs(r.scores[2] - float(s)) <= f32(round_trip_n(TINY_SD, 2), cfg(7.5))  # a batch of 3 against one of 1


@pytest.mark.parametrize("kwargs, match", [({"k": 0}, "k must be"), ({"seeds": [1, 1]}, "distinct"),
                                           ({"k": 2, "batch_size": 0}, "batch size")])
def test_bad_selection(sd, kwargs, match):
    with pytest.raises(StablenoiseError, match=match):
        sn.select(sd, "a cat", steps=2, progress=False, **kwargs)


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_select_on_a_toy_backend_is_exact(batch_size):
    toy, settings, seen = ToyBackend(), {"steps": 3, "guidance": 2.0, "inversion_guidance": 1.5}, []
    r = sn.select(toy, "a", seeds=[5, 9, 2, 7, 11], batch_size=batch_size, progress=False, callback=seen.append,
                  **settings)
    direct = sn.stability(ToyBackend(), "a", sn.noises_from_seeds([5, 9, 2, 7, 11], toy.latent_shape), **settings)
    assert r.prompt == "a" and r.seeds == [5, 9, 2, 7, 11] and r.proxy_scores is None  # no proxy: None, not ""
    assert r.scores == pytest.approx(direct.tolist(), abs=f32(TOY))  # other batches: the float32 cosine over d
    assert [x for c in seen for x in c["seeds"]] == r.seeds and [x for c in seen for x in c["scores"]] == r.scores
    assert len(seen) == -(-5 // batch_size)
    default = sn.stability(ToyBackend(), "a", sn.noises_from_seeds([5], toy.latent_shape))
    assert abs(float(default) - r.scores[0]) > 1e-4  # the settings were used
    order = direct.argsort(descending=True).tolist()
    assert r.best_seed == [5, 9, 2, 7, 11][order[0]] and r.worst_seed == [5, 9, 2, 7, 11][order[-1]]
    assert [s for s, _ in r.ranked()] == [[5, 9, 2, 7, 11][i] for i in order]
    assert torch.equal(r.best_noise, sn.noises_from_seeds([r.best_seed], toy.latent_shape))
    assert torch.equal(r.worst_noise, sn.noises_from_seeds([r.worst_seed], toy.latent_shape))


class _NaNForSeeds(ToyBackend):
    """Stability NaN for the noises of some seeds (a model that overflows on them)."""

    def __init__(self, bad_seeds):
        super().__init__()
        self.bad = [sn.noise_from_seed(s, self.latent_shape) for s in bad_seeds]

    def invert(self, latents, cond, steps, guidance, checkpoint=False):
        out = super().invert(latents, cond, steps, guidance)
        for i in range(latents.shape[0]):
            if any(torch.equal(self._last[i], b) for b in self.bad):
                out[i] = float("nan")
        return out

    def denoise(self, noise, cond, steps, guidance, checkpoint=False):
        self._last = noise
        return super().denoise(noise, cond, steps, guidance)


def test_non_finite_scores_never_win():
    toy = ToyBackend()
    clean = sn.stability(toy, "a", sn.noises_from_seeds(range(6), toy.latent_shape))
    best, worst = int(clean.argmax()), int(clean.argmin())
    r = sn.select(_NaNForSeeds([best, worst]), "a", k=6, batch_size=4, progress=False)
    assert r.scores[best] is None and r.scores[worst] is None
    assert r.best_seed not in (best, worst) and r.worst_seed not in (best, worst)
    rest = [v for i, v in enumerate(clean.tolist()) if i not in (best, worst)]
    tol = f32(TOY)  # batches of 4 and 2 against one of 6: the toy's float32 cosine over d
    assert r.scores[r.best_seed] == pytest.approx(max(rest), abs=tol)
    assert r.scores[r.worst_seed] == pytest.approx(min(rest), abs=tol)
    assert len(r.ranked()) == 4
    with pytest.raises(StablenoiseError,
                       match="^every one of the 2 seeds scored NaN or inf: check the model and settings$"):
        sn.select(_NaNForSeeds([0, 1]), "a", k=2, progress=False)


@pytest.mark.parametrize("kwargs, match", [({"seeds": []}, "^seeds is empty: give at least one seed$"),
                                           ({"seeds": [-1]}, "seed must be"), ({"seeds": [2**64]}, "seed must be"),
                                           ({"k": -3}, "^k must be >= 1, got -3$")])
def test_bad_seeds(kwargs, match):
    with pytest.raises(StablenoiseError, match=match):
        sn.select(ToyBackend(), "a", progress=False, **kwargs)


def test_k_of_one_and_duplicate_seeds():
    r = sn.select(ToyBackend(), "a", k=1, progress=False)
    assert r.seeds == [0] and r.best_seed == r.worst_seed == 0
    with pytest.raises(StablenoiseError, match="^seeds must be distinct$"):
        sn.select(ToyBackend(), "a", seeds=[3, 3], progress=False)
    with pytest.raises(StablenoiseError, match="^batch size must be >= 1, got 0$"):
        sn.select(ToyBackend(), "a", k=2, batch_size=0, progress=False)


def test_by_default_seeds_0_to_99_are_scored_with_a_progress_bar():
    b = ToyBackend()
    r = sn.select(b, "a")  # k=100, progress=True, batch size from the CPU rule: 16
    assert r.seeds == list(range(100))
    assert r.scores == sn.select(ToyBackend(), "a", k=100, batch_size=16, progress=False).scores
    assert b.calls == 7


class _Encodings(ToyBackend):
    def __init__(self):
        super().__init__()
        self.encoded = []

    def encode(self, prompts, guidance):
        self.encoded.append((list(prompts), guidance))
        return super().encode(prompts, guidance)


def test_the_prompt_is_encoded_once_for_the_larger_guidance():
    # The guidance decides whether a real backend encodes the unconditional branch (CFG); the toy ignores it.
    b = _Encodings()
    sn.select(b, "a", k=5, batch_size=2, guidance=2.0, inversion_guidance=3.5, progress=False)
    assert b.encoded == [(["a"], 3.5)]


class _BigLatent(ToyBackend):
    """An SD-sized latent (4x64x64) with an identity round trip; records the batch sizes."""

    def __init__(self):
        super().__init__()
        self.latent_shape, self.sizes = (4, 64, 64), []

    def denoise(self, noise, cond, steps, guidance, checkpoint=False):
        self.sizes.append(noise.shape[0])
        return noise

    def invert(self, latents, cond, steps, guidance, checkpoint=False):
        return latents


def test_on_cpu_a_large_latent_means_a_small_batch():
    b = _BigLatent()
    r = sn.select(b, "a", k=10, progress=False)
    assert b.sizes == [4, 4, 2]  # CPU_BATCH_ELEMENTS // (4 * 64 * 64) = 4, not min(10, 16)
    assert r.scores == pytest.approx([1.0] * 10, abs=f32(4 * 64 * 64))  # cos(x, x) in float32 over d = 16384


def test_with_an_accelerator_the_first_seed_measures_memory_and_is_reported_first(monkeypatch):
    """On CUDA ``auto_batch_size`` scores one seed to measure its memory (a GPU-free stand-in here, returning a
    batch of 2): that score is kept and reported first, and the other seeds follow in batches of the returned size."""
    asked = []

    def measuring(device, measure_one, limit, sample_elements=1):
        asked.append((device, limit, sample_elements))
        measure_one()
        return 2

    monkeypatch.setattr("stablenoise.batching.auto_batch_size", measuring)  # selection batches there
    b, seen, seeds = ToyBackend(), [], [5, 9, 2, 7, 11]
    r = sn.select(b, "a", seeds=seeds, steps=3, progress=False, callback=seen.append)
    assert asked == [(b.device, 5, 32)]  # the number of seeds, the values per sample (2 * 4 * 4)
    assert [c["seeds"] for c in seen] == [[5], [9, 2], [7, 11]] and b.calls == 3
    assert [x for c in seen for x in c["scores"]] == r.scores
    plain = sn.select(ToyBackend(), "a", seeds=seeds, steps=3, batch_size=1, progress=False)
    assert r.scores == pytest.approx(plain.scores, abs=f32(TOY))  # batches of 1, 2, 2 against 1s: the cosine over d
    assert r.best_seed == plain.best_seed and r.worst_seed == plain.worst_seed


# --- selection by a reward ------------------------------------------------------------------------------

class ImageToy(ToyBackend):
    """The toy round trip with 8-bit images (decode_pixels quantized), so a reward can judge them."""

    def decode(self, latents):
        from PIL import Image

        pixels = (self.decode_pixels(latents).clamp(0, 1) * 255).round().to(torch.uint8)
        return [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]


class Redness(sn.Reward):
    """Mean red level of the PIL image (0..255), with or without a prompt; ``lower`` flips its direction."""

    name = "redness"
    needs_prompts = False

    def __init__(self, lower: bool = False):
        self.higher_is_better = not lower
        self.seen_prompts = []

    def score_pil(self, images, prompts):
        self.seen_prompts += prompts or []
        return torch.tensor([float(np.asarray(im)[..., 0].mean()) for im in images])


def test_select_by_a_reward_ranks_each_noises_image():
    b, reward = ImageToy(), Redness()
    seeds = list(range(5, 17))
    r = sn.select(b, "a cat", seeds=seeds, scorer=reward, batch_size=5, progress=False)
    noise = sn.noises_from_seeds(seeds, b.latent_shape)
    with torch.no_grad():
        images = b.decode(b.denoise(noise, b.encode(["a cat"] * len(seeds), 1.0), 2, 1.0))
    expected = [float(np.asarray(im)[..., 0].mean()) for im in images]
    assert r.scores == expected and r.scorer == "redness"  # the saved image's reward, batch by batch
    assert r.best_seed == seeds[int(np.argmax(expected))] and r.worst_seed == seeds[int(np.argmin(expected))]
    assert r.ranked()[0] == (r.best_seed, max(expected)) and set(reward.seen_prompts) == {"a cat"}
    assert torch.equal(r.best_noise, sn.noises_from_seeds([r.best_seed], b.latent_shape))
    assert r.best_seed != sn.select(b, "a cat", seeds=seeds, progress=False).best_seed  # not stability's pick


def test_a_lower_is_better_reward_picks_its_smallest():
    b = ImageToy()
    seeds = list(range(12))
    up, down = (sn.select(b, "a", seeds=seeds, scorer=Redness(lower), progress=False) for lower in (False, True))
    assert up.scores == down.scores
    assert (down.best_seed, down.worst_seed) == (up.worst_seed, up.best_seed)
    assert down.ranked() == up.ranked()[::-1]


def test_two_stage_selection_by_a_reward_judges_fewer_step_images_first():
    b = ImageToy()
    seeds = list(range(20))
    r = sn.select(b, "a", seeds=seeds, scorer=Redness(), proxy=sn.Proxy(steps=1), keep=4, progress=False)
    one_step = sn.score_seeds(b, "a", seeds, Redness(), steps=1, progress=False)
    assert r.proxy_scores == one_step  # the proxy: the reward of 1-step images
    kept = sorted(seeds, key=lambda s: (-one_step[s], s))[:4]
    assert [s for s, v in zip(seeds, r.scores) if v is not None] == sorted(kept)  # only those get the full score
    full = sn.score_seeds(b, "a", kept, Redness(), progress=False)
    assert r.best_seed == kept[int(np.argmax(full))]
    with pytest.raises(StablenoiseError, match="scorer must be"):
        sn.select(b, "a", k=2, scorer="redness", progress=False)


def test_select_on_the_shell_scores_and_returns_the_rescaled_noises():
    from stablenoise.bank import build_bank
    from stablenoise.noise import on_shell

    b = ToyBackend()
    seeds = list(range(8))
    r = sn.select(b, "a", seeds=seeds, noise_norm="shell", progress=False)
    noise = sn.noises_from_seeds(seeds, b.latent_shape)
    assert r.scores == pytest.approx(sn.stability(b, "a", on_shell(noise)).tolist(), abs=f32(TOY))  # another batch
    assert r.scores != pytest.approx(sn.stability(b, "a", noise).tolist(), abs=1e-3)  # the norm moved them (not rounding)
    assert r.noise_norm == "shell" and torch.equal(r.best_noise, on_shell(noise[seeds.index(r.best_seed)][None]))
    bank = build_bank(b, 8, progress=False)  # scored as drawn: refused for a selection on the shell
    with pytest.raises(StablenoiseError, match="noise_norm='keep'.*'shell'"):
        sn.select(b, "a", seeds=seeds, proxy=bank, keep=2, noise_norm="shell", progress=False)
    with pytest.raises(StablenoiseError, match="noise_norm must be one of"):
        sn.select(b, "a", k=2, noise_norm="unit", progress=False)
