"""A noise means one image: with any scheduler the pipeline ships, and by default the image that was scored."""

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler

import stablenoise as sn
from stablenoise.errors import StablenoiseError
from tiny import tiny_sdxl


@pytest.fixture(scope="module")
def sdxl_ancestral():
    pipe = tiny_sdxl(seed=3)
    # SDXL-turbo ships an ancestral scheduler with trailing spacing: it draws fresh noise at every step.
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    return sn.from_pipeline(pipe, name="tiny/sdxl-turbo")


def _pixels(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_ancestral_pipeline_sampler_is_reproducible(sdxl_ancestral):
    noise = sn.noises_from_seeds([0, 1], sdxl_ancestral.latent_shape)
    a = _pixels(sn.generate(sdxl_ancestral, "a cat", noise, steps=2, sampler="pipeline"))
    b = _pixels(sn.generate(sdxl_ancestral, "a cat", noise, steps=2, sampler="pipeline"))
    assert np.array_equal(a, b)
    # One noise, one image: the same noise alone or in another batch gives the same picture.
    alone = _pixels(sn.generate(sdxl_ancestral, "a cat", noise[1:], steps=2, sampler="pipeline"))
    assert np.abs(alone[0] - a[1]).max() <= 1
    # The fresh noise matters (so the generator is what makes it reproducible), and differs per noise.
    assert not np.array_equal(a[0], a[1])
    pipe = sdxl_ancestral.pipe
    unseeded = _pixels(pipe(prompt=["a cat"], latents=noise[:1], num_inference_steps=2, guidance_scale=0.0,
                            output_type="pil", height=32, width=32).images)
    assert np.abs(unseeded[0] - a[0]).max() > 2


def test_default_is_the_scored_image(sdxl_ancestral):
    noise = sn.noises_from_seeds([4], sdxl_ancestral.latent_shape)
    default = _pixels(sn.generate(sdxl_ancestral, "a dog", noise, steps=2))
    cond = sdxl_ancestral.encode(["a dog"], 0.0)
    with torch.no_grad():
        z0 = sdxl_ancestral.denoise(noise, cond, 2, 0.0)
    assert np.array_equal(default, _pixels(sdxl_ancestral.decode(z0)))
    assert np.array_equal(default, _pixels(sn.generate(sdxl_ancestral, "a dog", noise, steps=2)))


def test_unknown_sampler(sd):
    with pytest.raises(StablenoiseError, match="unknown sampler"):
        sn.generate(sd, "a cat", sn.noises_from_seeds([0], sd.latent_shape), sampler="euler")
