"""Inversion stability: s(eps) = cos(eps, F(eps)), F = the inversion of the denoised eps; and the one batched round
trip (:func:`round_trips`) that selection, the seed bank, the bench and perf score with."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch

from .backends.denoiser import Conditioning
from .backends.protocol import Backend
from .batching import batched, synchronize
from .ddim import check_inversion_point
from .errors import StablenoiseError
from .noise import check_noise, check_prompts

T = TypeVar("T")
R = TypeVar("R")


def resolve(backend: Backend, steps: int | None, guidance: float | None,
            inversion_guidance: float | None) -> tuple[int, float, float]:
    """Fill unset round-trip settings from the model family's defaults, and check them."""
    d = backend.defaults
    steps = d.steps if steps is None else int(steps)
    guidance = d.guidance if guidance is None else float(guidance)
    inversion_guidance = d.inversion_guidance if inversion_guidance is None else float(inversion_guidance)
    if steps < 1:
        raise StablenoiseError(f"steps must be >= 1, got {steps}")
    if not (math.isfinite(guidance) and math.isfinite(inversion_guidance)):
        raise StablenoiseError(f"guidance scales must be finite, got {guidance} and {inversion_guidance}")
    if guidance < 0 or inversion_guidance < 0:
        raise StablenoiseError("guidance scales must be >= 0")
    return steps, guidance, inversion_guidance


def check_point(inversion_point: str | None) -> str | None:
    """None (the backend's own inversion point) or one of ``ddim.INVERSION_POINTS``, refused before any work."""
    return None if inversion_point is None else check_inversion_point(inversion_point)


def conditioning(backend: Backend, prompt: str | Sequence[str], n: int, guidance: float) -> Conditioning:
    """Encode once per distinct prompt list: a single prompt is encoded once and shared by n noises."""
    prompts = check_prompts(prompt, n)
    if len(set(prompts)) == 1:
        return backend.encode(prompts[:1], guidance).expand(n)
    return backend.encode(prompts, guidance)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine similarity over all non-batch dimensions, in float32 (float64 if given).

    Args:
        a: [B, ...] tensor.
        b: [B, ...] tensor with as many values per sample as ``a``.

    Returns:
        A [B] tensor of cosines, float32 (float64 when either input is float64).
    """
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return torch.nn.functional.cosine_similarity(a.flatten(1).to(dtype), b.flatten(1).to(dtype), dim=1)


def evaluations(backend: Backend) -> int:
    """The network evaluations the backend has made so far (0 for one that does not count)."""
    return int(getattr(backend, "model_evaluations", 0))


def invert(backend: Backend, latents: torch.Tensor, cond: Conditioning, steps: int, guidance: float,
           checkpoint: bool = False, point: str | None = None) -> torch.Tensor:
    """``backend.invert``, told the inversion point only when one is given (a backend may have just one)."""
    where = {} if point is None else {"point": point}
    return backend.invert(latents, cond, steps, guidance, checkpoint=checkpoint, **where)


def round_trip(backend: Backend, cond: Conditioning, noise: torch.Tensor, steps: int, guidance: float,
               inversion_guidance: float, checkpoint: bool = False,
               inversion_point: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_0, F(eps)): the denoised latent and its inversion, both under the prompt, with gradients if enabled.

    Nothing is checked or filled in here: callers pass resolved settings (see :func:`stability`).

    Args:
        backend: the model.
        cond: the batch's conditioning, one row per noise (encoded for max(guidance, inversion_guidance)).
        noise: [B, ...] noises eps.
        steps: denoising (and inversion) steps.
        guidance: the denoising half's guidance scale.
        inversion_guidance: the inversion half's guidance scale.
        checkpoint: recompute each network call in the backward pass instead of storing it (see
            :meth:`stablenoise.backends.base.DiffusersBackend.denoiser`).
        inversion_point: where inversion evaluates the network, "destination" or "source" (None: the backend's).

    Returns:
        ``(z0, inverted)``: the denoised latents [B, ...] and their inversion F(eps) [B, ...].
    """
    z0 = backend.denoise(noise, cond, steps, guidance, checkpoint=checkpoint)
    return z0, invert(backend, z0, cond, steps, inversion_guidance, checkpoint, inversion_point)


@dataclass
class RoundTrip:
    """One batch's round trip, without gradients: the denoised latents, the stability under each inversion guidance
    asked for, and what each half cost."""

    noise: torch.Tensor  # [B, ...] the noises as scored, on the backend's device
    z0: torch.Tensor  # [B, ...] the denoised latents: decode(z0) is the image of each noise
    stability: list[torch.Tensor]  # per inversion guidance: cos(eps, F(eps)), [B] on the CPU
    evaluations: list[int]  # network evaluations of the batch: the denoising half, then each inversion
    seconds: list[float]  # wall time of the same halves
    started: float  # time.perf_counter() when the batch began (its noises and conditioning included)


def measure(backend: Backend, cond: Conditioning, noise: torch.Tensor, steps: int, guidance: float,
            inversion_guidances: Sequence[float] = (), inversion_point: str | None = None,
            started: float | None = None) -> RoundTrip:
    """Denoise a batch once and invert it under each of ``inversion_guidances`` (none: the denoising half alone).

    Args:
        backend: the model; cond: the batch's conditioning (encoded for the largest guidance used).
        noise: [B, ...] noises; steps, guidance: the denoising half.
        inversion_guidances: one inversion, and one stability, each.
        inversion_point: where inversion evaluates the network (None: the backend's).
        started: when the batch began (default: now).
    Returns:
        The batch's :class:`RoundTrip`.
    """
    started = time.perf_counter() if started is None else started
    noise = noise.to(backend.device, torch.promote_types(noise.dtype, torch.float32))
    spent: tuple[list[int], list[float]] = ([], [])

    def timed(run: Callable[[], torch.Tensor]) -> torch.Tensor:
        before, t0 = evaluations(backend), time.perf_counter()
        out = run()
        synchronize(backend.device)
        spent[0].append(evaluations(backend) - before)
        spent[1].append(time.perf_counter() - t0)
        return out

    with torch.no_grad():
        z0 = timed(lambda: backend.denoise(noise, cond, steps, guidance))
        stability = [cosine(noise, timed(lambda g=g: invert(backend, z0, cond, steps, g, point=inversion_point))).cpu()
                     for g in inversion_guidances]
    return RoundTrip(noise, z0, stability, *spent, started)


def finite(values: Sequence[float]) -> list[float | None]:
    """None for each value that is NaN or inf: a score that is no score."""
    return [v if math.isfinite(v) else None for v in values]


def stabilities(chunk: Sequence, trip: RoundTrip) -> list[float | None]:
    """Each item's stability under the first inversion guidance (None where not finite)."""
    return finite(trip.stability[0].tolist())


def round_trips(backend: Backend, items: Sequence[T],
                batch: Callable[[Sequence[T]], tuple[Conditioning, torch.Tensor]], steps: int, guidance: float,
                inversion_guidances: Sequence[float] = (), *,
                read: Callable[[Sequence[T], RoundTrip], list[R]] = stabilities, batch_size: int | None = None,
                on_batch: Callable[[Sequence[T], list[R]], None] | None = None,
                inversion_point: str | None = None) -> list[R]:
    """The round trip of every item, in batches that fit: what selection, the seed bank, the bench and perf score
    with.

    Args:
        backend: the model.
        items: what is scored, one noise each (seeds, (prompt, seed) pairs, positions in a batch of noises...).
        batch: a chunk of items -> (its conditioning, one row per item, and its noises [B, ...]); run without
            gradients.
        steps, guidance: the denoising half; inversion_guidances: one inversion and one stability each (none: the
            denoising half alone, for an image).
        read: a chunk and its :class:`RoundTrip` -> one result per item (default: the stability, None if not finite).
        batch_size: items per batch; None picks one from free memory (as :func:`stablenoise.batching.batched`); a
            batch that runs out of memory is retried at half the size.
        on_batch: gets each chunk and its results once done (say, to commit them).
        inversion_point: where inversion evaluates the network (None: the backend's).
    Returns:
        ``read``'s results, in the order of ``items``.
    """
    def run(chunk: Sequence[T]) -> list[R]:
        started = time.perf_counter()
        with torch.no_grad():
            cond, noise = batch(chunk)
        trip = measure(backend, cond, noise, steps, guidance, inversion_guidances, inversion_point, started)
        return read(chunk, trip)

    return batched(run, items, batch_size, backend.device, math.prod(backend.latent_shape), on_batch)


def stability(backend: Backend, prompt: str | Sequence[str], noise: torch.Tensor, steps: int | None = None,
              guidance: float | None = None, inversion_guidance: float | None = None,
              inversion_point: str | None = None) -> torch.Tensor:
    """Inversion stability of each noise in a batch: a tensor [B] of cosines in [-1, 1].

    A noise the model cannot handle (say, scaled by 1e30) scores NaN: callers must treat a non-finite score as
    "no score", never as a value (``select`` excludes it). Runs without gradients; the prompt is encoded once
    when it is one string.

    Args:
        backend: the model.
        prompt: one prompt, or one per noise.
        noise: [B, ...] or [...] noises.
        steps, guidance, inversion_guidance: the round trip (None: the model family's).
        inversion_point: where inversion evaluates the network, "destination" or "source" (None: the backend's;
            see :mod:`stablenoise.ddim`).

    Returns:
        A [B] CPU tensor of cos(eps, F(eps)), one per noise; NaN where the model cannot handle the noise.

    Raises:
        StablenoiseError: a bad round-trip setting or ``inversion_point``, a noise that is not a finite floating-point
            tensor of the model's latent shape, or prompts that do not match the noises.
    """
    steps, guidance, inversion_guidance = resolve(backend, steps, guidance, inversion_guidance)
    check_point(inversion_point)
    noise = check_noise(noise, backend.latent_shape)
    with torch.no_grad():
        cond = conditioning(backend, prompt, noise.shape[0], max(guidance, inversion_guidance))
    return score(backend, cond, noise, steps, guidance, inversion_guidance, inversion_point)


def score(backend: Backend, cond: Conditioning, noise: torch.Tensor, steps: int, guidance: float,
          inversion_guidance: float, inversion_point: str | None = None) -> torch.Tensor:
    """``stability`` of one batch under a conditioning encoded once (for max(guidance, inversion_guidance)) and
    expanded to the batch."""
    trip = measure(backend, cond.expand(noise.shape[0]), noise, steps, guidance, (inversion_guidance,), inversion_point)
    return trip.stability[0]
