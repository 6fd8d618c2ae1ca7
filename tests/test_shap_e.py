"""Shap-E (text-to-3D): the adapter's round trip over the prior, its renders, and the turntable reward."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import HeunDiscreteScheduler
from PIL import Image

import stablenoise as sn
from stablenoise import ddim
from stablenoise.backends import ShapEBackend, families
from stablenoise.backends.base import Conditioning
from stablenoise.errors import StablenoiseError
from stablenoise.stability import cosine
from tiny_shap_e import EMBED, TOKENS, GaussianPrior, shap_e_scheduler, tiny_shap_e
from tolerance import TINY_SHAP_E, cfg, f32, round_trip_n

# Two computations of a score: a round trip of the tiny prior (3 steps) under the family's CFG 15.
SCORE_TOL = f32(round_trip_n(TINY_SHAP_E, 3), cfg(15.0))
# A CLIPScore: 100 x a cosine fed by the tiny CLIP's 3 x 16 x 16 patch embedding (tests/rewards/conftest.py).
CLIPSCORE_TOL = f32(3 * 16 * 16, 100.0)

CLIP_TINY = Path(__file__).parent / "rewards" / "fixtures" / "clip-tiny"
PROMPTS = ["a red cube", "a blue sphere"]

pytestmark = pytest.mark.model


def _backend(pipe, **render):
    pipe.set_progress_bar_config(disable=True)
    return dataclasses.replace(sn.from_pipeline(pipe), **{"frame_size": 8, "views": 3, **render})


@pytest.fixture(scope="module")
def shap_e():
    return _backend(tiny_shap_e())


@pytest.fixture(scope="module")
def shap_e_trailing():
    """One trailing step starts both samplers at t = 1023 (linspace's single step is t = 0)."""
    pipe = tiny_shap_e()
    pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    return _backend(pipe)


def test_the_family_and_its_defaults(shap_e):
    assert type(shap_e) is ShapEBackend and shap_e.latent_shape == (TOKENS, EMBED)
    fam = next(f for f in families() if f.name == "shap-e")
    assert shap_e.defaults == fam.defaults == sn.Defaults(64, 15.0)
    assert ShapEBackend.__dataclass_fields__["frame_size"].default == 256
    d = json.loads(json.dumps(shap_e.describe()))
    assert d["pipeline"] == "ShapEPipeline" and d["frame_size"] == 8 and d["views"] == [0, 6, 12]
    assert d["ddim"]["beta_schedule"] == "exp" and d["ddim"]["timestep_spacing"] == "linspace"
    with pytest.raises(StablenoiseError, match="fixed image size"):
        sn.from_pipeline(tiny_shap_e(), height=64)
    for bad in ({"views": 0}, {"views": 20}, {"frame_size": 0}):
        with pytest.raises(StablenoiseError, match="views|frame_size"):
            dataclasses.replace(shap_e, **bad)


@pytest.mark.parametrize("guidance", [15.0, 1.0])
def test_one_ddim_step_is_the_pipelines_heun_step(shap_e_trailing, guidance):
    """One step from sigma_max: Heun returns the clipped x0 the prior predicts for the noise, and so does DDIM.
    This ties the prompt encoding, CFG, the variance split, the sample-to-eps conversion and the noise
    scaling (the pipeline multiplies the noise by sigma_max, then divides by sqrt(sigma_max^2 + 1)) to diffusers."""
    b = shap_e_trailing
    noise = sn.noises_from_seeds([0, 1], b.latent_shape)
    ours = b.denoise(noise, b.encode(PROMPTS, guidance), 1, guidance)
    theirs = b.generate_latents(PROMPTS, noise, 1, guidance).to(ours.dtype)
    assert (ours.abs() < 0.99).float().mean() > 0.5  # mostly unclipped: the comparison is not vacuous
    # 1e-3 is for Heun's float32 sigma arithmetic (sigma_max ~ e^6) and its interpolated float timestep: another
    # computation of the same step, not reordering alone (that would be f32(TINY_SHAP_E, cfg(15)) = 1.6e-4)
    assert torch.allclose(ours, theirs, atol=1e-3), (ours - theirs).abs().max()


def test_cfg_and_the_prompt_change_the_latent(shap_e_trailing):
    b = shap_e_trailing
    noise = sn.noises_from_seeds([0, 0], b.latent_shape)
    cfg = b.denoise(noise, b.encode(PROMPTS, 15.0), 1, 15.0)
    plain = b.denoise(noise, b.encode(PROMPTS, 15.0), 1, 1.0)
    assert (cfg - plain).abs().max() > 0.1 and (cfg[0] - cfg[1]).abs().max() > 0.1
    uncond = b.encode(PROMPTS, 15.0).uncond["proj_embedding"]
    assert torch.equal(uncond, torch.zeros_like(uncond))  # the pipeline's unconditional branch


def test_round_trip_of_an_analytic_prior_tends_to_identity():
    """With the exact x0 predictor of Gaussian data (the variance half set to 7, to be ignored), the DDIM round trip
    on the exp schedule returns the noise as the steps grow: the sample prediction is read at the right level."""
    pipe = tiny_shap_e()
    pipe.prior = GaussianPrior(pipe.scheduler.alphas_cumprod)
    b = sn.from_pipeline(pipe)
    noise = sn.noises_from_seeds([0, 1], b.latent_shape).double()
    cond = Conditioning({"proj_embedding": torch.zeros(2, 32, dtype=torch.float64)})
    gaps = []
    for steps in (64, 256):
        z = b.denoise(noise, cond, steps, 1.0)
        gaps.append(float((1 - cosine(noise, b.invert(z, cond, steps, 1.0))).max()))
        assert abs(float(z.mean()) - 0.1) < 0.01 and float(z.abs().max()) < 1  # the data's mean, unclipped
    assert gaps[0] < 2e-3 and gaps[1] < 1e-4 and gaps[1] < gaps[0] / 10, gaps


def test_stability_batched_equals_per_sample(shap_e):
    noise = sn.noises_from_seeds([3, 4], shap_e.latent_shape)
    before = shap_e.model_evaluations
    both = sn.stability(shap_e, PROMPTS, noise, steps=3)
    assert shap_e.model_evaluations - before == 2 * 3 * 2 + 2 * 3  # CFG denoise, plain inversion
    one = torch.cat([sn.stability(shap_e, p, n, steps=3) for p, n in zip(PROMPTS, noise)])
    assert torch.allclose(both, one, rtol=0, atol=SCORE_TOL) and (both.abs() < 1).all() and both[0] != both[1]


def test_select(shap_e):
    r = sn.select(shap_e, "a red cube", k=4, batch_size=3, steps=3, progress=False)
    direct = sn.stability(shap_e, "a red cube", sn.noises_from_seeds(range(4), shap_e.latent_shape), steps=3)
    assert torch.allclose(torch.tensor(r.scores), direct, rtol=0, atol=SCORE_TOL)  # batches of 3 and 1 against 4
    assert r.best_seed == int(direct.argmax()) and r.worst_seed == int(direct.argmin())


def test_optimize_raises_stability(shap_e):
    noise = sn.noises_from_seeds([0, 1], shap_e.latent_shape)
    r = sn.optimize(shap_e, "a red cube", noise, iterations=3, steps=3, progress=False,
                    lr=sn.paper_equivalent_lr(shap_e.latent_shape))
    start, best = torch.tensor(r.initial_stability), torch.tensor(r.best_stability)
    assert r.stopped == [None, None] and (best > start + 1e-3).all(), (start, best)
    assert torch.allclose(sn.stability(shap_e, "a red cube", r.noise, steps=3), best.float(), rtol=0, atol=SCORE_TOL)


def test_generate_with_both_samplers(shap_e_trailing):
    b = shap_e_trailing
    noise = sn.noises_from_seeds([0, 1], b.latent_shape)
    ours = sn.generate(b, PROMPTS, noise, steps=1, sampler="ddim")
    theirs = sn.generate(b, PROMPTS, noise, steps=1, sampler="pipeline")
    assert [im.size for im in ours + theirs] == [(24, 8)] * 4
    for a, c in zip(ours, theirs):
        assert np.abs(np.asarray(a, dtype=float) - np.asarray(c, dtype=float)).max() <= 2  # 8-bit rounding


def test_turntable_decode(shap_e):
    latent = shap_e.denoise(sn.noises_from_seeds([0], shap_e.latent_shape), shap_e.encode(PROMPTS[:1], 15.0), 2, 15.0)
    views = shap_e.decode_views(latent)[0]
    assert [v.size for v in views] == [(8, 8)] * 3
    frames = shap_e.pipe.shap_e_renderer.decode_to_image(latent.float(), "cpu", size=8, ray_batch_size=256)  # gcd(4096, 20 * 8 * 8)
    assert frames.shape == (20, 8, 8, 3)
    for view, i in zip(views, [0, 6, 12]):  # evenly spaced over the 19 distinct angles
        assert np.array_equal(np.asarray(view), (frames[i].numpy() * 255).round().astype(np.uint8))
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    strip = shap_e.decode(latent)[0]
    assert torch.equal(torch.get_rng_state(), state)  # diffusers reseeds the renderer's jitter; not ours
    assert strip.size == (24, 8)
    both = shap_e.decode(torch.cat([-latent, latent]))  # a latent renders the same alone or in a batch
    assert np.array_equal(np.asarray(both[1]), np.asarray(strip))
    for i, view in enumerate(views):
        assert np.array_equal(np.asarray(strip.crop((8 * i, 0, 8 * i + 8, 8))), np.asarray(view))
    wide = dataclasses.replace(shap_e, frame_size=16, views=5)
    assert wide.decode(latent)[0].size == (80, 16) and wide.view_indices() == [0, 3, 7, 11, 15]
    with pytest.raises(NotImplementedError, match="not differentiable"):
        shap_e.decode_pixels(latent)


@pytest.fixture(scope="module")
def clipscore():
    return sn.load_reward(f"clipscore:{CLIP_TINY}", device="cpu")


def _views():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]


def test_views_reward_is_the_mean_of_per_view_clipscores(clipscore):
    views = sn.load_reward(f"clipscore-views:{CLIP_TINY}", device="cpu")
    strip_a, strip_b = Image.new("RGB", (96, 32)), Image.new("RGB", (32, 32))
    a = _views()
    for i, v in enumerate(a):
        strip_a.paste(v, (32 * i, 0))
    strip_b.paste(a[1], (0, 0))
    per_view = clipscore(a, "a red cube")
    assert per_view.std() > 1e-3  # the views score differently: a mean is not a copy
    got = views([strip_a, strip_b], ["a red cube", "a blue sphere"])
    assert got.tolist() == pytest.approx([float(per_view.mean()), float(clipscore(a[1], "a blue sphere"))],
                                         abs=CLIPSCORE_TOL)
    # The tensor path (differentiable, torch preprocessing) splits the same way.
    pixels = torch.from_numpy(np.array(strip_a)).permute(2, 0, 1).float()[None] / 255
    per_view = clipscore(torch.stack(list(pixels[0].split(32, dim=2))), "a red cube")
    assert views(pixels, "a red cube").tolist() == pytest.approx([float(per_view.mean())], abs=CLIPSCORE_TOL)
    with pytest.raises(StablenoiseError, match="square views side by side"):
        views(Image.new("RGB", (40, 32)), "a red cube")


def test_views_reward_on_shap_e_renders(shap_e, clipscore):
    views = sn.load_reward(f"clipscore-views:{CLIP_TINY}", device="cpu")
    latent = shap_e.denoise(sn.noises_from_seeds([0], shap_e.latent_shape), shap_e.encode(PROMPTS[:1], 15.0), 2, 15.0)
    expected = clipscore(shap_e.decode_views(latent)[0], PROMPTS[0]).mean()
    assert float(views(shap_e.decode(latent), PROMPTS[0])) == pytest.approx(float(expected), abs=CLIPSCORE_TOL)


def test_load_picks_the_adapter(tmp_path, shap_e):
    tiny_shap_e().save_pretrained(tmp_path, safe_serialization=True)
    b = sn.load(str(tmp_path), device="cpu")
    assert type(b) is ShapEBackend and b.latent_shape == (TOKENS, EMBED) and b.defaults.guidance == 15.0
    noise = sn.noises_from_seeds([0], b.latent_shape)
    assert torch.allclose(sn.stability(b, "a cat", noise, steps=2), sn.stability(shap_e, "a cat", noise, steps=2),
                          rtol=0, atol=SCORE_TOL)  # the same weights, loaded: a 2-step round trip is within it
