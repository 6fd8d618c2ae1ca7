"""Seeds to noises. A seed means one noise everywhere: it is drawn by a CPU generator, then moved."""

from __future__ import annotations

import hashlib
import math
from typing import Iterable, Sequence

import torch

from .errors import StablenoiseError

SEED_LIMIT = 2**63  # torch's CPU generator gives seed s and s + 2**63 one noise (and takes -1 as 2**64 - 1)


def check_seed(seed) -> int:
    if isinstance(seed, bool) or int(seed) != seed or not 0 <= int(seed) < SEED_LIMIT:
        raise StablenoiseError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


def check_seed_range(first: int, n: int, limit: int = SEED_LIMIT) -> range:
    """Seeds ``first .. first + n - 1``, refused as a whole (before any is used) when they run past ``limit - 1``
    (a power of two)."""
    if first + n > limit:
        raise StablenoiseError(f"seeds {first}..{first + n - 1} run past 2**{limit.bit_length() - 1} - 1")
    return range(first, first + n)


def noise_from_seed(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """Standard Gaussian noise of ``shape`` (one sample, no batch dimension) from ``seed``.

    A seed means one noise everywhere: drawn by a CPU generator, whatever device it is used on.

    Args:
        seed: an integer in [0, 2**63).
        shape: the noise's shape, without a batch dimension.

    Returns:
        A float32 CPU tensor of ``shape``.

    Raises:
        StablenoiseError: a seed that is not an integer in [0, 2**63).
    """
    generator = torch.Generator("cpu").manual_seed(check_seed(seed))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


NOISE_NORMS = ("keep", "shell")


def check_noise_norm(noise_norm: str) -> str:
    if noise_norm not in NOISE_NORMS:
        raise StablenoiseError(f"noise_norm must be one of {', '.join(NOISE_NORMS)}, got {noise_norm!r}")
    return noise_norm


def on_shell(x: torch.Tensor) -> torch.Tensor:
    """Each sample of a batch rescaled to norm sqrt(d), the typical norm of d-dimensional Gaussian noise (its
    direction kept): the norm, which a few-step DDIM round trip rewards, is then the same for every seed."""
    norm = x.flatten(1).norm(dim=1).clamp_min(1e-12)
    return x * (math.sqrt(x[0].numel()) / norm).view(-1, *[1] * (x.ndim - 1))


def noises_from_seeds(seeds: Iterable[int], shape: Sequence[int], noise_norm: str = "keep") -> torch.Tensor:
    """One noise per seed, stacked.

    Args:
        seeds: the seeds, each as in :func:`noise_from_seed`.
        shape: each noise's shape, without a batch dimension.
        noise_norm: "keep" (each noise as drawn) or "shell" (each put on the sqrt(d) shell, :func:`on_shell`).

    Returns:
        A float32 CPU tensor [len(seeds), *shape], in the order of ``seeds``.

    Raises:
        StablenoiseError: a seed outside [0, 2**63), or a ``noise_norm`` other than "keep" or "shell".
    """
    noise = torch.stack([noise_from_seed(s, shape) for s in seeds])
    return on_shell(noise) if check_noise_norm(noise_norm) == "shell" else noise


def generator_seed(noise: torch.Tensor) -> int:
    """A seed derived from the noise's float32 values, for samplers that draw fresh noise while
    denoising: the same noise gives the same image, and the drawn noise is not the noise itself
    (which it would be if the generator were seeded with the noise's own seed)."""
    data = noise.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


def check_noise(noise: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A batch [B, *shape] of finite floating-point noise; a single sample gets a batch dimension."""
    if not isinstance(noise, torch.Tensor):
        raise StablenoiseError(f"noise must be a tensor, got {type(noise).__name__}")
    if not noise.is_floating_point():
        raise StablenoiseError(f"noise must be floating point, got {str(noise.dtype).replace('torch.', '')}")
    if tuple(noise.shape) == tuple(shape):
        noise = noise.unsqueeze(0)
    if tuple(noise.shape[1:]) != tuple(shape) or noise.ndim != len(shape) + 1:
        raise StablenoiseError(f"noise has shape {tuple(noise.shape)}; this model needs [B, {', '.join(map(str, shape))}]")
    if noise.shape[0] == 0:
        raise StablenoiseError("no noise given (batch of 0)")
    if not torch.isfinite(noise).all():
        raise StablenoiseError("noise contains NaN or inf")
    return noise


def check_prompts(prompt: str | Sequence[str], n: int) -> list[str]:
    """One prompt for all n samples, or exactly one prompt per sample."""
    if isinstance(prompt, str):
        prompts = [prompt] * n
    elif isinstance(prompt, Sequence) and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    else:
        bad = next((p for p in prompt if not isinstance(p, str)), None) if isinstance(prompt, Sequence) else prompt
        got = "None" if bad is None else type(bad).__name__
        raise StablenoiseError(f"prompt must be a string or a list of strings, got {got}")
    if not prompts:
        raise StablenoiseError("no prompt given")
    if len(prompts) == 1 and n > 1:
        prompts = prompts * n
    if len(prompts) != n:
        raise StablenoiseError(f"{len(prompts)} prompts for {n} noises")
    return prompts
