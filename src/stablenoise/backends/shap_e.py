"""Shap-E text-to-3D (``ShapEPipeline``): the prior's latent is what is scored; turntable renders are shown.

What is denoised. The prior (a ``PriorTransformer``) denoises a latent of ``num_embeddings x embedding_dim``
(1024 x 1024 for openai/shap-e) under the CLIP text embedding of the prompt; the renderer turns the clean latent
into the weights of a NeRF MLP. A seed means one standard Gaussian noise of that shape (the pipeline draws the
same flattened shape and scales it by its scheduler's ``init_noise_sigma``).

The round trip. The pipeline samples with ``HeunDiscreteScheduler`` (exp betas, Karras sigmas, "sample"
prediction, x0 clipped to [-1, 1]). Heun is a second-order ODE solver with fractional timesteps; it has no
inverse in diffusers, and its two evaluations per step would make a round trip cost four. We run the same DDIM
(eta = 0) as every other family over the prior's own noise schedule instead: ``ddim.settings`` reads the Heun
config (exp betas, "sample" prediction, explicit clip_sample, linspace spacing), ``ddim.schedule`` gets the exp
betas from diffusers' ``betas_for_alpha_bar`` (the Heun scheduler's ``alphas_cumprod`` exactly), and
``ddim.to_eps`` turns the predicted x0 into noise at the level the prior was given. DDIM and Heun integrate the
same probability-flow ODE: a Heun state x_sigma = x0 + sigma eps is the DDIM state x_t divided by sqrt(alpha_bar),
which is exactly Heun's ``scale_model_input``, so the prior sees the same input either way, and with one step
both return the clipped x0 prediction of the noise (tests/test_shap_e.py checks this against the pipeline).

Rendering. ``decode`` renders the pipeline's own turntable (``ShapERenderer.decode_to_image``: 20 cameras
around the object, the last a repeat of the first) at ``frame_size`` and keeps ``views`` evenly spaced
ones, side by side in one image per sample (what the CLI saves; ``clipscore-views`` splits it back). The
renderer jitters its ray samples with torch's global generator; we seed it per latent, so a latent always
renders the same image (the pipeline's own ``__call__`` does not).
``decode_views`` gives the separate frames. The renderer is not differentiable (see ``decode_pixels``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import StablenoiseError
from .base import DiffusersBackend
from .denoiser import Conditioning, uses_cfg

PAN_CAMERAS = 20  # diffusers' create_pan_cameras: np.linspace(0, 2 pi, 20), so 19 distinct angles
RAY_BATCH = 4096  # decode_to_image's default rays per batch
RENDER_SEED = 0  # the renderer jitters its ray samples with torch's global generator: fix it, per latent


@dataclass
class ShapEBackend(DiffusersBackend):
    # Pixels per view: 256 as in the openai/shap-e model card and the ShapEPipeline docstring example (the
    # __call__ default is 64); CLIP judges see 224. Set a smaller one with dataclasses.replace for speed.
    frame_size: int = 256
    views: int = 4  # turntable views kept (evenly spaced of the renderer's 19 distinct angles)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.frame_size, int) or self.frame_size < 1:
            raise StablenoiseError(f"frame_size must be a positive integer, got {self.frame_size!r}")
        if not isinstance(self.views, int) or not 1 <= self.views < PAN_CAMERAS:
            raise StablenoiseError(f"views must be an integer in 1..{PAN_CAMERAS - 1}, got {self.views!r}")

    @property
    def network(self):
        return self.pipe.prior

    def _default_latent_shape(self):
        c = self.pipe.prior.config
        return (c.num_embeddings, c.embedding_dim)

    def _call_model(self, x, t, kwargs, guidance):
        out = self.pipe.prior(x, timestep=t, **kwargs).predicted_image_embedding
        return out[..., :x.shape[-1]]  # the predicted x0; the second half is a variance the pipeline drops too

    def _encode(self, prompts, guidance):
        cfg = uses_cfg(guidance)
        # The pipeline's own encoding: unit-normalized text embeds rescaled by sqrt(dim), zeros unconditionally.
        embeds = self.pipe._encode_prompt(list(prompts), self.device, 1, cfg)
        if not cfg:
            return Conditioning({"proj_embedding": embeds})
        uncond, cond = embeds.chunk(2)
        return Conditioning({"proj_embedding": cond}, {"proj_embedding": uncond})

    # --- rendering -------------------------------------------------------------------------
    def view_indices(self) -> list[int]:
        return [i * (PAN_CAMERAS - 1) // self.views for i in range(self.views)]

    def decode_views(self, latents: torch.Tensor) -> list[list[Image.Image]]:
        """Each latent's ``views`` turntable frames, ``frame_size`` pixels square."""
        renderer, keep = self.pipe.shap_e_renderer, self.view_indices()
        # decode_to_image drops the rays past a whole number of batches: make the batch divide them.
        rays = PAN_CAMERAS * self.frame_size ** 2
        out = []
        # Forked so that rendering leaves the caller's random state alone (all devices of the type).
        fork = torch.random.fork_rng(device_type=self.device.type if self.device.type != "cpu" else "cuda")
        with torch.no_grad(), fork:
            for latent in latents.to(self.device, self.dtype).reshape(-1, *self.latent_shape):
                torch.manual_seed(RENDER_SEED)  # the same latent always renders the same, alone or in a batch
                frames = renderer.decode_to_image(latent[None], self.device, size=self.frame_size,
                                                  ray_batch_size=math.gcd(RAY_BATCH, rays))
                out.append(self.pipe.numpy_to_pil(frames[keep].float().cpu().numpy()))
        return out

    def decode(self, latents):
        """One image per latent: its turntable views side by side."""
        strips = []
        for views in self.decode_views(latents):
            strip = Image.new("RGB", (self.frame_size * len(views), self.frame_size))
            for i, view in enumerate(views):
                strip.paste(view, (i * self.frame_size, 0))
            strips.append(strip)
        return strips

    def decode_pixels(self, latents):
        raise NotImplementedError(
            "Shap-E's renderer is not differentiable: decode_to_image runs under no_grad and copies the latent's "
            "NeRF weights into its MLP in place, so reward gradients cannot reach the noise")

    # --- the pipeline's own sampler --------------------------------------------------------
    def generate_latents(self, prompts, noise, steps, guidance, generators=None) -> torch.Tensor:
        """The clean latents of the pipeline's Heun sampler started from ``noise`` (it scales it by sigma_max)."""
        out = self.pipe(prompt=list(prompts), latents=noise.reshape(len(noise), -1).to(self.device, self.dtype),
                        num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                        generator=list(generators) if generators is not None else None)
        return out.images

    def generate(self, prompts, noise, steps, guidance, generators=None):
        # Rendered here rather than by __call__, so both samplers give the same turntable strip.
        return self.decode(self.generate_latents(prompts, noise, steps, guidance, generators))

    def describe(self):
        return {**super().describe(), "frame_size": self.frame_size, "views": self.view_indices()}

