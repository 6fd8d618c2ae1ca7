"""Noise selection: score K seeded noises; keep the best (and the worst) by a scorer.

The scorer is inversion stability by default (:class:`Stability`, the paper's selection) or any reward of each
noise's image (:class:`RewardScorer`: best-of-K, the inference-time-scaling baseline). Two-stage selection pays
less than K full scores: a cheap ``proxy`` scores every seed, the ``keep`` best of them get the full score, and
the best of those wins. A proxy is a :class:`Proxy` (the same scorer with fewer steps, another prompt such as
the empty one, or no CFG: for a reward, a fewer-step image) or a mapping seed -> score computed earlier (a
:class:`stablenoise.bank.SeedBank`'s scores, prompt-independent, computed once per model).
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
from .noise import check_noise_norm, check_seed, noises_from_seeds
from .stability import conditioning, resolve, score

if TYPE_CHECKING:
    from .bank import SeedBank
    from .rewards.base import Reward


class Stability:
    """Inversion stability cos(eps, F(eps)) (:func:`stablenoise.stability.stability`): higher is better."""

    name = "stability"
    higher_is_better = True

    def prepare(self, backend: Backend, prompt: str, steps: int, guidance: float,
                inversion_guidance: float) -> Callable[[torch.Tensor], list[float]]:
        """Encode the prompt once; return noises [B, ...] -> one score per noise."""
        with torch.no_grad():
            cond = conditioning(backend, prompt, 1, max(guidance, inversion_guidance))
        return lambda noise: score(backend, cond, noise, steps, guidance, inversion_guidance).tolist()


class RewardScorer:
    """A reward of each noise's image: the deterministic DDIM image that ``generate`` shows, decoded to 8 bits
    as it is saved, judged with the prompt. Ranks as the reward does (``higher_is_better``)."""

    def __init__(self, reward: Reward):
        self.reward = reward
        self.name = reward.name
        self.higher_is_better = reward.higher_is_better

    def prepare(self, backend: Backend, prompt: str, steps: int, guidance: float,
                inversion_guidance: float) -> Callable[[torch.Tensor], list[float]]:
        with torch.no_grad():
            cond = conditioning(backend, prompt, 1, guidance)

        def run(noise: torch.Tensor) -> list[float]:
            with torch.no_grad():
                z0 = backend.denoise(noise.to(backend.device, torch.float32), cond.expand(len(noise)), steps, guidance)
                images = backend.decode(z0)
            return self.reward(images, [prompt] * len(images)).detach().float().cpu().tolist()

        return run


Scorer = Stability | RewardScorer


def as_scorer(scorer) -> Scorer:
    """None -> stability; a Reward -> its RewardScorer; a scorer as is."""
    from .rewards.base import Reward

    if scorer is None:
        return Stability()
    if isinstance(scorer, Reward):
        return RewardScorer(scorer)
    if isinstance(scorer, (Stability, RewardScorer)):
        return scorer
    raise StablenoiseError(f"scorer must be None (stability), a Reward or a scorer, got {type(scorer).__name__}")


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
    # The full score of each seed, in the order of ``seeds``; None: non-finite (excluded), or pruned by the proxy.
    scores: list[float | None]
    best_seed: int
    worst_seed: int  # the worst of the fully scored seeds (for stability: the least stable)
    best_noise: torch.Tensor  # [1, *latent_shape]
    worst_noise: torch.Tensor
    proxy_scores: list[float | None] | None = None  # two-stage selection: the proxy's score of every seed
    scorer: str = "stability"
    higher_is_better: bool = True
    noise_norm: str = "keep"  # "shell": every seed's noise was scored (and is returned) on the sqrt(d) shell

    def ranked(self) -> list[tuple[int, float]]:
        """(seed, score) of the scored seeds, best first."""
        sign = -1 if self.higher_is_better else 1
        return sorted(((s, v) for s, v in zip(self.seeds, self.scores) if v is not None), key=lambda p: sign * p[1])


def select(backend: Backend, prompt: str, k: int = 100, seeds: Sequence[int] | None = None,
           batch_size: int | None = None, steps: int | None = None, guidance: float | None = None,
           inversion_guidance: float | None = None, proxy: Proxy | Mapping[int, float] | SeedBank | None = None,
           keep: int | None = None, progress: bool = True,
           callback: Callable[[dict], None] | None = None, scorer: Scorer | Reward | None = None,
           noise_norm: str = "keep") -> SelectionResult:
    """Score ``k`` noises (seeds ``0..k-1`` unless ``seeds`` is given) in batches; return all scores
    with the best and worst seed. ``scorer``: None ranks by inversion stability (most stable wins); a
    :class:`stablenoise.rewards.Reward` (or a :class:`RewardScorer`) ranks by that reward of each noise's image.
    A non-finite score is recorded as None and never wins. ``noise_norm="shell"`` scores (and returns) each
    seed's noise rescaled to norm sqrt(d), so that the noise's length cannot decide the ranking.
    The prompt is encoded once; ``batch_size=None`` picks one from free accelerator memory (CPU: up to 16, fewer
    for large latents), and a batch that runs out of memory is retried at half the size.
    With ``proxy`` and ``keep``, only the ``keep`` seeds the proxy ranks highest get the full score.
    ``callback`` gets ``{"seeds", "scores"}`` after each batch of full scores.
    A :class:`stablenoise.bank.SeedBank` as ``proxy`` is checked against the backend first (same weights, latent
    shape and schedule); a plain mapping is taken as the caller's word."""
    from .bank import SeedBank  # here: bank.py imports this module

    check_one_prompt(prompt, "select")
    scorer = as_scorer(scorer)
    check_noise_norm(noise_norm)
    if isinstance(proxy, SeedBank):
        proxy.check(backend)
        if proxy.noise_norm != noise_norm:
            raise StablenoiseError(f"the seed bank scored its noises with noise_norm={proxy.noise_norm!r}, this "
                                   f"selection uses {noise_norm!r}: rebuild the bank with the same noise_norm")
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
                                     progress, scorer, noise_norm)
        sign = -1 if scorer.higher_is_better else 1
        finite = [i for i, v in enumerate(proxy_scores) if v is not None]
        top = sorted(finite, key=lambda i: (sign * proxy_scores[i], i))[:keep]
        candidates = [seeds[i] for i in sorted(top)]
        if not candidates:
            raise StablenoiseError(f"the proxy scored every one of the {len(seeds)} seeds NaN or inf")
    full = dict(zip(candidates, score_seeds(backend, prompt, candidates, scorer, batch_size, steps, guidance,
                                            inversion_guidance, progress, callback, noise_norm=noise_norm)))
    scores = [full.get(seed) for seed in seeds]
    scored = [i for i, v in enumerate(scores) if v is not None]
    if not scored:
        raise StablenoiseError(f"every one of the {len(candidates)} seeds scored NaN or inf: check the model and "
                               "settings")
    best, worst = max(scored, key=scores.__getitem__), min(scored, key=scores.__getitem__)
    if not scorer.higher_is_better:
        best, worst = worst, best
    return SelectionResult(prompt, seeds, scores, seeds[best], seeds[worst],
                           noises_from_seeds([seeds[best]], backend.latent_shape, noise_norm),
                           noises_from_seeds([seeds[worst]], backend.latent_shape, noise_norm), proxy_scores,
                           scorer.name, scorer.higher_is_better, noise_norm)


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


def score_seeds(backend: Backend, prompt: str, seeds: Sequence[int], scorer: Scorer | None = None,
                batch_size: int | None = None, steps: int | None = None, guidance: float | None = None,
                inversion_guidance: float | None = None, progress: bool = True,
                callback: Callable[[dict], None] | None = None, desc: str = "select",
                noise_norm: str = "keep") -> list[float | None]:
    """Each seed's score by ``scorer`` (None: stability), the prompt encoded once, in batches that fit.

    Args:
        backend: the model; prompt: one prompt; seeds: the seeds, each one noise (CPU generator).
        batch_size: noises per model call (None: picked from free memory; halved on out-of-memory).
        steps, guidance, inversion_guidance: the round trip (None: the model family's).
        callback: gets ``{"seeds", "scores"}`` after each batch.
        noise_norm: "keep" (each seed's noise as drawn) or "shell" (rescaled to norm sqrt(d)).
    Returns:
        One score per seed, in order; None where the score is not finite.
    """
    scorer = as_scorer(scorer)
    steps, guidance, inversion_guidance = resolve(backend, steps, guidance, inversion_guidance)
    measure = scorer.prepare(backend, prompt, steps, guidance, inversion_guidance)
    bar = tqdm(total=len(seeds), desc=desc, unit="seed", disable=not progress)

    def run(chunk):
        noise = noises_from_seeds(chunk, backend.latent_shape, noise_norm)
        return [v if math.isfinite(v) else None for v in measure(noise)]

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
                  progress, scorer, noise_norm) -> list[float | None]:
    if isinstance(proxy, Proxy):
        return score_seeds(backend, prompt if proxy.prompt is None else proxy.prompt, seeds, scorer, batch_size,
                           proxy.steps if proxy.steps is not None else steps,
                           proxy.guidance if proxy.guidance is not None else guidance,
                           proxy.inversion_guidance if proxy.inversion_guidance is not None else inversion_guidance,
                           progress, desc="proxy", noise_norm=noise_norm)
    missing = [s for s in seeds if s not in proxy]
    if missing:
        raise StablenoiseError(f"the proxy scores have no score for {len(missing)} of the seeds (first: {missing[0]})")
    return [float(proxy[s]) if proxy[s] is not None and math.isfinite(float(proxy[s])) else None for s in seeds]
