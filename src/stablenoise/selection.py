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

from .backends.protocol import Backend
from .errors import StablenoiseError
from .noise import check_noise_norm, check_seed, noises_from_seeds
from .stability import RoundTrip, check_point, conditioning, finite, resolve, round_trips

if TYPE_CHECKING:
    from .bank import SeedBank
    from .rewards.base import Reward


class Stability:
    """Inversion stability cos(eps, F(eps)) (:func:`stablenoise.stability.stability`): higher is better."""

    name = "stability"
    higher_is_better = True

    def inversions(self, inversion_guidance: float) -> tuple[float, ...]:
        """The inversion guidances whose round trips the score needs (one).

        Args:
            inversion_guidance: the round trip's inversion guidance.

        Returns:
            ``(inversion_guidance,)``.
        """
        return (inversion_guidance,)

    def read(self, backend: Backend, prompts: list[str], trip: RoundTrip) -> list[float]:
        """One score per noise of a batch's round trip.

        Args:
            backend: the model (unused: the round trip holds the stability).
            prompts: one prompt per noise (unused).
            trip: the batch's round trip.

        Returns:
            Each noise's stability, in order (NaN kept: the caller drops non-finite scores).
        """
        return trip.stability[0].tolist()


class RewardScorer:
    """A reward of each noise's image: the deterministic DDIM image that ``generate`` shows, decoded to 8 bits
    as it is saved, judged with the prompt. Ranks as the reward does (``higher_is_better``)."""

    def __init__(self, reward: Reward):
        self.reward = reward
        self.name = reward.name
        self.higher_is_better = reward.higher_is_better

    def inversions(self, inversion_guidance: float) -> tuple[float, ...]:
        """The inversion guidances whose round trips the score needs: none, the image is the denoising half alone.

        Args:
            inversion_guidance: the round trip's inversion guidance (unused).

        Returns:
            ``()``.
        """
        return ()  # the denoising half alone: the image

    def read(self, backend: Backend, prompts: list[str], trip: RoundTrip) -> list[float]:
        """The reward of each noise's image: z_0 decoded to 8-bit images, judged with the prompts.

        Args:
            backend: the model that decodes the latents.
            prompts: one prompt per noise.
            trip: the batch's round trip (its ``z0``).

        Returns:
            Each noise's reward, in order.
        """
        with torch.no_grad():
            images = backend.decode(trip.z0)
        return self.reward(images, prompts).detach().float().cpu().tolist()


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
    inversion_point: str | None = None  # where inversion evaluated the network (None: the backend's own)

    def ranked(self) -> list[tuple[int, float]]:
        """(seed, score) of the scored seeds, best first.

        Returns:
            Pairs for every seed with a score (not None), ordered by ``higher_is_better``; ties keep seed order.
        """
        sign = -1 if self.higher_is_better else 1
        return sorted(((s, v) for s, v in zip(self.seeds, self.scores) if v is not None), key=lambda p: sign * p[1])


def select(backend: Backend, prompt: str, k: int = 100, seeds: Sequence[int] | None = None,
           batch_size: int | None = None, steps: int | None = None, guidance: float | None = None,
           inversion_guidance: float | None = None, proxy: Proxy | Mapping[int, float] | SeedBank | None = None,
           keep: int | None = None, progress: bool = True,
           callback: Callable[[dict], None] | None = None, scorer: Scorer | Reward | None = None,
           noise_norm: str = "keep", inversion_point: str | None = None) -> SelectionResult:
    """Score ``k`` noises in batches; return all scores with the best and worst seed.

    A non-finite score is recorded as None and never wins. The prompt is encoded once. With ``proxy`` and
    ``keep`` (two-stage selection), only the ``keep`` seeds the proxy ranks highest get the full score.

    Args:
        backend: the model.
        prompt: one prompt (a string; call once per prompt for several).
        k: how many seeds, ``0..k-1``, when ``seeds`` is not given.
        seeds: the seeds to score, distinct, each in [0, 2**63) (None: ``0..k-1``).
        batch_size: noises per model call; None picks one from free accelerator memory (CPU: up to 16, fewer for
            large latents), and a batch that runs out of memory is retried at half the size.
        steps, guidance, inversion_guidance: the round trip (None: the model family's).
        proxy: the cheap first stage: a :class:`Proxy`, a mapping seed -> score computed earlier (taken as the
            caller's word), or a :class:`stablenoise.bank.SeedBank` (checked against the backend first: same
            weights, latent shape and schedule, and the same ``noise_norm``). Needs ``keep``.
        keep: how many of the seeds the proxy ranks highest get the full score (1..number of seeds). Needs ``proxy``.
        progress: show progress bars.
        callback: gets ``{"seeds", "scores"}`` after each batch of full scores.
        scorer: None ranks by inversion stability (most stable wins); a :class:`stablenoise.rewards.Reward` (or a
            :class:`RewardScorer`) ranks by that reward of each noise's image.
        noise_norm: "keep" (each seed's noise as drawn) or "shell": each seed's noise is scored (and returned)
            rescaled to norm sqrt(d), so that the noise's length cannot decide the ranking.
        inversion_point: where inversion evaluates the network, "destination" or "source" (None: the backend's).

    Returns:
        A :class:`SelectionResult`: every seed's full score in order (None: not finite, or pruned by the proxy),
        the proxy's scores, and the best and worst seed with their noises.

    Raises:
        StablenoiseError: a prompt that is not one string; a bad scorer, ``noise_norm``, ``inversion_point``,
            round-trip setting, ``k``, ``batch_size`` or seed (empty, repeated, outside [0, 2**63)); ``proxy``
            without ``keep`` or the reverse, or ``keep`` out of range; a seed bank from another model or
            ``noise_norm``, or a mapping that lacks a seed; or no finite score at all (proxy or full).
    """
    from .bank import SeedBank  # here: bank.py imports this module

    check_one_prompt(prompt, "select")
    scorer = as_scorer(scorer)
    check_noise_norm(noise_norm)
    check_point(inversion_point)
    if isinstance(proxy, SeedBank):
        proxy.check(backend)
        if proxy.noise_norm != noise_norm:
            raise StablenoiseError(f"the seed bank scored its noises with noise_norm={proxy.noise_norm!r}, this "
                                   f"selection uses {noise_norm!r}: rebuild the bank with the same noise_norm")
        proxy = proxy.scores
    seeds = _check_seeds(k, seeds)
    if batch_size is not None and batch_size < 1:
        raise StablenoiseError(f"batch size must be >= 1, got {batch_size}")
    if (proxy is None) != (keep is None):
        raise StablenoiseError("two-stage selection needs both proxy and keep")
    settings = dict(steps=steps, guidance=guidance, inversion_guidance=inversion_guidance, noise_norm=noise_norm,
                    inversion_point=inversion_point)
    proxy_scores, candidates = None, seeds
    if proxy is not None:
        check_keep(keep, len(seeds))
        proxy_scores = _proxy_scores(backend, prompt, seeds, proxy, batch_size, progress, scorer, settings)
        candidates = _top(seeds, proxy_scores, keep, scorer.higher_is_better)
    full = dict(zip(candidates, score_seeds(backend, prompt, candidates, scorer, batch_size, progress=progress,
                                            callback=callback, **settings)))
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
                           scorer.name, scorer.higher_is_better, noise_norm, inversion_point)


def _check_seeds(k: int, seeds: Sequence[int] | None) -> list[int]:
    if seeds is None:
        if k < 1:
            raise StablenoiseError(f"k must be >= 1, got {k}")
        seeds = range(k)
    seeds = [check_seed(s) for s in seeds]
    if not seeds:
        raise StablenoiseError("seeds is empty: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise StablenoiseError("seeds must be distinct")
    return seeds


def _top(seeds: list[int], proxy_scores: list[float | None], keep: int, higher_is_better: bool) -> list[int]:
    """The ``keep`` seeds the proxy ranks best (ties: the earlier seed), in the order of ``seeds``."""
    sign = -1 if higher_is_better else 1
    scored = [i for i, v in enumerate(proxy_scores) if v is not None]
    top = sorted(scored, key=lambda i: (sign * proxy_scores[i], i))[:keep]
    if not top:
        raise StablenoiseError(f"the proxy scored every one of the {len(seeds)} seeds NaN or inf")
    return [seeds[i] for i in sorted(top)]


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
                noise_norm: str = "keep", inversion_point: str | None = None) -> list[float | None]:
    """Each seed's score by ``scorer`` (None: stability), the prompt encoded once, in batches that fit.

    Args:
        backend: the model.
        prompt: one prompt.
        seeds: the seeds, each one noise (CPU generator).
        scorer: a :class:`Stability` or :class:`RewardScorer`, or a Reward (None: stability).
        batch_size: noises per model call (None: picked from free memory; halved on out-of-memory).
        steps, guidance, inversion_guidance: the round trip (None: the model family's).
        progress: show a progress bar.
        callback: gets ``{"seeds", "scores"}`` after each batch.
        desc: the progress bar's label.
        noise_norm: "keep" (each seed's noise as drawn) or "shell" (rescaled to norm sqrt(d)).
        inversion_point: where inversion evaluates the network, "destination" or "source" (None: the backend's).

    Returns:
        One score per seed, in order; None where the score is not finite.

    Raises:
        StablenoiseError: a bad scorer, round-trip setting, seed, ``noise_norm`` or ``inversion_point``.
    """
    scorer = as_scorer(scorer)
    steps, guidance, inversion_guidance = resolve(backend, steps, guidance, inversion_guidance)
    check_point(inversion_point)
    inversions = scorer.inversions(inversion_guidance)
    with torch.no_grad():
        cond = conditioning(backend, prompt, 1, max((guidance, *inversions)))
    bar = tqdm(total=len(seeds), desc=desc, unit="seed", disable=not progress)

    def done(chunk, scores):
        bar.update(len(chunk))
        if callback is not None:
            callback({"seeds": list(chunk), "scores": scores})

    try:
        return round_trips(backend, seeds, lambda chunk: (cond.expand(len(chunk)), noises_from_seeds(
                               chunk, backend.latent_shape, noise_norm)), steps, guidance, inversions,
                           read=lambda chunk, trip: finite(scorer.read(backend, [prompt] * len(chunk), trip)),
                           batch_size=batch_size, on_batch=done, inversion_point=inversion_point)
    finally:
        bar.close()


def _proxy_scores(backend, prompt, seeds, proxy, batch_size, progress, scorer, settings) -> list[float | None]:
    if isinstance(proxy, Proxy):
        changed = {k: getattr(proxy, k) for k in ("steps", "guidance", "inversion_guidance")
                   if getattr(proxy, k) is not None}
        cheap = {**settings, **changed}
        return score_seeds(backend, prompt if proxy.prompt is None else proxy.prompt, seeds, scorer, batch_size,
                           progress=progress, desc="proxy", **cheap)
    missing = [s for s in seeds if s not in proxy]
    if missing:
        raise StablenoiseError(f"the proxy scores have no score for {len(missing)} of the seeds (first: {missing[0]})")
    return [float(proxy[s]) if proxy[s] is not None and math.isfinite(float(proxy[s])) else None for s in seeds]
