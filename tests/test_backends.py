import json
import re

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

import stablenoise as sn
from stablenoise.backends import families
from stablenoise.errors import StablenoiseError
from tiny import tiny_sd
from tolerance import TINY_SD, cfg, f32, round_trip_n


def test_load_local_folder(sd_folder, sd):
    b = sn.load(str(sd_folder), device="cpu")
    assert type(b).__name__ == "StableDiffusionBackend"
    assert b.latent_shape == (4, 16, 16) and b.defaults == next(f for f in families() if f.name == "sd").defaults
    noise = sn.noises_from_seeds([0], b.latent_shape)
    tol = f32(round_trip_n(TINY_SD, 2), cfg(7.5))  # the same weights, loaded: a 2-step round trip under CFG 7.5
    assert torch.allclose(sn.stability(b, "a cat", noise, steps=2), sn.stability(sd, "a cat", noise, steps=2),
                          rtol=0, atol=tol)


def test_turbo_name_gets_turbo_defaults():
    b = sn.from_pipeline(tiny_sd(), name="stabilityai/sd-turbo")
    assert b.defaults.guidance == 0.0 and b.defaults.steps == 4
    # No CFG: the conditioning has no unconditional branch, and the round trip still runs.
    assert b.encode(["a cat"], b.defaults.guidance).uncond is None
    s = sn.stability(b, "a cat", sn.noises_from_seeds([0], b.latent_shape), steps=2)
    assert 0 < float(s) < 1


def test_sdxl_conditioning(sdxl):
    cond = sdxl.encode(["a cat", "a dog"], 5.0)
    assert cond.cond["encoder_hidden_states"].shape == (2, 16, 64)
    assert cond.cond["added_cond_kwargs"]["text_embeds"].shape == (2, 32)
    assert cond.cond["added_cond_kwargs"]["time_ids"].tolist()[0] == [32, 32, 0, 0, 32, 32]  # 16 latents x VAE factor 2
    assert cond.uncond is not None


@pytest.mark.parametrize("fixture", ["sd", "sdxl"])
def test_pipeline_sampler_matches_ddim_denoise(request, fixture):
    """With a DDIM pipeline scheduler, the pipeline's own sampler and the round trip's denoise agree."""
    backend = request.getfixturevalue(fixture)
    if fixture == "sdxl":  # a fresh pipeline: the shared fixture keeps its Euler scheduler for other tests
        from diffusers import DDIMScheduler

        from tiny import tiny_sdxl
        pipe = tiny_sdxl()
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
        backend = sn.from_pipeline(pipe)
    noise = sn.noises_from_seeds([0], backend.latent_shape)
    a = np.asarray(sn.generate(backend, "a cat", noise, steps=3, guidance=3.0, sampler="pipeline")[0], dtype=float)
    b = np.asarray(sn.generate(backend, "a cat", noise, steps=3, guidance=3.0, sampler="ddim")[0], dtype=float)
    assert a.shape == (32, 32, 3)
    assert np.abs(a - b).max() <= 2  # 8-bit rounding


def test_missing_path_and_unknown_id():
    with pytest.raises(StablenoiseError, match="not found"):
        sn.load("./no/such/folder")
    with pytest.raises(StablenoiseError, match="could not load model 'nobody/no-such-model'"):
        sn.load("nobody/no-such-model")


def test_folder_without_pipeline(tmp_path):
    with pytest.raises(StablenoiseError, match="model_index.json"):
        sn.load(str(tmp_path))


def test_unsupported_pipeline(tmp_path):
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    with pytest.raises(StablenoiseError, match="unsupported pipeline class DDPMPipeline"):
        sn.from_pipeline(pipe)
    pipe.save_pretrained(tmp_path)
    with pytest.raises(StablenoiseError, match="unsupported pipeline class"):
        sn.load(str(tmp_path))


def test_describe_is_json(sd):
    d = json.loads(json.dumps(sd.describe()))
    assert d["pipeline"] == "StableDiffusionPipeline" and d["ddim"]["timestep_spacing"] == "leading"


def test_conditioning_select_and_expand():
    from stablenoise.backends.base import Conditioning

    cond = Conditioning({"h": torch.arange(3.0).view(3, 1), "extra": {"e": torch.arange(3.0) * 10}, "flag": "x"},
                        {"h": -torch.arange(3.0).view(3, 1), "extra": {"e": -torch.arange(3.0)}, "flag": "x"})
    sub = cond.select([2, 0])
    assert sub.cond["h"].view(-1).tolist() == [2.0, 0.0] and sub.cond["extra"]["e"].tolist() == [20.0, 0.0]
    assert sub.uncond["h"].view(-1).tolist() == [-2.0, 0.0] and sub.uncond["extra"]["e"].tolist() == [-2.0, 0.0]
    assert sub.cond["flag"] == "x" and sub.batch_size == 2
    assert cond.select([0, 1, 2]) is cond
    plain = Conditioning({"h": torch.ones(2, 1)})
    assert plain.select([1]).uncond is None
    one = Conditioning({"h": torch.ones(1, 4)}, {"h": torch.zeros(1, 4)})
    assert one.expand(3).cond["h"].shape == (3, 4) and one.expand(3).uncond["h"].shape == (3, 4)
    with pytest.raises(StablenoiseError, match="cannot expand"):
        plain.expand(3)


def test_pipeline_sampler_gets_the_noise_settings_and_one_generator_per_image():
    from types import SimpleNamespace

    from diffusers import EulerAncestralDiscreteScheduler

    from toy import gaussian_backend

    backend = gaussian_backend(EulerAncestralDiscreteScheduler(timestep_spacing="trailing"))
    calls = []
    backend.pipe = _Recorder(backend.pipe, calls)
    noise = sn.noises_from_seeds([0, 1], backend.latent_shape)
    out = sn.generate(backend, ["a", "b"], noise, steps=3, guidance=2.5, sampler="pipeline")
    (kwargs,) = calls
    assert out == ["image-a", "image-b"]
    assert kwargs["prompt"] == ["a", "b"] and kwargs["num_inference_steps"] == 3 and kwargs["guidance_scale"] == 2.5
    assert kwargs["output_type"] == "pil" and torch.equal(kwargs["latents"], noise.double())
    assert kwargs["latents"].dtype == backend.dtype == torch.float64  # the pipeline gets its own dtype
    from stablenoise.noise import generator_seed
    assert [g.initial_seed() for g in kwargs["generator"]] == [generator_seed(n) for n in noise]
    # An adapter's extra pipeline arguments (SD: height, width) reach the call; no generators means none.
    backend._pipeline_kwargs = lambda: {"height": 16, "width": 24}
    backend.generate(["a"], noise[:1], 3, 2.5)
    assert calls[-1]["height"] == 16 and calls[-1]["width"] == 24 and calls[-1]["generator"] is None


class _Recorder:
    """A pipeline stand-in that records how it is called."""

    def __init__(self, pipe, calls):
        self.__dict__.update(vars(pipe))
        self._calls = calls

    def __call__(self, **kwargs):
        self._calls.append(kwargs)
        return type("Out", (), {"images": [f"image-{p}" for p in kwargs["prompt"]]})()


def test_describe_names_the_round_trip():
    from diffusers import DDIMScheduler

    from toy import gaussian_backend

    backend = gaussian_backend(DDIMScheduler(beta_schedule="scaled_linear", timestep_spacing="trailing"))
    d = json.loads(json.dumps(backend.describe()))
    assert d["backend"] == "_GaussianBackend" and d["name"] == "gaussian" and d["latent_shape"] == [1, 8, 8]
    assert d["pipeline"] == "SimpleNamespace"
    assert d["ddim"]["timestep_spacing"] == "trailing" and d["ddim"]["clip_sample"] is False
    assert d["ddim"]["set_alpha_to_one"] is True and d["dtype"] == "float64" and d["device"] == "cpu"
    assert d["defaults"] == {"steps": 10, "guidance": 1.0, "inversion_guidance": 1.0}
    assert backend.with_scheduler(timestep_spacing="leading").describe()["ddim"]["timestep_spacing"] == "leading"


def test_attention_is_sdpa_and_recorded(sd):
    # diffusers' default processor on torch 2 is scaled_dot_product_attention (AttnProcessor2_0).
    assert sd.attention() == ["AttnProcessor2_0"] and sd.describe()["attention"] == ["AttnProcessor2_0"]


def test_low_precision_unet_keeps_float32_ddim_arithmetic():
    from tiny import tiny_sd

    full = sn.from_pipeline(tiny_sd())
    half = sn.from_pipeline(tiny_sd().to(torch.bfloat16))
    noise = sn.noises_from_seeds([0, 1], full.latent_shape)
    cond = half.encode(["a red cube"], 1.0).expand(2)
    z = half.denoise(noise, cond, 3, 1.0)
    assert half.dtype == torch.bfloat16 and z.dtype == torch.float32 and half.work_dtype == torch.float32
    t = half.timesteps(3)[0]
    assert half.denoiser(cond, 1.0).output(noise, t).dtype == torch.float32  # the model's output, cast back
    guided = half.denoiser(half.encode(["a red cube"], 2.0).expand(2), 2.0).output(noise, t)
    assert guided.dtype == torch.float32  # the CFG combination too
    s_full = sn.stability(full, "a red cube", noise, steps=3, guidance=1.0)
    s_half = sn.stability(half, "a red cube", noise, steps=3, guidance=1.0)
    assert s_half.dtype == torch.float32 and not torch.equal(s_half, s_full)
    assert torch.allclose(s_half, s_full, atol=2e-3)  # bfloat16 weights (8-bit mantissa), not rounding order


def test_compile_gives_the_same_scores():
    from tiny import tiny_sd

    b = sn.from_pipeline(tiny_sd())
    noise = sn.noises_from_seeds([3, 4], b.latent_shape)
    before = sn.stability(b, "a red cube", noise, steps=2, guidance=2.0)
    assert b.describe()["compiled"] is False
    assert b.compile(backend="eager") is b  # no C++ toolchain needed; the default backend is inductor
    assert b.describe()["compiled"] is True
    # backend="eager" replays the same ATen calls on the same shapes, so the same sums: 1e-6 is slack, not rounding
    assert torch.allclose(sn.stability(b, "a red cube", noise, steps=2, guidance=2.0), before, atol=1e-6)


def test_conditioning_trees_with_nested_and_non_tensor_entries():
    from stablenoise.backends.denoiser import Conditioning, concat

    nested_first = Conditioning({"extra": {"e": torch.zeros(3)}, "flag": "x"})
    assert nested_first.batch_size == 3  # found inside a nested dict
    assert Conditioning({"flag": "x", "h": torch.ones(2, 1)}).batch_size == 2  # a leading non-tensor is skipped
    with pytest.raises(StablenoiseError, match="^conditioning holds no tensor$"):
        Conditioning({"flag": "x", "extra": {}}).batch_size
    both = concat({"h": torch.zeros(1, 2), "extra": {"e": torch.ones(1)}, "flag": "x"},
                {"h": torch.ones(1, 2), "extra": {"e": torch.zeros(1)}, "flag": "x"})
    assert both["h"].tolist() == [[0, 0], [1, 1]] and both["extra"]["e"].tolist() == [1, 0] and both["flag"] == "x"


def test_cfg_starts_above_one_and_counts_two_evaluations_per_sample():
    from diffusers import DDIMScheduler

    from stablenoise.backends.base import Conditioning, uses_cfg
    from toy import gaussian_backend

    assert not uses_cfg(1.0) and not uses_cfg(0.0) and uses_cfg(1.0001) and uses_cfg(1.5)
    backend = gaussian_backend(DDIMScheduler(beta_schedule="scaled_linear", timestep_spacing="trailing"))
    assert backend.model_evaluations == 0
    branch = {"encoder_hidden_states": torch.zeros(2, 1, dtype=torch.float64)}
    noise = sn.noises_from_seeds([0, 1], backend.latent_shape)
    z0 = backend.denoise(noise, Conditioning(branch, branch), 3, 1.5)
    assert backend.model_evaluations == 2 * 3 * 2  # 2 samples, 3 steps, both CFG branches
    inverted = backend.invert(z0.float(), Conditioning(branch), 3, 1.0)
    assert backend.model_evaluations == 2 * 3 * 2 + 2 * 3
    assert inverted.dtype == backend.work_dtype == torch.float64  # the inversion runs in the work dtype
    with pytest.raises(StablenoiseError, match="guidance > 1 needs a conditioning encoded with guidance > 1"):
        backend.denoise(noise, Conditioning(branch), 3, 1.5)


def test_model_weights_are_frozen(sd):
    assert all(not p.requires_grad for m in sd._modules() for p in m.parameters())


class _WordTokenizer:
    """Counts words plus start and end tokens, like a CLIP tokenizer counts BPE tokens."""

    def __init__(self, limit):
        self.model_max_length = limit

    def __call__(self, text, truncation=True):
        from types import SimpleNamespace

        return SimpleNamespace(input_ids=[0] * (len(text.split()) + 2))


def test_truncation_warning_reads_every_tokenizer_once_a_prompt():
    import warnings

    from diffusers import DDIMScheduler

    from toy import gaussian_backend

    backend = gaussian_backend(DDIMScheduler(beta_schedule="scaled_linear", timestep_spacing="trailing"))
    backend.pipe.tokenizer, backend.pipe.tokenizer_2 = _WordTokenizer(5), _WordTokenizer(3)

    def warned(prompts):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            backend.encode(prompts, 1.0)
        return [str(x.message) for x in w]

    # 5 tokens fit the first encoder (5) but not the second (3); 7 overflow the first: one warning, its limit.
    assert warned(["a b c", "a b c d e", "x", "a b c"]) == [
        "prompt 'a b c' is 5 tokens long; the text encoder reads 3 (start and end included) and ignores the rest",
        "prompt 'a b c d e' is 7 tokens long; the text encoder reads 5 (start and end included) and ignores the rest"]
    # Once a prompt; a prompt already checked does not stop the check of the next ones.
    assert warned(["a b c", "a b c d e", "one two three four"]) == [
        "prompt 'one two three four' is 6 tokens long; the text encoder reads 5 (start and end included) and "
        "ignores the rest"]
    # The quote stops at 60 characters: a 60-character prompt whole, a longer one (10 kB too) cut with "…".
    p60 = "ab " * 20
    assert warned([p60, p60 + "z", "cd " * 3400]) == [
        f"prompt {p60!r} is 22 tokens long; the text encoder reads 5 (start and end included) and ignores the rest",
        f"prompt {p60 + '…'!r} is 23 tokens long; the text encoder reads 5 (start and end included) and ignores "
        "the rest",
        f"prompt {('cd ' * 20) + '…'!r} is 3402 tokens long; the text encoder reads 5 (start and end included) and "
        "ignores the rest"]


def test_checkpointed_round_trip_gives_the_plain_gradient():
    from diffusers import DDIMScheduler

    from stablenoise.stability import conditioning, cosine, round_trip
    from toy import gaussian_backend

    backend = gaussian_backend(DDIMScheduler(beta_schedule="scaled_linear", timestep_spacing="trailing"))
    noise = sn.noises_from_seeds([0, 1], backend.latent_shape).double()
    cond = conditioning(backend, "a", 2, 1.0)
    grads = []
    for checkpoint in (False, True):
        x = noise.clone().requires_grad_(True)
        loss = (1 - cosine(x, round_trip(backend, cond, x, 4, 1.0, 1.0, checkpoint)[1])).sum()
        grads.append(torch.autograd.grad(loss, x)[0])
    # float64 and the same recomputed forward: rtol 1e-10 >> f64(round_trip_n(8 * 8, 4)) = 1e-14
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[1], grads[0], rtol=1e-10, atol=1e-14)


def _schedule_warnings(config: dict, steps: int) -> list:
    """The warnings of ``backend.denoise`` over the analytic backend with this scheduler config."""
    import warnings
    from types import SimpleNamespace

    from toy import gaussian_backend

    backend = gaussian_backend(SimpleNamespace(config=config))
    noise = torch.zeros(1, *backend.latent_shape, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        backend.denoise(noise, backend.encode(["a"], 1.0), steps, 1.0)
    return [str(x.message) for x in w]


@pytest.mark.parametrize("config, steps, message", [
    # leading + 1 step starts at t = 0: nothing is denoised
    ({"beta_schedule": "scaled_linear", "timestep_spacing": "leading"}, 1,
     "DDIM with 1 step(s) and timestep_spacing='leading' starts at t=0 of 1000"),
    # a config without spacing or training steps means diffusers' defaults: leading, 1000
    ({"beta_schedule": "scaled_linear"}, 1, "DDIM with 1 step(s) and timestep_spacing='leading' starts at t=0 of 1000"),
    ({"beta_schedule": "scaled_linear", "timestep_spacing": "linspace"}, 1,
     "DDIM with 1 step(s) and timestep_spacing='linspace' starts at t=0 of 1000"),
    # steps_offset 400: t = 400 < 1000 // 2 is still mostly undenoised (but above 1000 // 3)
    ({"beta_schedule": "scaled_linear", "timestep_spacing": "leading", "steps_offset": 400}, 1,
     "DDIM with 1 step(s) and timestep_spacing='leading' starts at t=400 of 1000"),
    ({"beta_schedule": "scaled_linear", "timestep_spacing": "leading", "num_train_timesteps": 999}, 1,
     "DDIM with 1 step(s) and timestep_spacing='leading' starts at t=0 of 999"),
    # at exactly half (t = 500 of 1000; t = 499 of 999) it is not warned
    ({"beta_schedule": "scaled_linear", "timestep_spacing": "leading"}, 2, None),
    ({"beta_schedule": "scaled_linear", "timestep_spacing": "leading", "num_train_timesteps": 999}, 2, None),
    ({"beta_schedule": "scaled_linear", "timestep_spacing": "trailing"}, 1, None),
])
def test_the_trivial_schedule_warning_names_its_start(config, steps, message):
    got = _schedule_warnings(config, steps)
    if message is None:
        assert got == []
    else:
        assert got == [f"{message}: almost nothing is denoised and stability will be trivially near 1. "
                       "Use more steps or timestep_spacing='trailing'."]


def test_a_first_step_at_alpha_bar_zero_is_warned_unless_clipped():
    cosine = {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"}
    message, = _schedule_warnings(cosine, 2)
    assert re.fullmatch(
        r"DDIM starts at t=999 where alpha_bar=\d\.\de-\d\d: the x0 estimate is amplified beyond use\. "
        r"Use timestep_spacing='leading' for this noise schedule\.", message), message
    assert _schedule_warnings({**cosine, "clip_sample": True}, 2) == []  # clipping bounds the x0 estimate
    assert _schedule_warnings({**cosine, "timestep_spacing": "leading"}, 2) == []
