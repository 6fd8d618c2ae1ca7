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

    def encode(self, prompts: Sequence[str], guidance: float) -> Conditioning:
        """The network's conditioning for a batch of prompts.

        Args:
            prompts: one prompt per sample.
            guidance: the largest guidance scale the conditioning will be used with (above 1: CFG, so the
                unconditional branch is encoded too).

        Returns:
            The :class:`Conditioning`, one row per prompt.
        """
        ...

    def denoise(self, noise: torch.Tensor, cond: Conditioning, steps: int, guidance: float,
                checkpoint: bool = False) -> torch.Tensor:
        """The denoising half of the round trip: deterministic DDIM from noise to z_0.

        Args:
            noise: [B, ...] noises.
            cond: their conditioning, one row per noise.
            steps: denoising steps.
            guidance: the guidance scale.
            checkpoint: recompute each network call in the backward pass instead of storing it.

        Returns:
            The denoised latents z_0 [B, ...].
        """
        ...

    def invert(self, latents: torch.Tensor, cond: Conditioning, steps: int, guidance: float,
               checkpoint: bool = False, point: str | None = None) -> torch.Tensor:
        """The inversion half of the round trip: DDIM inversion from latents back to noise, F.

        Args:
            latents: [B, ...] clean latents z_0.
            cond: their conditioning, one row per latent.
            steps: inversion steps.
            guidance: the guidance scale of the inversion.
            checkpoint: recompute each network call in the backward pass instead of storing it.
            point: where inversion evaluates the network (None: ``inversion_point``; see stablenoise.ddim).

        Returns:
            The inverted noises [B, ...].
        """
        ...

    def denoiser(self, cond: Conditioning, guidance: float, checkpoint: bool = False) -> Denoiser:
        """The network under ``cond`` as a k-diffusion-style denoiser (one evaluation: ``.output(x, t)``).

        Args:
            cond: the conditioning, one row per sample.
            guidance: the guidance scale.
            checkpoint: recompute each network call in the backward pass instead of storing it.

        Returns:
            The :class:`Denoiser`.
        """
        ...

    def timesteps(self, steps: int) -> torch.Tensor:
        """The network timesteps of ``steps`` denoising steps, noisiest first.

        Args:
            steps: denoising steps.

        Returns:
            A tensor of ``steps`` timesteps.
        """
        ...

    def decode(self, latents: torch.Tensor) -> list:
        """Latents as images.

        Args:
            latents: [B, ...] clean latents z_0.

        Returns:
            A list of PIL images, one per latent.
        """
        ...

    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, ...] -> float images [B, 3, H, W] in [0, 1], differentiable (what ``decode`` shows).

        Args:
            latents: [B, ...] clean latents z_0.

        Returns:
            A float tensor [B, 3, H, W] in [0, 1].
        """
        ...

    def generate(self, prompts: Sequence[str], noise: torch.Tensor, steps: int, guidance: float,
                 generators: Sequence[torch.Generator] | None = None) -> list:
        """Images from the pipeline's own sampler and scheduler, started from the given noise.

        Args:
            prompts: one prompt per noise.
            noise: [B, ...] noises.
            steps: the sampler's steps.
            guidance: the guidance scale.
            generators: where a stochastic scheduler draws its fresh noise, one per image (None: torch's global
                generator).

        Returns:
            A list of PIL images, one per noise.
        """
        ...

    def describe(self) -> dict:
        """What the model is and how its round trip runs, JSON-ready, for records and seed banks.

        Returns:
            A dict: backend and pipeline class, name, latent shape, device, dtype, the round trip's schedule, the
            family's defaults and more.
        """
        ...
