"""What the algorithms, the bench and perf use of a model: the backend protocol, and the defaults a family brings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import torch

from .denoiser import Conditioning, Denoiser


@dataclass(frozen=True)
class Defaults:
    """What a model family expects when the user does not say."""

    steps: int
    guidance: float
    inversion_guidance: float = 1.0


@runtime_checkable
class Backend(Protocol):
    """What ``stability``, ``select``, ``optimize``, the bench and perf need from a model."""

    name: str
    latent_shape: tuple[int, ...]  # one sample, without the batch dimension
    device: torch.device
    dtype: torch.dtype
    defaults: Defaults
    pipe: Any  # the diffusers pipeline: its components are the weights (a seed bank fingerprints them)
    network: torch.nn.Module  # what the round trip evaluates (a UNet, a transformer, Shap-E's prior)
    inversion_point: str  # where inversion evaluates the network unless told: "destination" or "source"
    model_evaluations: int  # network evaluations so far, one per sample (CFG: two): the bench's cost unit

    def encode(self, prompts: Sequence[str], guidance: float) -> Conditioning: ...

    def denoise(self, noise: torch.Tensor, cond: Conditioning, steps: int, guidance: float,
                checkpoint: bool = False) -> torch.Tensor: ...

    def invert(self, latents: torch.Tensor, cond: Conditioning, steps: int, guidance: float,
               checkpoint: bool = False, point: str | None = None) -> torch.Tensor:
        """``point``: where inversion evaluates the network (None: ``inversion_point``; see stablenoise.ddim)."""
        ...

    def denoiser(self, cond: Conditioning, guidance: float, checkpoint: bool = False) -> Denoiser:
        """The network under ``cond`` as a k-diffusion-style denoiser (one evaluation: ``.output(x, t)``)."""
        ...

    def timesteps(self, steps: int) -> torch.Tensor:
        """The network timesteps of ``steps`` denoising steps, noisiest first."""
        ...

    def decode(self, latents: torch.Tensor) -> list: ...

    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, ...] -> float images [B, 3, H, W] in [0, 1], differentiable (what ``decode`` shows)."""
        ...

    def generate(self, prompts: Sequence[str], noise: torch.Tensor, steps: int, guidance: float,
                 generators: Sequence[torch.Generator] | None = None) -> list: ...

    def describe(self) -> dict: ...
