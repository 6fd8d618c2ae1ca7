"""FLUX.1 (``FluxPipeline``): CLIP pooled + T5 embeddings, a transformer over packed 2x2 latent patches,
no classifier-free guidance; FLUX.1-dev embeds a distilled guidance scale instead (``guidance_embeds``).

Which view is scored: the unpacked [C, H/8, W/8] latent. ``FluxPipeline.prepare_latents`` draws its noise
in exactly that shape and then packs it, so a seed's noise (:func:`stablenoise.noise.noise_from_seed`) is
the pipeline's generator noise for that seed. Packing is a permutation of the same numbers, and the Euler
steps act elementwise, so the round trip, F(eps) and cos(eps, F(eps)) are identical in both views: packing
happens only around each transformer call and for the pipeline's ``latents=``.
"""

from __future__ import annotations

import numpy as np
import torch

from .denoiser import Conditioning
from .flow import FlowBackend


class FluxBackend(FlowBackend):
    max_sequence_length: int = 512  # the pipeline's default T5 length: the round trip encodes as it samples

    def _default_latent_shape(self):
        scale = self.pipe.vae_scale_factor
        self._check_size(scale * 2)  # the VAE's factor, then 2x2 packing
        return (self.pipe.transformer.config.in_channels // 4, self.height // scale, self.width // scale)

    def _image_seq_len(self):
        _, h, w = self.latent_shape
        return (h // 2) * (w // 2)

    def _set_timesteps_kwargs(self, steps):
        # As FluxPipeline.__call__: sigmas 1 .. 1/steps (unless the config makes its own), and mu always
        # (the scheduler applies it only with use_dynamic_shifting).
        sigmas = None if self.pipe.scheduler.config.get("use_flow_sigmas") else np.linspace(1.0, 1 / steps, steps)
        return {"sigmas": sigmas, "mu": self._mu()}

    def _uses_cfg(self, guidance):
        return False  # FLUX.1 is guidance-distilled: one branch; dev takes the scale as an input instead

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> the pipeline's [B, h/2 * w/2, 4C] tokens (a permutation of the same numbers)."""
        b, c, h, w = latents.shape
        return self.pipe._pack_latents(latents, b, c, h, w)

    def unpack(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pipe._unpack_latents(tokens, self.height, self.width, self.pipe.vae_scale_factor)

    def _pipeline_latents(self, noise):
        return self.pack(noise)

    def _call_model(self, x, t, kwargs, guidance):
        b, _, h, w = x.shape
        embeds = kwargs["encoder_hidden_states"]
        guidance_embed = (torch.full([b], guidance, device=x.device, dtype=torch.float32)
                          if self.network.config.guidance_embeds else None)
        out = self.network(hidden_states=self.pack(x), timestep=t.expand(b).to(x.dtype) / 1000,
                            guidance=guidance_embed, pooled_projections=kwargs["pooled_projections"],
                            encoder_hidden_states=embeds,
                            txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=embeds.dtype),
                            img_ids=self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype),
                            return_dict=False)[0]
        return self.unpack(out)

    def _encode(self, prompts, guidance):
        embeds, pooled, _ = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=self.device,
                                                    num_images_per_prompt=1,
                                                    max_sequence_length=self.max_sequence_length)
        return Conditioning({"encoder_hidden_states": embeds, "pooled_projections": pooled})

    def _pipeline_kwargs(self):
        return {**super()._pipeline_kwargs(), "max_sequence_length": self.max_sequence_length}
