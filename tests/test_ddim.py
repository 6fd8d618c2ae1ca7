"""The DDIM step and round trip: against diffusers where diffusers is right, against closed forms everywhere."""

import math

import numpy as np
import pytest
import torch
from diffusers import (DDIMInverseScheduler, DDIMScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, PNDMScheduler)

import stablenoise as sn
from stablenoise import ddim
from stablenoise.errors import StablenoiseError
from tolerance import f32
from toy import gaussian_backend

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def _model(seed=0):
    """A deterministic nonlinear stand-in for a UNet: (x, t) -> output depending on both."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 16, generator=g, dtype=torch.float64) / 4
    return lambda x, t: torch.tanh(x.flatten(1) @ w).view(x.shape) * (1 + float(t) / 1000)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_matches_diffusers_ddim_and_inverse(spacing, set_alpha_to_one, prediction_type):
    config = dict(SD, timestep_spacing=spacing, steps_offset=1, set_alpha_to_one=set_alpha_to_one,
                  clip_sample=False, prediction_type=prediction_type)
    model, steps = _model(), 5  # a divisor of 1000: see test_trailing_with_an_uneven_stride
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sched = ddim.schedule(ddim.settings(DDIMScheduler(**config).config), steps)

    ref = DDIMScheduler(**config)
    ref.set_timesteps(steps)
    assert torch.equal(sched.timesteps, ref.timesteps)
    z = x.clone()
    for t in ref.timesteps:
        z = ref.step(model(z, t), t, z).prev_sample
    ours = ddim.denoise(model, x, sched)
    # x is float64 (CPU-independent to ~1e-15); 1e-6 is for diffusers' float32 alphas (one 6e-8 rounding each)
    assert torch.allclose(ours, z, rtol=1e-6, atol=1e-6)

    if prediction_type != "epsilon":
        return  # diffusers' inverse step reads v at the wrong noise level: see test_analytic_round_trip
    inv = DDIMInverseScheduler(**config)
    inv.set_timesteps(steps)
    w = ours.clone()
    for t in inv.timesteps:
        w = inv.step(model(w, t), t, w).prev_sample
    assert torch.allclose(ddim.invert(model, ours, sched), w, rtol=1e-6, atol=1e-6)  # as above: float32 alphas


def test_linspace_uses_the_actual_timestep_list():
    """diffusers' DDIM step assumes a uniform stride; linspace's is not (999, 666, 333, 0 for 4 steps)."""
    config = ddim.settings(DDIMScheduler(**SD, timestep_spacing="linspace", clip_sample=False).config)
    sched = ddim.schedule(config, 4)
    assert sched.timesteps.tolist() == [999, 666, 333, 0]
    ac = DDIMScheduler(**SD).alphas_cumprod.double()
    assert torch.equal(sched.alphas, torch.cat([ac[[999, 666, 333, 0]], torch.ones(1, dtype=torch.float64)]))
    # diffusers' own step lands on t=749 after t=999 (stride 250), not on 666:
    ref = DDIMScheduler(**SD, timestep_spacing="linspace", clip_sample=False)
    ref.set_timesteps(4)
    x, e = torch.ones(1, dtype=torch.float64), torch.full((1,), 0.5, dtype=torch.float64)
    theirs = ref.step(e, 999, x).prev_sample
    ours = ddim.step(e, x, ac[999], ac[666])
    assert torch.allclose(theirs, ddim.step(e, x, ac[999], ac[749]))  # float64 scalars; rtol 1e-5: float32 alphas
    assert not torch.allclose(theirs, ours)


def _exact_one_step(eps, a, mu, sigma):
    """The closed-form round trip of one trailing step (t=999 -> clean -> t=999) under the exact predictor."""
    def predictor(x):
        return math.sqrt(1 - a) * (x - math.sqrt(a) * mu) / (a * sigma ** 2 + 1 - a)
    x0 = (eps - math.sqrt(1 - a) * predictor(eps)) / math.sqrt(a)  # the last step lands on alpha_bar = 1
    return math.sqrt(a) * x0 + math.sqrt(1 - a) * predictor(x0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_analytic_round_trip(prediction_type):
    """For Gaussian data the exact predictor is known: one step matches the closed form, and the round trip
    converges to the identity as steps grow (s -> 1), independently of diffusers' scheduler steps."""
    mu, sigma = 0.3, 0.5
    backend = gaussian_backend(EulerDiscreteScheduler(**SD, timestep_spacing="trailing",
                                                      prediction_type=prediction_type), mu, sigma)
    eps = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cond = backend.encode(["x"] * 3, 1.0)

    def round_trip(steps):
        return backend.invert(backend.denoise(eps, cond, steps, 1.0), cond, steps, 1.0)

    a = float(DDIMScheduler(**SD).alphas_cumprod.double()[999])
    expected = _exact_one_step(eps.numpy(), a, mu, sigma)
    assert np.abs(round_trip(1).numpy() - expected).max() < 1e-10  # float64 through 1 / sqrt(a) ~ 15: >> f64
    errors = {n: float((round_trip(n) - eps).norm() / eps.norm()) for n in (1, 10, 100, 1000)}
    assert errors[1] > 0.05  # one step is far from the identity
    assert errors[1] > errors[10] > errors[100] > errors[1000]
    assert errors[1000] < 5e-3
    assert float(sn.cosine(eps, round_trip(1000)).min()) > 0.99999
    # The probability-flow ODE maps x_T (here: eps at level a) to mu + sigma (x_T - sqrt(a) mu) / sqrt(a s^2 + 1 - a).
    z0 = backend.denoise(eps, cond, 1000, 1.0)
    # atol 1e-2: the discretization error of 1000 DDIM steps against the ODE's solution, not rounding
    assert torch.allclose(z0, mu + sigma * (eps - math.sqrt(a) * mu) / math.sqrt(a * sigma ** 2 + 1 - a), atol=1e-2)


def test_analytic_round_trip_linspace():
    backend = gaussian_backend(DDIMScheduler(**SD, timestep_spacing="linspace", clip_sample=False))
    eps = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cond = backend.encode(["x"], 1.0)
    inverted = backend.invert(backend.denoise(eps, cond, 500, 1.0), cond, 500, 1.0)
    assert float((inverted - eps).norm() / eps.norm()) < 5e-3


@pytest.mark.parametrize("scheduler, clip", [
    (EulerDiscreteScheduler(**SD), False),  # no clip_sample at all: diffusers' DDIM would turn it on
    (DDIMScheduler(**SD), False),  # DDIM's default True, but not set by the model's config
    (DDIMScheduler(**SD, clip_sample=True), True),  # the model asks for it
    (EulerDiscreteScheduler.from_config(dict(SD, clip_sample=True, _class_name="EulerDiscreteScheduler")),
     False),  # a leftover key Euler ignores
])
def test_clip_sample_only_when_the_model_asks(scheduler, clip):
    assert ddim.settings(scheduler.config)["clip_sample"] is clip
    assert (ddim.schedule(ddim.settings(scheduler.config), 3).clip is not None) is clip
    assert DDIMScheduler.from_config(EulerDiscreteScheduler(**SD).config).config.clip_sample  # the pitfall


SDXL_FILE = dict(SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
                 interpolation_type="linear", skip_prk_steps=True)  # as SDXL's scheduler_config.json has it


@pytest.mark.parametrize("cls, final_is_one", [
    (EulerDiscreteScheduler, True),  # SDXL: Euler ends at sigma 0; its set_alpha_to_one=False is a leftover
    (EulerAncestralDiscreteScheduler, True),  # SDXL-turbo
    (DDIMScheduler, False),  # a DDIM model that asks to stop at alpha_bar(0)
    (PNDMScheduler, False),  # SD 1.5's shipped scheduler uses it
])
def test_final_alpha_as_the_shipped_scheduler_means_it(cls, final_is_one):
    scheduler = cls.from_config(dict(SDXL_FILE, _class_name=cls.__name__))
    sched = ddim.schedule(ddim.settings(scheduler.config), 4)
    ac = DDIMScheduler(**SD).alphas_cumprod.double()
    assert float(sched.alphas[-1]) == (1.0 if final_is_one else float(ac[0]))
    # The last denoising step and the first inversion step, against the DDIM formula.
    a_t, a_f = float(sched.alphas[-2]), float(sched.alphas[-1])
    x, e = torch.tensor([0.7], dtype=torch.float64), torch.tensor([-0.4], dtype=torch.float64)
    x0 = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
    # float64, a few operations on terms of size <= 1 (a_t is the last level, near 1): 1e-14 >= f64(4) = 9e-16
    assert torch.allclose(ddim.step(e, x, a_t, a_f), math.sqrt(a_f) * x0 + math.sqrt(1 - a_f) * e, atol=1e-14)
    z0 = (x - math.sqrt(1 - a_f) * e) / math.sqrt(a_f)
    assert torch.allclose(ddim.step(e, x, a_f, a_t), math.sqrt(a_t) * z0 + math.sqrt(1 - a_t) * e, atol=1e-14)


def test_round_trip_is_the_mirror_of_the_denoising_steps():
    """Inversion visits the denoising timesteps in reverse, each moving between the same two noise levels."""
    sched = ddim.schedule(ddim.settings(DDIMScheduler(**SD, steps_offset=1, clip_sample=False).config), 5)
    seen = {"denoise": [], "invert": []}
    model = _model()
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    z = ddim.denoise(lambda x, t: (seen["denoise"].append(int(t)), model(x, t))[1], x, sched)
    ddim.invert(lambda x, t: (seen["invert"].append(int(t)), model(x, t))[1], z, sched)
    assert seen["denoise"] == [801, 601, 401, 201, 1]
    assert seen["invert"] == seen["denoise"][::-1]


@pytest.mark.parametrize("overrides, match", [({"timestep_spacing": "karras"}, "timestep_spacing"),
                                              ({"prediction_type": "flow"}, "prediction_type")])
def test_bad_settings(overrides, match):
    with pytest.raises(StablenoiseError, match=match):
        ddim.settings(DDIMScheduler(**SD).config, **overrides)


def test_model_output_to_noise():
    x, out = torch.tensor([0.3], dtype=torch.float64), torch.tensor([0.1], dtype=torch.float64)
    a = 0.64
    assert float(ddim.to_eps(out, x, a, "epsilon")) == 0.1
    # float64, two products and a sum of terms <= 0.5: 1e-15 >= f64(2, 0.5) = 3e-16
    assert float(ddim.to_eps(out, x, a, "v_prediction")) == pytest.approx(0.8 * 0.1 + 0.6 * 0.3, abs=1e-15)
    assert float(ddim.to_eps(out, x, a, "sample")) == pytest.approx((0.3 - 0.8 * 0.1) / 0.6, abs=1e-15)
    with pytest.raises(StablenoiseError, match="prediction_type"):
        ddim.to_eps(out, x, a, "flow")


def test_v_prediction_inversion_reads_the_output_at_the_model_timestep():
    """Inverting from clean data (alpha_bar = 1): diffusers takes v itself for the noise; v read at the
    timestep the model was given is the noise estimate the denoising step used."""
    ac = DDIMScheduler(**SD).alphas_cumprod.double()
    sched = ddim.Schedule(torch.tensor([999]), torch.stack([ac[999], torch.ones((), dtype=torch.float64)]),
                          "v_prediction")
    z = torch.tensor([0.5], dtype=torch.float64)
    v = torch.tensor([0.2], dtype=torch.float64)
    a = float(ac[999])
    eps = math.sqrt(a) * 0.2 + math.sqrt(1 - a) * 0.5  # float64, terms <= 1: 1e-14 below is >= f64(4) = 9e-16
    assert float(ddim.invert(lambda x, t: v, z, sched)) == pytest.approx(math.sqrt(a) * 0.5 + math.sqrt(1 - a) * eps,
                                                                         abs=1e-14)


def test_clipped_step():
    x, e = torch.tensor([2.0], dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64)
    a, b = 0.25, 0.64
    x0 = min((2.0 + math.sqrt(0.75)) / 0.5, 1.0)  # clipped to 1
    eps = (2.0 - 0.5 * x0) / math.sqrt(0.75)  # float64, terms <= 10: 1e-12 below is >= f64(4, 10) = 9e-15
    assert float(ddim.step(e, x, a, b, clip=1.0)) == pytest.approx(0.8 * x0 + 0.6 * eps, abs=1e-12)
    assert float(ddim.step(e, x, a, b)) == pytest.approx(0.8 * (2.0 + math.sqrt(0.75)) / 0.5 + 0.6 * -1.0, abs=1e-12)


def test_trailing_with_an_uneven_stride():
    """7 trailing steps are 999, 856, 713, ...: diffusers' stride (1000 // 7 = 142) would step 999 -> 857."""
    sched = ddim.schedule(ddim.settings(DDIMScheduler(**SD, timestep_spacing="trailing").config), 7)
    assert sched.timesteps.tolist() == [999, 856, 713, 570, 428, 285, 142]
    ac = DDIMScheduler(**SD).alphas_cumprod.double()
    assert torch.equal(sched.alphas[:-1], ac[sched.timesteps])


def test_callbacks_and_clipping_in_both_directions():
    ac = DDIMScheduler(**SD).alphas_cumprod.double()
    sched = ddim.Schedule(torch.tensor([801, 401]), torch.stack([ac[801], ac[401], torch.ones((), dtype=torch.float64)]),
                          "epsilon", clip=1.0)
    model = _model()
    x = 3 * torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    seen = {"denoise": [], "invert": []}
    z = ddim.denoise(model, x, sched, callback=lambda d: seen["denoise"].append((d["i"], int(d["t"]), d["x"])))
    back = ddim.invert(model, z, sched, callback=lambda d: seen["invert"].append((d["i"], int(d["t"]), d["x"])))
    assert [(i, t) for i, t, _ in seen["denoise"]] == [(0, 801), (1, 401)]
    assert [(i, t) for i, t, _ in seen["invert"]] == [(1, 401), (0, 801)]
    assert torch.equal(seen["denoise"][-1][2], z) and torch.equal(seen["invert"][-1][2], back)
    # Clipping of the x0 estimate applies to both directions, step by step.
    step1 = ddim.step(model(x, 801), x, ac[801], ac[401], clip=1.0)
    assert torch.equal(seen["denoise"][0][2], step1)
    assert not torch.allclose(step1, ddim.step(model(x, 801), x, ac[801], ac[401]))
    inv1 = ddim.step(model(z, 401), z, 1.0, ac[401], clip=1.0)
    assert torch.equal(seen["invert"][0][2], inv1)
    w = seen["invert"][0][2]
    assert not torch.allclose(back, ddim.step(model(w, 801), w, ac[401], ac[801]))


def test_step_count_bounds():
    config = ddim.settings(DDIMScheduler(**SD).config)
    with pytest.raises(StablenoiseError, match="^steps must be >= 1, got 0$"):
        ddim.schedule(config, 0)
    with pytest.raises(StablenoiseError, match=r"^steps must be <= 1000 \(the training timesteps\)$"):
        ddim.schedule(config, 1001)
    assert len(ddim.schedule(config, 1000)) == 1000


# ---- settings and schedule: every config key that changes the noise levels is carried (mutation testing found
# these were only ever exercised at diffusers' defaults)

def _diffusers_levels(config, steps):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(config)
    sched.set_timesteps(steps)
    return sched.timesteps, sched.alphas_cumprod.double()[sched.timesteps]


@pytest.mark.parametrize("config", [
    {"num_train_timesteps": 500, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True,
     "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    {"trained_betas": [0.001 * (i + 1) for i in range(100)], "num_train_timesteps": 100},
])
def test_schedule_keeps_every_noise_level_setting(config):
    from stablenoise import ddim

    sched = ddim.schedule(ddim.settings(config), 10)
    timesteps, levels = _diffusers_levels(config, 10)
    assert sched.timesteps.tolist() == timesteps.tolist()
    assert torch.allclose(sched.alphas[:-1].double(), levels, atol=1e-12)  # both diffusers' float32 cumprod, widened
    assert sched.prediction_type == config.get("prediction_type", "epsilon")


def test_a_minimal_config_means_diffusers_defaults():
    from stablenoise import ddim

    out = ddim.settings({"beta_schedule": "linear"})
    sched = ddim.schedule(out, 4)
    assert sched.prediction_type == "epsilon" and sched.clip is None
    timesteps, levels = _diffusers_levels({"beta_schedule": "linear"}, 4)
    assert sched.timesteps.tolist() == timesteps.tolist() == [750, 500, 250, 0]  # leading spacing
    assert float(sched.alphas[-1]) == 1.0  # set_alpha_to_one: DDIM's default


def test_clip_sample_range_is_carried():
    from stablenoise import ddim

    cfg = {"_class_name": "DDIMScheduler", "clip_sample": True, "clip_sample_range": 2.0}
    assert ddim.schedule(ddim.settings(cfg), 2).clip == 2.0
    assert ddim.schedule(ddim.settings({"clip_sample": True}), 2).clip == 1.0


def test_dynamic_thresholding_is_refused():
    from stablenoise import ddim
    from stablenoise.errors import StablenoiseError

    with pytest.raises(StablenoiseError, match="uses dynamic thresholding, which DDIM inversion cannot undo"):
        ddim.settings({"thresholding": True})
    ddim.settings({"thresholding": False})  # off is fine


def test_exp_betas_give_the_heun_schedulers_alphas_cumprod():
    """Shap-E's prior: DDIMScheduler has no "exp" beta schedule, so ddim builds diffusers' own exp betas over the
    config's training steps (1024 here), as HeunDiscreteScheduler does; betas a config gives are kept."""
    from tiny_shap_e import shap_e_scheduler

    heun = shap_e_scheduler()
    sched = ddim.schedule(ddim.settings(heun.config), 1024)  # linspace: every training timestep
    assert sched.timesteps.tolist() == list(range(1023, -1, -1))
    assert torch.equal(sched.alphas[:-1].flip(0), heun.alphas_cumprod.double())
    assert float(sched.alphas[-1]) == 1.0 and math.isclose(float(sched.alphas[0]), math.exp(-12), rel_tol=1e-4)
    assert sched.prediction_type == "sample" and sched.clip == 1.0
    given = torch.linspace(1e-4, 0.02, 1024, dtype=torch.float64)
    kept = ddim.schedule({**ddim.settings(heun.config), "trained_betas": given.tolist()}, 1024)
    # diffusers rounds the betas to float32 and multiplies in float32: 2 * 1024 roundings of a product (relative)
    assert torch.allclose(kept.alphas[:-1].flip(0), torch.cumprod(1 - given, 0), rtol=f32(2 * 1024), atol=0)
    # a config without training steps means diffusers' default, 1000
    from diffusers import HeunDiscreteScheduler

    default = ddim.schedule(ddim.settings({"beta_schedule": "exp", "timestep_spacing": "linspace"}), 1000)
    assert torch.equal(default.alphas[:-1].flip(0), HeunDiscreteScheduler(beta_schedule="exp").alphas_cumprod.double())


def test_a_clipped_step_is_diffusers_clipped_step():
    """With clip_sample, the x0 estimate is clamped to [-range, range] and the noise recomputed from it: what
    DDIMScheduler.step does with use_clipped_model_output (its default does not recompute), and what the
    sigma-space samplers do (Heun, Shap-E's: their derivative is read from the clipped x0). An x far outside
    the range makes the clamp bite on both sides."""
    ref = DDIMScheduler(**SD, timestep_spacing="trailing", clip_sample=True, clip_sample_range=1.5)
    ref.set_timesteps(4)
    sched = ddim.schedule(ddim.settings(ref.config), 4)
    assert sched.clip == 1.5
    g = torch.Generator().manual_seed(3)
    x = 6 * torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    for i, t in enumerate(ref.timesteps[:-1]):  # the last step ends at alpha_bar = 1, where diffusers' ends too
        mine = ddim.step(eps, x, sched.alphas[i], sched.alphas[i + 1], sched.clip)
        theirs = ref.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        assert torch.allclose(mine, theirs, rtol=1e-6, atol=1e-6), i  # float64 x; 1e-6: float32 alphas, as above
    x0 = (x - (1 - sched.alphas[0]).sqrt() * eps) / sched.alphas[0].sqrt()
    assert (x0 > 1.5).any() and (x0 < -1.5).any()  # both bounds are exercised


# ---- where inversion evaluates the model (the one integrator's ``point``) ------------------------------------

def _predictor(x, level, mu, sigma):
    """The exact E[eps | x] of Gaussian data at alpha_bar = level."""
    return math.sqrt(1 - level) * (x - math.sqrt(level) * mu) / (level * sigma ** 2 + 1 - level)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_source_point_inversion_is_the_closed_form(prediction_type):
    """Inverting at the source evaluates the model where x is: on the clean level at timestep 0, its output read at
    alpha_bar(0) (for v-prediction read at 1 it would be v itself), so one trailing step back from z0 is
    sqrt(a) z0 + sqrt(1 - a) E[eps | z0 at alpha_bar(0)]; and the source round trip converges too."""
    mu, sigma = 0.3, 0.5
    backend = gaussian_backend(EulerDiscreteScheduler(**SD, timestep_spacing="trailing",
                                                      prediction_type=prediction_type), mu, sigma)
    source = backend.with_inversion_point("source")
    eps = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cond = backend.encode(["x"] * 3, 1.0)
    ac = DDIMScheduler(**SD).alphas_cumprod.double()
    a, a0 = float(ac[999]), float(ac[0])
    z0 = backend.denoise(eps, cond, 1, 1.0)
    expected = math.sqrt(a) * z0.numpy() + math.sqrt(1 - a) * _predictor(z0.numpy(), a0, mu, sigma)
    # float64 through a few products of terms <= 10: 1e-10 >> f64 bounds
    assert np.abs(source.invert(z0, cond, 1, 1.0).numpy() - expected).max() < 1e-10
    assert np.abs(backend.invert(z0, cond, 1, 1.0, point="source").numpy() - expected).max() < 1e-10
    assert np.abs(backend.invert(z0, cond, 1, 1.0).numpy() - expected).max() > 1e-2  # destination: another map

    def error(steps):
        inverted = source.invert(source.denoise(eps, cond, steps, 1.0), cond, steps, 1.0)
        return float((inverted - eps).norm() / eps.norm())
    errors = [error(n) for n in (1, 10, 100, 1000)]
    # One step back from t = 0 keeps almost nothing of eps (0.998 here); 1000 steps come within 0.6%.
    assert errors == sorted(errors, reverse=True) and errors[0] > 0.5 and errors[-1] < 1e-2


def test_source_inversion_evaluates_where_x_is():
    """The mirror of the denoising steps, each evaluated at the level x starts from: timestep 0 on the clean level,
    then the denoising timesteps from the last."""
    sched = ddim.schedule(ddim.settings(DDIMScheduler(**SD, steps_offset=1, clip_sample=False).config), 5)
    seen = []
    model = _model()
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    z = ddim.denoise(model, x, sched)
    ddim.invert(lambda x, t: (seen.append(int(t)), model(x, t))[1], z, sched, point="source")
    assert seen == [0, 1, 201, 401, 601]
    with pytest.raises(StablenoiseError, match="^inversion_point must be one of destination, source, got 'middle'$"):
        ddim.invert(model, z, sched, point="middle")


def test_the_loops_are_the_ddim_step_bit_for_bit():
    """to_data and to_noise over a schedule's levels are the per-step DDIM loops exactly: the output read as noise at
    the model's timestep (ddim.to_eps), then ddim.step between neighbouring levels (v-prediction, clipped)."""
    sched = ddim.schedule(ddim.settings(DDIMScheduler(**SD, prediction_type="v_prediction", clip_sample=True,
                                                      clip_sample_range=1.5).config), 4)
    model = _model()
    x = 3 * torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z = x
    for i, t in enumerate(sched.timesteps):
        z = ddim.step(ddim.to_eps(model(z, t), z, sched.alphas[i], "v_prediction"), z, sched.alphas[i],
                      sched.alphas[i + 1], sched.clip)
    assert torch.equal(ddim.denoise(model, x, sched), z)
    w = z
    for i in reversed(range(len(sched))):
        t = sched.timesteps[i]
        w = ddim.step(ddim.to_eps(model(w, t), w, sched.alphas[i], "v_prediction"), w, sched.alphas[i + 1],
                      sched.alphas[i], sched.clip)
    assert torch.equal(ddim.invert(model, z, sched), w)
