import warnings

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

import stablenoise as sn
from stablenoise.errors import StablenoiseError
from tolerance import TINY_SD, cfg, f32, round_trip_n


def independent_stability(pipe, prompt, noise, steps, guidance):
    """F(eps) written directly against diffusers' schedulers, sharing no code with stablenoise."""
    cond, uncond = pipe.encode_prompt([prompt] * noise.shape[0], "cpu", 1, True)
    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        x = noise.clone()
        ddim.set_timesteps(steps)
        for t in ddim.timesteps:
            out = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            u, c = out.chunk(2)
            x = ddim.step(u + guidance * (c - u), t, x).prev_sample
        inverse.set_timesteps(steps)
        for t in inverse.timesteps:
            x = inverse.step(pipe.unet(x, t, encoder_hidden_states=cond).sample, t, x).prev_sample
    return torch.nn.functional.cosine_similarity(noise.flatten(1), x.flatten(1))


def test_matches_independent_diffusers_loop(sd, sd_pipe):
    noise = sn.noises_from_seeds([3, 4], sd.latent_shape)
    ours = sn.stability(sd, "a red cube", noise, steps=5, guidance=7.5, inversion_guidance=1.0)
    ref = independent_stability(sd_pipe, "a red cube", noise, steps=5, guidance=7.5)
    # another code path (and diffusers' float32 alphas): a 5-step round trip of the tiny UNet under CFG 7.5
    assert torch.allclose(ours, ref, rtol=0, atol=f32(round_trip_n(TINY_SD, 5), cfg(7.5))), (ours, ref)
    assert (ours < 0.9999).all()  # a real round trip, not the trivial identity


@pytest.mark.parametrize("fixture", ["sd", "sdxl"])
def test_batched_equals_per_sample(request, fixture):
    backend = request.getfixturevalue(fixture)
    noise = sn.noises_from_seeds(range(4), backend.latent_shape)
    batched = sn.stability(backend, "a blue sphere", noise, steps=3)
    single = torch.cat([sn.stability(backend, "a blue sphere", noise[i:i + 1], steps=3) for i in range(4)])
    # batches of 4 and 1 sum in other orders: a 3-step round trip of the tiny UNet (SDXL's is as wide) under CFG
    tol = f32(round_trip_n(TINY_SD, 3), cfg(backend.defaults.guidance))
    assert torch.allclose(batched, single, rtol=0, atol=tol)
    assert batched.std() > 0  # different noises, different scores


def test_same_seed_same_score(sd):
    a = sn.stability(sd, "a cat", sn.noise_from_seed(7, sd.latent_shape), steps=3)
    b = sn.stability(sd, "a cat", sn.noise_from_seed(7, sd.latent_shape), steps=3)
    assert torch.equal(a, b)
    assert torch.equal(sn.noise_from_seed(7, (2, 3)), sn.noise_from_seed(7, (2, 3)))


def test_per_sample_prompts(sd):
    noise = sn.noises_from_seeds([1, 1], sd.latent_shape)
    mixed = sn.stability(sd, ["a cat", "a dog"], noise, steps=3)
    tol = f32(round_trip_n(TINY_SD, 3), cfg(sd.defaults.guidance))  # a batch of 2 against one of 1
    assert torch.allclose(mixed[0], sn.stability(sd, "a cat", noise[:1], steps=3)[0], rtol=0, atol=tol)
    assert torch.allclose(mixed[1], sn.stability(sd, "a dog", noise[:1], steps=3)[0], rtol=0, atol=tol)
    assert mixed[0] != mixed[1]


def test_inversion_guidance_changes_the_score(sd):
    noise = sn.noises_from_seeds([0], sd.latent_shape)
    plain = sn.stability(sd, "a cat", noise, steps=3, inversion_guidance=1.0)
    guided = sn.stability(sd, "a cat", noise, steps=3, inversion_guidance=3.0)
    assert abs(float(plain - guided)) > 1e-4


def test_leading_single_step_is_trivial_and_warned(sd):
    """The pitfall: leading spacing with 1 step starts at t=1, so nothing is denoised and s ~ 1."""
    noise = sn.noises_from_seeds([0, 1], sd.latent_shape)
    with pytest.warns(UserWarning, match="trivially"):
        s = sn.stability(sd, "a cat", noise, steps=1)
    assert (s > 0.9999).all()
    trailing = sd.with_scheduler(timestep_spacing="trailing")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s2 = sn.stability(trailing, "a cat", noise, steps=1)
    assert (s2 < 0.999).all()


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(1, 3, 16, 16), "shape"),
    (torch.full((1, 4, 16, 16), float("nan")), "NaN"),
])
def test_bad_noise(sd, bad, match):
    with pytest.raises(StablenoiseError, match=match):
        sn.stability(sd, "a cat", bad, steps=2)


def test_bad_settings(sd):
    noise = sn.noises_from_seeds([0], sd.latent_shape)
    with pytest.raises(StablenoiseError, match="steps"):
        sn.stability(sd, "a cat", noise, steps=0)
    with pytest.raises(StablenoiseError, match="prompt"):
        sn.stability(sd, [], noise, steps=2)
    with pytest.raises(StablenoiseError, match="2 prompts for 1"):
        sn.stability(sd, ["a", "b"], noise, steps=2)


def test_degenerate_first_step_is_warned():
    """Cosine betas end at alpha_bar ~ 2e-9: a DDIM step at t=999 ("trailing") must be flagged."""
    from stablenoise.shapes import world
    from stablenoise.shapes.pipeline import ShapesPipeline

    backend = sn.from_pipeline(ShapesPipeline.from_scratch(world.vocabulary(), schedule="cosine"),
                             timestep_spacing="trailing")
    noise = sn.noises_from_seeds([0], backend.latent_shape)
    with pytest.warns(UserWarning, match="alpha_bar"):
        sn.stability(backend, "a red circle", noise, steps=2)
    leading = sn.from_pipeline(backend.pipe)  # the shipped config: leading spacing, offset 1
    assert int(leading.timesteps(10)[0]) == 901
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sn.stability(leading, "a red circle", noise, steps=10)


def test_stability_is_the_cosine_of_the_round_trip_with_the_given_settings():
    from stablenoise.stability import conditioning, cosine, round_trip
    from toy import ToyBackend

    toy = ToyBackend()
    noise = sn.noises_from_seeds([0, 1], toy.latent_shape)
    for steps, guidance, inversion in [(3, 2.0, 1.5), (5, 0.0, 2.5), (2, 1.0, 1.0)]:
        cond = conditioning(toy, "a", 2, max(guidance, inversion))
        expected = cosine(noise, round_trip(toy, cond, noise, steps, guidance, inversion)[1])
        ours = sn.stability(toy, "a", noise, steps=steps, guidance=guidance, inversion_guidance=inversion)
        assert torch.allclose(ours, expected.float(), atol=1e-7)  # the same calls on the same batch: bitwise equal
    assert not torch.allclose(sn.stability(toy, "a", noise, steps=3), sn.stability(toy, "a", noise, steps=5))


def test_defaults_come_from_the_backend():
    from toy import ToyBackend

    toy = ToyBackend()
    noise = sn.noises_from_seeds([0], toy.latent_shape)
    d = toy.defaults
    assert torch.equal(sn.stability(toy, "a", noise),
                       sn.stability(toy, "a", noise, steps=d.steps, guidance=d.guidance,
                                    inversion_guidance=d.inversion_guidance))


def test_cosine_is_computed_in_at_least_float32():
    a = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    b = a + 0.01 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    half = sn.cosine(a.half(), b.half())
    assert half.dtype == torch.float32 and sn.cosine(a.double(), b).dtype == torch.float64
    assert torch.equal(half, sn.cosine(a.half().float(), b.half().float()))  # the same float32 call
    assert sn.cosine(a, b).shape == (2,) and torch.allclose(sn.cosine(a, a), torch.ones(2), rtol=0, atol=f32(3 * 8 * 8))


def test_round_trip_settings_are_checked_one_by_one():
    from stablenoise.stability import resolve
    from toy import ToyBackend

    toy = ToyBackend()
    with pytest.raises(StablenoiseError, match=r"^steps must be >= 1, got 0$"):
        resolve(toy, 0, 2.0, 1.0)
    with pytest.raises(StablenoiseError, match="guidance scales must be >= 0"):
        resolve(toy, 2, 2.0, -0.5)  # the inversion's alone
    with pytest.raises(StablenoiseError, match="guidance scales must be >= 0"):
        resolve(toy, 2, -0.5, 1.0)
    with pytest.raises(StablenoiseError, match="must be finite"):
        resolve(toy, 2, 2.0, float("inf"))
    # 0 and scales between 0 and 1 are valid (no CFG): nothing refused at the boundary.
    assert resolve(toy, 2, 0.0, 0.0) == (2, 0.0, 0.0)
    assert resolve(toy, 2, 0.5, 0.5) == (2, 0.5, 0.5)


def test_per_sample_prompts_are_encoded_with_the_given_guidance():
    from stablenoise.stability import conditioning
    from toy import ToyBackend

    class Recording(ToyBackend):
        def encode(self, prompts, guidance):
            self.seen = (list(prompts), guidance)
            return super().encode(prompts, guidance)

    toy = Recording()
    conditioning(toy, ["a", "b"], 2, 3.5)
    assert toy.seen == (["a", "b"], 3.5)
    conditioning(toy, "a", 4, 1.5)  # one prompt: encoded once for the whole batch
    assert toy.seen == (["a"], 1.5)
