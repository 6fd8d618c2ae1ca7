"""The shipped shapes-world model (``ShapesPipeline``): pixel space, so decoding is a rescale."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .base import Conditioning, DiffusersBackend, uses_cfg


class ShapesBackend(DiffusersBackend):
    def encode(self, prompts, guidance):
        prompts = list(prompts)
        cond = {"encoder_hidden_states": self.pipe.encode_prompt(prompts)}
        uncond = {"encoder_hidden_states": self.pipe.encode_prompt([""] * len(prompts))} if uses_cfg(guidance) else None
        return Conditioning(cond, uncond)

    def decode(self, latents):
        x = (latents.detach().float().cpu() / 2 + 0.5).clamp(0, 1)
        arr = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        return [Image.fromarray(a) for a in arr]
