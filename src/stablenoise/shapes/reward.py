"""Rewards of the shapes world, registered through the ``stablenoise.rewards`` entry points so the
core reward registry finds them without importing the shapes world:

- ``shapes-verifier``: 1 when an image shows what its caption says, else 0 (classical detection,
  not differentiable).
- ``shapes-clip``: a tiny CLIP trained on rendered shapes-world images (``train_reward.py``), 100 * cos,
  differentiable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import StablenoiseError
from ..rewards import Reward
from .verifier import verify


class VerifierReward(Reward):
    name = "shapes-verifier"
    differentiable = False

    def score_pil(self, images, prompts):
        return torch.tensor([float(verify(im, p).passed) for im, p in zip(images, prompts)])

    def score_tensor(self, pixels, prompts):
        # The verifier reads 8-bit colours, as the saved PNGs hold them.
        arrays = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return torch.tensor([float(verify(np.ascontiguousarray(a), p).passed) for a, p in zip(arrays, prompts)])


def verifier_reward(source, device, dtype) -> VerifierReward:
    if source is not None:
        raise StablenoiseError("the shapes verifier has no weights: use --reward shapes-verifier")
    return VerifierReward()


SHIPPED_REWARD = Path(__file__).resolve().parent.parent / "weights" / "shapes-reward"
SHAPES_MEAN = SHAPES_STD = (0.5, 0.5, 0.5)  # the model sees pixels in [-1, 1], as the diffusion model does


def clip_reward(source, device, dtype):
    """The learned shapes reward: 100 * cos of a tiny CLIP's embeddings (differentiable)."""
    from ..rewards.builtin import clip_model, clip_tokenizer
    from ..rewards.clip import ClipReward, hps_head
    from ..rewards.preprocess import Preprocess

    folder = str(source or SHIPPED_REWARD)
    model = clip_model(folder, device, dtype)
    size = model.config.vision_config.image_size
    return ClipReward("shapes-clip", model, clip_tokenizer(folder), Preprocess(size, "crop", "floor", SHAPES_MEAN,
                                                                                SHAPES_STD), hps_head)
