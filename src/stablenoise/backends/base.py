"""The backend protocol the algorithms depend on, and the shared diffusers implementation.

A backend turns prompts into conditioning, runs deterministic DDIM (eta = 0) from noise to a clean
latent, inverts a clean latent back to noise with DDIM inversion, and decodes latents to images (PIL, or a
differentiable pixel tensor for reward gradients).
Everything a model family does differently (how prompts are encoded, extra UNet inputs, decoding)
lives in its adapter; the DDIM loops live here once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from .. import ddim
from ..errors import StablenoiseError


@dataclass
class Conditioning:
    """UNet keyword arguments for a batch: the conditional branch, and the unconditional one for CFG."""

    cond: dict[str, Any]
    uncond: dict[str, Any] | None = None

    @property
    def batch_size(self) -> int:
        return _first_dim(self.cond)

    def expand(self, n: int) -> "Conditioning":
        """Repeat a batch-1 conditioning to n samples (one prompt for a whole batch of noises)."""
        if self.batch_size == n:
            return self
        if self.batch_size != 1:
            raise StablenoiseError(f"cannot expand a conditioning of {self.batch_size} prompts to {n}")
        return Conditioning(_map(self.cond, lambda t: t.expand(n, *t.shape[1:])),
                            None if self.uncond is None else _map(self.uncond, lambda t: t.expand(n, *t.shape[1:])))


    def select(self, index: Sequence[int]) -> "Conditioning":
        """The conditioning of the samples at ``index`` (in that order)."""
        if list(index) == list(range(self.batch_size)):
            return self
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return Conditioning(_map(self.cond, lambda t: t[idx.to(t.device)]),
                            None if self.uncond is None else _map(self.uncond, lambda t: t[idx.to(t.device)]))


def _map(tree, fn):
    if isinstance(tree, dict):
        return {k: _map(v, fn) for k, v in tree.items()}
    return fn(tree) if isinstance(tree, torch.Tensor) else tree


def _cat(a, b):
    if isinstance(a, dict):
        return {k: _cat(a[k], b[k]) for k in a}
    return torch.cat([a, b]) if isinstance(a, torch.Tensor) else a


def _first_dim(tree) -> int:
    for v in tree.values():
        n = _first_dim(v) if isinstance(v, dict) else (v.shape[0] if isinstance(v, torch.Tensor) else None)
        if n is not None:
            return n
    raise StablenoiseError("conditioning holds no tensor")


@dataclass(frozen=True)
class Defaults:
    """What a model family expects when the user does not say."""

    steps: int
    guidance: float
    inversion_guidance: float = 1.0


@runtime_checkable
class Backend(Protocol):
    """What ``stability``, ``select`` and ``optimize`` need from a model."""

    name: str
    latent_shape: tuple[int, ...]  # one sample, without the batch dimension
    device: torch.device
    dtype: torch.dtype
    defaults: Defaults

    def encode(self, prompts: Sequence[str], guidance: float) -> Conditioning: ...

    def denoise(self, noise: torch.Tensor, cond: Conditioning, steps: int, guidance: float,
                checkpoint: bool = False) -> torch.Tensor: ...

    def invert(self, latents: torch.Tensor, cond: Conditioning, steps: int, guidance: float,
               checkpoint: bool = False) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> list: ...

    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, ...] -> float images [B, 3, H, W] in [0, 1], differentiable (what ``decode`` shows)."""
        ...

    def generate(self, prompts: Sequence[str], noise: torch.Tensor, steps: int, guidance: float,
                 generators: Sequence[torch.Generator] | None = None) -> list: ...

    def describe(self) -> dict: ...


def _is_compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None  # set by nn.Module.compile


def uses_cfg(guidance: float) -> bool:
    """diffusers' convention: classifier-free guidance only above 1; otherwise the conditional branch alone."""
    return guidance > 1.0


@dataclass
class DiffusersBackend:
    """DDIM round trip over a diffusers pipeline's UNet; adapters add encoding and decoding."""

    pipe: Any
    name: str
    defaults: Defaults
    latent_shape: tuple[int, ...] = ()
    scheduler_overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        for module in self._modules():
            module.requires_grad_(False)  # gradients flow to the noise only
            module.eval()
        self._setup_round_trip()
        self._checked_prompts: set[str] = set()  # each prompt is tokenized for the length check once
        self.model_evaluations = 0  # UNet evaluations, one per sample (CFG: two); the bench's cost unit
        if not self.latent_shape:
            self.latent_shape = self._default_latent_shape()

    def _setup_round_trip(self) -> None:
        # The DDIM settings come from the pipeline's own scheduler config, whatever its class (see ddim.settings).
        self.ddim_config = ddim.settings(self.pipe.scheduler.config, **self.scheduler_overrides)
        self._schedules: dict[int, ddim.Schedule] = {}

    # --- what adapters provide -------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        """The network the round trip evaluates (a UNet here; a transformer for flow-matching models)."""
        return self.pipe.unet

    def _call_model(self, x: torch.Tensor, t, kwargs: dict, guidance: float) -> torch.Tensor:
        """One evaluation of the denoiser on a batch (both CFG branches at once when guided): its raw output
        in the scheduler's prediction type (noise, v, x0, or a flow model's velocity)."""
        return self.denoiser(x, t, **kwargs).sample

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
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    def compile(self, **options) -> "DiffusersBackend":
        """``torch.compile`` the denoiser in place (``options`` go to torch.compile). The first calls of each
        batch size and CFG setting compile (slow); the arithmetic between steps stays eager."""
        self.denoiser.compile(**options)
        return self

    def attention(self) -> list[str]:
        """The attention processor classes the denoiser uses (diffusers' default on torch 2 is SDPA:
        AttnProcessor2_0 and its relatives)."""
        procs = getattr(self.denoiser, "attn_processors", None) or {}
        return sorted({type(p).__name__ for p in procs.values()})

    def schedule(self, steps: int) -> ddim.Schedule:
        if steps not in self._schedules:
            self._schedules[steps] = ddim.schedule(self.ddim_config, steps, self.device)
        return self._schedules[steps]

    def timesteps(self, steps: int) -> torch.Tensor:
        """The model timesteps of ``steps`` denoising steps, noisiest first (inversion visits them reversed)."""
        return self.schedule(steps).timesteps

    @property
    def work_dtype(self) -> torch.dtype:
        """Precision of the DDIM arithmetic and the noise: float64 for float64 models, else float32."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def eps(self, x: torch.Tensor, t, cond: Conditioning, guidance: float) -> torch.Tensor:
        """The model's prediction (noise for DDIM, velocity for flow matching), with classifier-free
        guidance where the family uses it; in the work dtype whatever the model's."""
        x = x.to(self.dtype)
        cfg = self._uses_cfg(guidance)
        self.model_evaluations += x.shape[0] * (2 if cfg else 1)
        if cfg:
            if cond.uncond is None:
                raise StablenoiseError("guidance > 1 needs a conditioning encoded with guidance > 1")
            u, c = self._call_model(torch.cat([x, x]), t, _cat(cond.uncond, cond.cond), guidance).chunk(2)
            return (u + guidance * (c - u)).to(self.work_dtype)
        return self._call_model(x, t, cond.cond, guidance).to(self.work_dtype)

    def _model(self, cond: Conditioning, guidance: float, checkpoint: bool):
        """The (x, t) -> eps callable the DDIM loops call, checkpointed when gradients are on."""
        if checkpoint and torch.is_grad_enabled():
            # Recompute activations in backward: memory holds one UNet call, not 2*T of them.
            return lambda x, t: _checkpoint(self.eps, x, t, cond, guidance, use_reentrant=False)
        return lambda x, t: self.eps(x, t, cond, guidance)

    def denoise(self, noise, cond, steps, guidance, checkpoint=False):
        self._check_schedule(steps)
        x = noise.to(self.device, self.work_dtype)
        return ddim.denoise(self._model(cond, guidance, checkpoint), x, self.schedule(steps))

    def invert(self, latents, cond, steps, guidance, checkpoint=False):
        x = latents.to(self.device, self.work_dtype)
        return ddim.invert(self._model(cond, guidance, checkpoint), x, self.schedule(steps))

    def _check_schedule(self, steps: int) -> None:
        """Warn about the two DDIM schedules that make stability meaningless."""
        sched = self.schedule(steps)
        first, total = int(sched.timesteps[0]), self.ddim_config.get("num_train_timesteps", 1000)
        spacing = self.ddim_config.get("timestep_spacing", "leading")
        # "leading" spacing with very few steps starts at t ~ 1: nothing is denoised, F is the identity
        # and stability is ~1.0 for every noise. That is a configuration error, not a stable noise.
        if first < total // 2:
            warnings.warn(f"DDIM with {steps} step(s) and timestep_spacing={spacing!r} starts at t={first} of "
                          f"{total}: almost nothing is denoised and stability will be trivially near 1. "
                          "Use more steps or timestep_spacing='trailing'.", stacklevel=3)
        # A first step where alpha_bar ~ 0 (cosine betas at t=999) divides the x0 estimate by ~0.
        alpha_bar = float(sched.alphas[0])
        if alpha_bar < 1e-6 and sched.clip is None:
            warnings.warn(f"DDIM starts at t={first} where alpha_bar={alpha_bar:.1e}: the x0 estimate is "
                          "amplified beyond use. Use timestep_spacing='leading' for this noise schedule.",
                          stacklevel=3)

    def generate(self, prompts, noise, steps, guidance, generators=None):
        """Images from the pipeline's own sampler and scheduler, started from the given noise; a stochastic
        scheduler draws its fresh noise from ``generators`` (one per image)."""
        out = self.pipe(prompt=list(prompts), latents=self._pipeline_latents(noise.to(self.device, self.dtype)),
                        num_inference_steps=steps, guidance_scale=guidance, output_type="pil",
                        generator=list(generators) if generators is not None else None,
                        **self._pipeline_kwargs())
        return out.images

    def describe(self) -> dict:
        return {"backend": type(self).__name__, "name": self.name,
                "pipeline": type(self.pipe).__name__, "latent_shape": list(self.latent_shape),
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                **self._describe_round_trip(), "defaults": self.defaults.__dict__,
                "attention": self.attention(), "compiled": _is_compiled(self.denoiser)}

    def _describe_round_trip(self) -> dict:
        return {"ddim": dict(self.ddim_config)}

    def with_scheduler(self, **overrides) -> "DiffusersBackend":
        """A copy whose DDIM schedulers take these config overrides (e.g. ``timestep_spacing="trailing"``)."""
        return replace(self, scheduler_overrides={**self.scheduler_overrides, **overrides})
