"""Stable Diffusion 1.x / 2.x and SD-turbo (``StableDiffusionPipeline``): CLIP text embeddings, VAE latents."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import StablenoiseError
from .base import DiffusersBackend
from .denoiser import Conditioning, uses_cfg


@dataclass
class StableDiffusionBackend(DiffusersBackend):
    height: int | None = None
    width: int | None = None

    def _default_latent_shape(self):
        scale = self.pipe.vae_scale_factor
        self.height = self.height or self.pipe.unet.config.sample_size * scale
        self.width = self.width or self.pipe.unet.config.sample_size * scale
        if self.height % scale or self.width % scale or self.height < scale or self.width < scale:
            raise StablenoiseError(f"height and width must be positive multiples of {scale} (the VAE's downsampling), "
                                   f"got {self.height}x{self.width}")
        return (self.pipe.unet.config.in_channels, self.height // scale, self.width // scale)

    def _pipeline_kwargs(self):
        return {"height": self.height, "width": self.width}

    def _encode(self, prompts, guidance):
        cfg = uses_cfg(guidance)
        cond, uncond = self.pipe.encode_prompt(list(prompts), self.device, 1, cfg)
        return Conditioning({"encoder_hidden_states": cond},
                            {"encoder_hidden_states": uncond} if cfg else None)

    def decode_pixels(self, latents):
        vae = self.pipe.vae
        image = vae.decode(latents.to(self.device, vae.dtype) / vae.config.scaling_factor).sample
        return (image.float() / 2 + 0.5).clamp(0, 1)  # the image processor's denormalize

    def decode(self, latents):
        pixels = self.decode_pixels(latents)
        return self.pipe.image_processor.postprocess(pixels, output_type="pil", do_denormalize=[False] * len(pixels))
