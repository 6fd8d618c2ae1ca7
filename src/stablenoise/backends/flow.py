"""The shared round trip of flow-matching pipelines (SD3, FLUX): Euler ODE to data and back (see
:mod:`stablenoise.flow`), over the sigmas the pipeline's own scheduler sets for the image size.

Everything else (encoding, CFG, checkpointing, counting model evaluations, the pipeline's own sampler) is
:class:`DiffusersBackend`'s; adapters say how the transformer is called and how latents decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import flow
from ..errors import StablenoiseError
from .base import DiffusersBackend

# The scheduler config keys that decide the sigmas (what ``describe`` records and overrides may change).
SIGMA_KEYS = ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift",
              "base_image_seq_len", "max_image_seq_len", "invert_sigmas", "shift_terminal", "use_karras_sigmas",
              "use_exponential_sigmas", "use_beta_sigmas", "time_shift_type")


@dataclass
class FlowBackend(DiffusersBackend):
    height: int | None = None
    width: int | None = None

    def _setup_round_trip(self) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        unknown = set(self.scheduler_overrides) - set(SIGMA_KEYS)
        if unknown:
            raise StablenoiseError(f"{', '.join(sorted(unknown))} cannot be set for a flow-matching model "
                                   f"(its Euler sigmas take {', '.join(SIGMA_KEYS)})")
        # The pipeline's own scheduler config, read as FlowMatchEuler's whatever the shipped class.
        config = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config).config
        self.flow_config = {**{k: config[k] for k in SIGMA_KEYS if k in config}, **self.scheduler_overrides}
        self._schedules: dict[int, flow.Schedule] = {}

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    # --- what adapters provide -------------------------------------------------------------
    def _call_model(self, x, t, kwargs, guidance):
        # diffusers' transformers take the scheduler's timestep (sigma * 1000) broadcast to the batch.
        return self.denoiser(hidden_states=x, timestep=t.expand(x.shape[0]), **kwargs, return_dict=False)[0]

    def _image_seq_len(self) -> int:
        """How many tokens the transformer sees for one image (what dynamic shifting scales with)."""
        raise NotImplementedError

    def _set_timesteps_kwargs(self, steps: int) -> dict:
        """What the pipeline passes to ``scheduler.set_timesteps`` besides the step count."""
        return {"mu": self._mu()} if self.flow_config.get("use_dynamic_shifting") else {}

    def _mu(self, max_shift_fallback: float = 1.15) -> float:
        """Resolution-dependent shift, by diffusers' own ``calculate_shift`` and the pipeline's fallbacks."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = self.flow_config
        return calculate_shift(self._image_seq_len(), c.get("base_image_seq_len", 256),
                               c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5),
                               c.get("max_shift", max_shift_fallback))

    def _pipeline_kwargs(self):
        return {"height": self.height, "width": self.width}

    # --- the round trip --------------------------------------------------------------------
    def schedule(self, steps: int) -> flow.Schedule:
        if steps not in self._schedules:
            self._schedules[steps] = flow.schedule(self.flow_config, steps, self.device,
                                                   **self._set_timesteps_kwargs(steps))
        return self._schedules[steps]

    def timesteps(self, steps: int) -> torch.Tensor:
        return self.schedule(steps).timesteps[:-1]

    def denoise(self, noise, cond, steps, guidance, checkpoint=False):
        x = noise.to(self.device, self.work_dtype)
        return flow.denoise(self._model(cond, guidance, checkpoint), x, self.schedule(steps))

    def invert(self, latents, cond, steps, guidance, checkpoint=False):
        x = latents.to(self.device, self.work_dtype)
        return flow.invert(self._model(cond, guidance, checkpoint), x, self.schedule(steps))

    # --- decoding: the VAE of SD3 and FLUX (scaling and shift factors) ------------------------
    def decode_pixels(self, latents):
        vae = self.pipe.vae
        z = latents.to(self.device, vae.dtype) / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        return (vae.decode(z).sample.float() / 2 + 0.5).clamp(0, 1)  # the image processor's denormalize

    def decode(self, latents):
        pixels = self.decode_pixels(latents)
        return self.pipe.image_processor.postprocess(pixels, output_type="pil", do_denormalize=[False] * len(pixels))

    def _describe_round_trip(self) -> dict:
        return {"flow": dict(self.flow_config), "height": self.height, "width": self.width}

    def _check_size(self, multiple: int) -> None:
        """Default to the pipeline's native size; refuse a size the transformer cannot patch."""
        scale = self.pipe.vae_scale_factor
        self.height = self.height or self.pipe.default_sample_size * scale
        self.width = self.width or self.pipe.default_sample_size * scale
        for what, n in (("height", self.height), ("width", self.width)):
            if n <= 0 or n % multiple:
                raise StablenoiseError(f"image {what} {n} is not a positive multiple of {multiple} for this model")
