"""The diffusers backend: the round trip over a diffusers pipeline's network, shared by every model family.

A backend turns prompts into conditioning, runs the deterministic round trip from noise to a clean latent and back
(:mod:`stablenoise.ddim`'s one integrator, over the levels of the pipeline scheduler's own schedule, evaluated through
a :class:`~stablenoise.backends.denoiser.Denoiser`), and decodes latents to images (PIL, or a differentiable pixel
tensor for reward gradients). Everything a model family does differently (how prompts are encoded, extra network
inputs, decoding; for flow matching its schedule) lives in its adapter; the loops live in ``ddim`` once.

The protocol the algorithms see is in ``protocol.py``; the conditioning and the denoiser (CFG, checkpointing,
counting) in ``denoiser.py``. Their names are re-exported here for the modules that import them from ``base``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Sequence

import torch

from .. import ddim
from .denoiser import Conditioning, Denoiser, uses_cfg
from .protocol import Backend, Defaults

__all__ = ["Backend", "Conditioning", "Defaults", "Denoiser", "DiffusersBackend", "uses_cfg"]


def _is_compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None  # set by nn.Module.compile


@dataclass
class DiffusersBackend:
    """The round trip over a diffusers pipeline's network (DDIM over its scheduler's schedule); adapters add
    encoding and decoding, flow matching its own schedule (``flow.py``)."""

    pipe: Any
    name: str
    defaults: Defaults
    latent_shape: tuple[int, ...] = ()
    scheduler_overrides: dict = field(default_factory=dict)
    inversion_point: str | None = None  # where inversion evaluates the network (None: the family's default)

    default_inversion_point: ClassVar[str] = "destination"  # DDIM inversion's usual approximation (see ddim)

    def __post_init__(self):
        for module in self._modules():
            module.requires_grad_(False)  # gradients flow to the noise only
            module.eval()
        self.inversion_point = ddim.check_inversion_point(self.inversion_point or self.default_inversion_point)
        self._setup_round_trip()
        self._schedules: dict[int, Any] = {}  # each step count's schedule, made once
        self._checked_prompts: set[str] = set()  # each prompt is tokenized for the length check once
        self.model_evaluations = 0  # network evaluations, one per sample (CFG: two); the bench's cost unit
        if not self.latent_shape:
            self.latent_shape = self._default_latent_shape()

    def _setup_round_trip(self) -> None:
        # The DDIM settings come from the pipeline's own scheduler config, whatever its class (see ddim.settings).
        self.ddim_config = ddim.settings(self.pipe.scheduler.config, **self.scheduler_overrides)

    def _new_schedule(self, steps: int):
        return ddim.schedule(self.ddim_config, steps, self.device)

    def _parametrization(self) -> tuple[str, float | None]:
        """What the network predicts and how its x0 is clipped (see ddim.predict)."""
        return ddim.parametrization(self.ddim_config)

    def _check_schedule(self, steps: int) -> None:
        ddim.check_schedule(self.schedule(steps), self.ddim_config, steps)

    # --- what adapters provide -------------------------------------------------------------
    @property
    def network(self) -> torch.nn.Module:
        """The network the round trip evaluates (a UNet here; a transformer for flow-matching models)."""
        return self.pipe.unet

    def _call_model(self, x: torch.Tensor, t, kwargs: dict, guidance: float) -> torch.Tensor:
        """One evaluation of the network on a batch (both CFG branches at once when guided): its raw output
        in the scheduler's prediction type (noise, v, x0, or a flow model's velocity)."""
        return self.network(x, t, **kwargs).sample

    def _uses_cfg(self, guidance: float) -> bool:
        return uses_cfg(guidance)

    def _pipeline_latents(self, noise: torch.Tensor) -> torch.Tensor:
        """The noise in the layout the pipeline's ``latents=`` argument expects."""
        return noise

    def _modules(self) -> list[torch.nn.Module]:
        return [m for m in self.pipe.components.values() if isinstance(m, torch.nn.Module)]

    def _default_latent_shape(self) -> tuple[int, ...]:
        c = self.pipe.unet.config
        return (c.in_channels, c.sample_size, c.sample_size)

    def _pipeline_kwargs(self) -> dict:
        return {}

    def _encode(self, prompts: list[str], guidance: float) -> Conditioning:  # pragma: no cover
        raise NotImplementedError

    def _tokenizers(self) -> list:
        return [t for t in (getattr(self.pipe, "tokenizer", None), getattr(self.pipe, "tokenizer_2", None)) if t]

    def decode(self, latents: torch.Tensor) -> list:  # pragma: no cover
        raise NotImplementedError

    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no differentiable decode")

    # --- shared --------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], guidance: float) -> Conditioning:
        prompts = list(prompts)
        self._warn_if_truncated(prompts)
        return self._encode(prompts, guidance)

    def _warn_if_truncated(self, prompts: list[str]) -> None:
        """Text encoders read a fixed number of tokens and silently drop the rest: say so, once a prompt."""
        for prompt in dict.fromkeys(prompts):
            if prompt in self._checked_prompts:
                continue
            self._checked_prompts.add(prompt)
            for tok in self._tokenizers():
                n, limit = len(tok(prompt, truncation=False).input_ids), tok.model_max_length
                if n > limit:
                    # Quoted up to 60 characters: a 10 kB prompt must not flood the terminal.
                    shown = prompt if len(prompt) <= 60 else prompt[:60] + "…"
                    warnings.warn(f"prompt {shown!r} is {n} tokens long; the text encoder reads {limit} "
                                  "(start and end included) and ignores the rest", stacklevel=4)
                    break

    @property
    def device(self) -> torch.device:
        return self.network.device

    @property
    def dtype(self) -> torch.dtype:
        return self.network.dtype

    @property
    def work_dtype(self) -> torch.dtype:
        """Precision of the integrator's arithmetic and the noise: float64 for float64 models, else float32."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def compile(self, **options) -> "DiffusersBackend":
        """``torch.compile`` the network in place (``options`` go to torch.compile). The first calls of each
        batch size and CFG setting compile (slow); the arithmetic between steps stays eager."""
        self.network.compile(**options)
        return self

    def attention(self) -> list[str]:
        """The attention processor classes the network uses (diffusers' default on torch 2 is SDPA:
        AttnProcessor2_0 and its relatives)."""
        procs = getattr(self.network, "attn_processors", None) or {}
        return sorted({type(p).__name__ for p in procs.values()})

    def schedule(self, steps: int):
        """The schedule of ``steps`` steps from the pipeline scheduler's config (cached): ``ddim.Schedule`` here."""
        if steps not in self._schedules:
            self._schedules[steps] = self._new_schedule(steps)
        return self._schedules[steps]

    def levels(self, steps: int) -> tuple[ddim.Level, ...]:
        """The T + 1 noise levels the round trip of ``steps`` steps visits."""
        return self.schedule(steps).levels()

    def timesteps(self, steps: int) -> torch.Tensor:
        """The network timesteps of ``steps`` denoising steps, noisiest first (inversion visits them reversed)."""
        return torch.stack([level.t for level in self.levels(steps)[:-1]])

    def denoiser(self, cond: Conditioning, guidance: float, checkpoint=False) -> Denoiser:
        """The network under ``cond`` and ``guidance`` as a :class:`Denoiser` (``checkpoint``: True, or a function
        with torch.utils.checkpoint.checkpoint's signature, recomputes each call in the backward pass)."""
        return Denoiser(self._call_model, cond, guidance, *self._parametrization(), self._uses_cfg(guidance),
                        self.dtype, self.work_dtype, checkpoint, self._count)

    def _count(self, evaluations: int) -> None:
        self.model_evaluations += evaluations

    def denoise(self, noise, cond, steps, guidance, checkpoint=False):
        self._check_schedule(steps)
        x = noise.to(self.device, self.work_dtype)
        return ddim.to_data(self.denoiser(cond, guidance, checkpoint), x, self.levels(steps))

    def invert(self, latents, cond, steps, guidance, checkpoint=False, point=None):
        x = latents.to(self.device, self.work_dtype)
        return ddim.to_noise(self.denoiser(cond, guidance, checkpoint), x, self.levels(steps),
                             point or self.inversion_point)

    def generate(self, prompts, noise, steps, guidance, generators=None):
        """Images from the pipeline's own sampler and scheduler, started from the given noise; a stochastic
        scheduler draws its fresh noise from ``generators`` (one per image)."""
        out = self.pipe(prompt=list(prompts), latents=self._pipeline_latents(noise.to(self.device, self.dtype)),
                        num_inference_steps=steps, guidance_scale=guidance, output_type="pil",
                        generator=list(generators) if generators is not None else None,
                        **self._pipeline_kwargs())
        return out.images

    def describe(self) -> dict:
        # The inversion point only when it is not the family's: the records of earlier runs stay what they were.
        point = self.inversion_point
        point = {"inversion_point": point} if point != self.default_inversion_point else {}
        return {"backend": type(self).__name__, "name": self.name,
                "pipeline": type(self.pipe).__name__, "latent_shape": list(self.latent_shape),
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                **self._describe_round_trip(), **point, "defaults": self.defaults.__dict__,
                "attention": self.attention(), "compiled": _is_compiled(self.network)}

    def _describe_round_trip(self) -> dict:
        return {"ddim": dict(self.ddim_config)}

    def with_scheduler(self, **overrides) -> "DiffusersBackend":
        """A copy whose DDIM schedulers take these config overrides (e.g. ``timestep_spacing="trailing"``)."""
        return replace(self, scheduler_overrides={**self.scheduler_overrides, **overrides})

    def with_inversion_point(self, point: str) -> "DiffusersBackend":
        """A copy (sharing the pipeline) whose inversion evaluates the network at ``point``: "destination" or
        "source" (see :mod:`stablenoise.ddim`); ``describe`` records it when it is not the family's default."""
        return replace(self, inversion_point=ddim.check_inversion_point(point))
