"""The learned shapes reward (shipped weights): it prefers an image's own caption and is differentiable."""

import numpy as np
import pytest
import torch

import stablenoise as sn
from stablenoise.shapes import world
from stablenoise.shapes.train_reward import corrupt, evaluate


@pytest.fixture(scope="module")
def reward():
    return sn.load_reward("shapes-clip", device="cpu")


def test_prefers_the_true_caption_on_heldout_images(reward):
    result = evaluate(reward, n=64, seed=3)
    # Measured on 500 held-out images: see weights/shapes-reward/train_log.json.
    assert result["beats_near_miss"] >= 0.9 and result["beats_other_caption"] >= 0.85


def test_near_miss_changes_one_word():
    rng = np.random.default_rng(0)
    assert corrupt("a red circle left of a blue square", rng).split()[2:] == "circle left of a blue square".split()
    assert corrupt("a red circle left of a blue square", rng).split()[1] != "red"
    assert corrupt("three yellow triangles", rng).split()[2] == "triangles"
    changed = corrupt("a circle", rng)
    assert changed in ("a square", "a triangle")


def test_gradient_raises_the_reward(reward):
    s = world.sample(np.random.default_rng(5), "heldout", tag="colors")
    pixels = (torch.from_numpy(s.image).permute(2, 0, 1)[None].float() / 255).requires_grad_(True)
    score = reward(pixels, s.caption)
    assert reward.name == "shapes-clip" and reward.differentiable and score.requires_grad
    score.sum().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
    with torch.no_grad():
        assert reward(pixels + 1e-2 * pixels.grad / pixels.grad.norm(), s.caption) > score
