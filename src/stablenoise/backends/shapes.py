"""The shipped shapes-world model (``ShapesPipeline``): pixel space, so decoding is a rescale."""

from __future__ import annotations

from ..shapes.pipeline import to_pil
from .base import Conditioning, DiffusersBackend, uses_cfg


class ShapesBackend(DiffusersBackend):
    def _encode(self, prompts, guidance):
        prompts = list(prompts)
        cond = {"encoder_hidden_states": self.pipe.encode_prompt(prompts)}
        uncond = {"encoder_hidden_states": self.pipe.encode_prompt([""] * len(prompts))} if uses_cfg(guidance) else None
        return Conditioning(cond, uncond)

    def decode(self, latents):
        return to_pil(latents)

    def decode_pixels(self, latents):
        return (latents.float() / 2 + 0.5).clamp(0, 1)  # to_pil's rescale, before the 8-bit rounding
