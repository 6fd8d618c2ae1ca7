"""Batches that fit: halve-and-retry on out-of-memory (injected), the memory arithmetic, one encoding per
selection."""

import warnings

import pytest
import torch

import stablenoise as sn
from stablenoise.batching import fitting_batch_size, is_out_of_memory, map_batches
from stablenoise.errors import StablenoiseError
from tests.tolerance import TOY, f32
from tests.toy import ToyBackend


class OOMBackend(ToyBackend):
    """Runs out of memory on any batch larger than ``fits``; counts prompt encodings."""

    def __init__(self, fits: int, error=torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")):
        super().__init__()
        self.fits, self.error, self.sizes, self.encodings = fits, error, [], 0

    def encode(self, prompts, guidance):
        self.encodings += 1
        return super().encode(prompts, guidance)

    def denoise(self, noise, cond, steps, guidance, checkpoint=False):
        self.sizes.append(noise.shape[0])
        if noise.shape[0] > self.fits:
            raise self.error
        return super().denoise(noise, cond, steps, guidance, checkpoint)


def test_out_of_memory_halves_the_batch_and_keeps_every_result_in_order():
    sizes = []

    def fn(chunk):
        sizes.append(len(chunk))
        if len(chunk) > 3:
            raise torch.OutOfMemoryError("out of memory")
        return [x * 10 for x in chunk]

    with pytest.warns(UserWarning) as record:
        out = map_batches(fn, list(range(11)), 8)
    assert [str(w.message) for w in record] == ["out of memory with a batch of 8: retrying with 4",
                                                "out of memory with a batch of 4: retrying with 2"]
    assert out == [x * 10 for x in range(11)]
    assert sizes == [8, 4, 2, 2, 2, 2, 2, 1]  # the smaller size is kept after the first failure


def test_other_errors_are_not_retried():
    calls = []

    def fn(chunk):
        calls.append(len(chunk))
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        map_batches(fn, [1, 2, 3, 4], 4)
    assert calls == [4]


def test_out_of_memory_at_one_sample_is_one_line():
    def fn(chunk):
        raise torch.OutOfMemoryError("out of memory")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(StablenoiseError, match="^out of memory with a batch of one sample: use a smaller model, "
                                                   "float16/bfloat16, or another device$"):
            map_batches(fn, [1, 2, 3], 2)


def test_a_batch_of_two_that_runs_out_of_memory_is_retried_one_by_one():
    def fn(chunk):
        if len(chunk) > 1:
            raise torch.OutOfMemoryError("out of memory")
        return list(chunk)

    with pytest.warns(UserWarning, match="retrying with 1"):
        assert map_batches(fn, [1, 2, 3], 2) == [1, 2, 3]


def test_batch_size_below_one_is_refused():
    with pytest.raises(StablenoiseError, match="^batch size must be >= 1, got 0$"):
        map_batches(lambda c: c, [1], 0)


@pytest.mark.parametrize("error, oom", [(torch.OutOfMemoryError("x"), True),
                                        (RuntimeError("MPS backend out of memory (MPS allocated: 3 GB)"), True),
                                        (RuntimeError("CUDA error: an illegal memory access"), False),
                                        (ValueError("out of memory"), False)])
def test_what_counts_as_out_of_memory(error, oom):
    assert is_out_of_memory(error) is oom


def test_fitting_batch_size():
    gib = 2**30
    assert fitting_batch_size(10 * gib, gib, 100) == 7  # 70% of the free memory
    assert fitting_batch_size(10 * gib, gib, 3) == 3
    assert fitting_batch_size(gib, 2 * gib, 100) == 1
    assert fitting_batch_size(gib, 0, 5) == 5 and fitting_batch_size(gib, 0, 1) == 1
    assert fitting_batch_size(10 * gib, 3 * gib, 100) == 2 and isinstance(fitting_batch_size(10 * gib, 3 * gib, 100), int)
    assert fitting_batch_size(10, 1, 100) == 7  # one byte a sample is still a measurement


def test_auto_batch_size_on_cpu_never_exceeds_the_items():
    from stablenoise.batching import CPU_BATCH, auto_batch_size

    cpu = torch.device("cpu")
    assert auto_batch_size(cpu, None, 1) == 1 and auto_batch_size(cpu, None, 1000) == CPU_BATCH
    assert auto_batch_size(cpu, None, 1000, 3 * 32 * 32) == CPU_BATCH  # the shapes model
    assert auto_batch_size(cpu, None, 1000, 4 * 64 * 64) == 4  # SD at 512 px
    assert auto_batch_size(cpu, None, 1000, 4 * 128 * 128) == 1  # SDXL at 1024 px: no CPU OOM error to retry on


def test_selection_survives_an_injected_out_of_memory_with_the_same_result():
    reference = sn.select(ToyBackend(), "a cat", k=10, batch_size=2, progress=False)
    b = OOMBackend(fits=3)
    with pytest.warns(UserWarning, match="retrying"):
        r = sn.select(b, "a cat", k=10, batch_size=8, progress=False)
    assert r.scores == reference.scores and r.best_seed == reference.best_seed
    assert b.sizes == [8, 4, 2, 2, 2, 2, 2]


def test_a_runtime_out_of_memory_error_is_retried_too():
    b = OOMBackend(fits=2, error=RuntimeError("CUDA out of memory."))
    with pytest.warns(UserWarning):
        r = sn.select(b, "a cat", k=4, batch_size=4, progress=False)
    # batches of 2 against ones of 1 (a gemm against a gemv): the toy's float32 cosine over d
    assert r.scores == pytest.approx(sn.select(ToyBackend(), "a cat", k=4, batch_size=1, progress=False).scores,
                                     abs=f32(TOY))


def test_a_prompt_is_encoded_once_per_selection():
    b = OOMBackend(fits=100)
    sn.select(b, "a cat", k=12, batch_size=2, progress=False)
    assert b.sizes == [2] * 6 and b.encodings == 1
    b.encodings = 0
    sn.select(b, "a cat", k=12, batch_size=2, progress=False, proxy=sn.Proxy(prompt=""), keep=4)
    assert b.encodings == 2  # the proxy's prompt and the full score's


def test_auto_batch_size_on_cpu_scores_like_any_other():
    b = OOMBackend(fits=100)
    r = sn.select(b, "a cat", k=20, progress=False)
    assert b.sizes == [16, 4]
    assert r.scores == pytest.approx(sn.select(ToyBackend(), "a cat", k=20, batch_size=3, progress=False).scores,
                                     abs=f32(TOY))  # batches of 16 and 4 against 3s: the cosine over d
