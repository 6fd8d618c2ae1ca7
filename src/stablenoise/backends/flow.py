"""The shared round trip of flow-matching pipelines (SD3, FLUX): the Euler ODE to data and back, which is the one
integrator (:mod:`stablenoise.ddim`) over the levels (1 - sigma, sigma) of the sigmas the pipeline's own scheduler
sets for the image size (:mod:`stablenoise.flow`).

Everything else (the loops, encoding, CFG, checkpointing, counting model evaluations, the pipeline's own sampler) is
:class:`DiffusersBackend`'s; this class says where the schedule comes from, adapters how the transformer is called
and how latents decode. Inversion evaluates the velocity at the source sigma unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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

    default_inversion_point: ClassVar[str] = "source"  # explicit Euler backwards, the velocity where x is

    def _setup_round_trip(self) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        unknown = set(self.scheduler_overrides) - set(SIGMA_KEYS)
        if unknown:
            raise StablenoiseError(f"{', '.join(sorted(unknown))} cannot be set for a flow-matching model "
                                   f"(its Euler sigmas take {', '.join(SIGMA_KEYS)})")
        # The pipeline's own scheduler config, read as FlowMatchEuler's whatever the shipped class.
        config = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config).config
        self.flow_config = {**{k: config[k] for k in SIGMA_KEYS if k in config}, **self.scheduler_overrides}

    def _new_schedule(self, steps: int) -> flow.Schedule:
        return flow.schedule(self.flow_config, steps, self.device, **self._set_timesteps_kwargs(steps))

    def _parametrization(self):
        return flow.Schedule.prediction_type, flow.Schedule.clip

    def _check_schedule(self, steps: int) -> None:
        pass  # flow sigmas start from pure noise, and a velocity's x0 estimate divides by nothing

    @property
    def network(self) -> torch.nn.Module:
        return self.pipe.transformer

    # --- what adapters provide -------------------------------------------------------------
    def _call_model(self, x, t, kwargs, guidance):
        # diffusers' transformers take the scheduler's timestep (sigma * 1000) broadcast to the batch.
        return self.network(hidden_states=x, timestep=t.expand(x.shape[0]), **kwargs, return_dict=False)[0]

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
