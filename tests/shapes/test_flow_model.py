"""The flow-matching shapes-world model: its pipeline, its backend and its training path."""

import numpy as np
import pytest
import torch

import stablenoise as sn
from stablenoise.shapes import world
from stablenoise.shapes.flow_pipeline import ShapesFlowPipeline
from stablenoise.shapes.train import TrainConfig, train
from tolerance import cfg, f32


@pytest.fixture(scope="module")
def flow_shapes():
    pipe = ShapesFlowPipeline.from_scratch(world.vocabulary(), 16, block_out_channels=(16, 32, 32),
                                           norm_num_groups=8)
    pipe.set_progress_bar_config(disable=True)
    return sn.from_pipeline(pipe)


def test_pipeline_sampler_matches_the_flow_round_trip(flow_shapes):
    b = flow_shapes
    assert type(b).__name__ == "ShapesFlowBackend" and b.latent_shape == (3, 16, 16)
    noise = sn.noises_from_seeds([0, 1], b.latent_shape)
    x = b.pipe(["a red circle", "two blue squares"], latents=noise, num_inference_steps=4, guidance_scale=2.0,
               output_type="pt").images
    with torch.no_grad():
        z0 = b.denoise(noise, b.encode(["a red circle", "two blue squares"], 2.0), 4, 2.0)
    # 4 chained UNet calls under CFG 2, pixels in [0, 1]; the UNet's longest reduction: the last up block's
    # GroupNorm over 48 / 8 channels at 16x16
    tol = f32(4 * 6 * 16 * 16, cfg(2.0))
    assert torch.allclose(b.decode_pixels(z0), x, rtol=0, atol=tol) and (z0 - noise).abs().max() > 0.1
    s = sn.stability(b, "a red circle", noise, steps=4)
    assert bool(((s > 0) & (s < 1)).all())


def test_flow_training_smoke_and_load(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=2, warmup=1, objective="flow", checkpoint_every=2)
    final = train(tmp_path / "run", cfg, progress=False)
    b = sn.load(str(final), device="cpu")
    assert type(b).__name__ == "ShapesFlowBackend" and b.describe()["flow"]["shift"] == 1.0
    assert b.latent_shape == (3, world.RESOLUTION, world.RESOLUTION)
    images = sn.generate(b, "a red circle", sn.noises_from_seeds([0], b.latent_shape), steps=2)
    assert np.asarray(images[0]).shape == (world.RESOLUTION, world.RESOLUTION, 3)
    with pytest.raises(ValueError, match="unknown objective"):
        train(tmp_path / "bad", TrainConfig(steps=1, batch_size=1, objective="v"), progress=False)


def test_flow_objective_targets_the_velocity():
    from stablenoise.shapes.train import noisy_input

    x0, noise = torch.full((4, 3, 2, 2), 0.5), torch.full((4, 3, 2, 2), -1.0)
    x_t, t, target = noisy_input(TrainConfig(objective="flow"), None, x0, noise, torch.Generator().manual_seed(0))
    sigma = t.view(-1, 1, 1, 1) / 1000
    assert bool(((sigma > 0) & (sigma < 1)).all()) and t.std() > 0
    # elementwise float32, no reduction: the default rtol 1e-5 >> 2 roundings
    assert torch.allclose(x_t, (1 - sigma) * x0 + sigma * noise) and torch.equal(target, noise - x0)
