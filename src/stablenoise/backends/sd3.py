"""Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``): two CLIP encoders and T5, pooled projections,
an MMDiT predicting flow-matching velocity over 16-channel VAE latents."""

from __future__ import annotations

from .denoiser import Conditioning, uses_cfg
from .flow import FlowBackend


class StableDiffusion3Backend(FlowBackend):
    max_sequence_length: int = 256  # the pipeline's default T5 length: the round trip encodes as it samples

    def _default_latent_shape(self):
        t = self.pipe.transformer.config
        self._check_size(self.pipe.vae_scale_factor * t.patch_size)
        scale = self.pipe.vae_scale_factor
        return (t.in_channels, self.height // scale, self.width // scale)

    def _image_seq_len(self):
        _, h, w = self.latent_shape
        p = self.pipe.transformer.config.patch_size
        return (h // p) * (w // p)

    def _mu(self, max_shift_fallback: float = 1.16):  # SD3's pipeline falls back to 1.16, FLUX's to 1.15
        return super()._mu(max_shift_fallback)

    def _encode(self, prompts, guidance):
        cfg = uses_cfg(guidance)
        cond, uncond, pooled, uncond_pooled = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=cfg, max_sequence_length=self.max_sequence_length)
        return Conditioning({"encoder_hidden_states": cond, "pooled_projections": pooled},
                            {"encoder_hidden_states": uncond, "pooled_projections": uncond_pooled} if cfg else None)

    def _pipeline_kwargs(self):
        return {**super()._pipeline_kwargs(), "max_sequence_length": self.max_sequence_length}
