"""SDXL and SDXL-turbo (``StableDiffusionXLPipeline``): two text encoders, pooled embeddings, size ids."""

from __future__ import annotations

import torch

from .denoiser import Conditioning, uses_cfg
from .sd import StableDiffusionBackend


class StableDiffusionXLBackend(StableDiffusionBackend):
    def _encode(self, prompts, guidance):
        cfg = uses_cfg(guidance)
        cond, uncond, pooled, uncond_pooled = self.pipe.encode_prompt(
            prompt=list(prompts), device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=cfg)
        # original size, crop top-left, target size: the image is generated whole at its own size.
        time_ids = torch.tensor([[self.height, self.width, 0, 0, self.height, self.width]],
                                dtype=cond.dtype, device=self.device).expand(cond.shape[0], 6)

        def branch(embeds, pooled_embeds):
            return {"encoder_hidden_states": embeds,
                    "added_cond_kwargs": {"text_embeds": pooled_embeds, "time_ids": time_ids}}

        return Conditioning(branch(cond, pooled), branch(uncond, uncond_pooled) if cfg else None)
