"""Noise selection: score K seeded noises by inversion stability; keep the most (and least) stable.

Two-stage selection pays less than K full scores: a cheap ``proxy`` scores every seed, the ``keep`` best of
them get the full score, and the most stable of those wins. A proxy is a :class:`Proxy` (the same round trip
with fewer steps, another prompt such as the empty one, or no CFG) or a mapping seed -> score computed
earlier (a :class:`stablenoise.bank.SeedBank`'s scores, prompt-independent, computed once per model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .backends.base import Backend
from .batching import auto_batch_size, map_batches
from .errors import StablenoiseError
from .noise import check_seed, noises_from_seeds
from .stability import conditioning, resolve, score

if TYPE_CHECKING:
    from .bank import SeedBank


@dataclass(frozen=True)
class Proxy:
    """A cheaper stability score: the round trip with some settings changed (None keeps the full score's)."""

    steps: int | None = None
    guidance: float | None = None
    inversion_guidance: float | None = None
    prompt: str | None = None  # e.g. "": the seed's stability under the empty prompt


@dataclass
class SelectionResult:
    prompt: str
    seeds: list[int]
    # Full stability of each seed, in the order of ``seeds``; None: non-finite (excluded), or pruned by the proxy.
    scores: list[float | None]
    best_seed: int
    worst_seed: int  # the least stable of the fully scored seeds
    best_noise: torch.Tensor  # [1, *latent_shape]
    worst_noise: torch.Tensor
    proxy_scores: list[float | None] | None = None  # two-stage selection: the proxy's score of every seed

    def ranked(self) -> list[tuple[int, float]]:
        """(seed, score) of the scored seeds, most stable first."""
        return sorted(((s, v) for s, v in zip(self.seeds, self.scores) if v is not None), key=lambda p: -p[1])


def select(backend: Backend, prompt: str, k: int = 100, seeds: Sequence[int] | None = None,
           batch_size: int | None = None, steps: int | None = None, guidance: float | None = None,
           inversion_guidance: float | None = None, proxy: Proxy | Mapping[int, float] | SeedBank | None = None,
           keep: int | None = None, progress: bool = True,
           callback: Callable[[dict], None] | None = None) -> SelectionResult:
    """Score ``k`` noises (seeds ``0..k-1`` unless ``seeds`` is given) in batches; return all scores
    with the most and least stable seed. A non-finite score is recorded as None and never wins.
    The prompt is encoded once; ``batch_size=None`` picks one from free accelerator memory (CPU: up to 16, fewer
    for large latents), and a batch that runs out of memory is retried at half the size.
    With ``proxy`` and ``keep``, only the ``keep`` seeds the proxy ranks highest get the full score.
    ``callback`` gets ``{"seeds", "scores"}`` after each batch of full scores.
    A :class:`stablenoise.bank.SeedBank` as ``proxy`` is checked against the backend first (same weights, latent
    shape and schedule); a plain mapping is taken as the caller's word."""
    from .bank import SeedBank  # here: bank.py imports this module

    check_one_prompt(prompt, "select")
    if isinstance(proxy, SeedBank):
        proxy.check(backend)
        proxy = proxy.scores
    if seeds is None:
        if k < 1:
            raise StablenoiseError(f"k must be >= 1, got {k}")
        seeds = range(k)
    seeds = [check_seed(s) for s in seeds]
    if not seeds:
        raise StablenoiseError("seeds is empty: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise StablenoiseError("seeds must be distinct")
    if batch_size is not None and batch_size < 1:
        raise StablenoiseError(f"batch size must be >= 1, got {batch_size}")
    if (proxy is None) != (keep is None):
        raise StablenoiseError("two-stage selection needs both proxy and keep")
    proxy_scores = None
    candidates = seeds
    if proxy is not None:
        check_keep(keep, len(seeds))
        proxy_scores = _proxy_scores(backend, prompt, seeds, proxy, batch_size, steps, guidance, inversion_guidance,
                                     progress)
        finite = [i for i, v in enumerate(proxy_scores) if v is not None]
        top = sorted(finite, key=lambda i: (-proxy_scores[i], i))[:keep]
        candidates = [seeds[i] for i in sorted(top)]
        if not candidates:
            raise StablenoiseError(f"the proxy scored every one of the {len(seeds)} seeds NaN or inf")
    full = dict(zip(candidates, _scores(backend, prompt, candidates, batch_size, steps, guidance, inversion_guidance,
                                        progress, callback)))
    scores = [full.get(seed) for seed in seeds]
    scored = [i for i, v in enumerate(scores) if v is not None]
    if not scored:
        raise StablenoiseError(f"every one of the {len(candidates)} seeds scored NaN or inf: check the model and "
                               "settings")
    best = max(scored, key=scores.__getitem__)
    worst = min(scored, key=scores.__getitem__)
    return SelectionResult(prompt, seeds, scores, seeds[best], seeds[worst],
                           noises_from_seeds([seeds[best]], backend.latent_shape),
                           noises_from_seeds([seeds[worst]], backend.latent_shape), proxy_scores)


def check_one_prompt(prompt, who: str) -> None:
    """Selection scores its seeds under one prompt: a list is a user's batch of prompts, to be run one by one."""
    if not isinstance(prompt, str):
        several = isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt)
        got = f"a list of {len(prompt)}" if several else "None" if prompt is None else type(prompt).__name__
        raise StablenoiseError(f"{who} takes one prompt (a string), got {got}"
                               + (f": call {who} once per prompt" if several else ""))


def check_keep(keep: int, n: int) -> None:
    """Two-stage selection keeps 1..n of its n seeds: more is a mistake, not a request to clamp."""
    if keep < 1:
        raise StablenoiseError(f"keep must be >= 1, got {keep}")
    if keep > n:
        raise StablenoiseError(f"keep {keep} is more than the {n} seeds to choose from")


def _scores(backend, prompt, seeds, batch_size, steps, guidance, inversion_guidance, progress, callback=None,
            desc="select") -> list[float | None]:
    """Full stability of each seed (None: non-finite), the prompt encoded once, in batches that fit."""
    steps, guidance, inversion_guidance = resolve(backend, steps, guidance, inversion_guidance)
    with torch.no_grad():
        cond = conditioning(backend, prompt, 1, max(guidance, inversion_guidance))
    bar = tqdm(total=len(seeds), desc=desc, unit="seed", disable=not progress)

    def run(chunk):
        s = score(backend, cond, noises_from_seeds(chunk, backend.latent_shape), steps, guidance,
                  inversion_guidance).tolist()
        return [v if math.isfinite(v) else None for v in s]

    def done(chunk, s):
        bar.update(len(chunk))
        if callback is not None:
            callback({"seeds": list(chunk), "scores": s})

    first: list[float | None] = []
    if batch_size is None:  # the first seed's score measures the memory one sample needs
        batch_size = auto_batch_size(backend.device, lambda: first.extend(run(seeds[:1])), len(seeds),
                                     math.prod(backend.latent_shape))
        if first:
            done(seeds[:1], first)
    try:
        return first + map_batches(run, seeds[len(first):], batch_size, done)
    finally:
        bar.close()


def _proxy_scores(backend, prompt, seeds, proxy, batch_size, steps, guidance, inversion_guidance,
                  progress) -> list[float | None]:
    if isinstance(proxy, Proxy):
        return _scores(backend, prompt if proxy.prompt is None else proxy.prompt, seeds, batch_size,
                       proxy.steps if proxy.steps is not None else steps,
                       proxy.guidance if proxy.guidance is not None else guidance,
                       proxy.inversion_guidance if proxy.inversion_guidance is not None else inversion_guidance,
                       progress, desc="proxy")
    missing = [s for s in seeds if s not in proxy]
    if missing:
        raise StablenoiseError(f"the proxy scores have no score for {len(missing)} of the seeds (first: {missing[0]})")
    return [float(proxy[s]) if proxy[s] is not None and math.isfinite(float(proxy[s])) else None for s in seeds]
