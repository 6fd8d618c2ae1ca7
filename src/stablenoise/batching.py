"""Batches that fit: a batch size from free accelerator memory, halved and retried on out-of-memory
(:func:`batched` puts the two together)."""

from __future__ import annotations

import warnings
from typing import Callable, Sequence, TypeVar

import torch

from .errors import StablenoiseError

T = TypeVar("T")
R = TypeVar("R")

CPU_BATCH = 16  # past ~16 shapes-size samples a bigger CPU batch gains little (docs/performance.md)
# CPU memory has no out-of-memory error to retry on (the process is killed), so the CPU batch shrinks with the
# latent: 16 of the shapes model's 3,072 values, 4 of SD's 512 px latents, 1 of SDXL's 1024 px ones.
CPU_BATCH_ELEMENTS = 65_536
MEMORY_MARGIN = 0.7  # of the free memory: the allocator fragments, and other tensors live beside the batch


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OOM error, or the RuntimeError some backends (MPS, older CUDA paths) raise instead."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def fitting_batch_size(free_bytes: int, bytes_per_sample: int, limit: int) -> int:
    """How many samples fit in ``MEMORY_MARGIN`` of ``free_bytes`` (at least 1, at most ``limit``)."""
    if bytes_per_sample <= 0:
        return max(1, limit)
    return max(1, min(limit, int(MEMORY_MARGIN * free_bytes) // bytes_per_sample))


def auto_batch_size(device: torch.device, measure_one: Callable[[], None], limit: int,
                    sample_elements: int = 1) -> int:
    """The batch size for ``limit`` items: on CUDA from the free memory and the peak memory of one sample's
    model call (``measure_one`` runs it); elsewhere up to ``CPU_BATCH``, fewer for samples of more than
    ``CPU_BATCH_ELEMENTS / CPU_BATCH`` values. Out-of-memory later still halves it."""
    if device.type != "cuda":  # pragma: no cover - CPU path is one line; the CUDA path needs a GPU
        return max(1, min(limit, CPU_BATCH, CPU_BATCH_ELEMENTS // max(1, sample_elements)))
    torch.cuda.synchronize(device)  # pragma: no cover
    base = torch.cuda.memory_allocated(device)  # pragma: no cover
    torch.cuda.reset_peak_memory_stats(device)  # pragma: no cover
    measure_one()  # pragma: no cover
    per_sample = torch.cuda.max_memory_allocated(device) - base  # pragma: no cover
    free, _ = torch.cuda.mem_get_info(device)  # pragma: no cover
    return fitting_batch_size(free, per_sample, limit)  # pragma: no cover


def map_batches(fn: Callable[[Sequence[T]], list[R]], items: Sequence[T], batch_size: int,
                on_batch: Callable[[Sequence[T], list[R]], None] | None = None) -> list[R]:
    """``fn`` over consecutive batches of ``items``, results concatenated in order. A batch that runs out of
    memory is retried at half the size (and the smaller size kept), down to a batch of one."""
    if batch_size < 1:
        raise StablenoiseError(f"batch size must be >= 1, got {batch_size}")
    out: list[R] = []
    i = 0
    while i < len(items):
        chunk = items[i:i + batch_size]
        try:
            result = fn(chunk)
        except Exception as error:  # noqa: BLE001 - only out-of-memory is retried; the rest re-raised as is
            if not is_out_of_memory(error):
                raise
            if batch_size == 1:
                raise StablenoiseError("out of memory with a batch of one sample: use a smaller model, "
                                       "float16/bfloat16, or another device") from None
            batch_size = max(1, len(chunk) // 2)
            warnings.warn(f"out of memory with a batch of {len(chunk)}: retrying with {batch_size}", stacklevel=2)
            if torch.cuda.is_available():  # pragma: no cover - frees the failed batch's cached blocks
                torch.cuda.empty_cache()
            continue
        out.extend(result)
        if on_batch is not None:
            on_batch(chunk, result)
        i += len(chunk)
    return out


def batched(fn: Callable[[Sequence[T]], list[R]], items: Sequence[T], batch_size: int | None, device: torch.device,
            sample_elements: int = 1, on_batch: Callable[[Sequence[T], list[R]], None] | None = None) -> list[R]:
    """``fn`` over batches of ``items`` that fit, results in order.

    Args:
        fn: a chunk of items -> one result per item.
        items: what to run ``fn`` on.
        batch_size: items per batch; None picks one (:func:`auto_batch_size`: on an accelerator the first item,
            run alone, measures the memory of one sample, and its result is kept).
        device: where ``fn`` runs; sample_elements: values per sample (the CPU batch shrinks with it).
        on_batch: gets each chunk and its results once they are done (say, to commit them).
    Returns:
        ``fn``'s results, concatenated in the order of ``items``; a batch that runs out of memory is retried at half
        the size (:func:`map_batches`).
    """
    first: list[R] = []
    if batch_size is None:
        batch_size = auto_batch_size(device, lambda: first.extend(map_batches(fn, items[:1], 1)), len(items),
                                     sample_elements)
        if first and on_batch is not None:
            on_batch(items[:1], first)
    return first + map_batches(fn, items[len(first):], batch_size, on_batch)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a wall-clock time means the work."""
    if device.type == "cuda":  # pragma: no cover - GPU only
        torch.cuda.synchronize(device)
