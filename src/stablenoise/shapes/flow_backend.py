"""The flow-matching shapes-world model (``ShapesFlowPipeline``): the flow round trip over a pixel-space UNet."""

from __future__ import annotations

from ..backends.denoiser import Conditioning, uses_cfg
from ..backends.flow import FlowBackend
from .pipeline import to_pil


class ShapesFlowBackend(FlowBackend):
    @property
    def network(self):
        return self.pipe.unet

    def _default_latent_shape(self):
        c = self.pipe.unet.config
        return (c.in_channels, c.sample_size, c.sample_size)

    def _call_model(self, x, t, kwargs, guidance):
        return self.network(x, t.expand(x.shape[0]), **kwargs).sample

    def _image_seq_len(self):
        _, h, w = self.latent_shape
        return h * w

    def _encode(self, prompts, guidance):
        prompts = list(prompts)
        cond = {"encoder_hidden_states": self.pipe.encode_prompt(prompts)}
        uncond = {"encoder_hidden_states": self.pipe.encode_prompt([""] * len(prompts))} if uses_cfg(guidance) else None
        return Conditioning(cond, uncond)

    def _pipeline_kwargs(self):
        return {}  # one image size

    def _describe_round_trip(self):
        return {"flow": dict(self.flow_config)}

    def decode(self, latents):
        return to_pil(latents)

    def decode_pixels(self, latents):
        return (latents.float() / 2 + 0.5).clamp(0, 1)
