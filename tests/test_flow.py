"""Flow-matching backends (SD3, FLUX): the Euler round trip, against closed forms and the pipelines themselves."""

import os

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import stablenoise as sn
from stablenoise import flow
from stablenoise.errors import StablenoiseError
from stablenoise.stability import conditioning, cosine, round_trip
from tiny import tiny_flux, tiny_sd3
from tolerance import TINY_FLOW, cfg, f32, round_trip_n
from toy import FLOW_MU, FLOW_SIGMA, gaussian_flow_backend

SIZE = {"height": 32, "width": 32}


def _backend(pipe, **kw):
    pipe.set_progress_bar_config(disable=True)
    b = sn.from_pipeline(pipe, **{**SIZE, **kw})
    b.max_sequence_length = 16  # the tiny T5 needs no 256/512 tokens; encoding and the pipeline share it
    return b


@pytest.fixture(scope="module")
def sd3():
    return _backend(tiny_sd3())


@pytest.fixture(scope="module")
def schnell():
    return _backend(tiny_flux())


@pytest.fixture(scope="module")
def dev():
    return _backend(tiny_flux(seed=1, guidance_embeds=True))


# --- (a) the round trip against the analytic velocity of Gaussian data ---------------------------------

def test_euler_round_trip_converges_to_the_exact_flow():
    """With the exact velocity, the ODE maps eps to mu + sigma eps: Euler's error is O(1/steps) both ways,
    so F(eps) -> eps and s -> 1, while few steps leave s clearly below 1 even for this perfect model."""
    b = gaussian_flow_backend(FlowMatchEulerDiscreteScheduler(shift=3.0))
    noise = sn.noises_from_seeds([0, 1], b.latent_shape).double()
    cond = b.encode(["x", "x"], 1.0)
    exact = FLOW_MU + FLOW_SIGMA * noise
    data_err, noise_err, s = [], [], []
    for steps in (8, 32, 128, 512):
        z0 = b.denoise(noise, cond, steps, 1.0)
        data_err.append(float((z0 - exact).norm() / exact.norm()))
        noise_err.append(float((b.invert(z0, cond, steps, 1.0) - noise).norm() / noise.norm()))
        s.append(float(sn.stability(b, "x", noise, steps=steps).min()))
    for errs in (data_err, noise_err):
        ratios = [a / b_ for a, b_ in zip(errs, errs[1:])]
        assert all(3.0 < r < 4.5 for r in ratios) and 3.8 < ratios[-1] < 4.2  # first order: 4x steps, error / 4
    assert data_err[-1] < 4e-3 and noise_err[-1] < 1.2e-2
    assert s[0] < 0.97 and s[-1] > 0.99998 and s == sorted(s)


def test_one_step_lands_on_the_mean_and_inverts_to_zero():
    """Pins the Euler rules: denoising evaluates v at (eps, sigma=1), which is eps - mu, so one step lands on
    mu whatever the noise; inversion evaluates v at the current point (x, sigma=0), which is -x, so one step
    back from any x gives exactly 0."""
    b = gaussian_flow_backend(FlowMatchEulerDiscreteScheduler())
    noise = sn.noises_from_seeds([3], b.latent_shape).double()
    cond = b.encode(["x"], 1.0)
    assert b.schedule(1).sigmas.tolist() == [1.0, 0.0]
    z0 = b.denoise(noise, cond, 1, 1.0)
    # float64, one Euler step on terms of size ~1: 1e-12 >= f64(1) = 4e-16
    assert torch.allclose(z0, FLOW_MU.expand_as(z0), atol=1e-12)
    assert torch.allclose(b.invert(noise, cond, 1, 1.0), torch.zeros_like(noise), atol=1e-12)


def test_shift_moves_the_sigmas_the_way_diffusers_does():
    for shift in (1.0, 3.0):
        b = gaussian_flow_backend(FlowMatchEulerDiscreteScheduler(shift=shift))
        ref = FlowMatchEulerDiscreteScheduler(shift=shift)
        ref.set_timesteps(6)
        assert torch.equal(b.schedule(6).sigmas.float(), ref.sigmas)
        assert torch.equal(b.schedule(6).timesteps[:-1], ref.timesteps)
    assert float(b.schedule(6).sigmas[1]) > 1 - 1 / 6 + 0.05  # shift 3 keeps the first step at high noise
    assert gaussian_flow_backend(FlowMatchEulerDiscreteScheduler(), shift=2.0).flow_config["shift"] == 2.0
    with pytest.raises(StablenoiseError, match="timestep_spacing cannot be set for a flow-matching model"):
        gaussian_flow_backend(FlowMatchEulerDiscreteScheduler(), timestep_spacing="trailing")


# --- (g) dynamic shifting: the sigmas the pipeline's scheduler sets for the same image size -------------

SMALL_SEQ = {"base_image_seq_len": 16, "max_image_seq_len": 256}  # so 32 and 64 px images shift apart


@pytest.mark.parametrize("build", [lambda: tiny_flux(guidance_embeds=True, **SMALL_SEQ),
                                   lambda: tiny_sd3(use_dynamic_shifting=True, **SMALL_SEQ)])
def test_dynamic_shifting_matches_the_pipeline(build):
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    sigmas = {}
    for size in (32, 64):
        b = _backend(pipe, height=size, width=size)
        pipe(prompt="a cat", num_inference_steps=3, height=size, width=size, output_type="latent",
             max_sequence_length=16, guidance_scale=1.0)
        assert torch.equal(b.schedule(3).sigmas.float(), pipe.scheduler.sigmas)
        sigmas[size] = b.schedule(3).sigmas
    assert float(sigmas[64][1]) > float(sigmas[32][1]) + 0.01  # more tokens, more shift


# --- (d) the pipeline's own sampler and the backend's denoise agree ------------------------------------

@pytest.mark.parametrize("fixture,guidance", [("sd3", 3.0), ("sd3", 1.0), ("schnell", 0.0), ("dev", 3.5)])
def test_pipeline_sampler_matches_denoise(request, fixture, guidance):
    b = request.getfixturevalue(fixture)
    noise = sn.noises_from_seeds([5], b.latent_shape)
    latent = b.pipe(prompt=["a red cube"], latents=b._pipeline_latents(noise), num_inference_steps=3,
                    guidance_scale=guidance, output_type="latent", **b._pipeline_kwargs()).images
    if fixture != "sd3":
        latent = b.unpack(latent)
    with torch.no_grad():
        z0 = b.denoise(noise, b.encode(["a red cube"], guidance), 3, guidance)
    # the pipeline's loop: 3 chained transformer calls on latents of size <= 4, CFG only in SD3 (dev embeds it)
    scale = cfg(guidance if fixture == "sd3" else 1.0)
    assert torch.allclose(z0, latent, rtol=0, atol=f32(3 * TINY_FLOW, 4 * scale))
    assert (z0 - noise).abs().max() > 0.1  # it did denoise
    a = np.asarray(sn.generate(b, "a red cube", noise, steps=3, guidance=guidance, sampler="pipeline")[0], float)
    d = np.asarray(sn.generate(b, "a red cube", noise, steps=3, guidance=guidance, sampler="ddim")[0], float)
    assert a.shape == (32, 32, 3) and np.abs(a - d).max() <= 1  # 8-bit rounding


def test_guidance_is_used_the_family_way(sd3, dev, schnell):
    """SD3: CFG above 1 (two evaluations a sample); FLUX-dev: the scale goes into the guidance embedding
    (one evaluation); FLUX-schnell: no guidance input at all."""
    noise = sn.noises_from_seeds([0], sd3.latent_shape)
    with torch.no_grad():
        for b, counts in ((sd3, (2, 1)), (dev, (1, 1)), (schnell, (1, 1))):
            out = {}
            for g, per_call in zip((4.0, 1.0), counts):
                before = b.model_evaluations
                out[g] = b.denoise(noise, b.encode(["a cat"], g), 2, g)
                assert b.model_evaluations - before == 2 * per_call
            changed = (out[4.0] - out[1.0]).abs().max()
            assert changed == 0 if b is schnell else changed > 1e-4


# --- (b) batched = per-sample ---------------------------------------------------------------------------

@pytest.mark.parametrize("fixture,guidance", [("sd3", 3.0), ("dev", 3.5)])
def test_batched_equals_per_sample(request, fixture, guidance):
    b = request.getfixturevalue(fixture)
    noise = sn.noises_from_seeds([0, 1, 2], b.latent_shape)
    prompts = ["a red cube", "a blue sphere", "a cat"]
    batched = sn.stability(b, prompts, noise, steps=3, guidance=guidance)
    alone = torch.cat([sn.stability(b, p, n[None], steps=3, guidance=guidance) for p, n in zip(prompts, noise)])
    # a batch of 3 against ones of 1: a 3-step round trip under CFG (SD3; FLUX-dev embeds its guidance)
    tol = f32(round_trip_n(TINY_FLOW, 3), cfg(guidance if fixture == "sd3" else 1.0))
    assert torch.allclose(batched, alone, rtol=0, atol=tol)
    assert batched.std() > 1e-5 and bool((batched < 1).all())


# --- (c) gradients through the round trip --------------------------------------------------------------

@pytest.mark.parametrize("build,guidance", [(tiny_sd3, 2.0), (lambda: tiny_flux(guidance_embeds=True), 3.5)])
def test_gradient_matches_finite_differences(build, guidance):
    b = _backend(build().to(torch.float64))
    assert b.work_dtype == torch.float64
    noise = sn.noises_from_seeds([7], b.latent_shape).double()
    cond = conditioning(b, "a cat", 1, guidance)

    def loss(e, checkpoint=False):
        return (1 - cosine(e, round_trip(b, cond, e, 2, guidance, 1.0, checkpoint)[1])).sum()

    grads = []
    for ckpt in (False, True):
        e = noise.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(loss(e, ckpt), e)[0])
    assert torch.allclose(grads[0], grads[1], atol=1e-12)  # float64, the same recomputed forward: >> f64 bounds
    d = torch.randn(noise.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = 1e-4
    with torch.no_grad():
        fd = (loss(noise + h * d) - loss(noise - h * d)) / (2 * h)
    # float64: the bound is the O(h^2) error of the central difference, not rounding
    assert abs(float(fd) - float((grads[0] * d).sum())) < 1e-6 * max(1.0, abs(float(fd)))
    assert abs(float(fd)) > 1e-6


# --- (f) FLUX: the scored view is the pipeline's noise, unpacked -----------------------------------------

def test_flux_noise_view_and_packing(schnell):
    b = schnell
    assert b.latent_shape == (4, 16, 16)
    for seed in (0, 11):
        noise = sn.noises_from_seeds([seed], b.latent_shape)
        drawn, _ = b.pipe.prepare_latents(1, 4, 32, 32, torch.float32, "cpu", torch.Generator().manual_seed(seed))
        assert torch.equal(b.pack(noise), drawn)  # a seed means the pipeline's generator noise
        assert torch.equal(b.unpack(b.pack(noise)), noise)
    noise = sn.noises_from_seeds([0, 1], b.latent_shape)
    with torch.no_grad():
        _, inverted = round_trip(b, conditioning(b, "a cat", 2, 0.0), noise, 3, 0.0, 1.0)
    packed = cosine(b.pack(noise), b.pack(inverted))
    assert torch.allclose(packed, cosine(noise, inverted), rtol=0, atol=f32(TINY_FLOW))  # the same d terms reordered
    assert torch.allclose(sn.stability(b, "a cat", noise, steps=3), cosine(noise, inverted), rtol=0,
                          atol=f32(TINY_FLOW))


# --- (e) the algorithms and loading run on both -----------------------------------------------------------

@pytest.mark.parametrize("fixture,guidance", [("sd3", 3.0), ("schnell", 0.0)])
def test_select_optimize_generate(request, fixture, guidance):
    b = request.getfixturevalue(fixture)
    res = sn.select(b, "a cat", k=3, steps=2, guidance=guidance, progress=False)
    assert len(res.scores) == 3 and res.best_seed in (0, 1, 2) and res.best_noise.shape == (1, *b.latent_shape)
    assert max(res.scores) == res.scores[res.best_seed] < 1
    opt = sn.optimize(b, "a cat", res.worst_noise, iterations=3, lr=10.0, steps=2, guidance=guidance,
                      progress=False)
    assert opt.best_stability[0] >= opt.history[0][0] and len(opt.history[0]) >= 2
    assert opt.history[0][1] != opt.history[0][0]  # the gradient moved the noise
    images = sn.generate(b, "a cat", res.best_noise, steps=2, guidance=guidance)
    assert images[0].size == (32, 32)


@pytest.mark.parametrize("build,family,defaults", [
    (tiny_sd3, "StableDiffusion3Backend", (40, 4.5)),
    (tiny_flux, "FluxBackend", (4, 0.0)),
    (lambda: tiny_flux(guidance_embeds=True), "FluxBackend", (50, 3.5))])
def test_load_folder_picks_the_adapter_and_defaults(tmp_path, build, family, defaults):
    build().save_pretrained(tmp_path)
    b = sn.load(str(tmp_path), device="cpu", height=32, width=32)
    assert type(b).__name__ == family and (b.defaults.steps, b.defaults.guidance) == defaults
    assert b.latent_shape == (4, 16, 16)
    s = sn.stability(b, "a cat", sn.noises_from_seeds([0], b.latent_shape), steps=2)
    assert 0 < float(s) < 1


def test_turbo_sd3_gets_turbo_defaults():
    b = sn.from_pipeline(tiny_sd3(), name="stabilityai/stable-diffusion-3.5-large-turbo", **SIZE)
    assert (b.defaults.steps, b.defaults.guidance) == (4, 0.0)


def test_bad_sizes_and_native_size():
    with pytest.raises(StablenoiseError, match="height 34 is not a positive multiple of 4"):
        sn.from_pipeline(tiny_flux(), height=34, width=32)
    with pytest.raises(StablenoiseError, match="width 30 is not a positive multiple of 4"):
        sn.from_pipeline(tiny_sd3(), height=32, width=30)
    b = sn.from_pipeline(tiny_sd3())
    assert b.latent_shape == (4, 16, 16) and b.describe()["height"] == 32  # transformer sample_size x VAE factor


def test_low_precision_model_keeps_float32_ode():
    """A bf16 model's velocities are rounded, but the Euler state accumulates in float32: 256 small steps
    (dsigma * v ~ 1e-3, below bf16's resolution of x) still reach the exact flow's end."""
    b = gaussian_flow_backend(FlowMatchEulerDiscreteScheduler(shift=3.0), dtype=torch.bfloat16)
    noise = sn.noises_from_seeds([0], b.latent_shape)
    z0 = b.denoise(noise, b.encode(["x"], 1.0), 256, 1.0)
    exact = FLOW_MU + FLOW_SIGMA * noise
    assert b.dtype == torch.bfloat16 and b.work_dtype == torch.float32 and z0.dtype == torch.float32
    assert float((z0 - exact).norm() / exact.norm()) < 0.02


def test_bf16_pipeline_runs_in_float32(schnell):
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    b = _backend(tiny_flux().to(torch.bfloat16))
    noise = sn.noises_from_seeds([0], b.latent_shape)
    # torch 2.13's bf16 flash attention on an AMX CPU packs with AVX-512 even when ATEN_CPU_CAPABILITY (default,
    # avx2) holds the kernels below it, and raises ("pack_vnni2 is only supported when avx512 is supported"). Under
    # a narrower capability (CI's portable-kernel pass) the attention is the math one
    narrower = os.environ.get("ATEN_CPU_CAPABILITY", "avx512") != "avx512"
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH) if narrower else nullcontext():
        z0 = b.denoise(noise, b.encode(["a cat"], 0.0), 2, 0.0)
        ref = schnell.denoise(noise, schnell.encode(["a cat"], 0.0), 2, 0.0)
    assert z0.dtype == torch.float32 and 0 < (z0 - ref).abs().max() < 0.1  # bf16 model, float32 steps


def test_describe_records_the_flow_settings(dev):
    import json

    d = json.loads(json.dumps(dev.describe()))
    assert d["backend"] == "FluxBackend" and "ddim" not in d
    assert d["flow"]["use_dynamic_shifting"] is True and d["height"] == 32


def test_flow_schedule_refuses_zero_steps():
    with pytest.raises(StablenoiseError, match="steps must be >= 1"):
        flow.schedule({}, 0)


def test_cli_select_on_a_flow_model_folder(tmp_path):
    """What a GPU user runs with a hub id, on a saved tiny SD3 folder (its native size)."""
    import json

    from click.testing import CliRunner

    from stablenoise.cli import main

    tiny_sd3().save_pretrained(tmp_path / "sd3")
    args = ["select", "--model", str(tmp_path / "sd3"), "--steps", "2", "--device", "cpu", "--prompt", "a cat",
            "-k", "2", "--out", str(tmp_path / "out")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "out" / "run.json").read_text())
    assert rec["model"]["backend"] == "StableDiffusion3Backend" and rec["parameters"]["guidance"] == 4.5
    assert len(rec["items"][0]["scores"]) == 2 and rec["model"]["flow"]["shift"] == 3.0
    r = CliRunner().invoke(main, [*args[:-2], "--out", str(tmp_path / "bad"), "--timestep-spacing", "trailing"])
    assert r.exit_code != 0 and "timestep_spacing cannot be set for a flow-matching model" in r.output


# --- where inversion evaluates the velocity, and Euler as the one DDIM step -----------------------------------

def test_destination_point_inversion_is_the_closed_form_and_converges():
    """Flow backends invert at the source by default; at the destination one step back from sigma 0 evaluates
    v(x, sigma=1) = x - mu, so it lands on x + (x - mu). Both rules converge at first order."""
    b = gaussian_flow_backend(FlowMatchEulerDiscreteScheduler(shift=3.0))
    assert b.inversion_point == "source" and "inversion_point" not in b.describe()
    destination = b.with_inversion_point("destination")
    assert destination.describe()["inversion_point"] == "destination"
    noise = sn.noises_from_seeds([3, 4], b.latent_shape).double()
    cond = b.encode(["x", "x"], 1.0)
    # float64, one Euler step on terms of size ~1: 1e-12 >= f64(1) = 4e-16
    assert torch.allclose(destination.invert(noise, cond, 1, 1.0), 2 * noise - FLOW_MU, atol=1e-12)
    assert torch.allclose(b.invert(noise, cond, 1, 1.0, point="destination"), 2 * noise - FLOW_MU, atol=1e-12)
    errors = []
    for steps in (8, 32, 128):
        z0 = destination.denoise(noise, cond, steps, 1.0)
        errors.append(float((destination.invert(z0, cond, steps, 1.0) - noise).norm() / noise.norm()))
    ratios = [a / b_ for a, b_ in zip(errors, errors[1:])]
    assert all(3.0 < r < 4.5 for r in ratios)  # first order: 4x the steps, a quarter of the error


def test_the_one_step_is_euler_on_the_flow():
    """Denoising and inverting through the DDIM step in (1 - sigma, sigma) coordinates is explicit Euler,
    x + (sigma' - sigma) v, with v where the rule says (float64: equal to rounding)."""
    b = gaussian_flow_backend(FlowMatchEulerDiscreteScheduler(shift=3.0))
    noise = sn.noises_from_seeds([5], b.latent_shape).double()
    cond = b.encode(["x"], 1.0)
    sched, v = b.schedule(5), b.denoiser(cond, 1.0).output
    x = noise
    for i in range(5):
        x = x + float(sched.sigmas[i + 1] - sched.sigmas[i]) * v(x, sched.timesteps[i])
    z0 = b.denoise(noise, cond, 5, 1.0)
    assert torch.allclose(z0, x, rtol=0, atol=1e-12)  # float64, 5 steps on terms of size ~3: >> f64(10, 3)
    for point, at in (("source", 1), ("destination", 0)):
        w = z0
        for i in reversed(range(5)):
            w = w - float(sched.sigmas[i + 1] - sched.sigmas[i]) * v(w, sched.timesteps[i + at])
        assert torch.allclose(b.invert(z0, cond, 5, 1.0, point=point), w, rtol=0, atol=1e-12), point
