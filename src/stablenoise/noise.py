"""Seeds to noises. A seed means one noise everywhere: it is drawn by a CPU generator, then moved."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from .errors import StablenoiseError


def noise_from_seed(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """Standard Gaussian noise of ``shape`` (one sample, no batch dimension) from ``seed``."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def noises_from_seeds(seeds: Iterable[int], shape: Sequence[int]) -> torch.Tensor:
    return torch.stack([noise_from_seed(s, shape) for s in seeds])


def check_noise(noise: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A batch [B, *shape] of finite noise; a single sample gets a batch dimension."""
    if not isinstance(noise, torch.Tensor):
        raise StablenoiseError(f"noise must be a tensor, got {type(noise).__name__}")
    if tuple(noise.shape) == tuple(shape):
        noise = noise.unsqueeze(0)
    if tuple(noise.shape[1:]) != tuple(shape) or noise.ndim != len(shape) + 1:
        raise StablenoiseError(f"noise has shape {tuple(noise.shape)}; this model needs [B, {', '.join(map(str, shape))}]")
    if not torch.isfinite(noise).all():
        raise StablenoiseError("noise contains NaN or inf")
    return noise


def check_prompts(prompt: str | Sequence[str], n: int) -> list[str]:
    """One prompt for all n samples, or exactly one prompt per sample."""
    prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise StablenoiseError("no prompt given")
    if len(prompts) == 1 and n > 1:
        prompts = prompts * n
    if len(prompts) != n:
        raise StablenoiseError(f"{len(prompts)} prompts for {n} noises")
    return prompts
