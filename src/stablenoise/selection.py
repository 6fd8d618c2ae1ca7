"""Noise selection: score K seeded noises by inversion stability; keep the most (and least) stable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .backends.base import Backend
from .errors import StablenoiseError
from .noise import noises_from_seeds
from .stability import stability


@dataclass
class SelectionResult:
    prompt: str
    seeds: list[int]
    scores: list[float]  # stability of each seed, in the order of ``seeds``
    best_seed: int
    worst_seed: int
    best_noise: torch.Tensor  # [1, *latent_shape]
    worst_noise: torch.Tensor

    def ranked(self) -> list[tuple[int, float]]:
        """(seed, score), most stable first."""
        return sorted(zip(self.seeds, self.scores), key=lambda p: -p[1])


def select(backend: Backend, prompt: str, k: int = 100, seeds: Sequence[int] | None = None,
           batch_size: int = 8, steps: int | None = None, guidance: float | None = None,
           inversion_guidance: float | None = None, progress: bool = True,
           callback: Callable[[dict], None] | None = None) -> SelectionResult:
    """Score ``k`` noises (seeds ``0..k-1`` unless ``seeds`` is given) in batches; return all scores
    with the most and least stable seed. ``callback`` gets ``{"seeds", "scores"}`` after each batch."""
    seeds = list(range(k)) if seeds is None else [int(s) for s in seeds]
    if not seeds or (seeds is not None and k < 1):
        raise StablenoiseError(f"k must be >= 1, got {k}")
    if len(set(seeds)) != len(seeds):
        raise StablenoiseError("seeds must be distinct")
    if batch_size < 1:
        raise StablenoiseError(f"batch size must be >= 1, got {batch_size}")
    scores: list[float] = []
    chunks = [seeds[i:i + batch_size] for i in range(0, len(seeds), batch_size)]
    for chunk in tqdm(chunks, desc="select", unit="batch", disable=not progress):
        s = stability(backend, prompt, noises_from_seeds(chunk, backend.latent_shape),
                      steps, guidance, inversion_guidance)
        scores.extend(s.tolist())
        if callback is not None:
            callback({"seeds": chunk, "scores": s.tolist()})
    best = max(range(len(seeds)), key=scores.__getitem__)
    worst = min(range(len(seeds)), key=scores.__getitem__)
    return SelectionResult(prompt, seeds, scores, seeds[best], seeds[worst],
                           noises_from_seeds([seeds[best]], backend.latent_shape),
                           noises_from_seeds([seeds[worst]], backend.latent_shape))
