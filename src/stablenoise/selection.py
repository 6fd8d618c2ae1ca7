"""Noise selection: score K seeded noises by inversion stability; keep the most (and least) stable."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .backends.base import Backend
from .errors import StablenoiseError
from .noise import check_seed, noises_from_seeds
from .stability import stability


@dataclass
class SelectionResult:
    prompt: str
    seeds: list[int]
    scores: list[float | None]  # stability of each seed, in the order of ``seeds``; None: non-finite, excluded
    best_seed: int
    worst_seed: int
    best_noise: torch.Tensor  # [1, *latent_shape]
    worst_noise: torch.Tensor

    def ranked(self) -> list[tuple[int, float]]:
        """(seed, score) of the scored seeds, most stable first."""
        return sorted(((s, v) for s, v in zip(self.seeds, self.scores) if v is not None), key=lambda p: -p[1])


def select(backend: Backend, prompt: str, k: int = 100, seeds: Sequence[int] | None = None,
           batch_size: int = 8, steps: int | None = None, guidance: float | None = None,
           inversion_guidance: float | None = None, progress: bool = True,
           callback: Callable[[dict], None] | None = None) -> SelectionResult:
    """Score ``k`` noises (seeds ``0..k-1`` unless ``seeds`` is given) in batches; return all scores
    with the most and least stable seed. A non-finite score is recorded as None and never wins.
    ``callback`` gets ``{"seeds", "scores"}`` after each batch."""
    if seeds is None:
        if k < 1:
            raise StablenoiseError(f"k must be >= 1, got {k}")
        seeds = range(k)
    seeds = [check_seed(s) for s in seeds]
    if not seeds:
        raise StablenoiseError("seeds is empty: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise StablenoiseError("seeds must be distinct")
    if batch_size < 1:
        raise StablenoiseError(f"batch size must be >= 1, got {batch_size}")
    scores: list[float | None] = []
    for i in tqdm(range(0, len(seeds), batch_size), desc="select", unit="batch", disable=not progress):
        chunk = seeds[i:i + batch_size]
        s = stability(backend, prompt, noises_from_seeds(chunk, backend.latent_shape),
                      steps, guidance, inversion_guidance).tolist()
        s = [v if math.isfinite(v) else None for v in s]
        scores.extend(s)
        if callback is not None:
            callback({"seeds": chunk, "scores": s})
    scored = [i for i, v in enumerate(scores) if v is not None]
    if not scored:
        raise StablenoiseError(f"every one of the {len(seeds)} seeds scored NaN or inf: check the model and settings")
    best = max(scored, key=scores.__getitem__)
    worst = min(scored, key=scores.__getitem__)
    return SelectionResult(prompt, seeds, scores, seeds[best], seeds[worst],
                           noises_from_seeds([seeds[best]], backend.latent_shape),
                           noises_from_seeds([seeds[worst]], backend.latent_shape))
