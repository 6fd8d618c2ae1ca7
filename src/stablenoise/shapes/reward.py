"""The shapes-world verifier as a reward: 1 when an image shows what its caption says, else 0.

Registered through the ``stablenoise.rewards`` entry point (``shapes-verifier``), so the core reward
registry finds it without importing the shapes world. Not differentiable: detection is classical.
"""

from __future__ import annotations

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
