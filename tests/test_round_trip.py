"""The one round trip: the Denoiser (CFG, counting, the checkpoint hook), the batched ``round_trips`` that selection,
the bank, the bench and perf score with, and the inversion point from the library to the bench's config."""

import json

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

import stablenoise as sn
from stablenoise.backends.denoiser import Conditioning
from stablenoise.bank import SeedBank, build_bank
from stablenoise.errors import StablenoiseError
from stablenoise.stability import conditioning, cosine, round_trip, round_trips
from tolerance import SHAPES, TOY, cfg, f32, round_trip_n
from toy import ToyBackend, gaussian_backend, gaussian_flow_backend


def _gaussian():
    return gaussian_backend(DDIMScheduler(beta_schedule="scaled_linear", timestep_spacing="trailing"))


def test_the_denoiser_guides_counts_and_reads_the_prediction():
    """One evaluation: both CFG branches in one batch of 2B counted as 2B, u + g (c - u), read as (x0, eps)."""
    b = _gaussian()
    branch = {"encoder_hidden_states": torch.zeros(2, 1, dtype=torch.float64)}
    x = sn.noises_from_seeds([0, 1], b.latent_shape).double()
    level = b.levels(3)[0]
    calls = []
    d = b.denoiser(Conditioning(branch, branch), 3.0)
    d.call = lambda x, t, kwargs, g: (calls.append(len(x)), torch.cat([x[:2], 2 * x[2:]]))[1]  # u = x, c = 2x
    out = d.output(x, level.t)
    assert calls == [4] and b.model_evaluations == 4 and torch.equal(out, x + 3.0 * (2 * x - x))
    x0, eps = d(x, level, level)
    assert torch.equal(eps, 4 * x) and torch.equal(x0, (x - level.b * eps) / level.a) and b.model_evaluations == 8
    plain = b.denoiser(Conditioning(branch), 1.0)
    plain.output(x, level.t)
    assert b.model_evaluations == 10  # no CFG at guidance 1: one evaluation a sample


def test_a_checkpoint_function_is_the_public_hook_and_gives_the_same_gradient():
    """``checkpoint`` may be a function with torch's checkpoint signature: it sees every network call's inputs
    (what perf counts as held for backward) and the gradient is the plain one."""
    from torch.utils.checkpoint import checkpoint

    b = _gaussian()
    noise = sn.noises_from_seeds([0, 1], b.latent_shape).double()
    cond = conditioning(b, "a", 2, 1.0)
    seen = []

    def observing(fn, *args, **kwargs):
        seen.append(args[0].shape)
        return checkpoint(fn, *args, **kwargs)

    grads = []
    for hook in (False, observing):
        x = noise.clone().requires_grad_(True)
        loss = (1 - cosine(x, round_trip(b, cond, x, 3, 1.0, 1.0, hook)[1])).sum()
        grads.append(torch.autograd.grad(loss, x)[0])
    assert seen == [noise.shape] * 6  # 3 steps each way, each call checkpointed once
    # float64, the same recomputed forward: rtol 1e-10 >> f64 bounds
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[1], grads[0], rtol=1e-10, atol=1e-14)


class _OOM(ToyBackend):
    def __init__(self, fits):
        super().__init__()
        self.fits, self.sizes = fits, []

    def denoise(self, noise, cond, steps, guidance, checkpoint=False):
        self.sizes.append(len(noise))
        if len(noise) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return super().denoise(noise, cond, steps, guidance, checkpoint)


def test_round_trips_keep_the_item_order_and_halve_on_out_of_memory():
    items = [7, 3, 9, 1, 4]

    def run(backend, batch_size, inversions=(1.0, 2.5)):
        cond = conditioning(backend, "a", 1, 2.5)
        return round_trips(backend, items, lambda chunk: (cond.expand(len(chunk)),
                                                          sn.noises_from_seeds(chunk, backend.latent_shape)),
                           2, 1.0, inversions, batch_size=batch_size,
                           read=lambda chunk, trip: [(seed, *(s[j].item() for s in trip.stability), trip.z0[j])
                                                     for j, seed in enumerate(chunk)])

    reference = run(ToyBackend(), 1)
    oom = _OOM(fits=2)
    with pytest.warns(UserWarning, match="out of memory with a batch of 4: retrying with 2"):
        halved = run(oom, 4)
    assert oom.sizes == [4, 2, 2, 1]  # the failed 4, then 2s (the last item alone)
    assert [r[0] for r in halved] == items
    for (_, a1, a2, z), (_, b1, b2, w) in zip(halved, reference):
        # batches of 2 against ones of 1 (a gemm against a gemv): the toy's float32 cosine over d
        assert a1 == pytest.approx(b1, abs=f32(TOY)) and a2 == pytest.approx(b2, abs=f32(TOY))
        assert torch.allclose(z, w, rtol=0, atol=f32(TOY, 3.0))  # float32 latents of size <= 3
    assert reference[0][1] != reference[0][2]  # the two inversion guidances differ
    toy = ToyBackend()
    only_z0 = round_trips(toy, items[:2], lambda chunk: (conditioning(toy, "a", len(chunk), 1.0),
                                                         sn.noises_from_seeds(chunk, toy.latent_shape)), 2, 1.0,
                          read=lambda chunk, trip: [len(trip.stability)] * len(chunk))
    assert only_z0 == [0, 0]  # no inversion guidance: the denoising half alone


def test_each_half_is_counted_and_timed():
    b = _gaussian()
    branch = {"encoder_hidden_states": torch.zeros(1, 1, dtype=torch.float64)}
    [trip] = round_trips(b, [0], lambda chunk: (Conditioning(branch, branch), sn.noises_from_seeds(
                         chunk, b.latent_shape)), 3, 1.0, (1.0, 2.0), read=lambda chunk, trip: [trip])
    assert trip.evaluations == [3, 3, 6]  # 3 steps; the second inversion under CFG: both branches
    assert len(trip.seconds) == 3 and all(s > 0 for s in trip.seconds)
    assert torch.equal(trip.stability[0], sn.stability(b, "a", sn.noises_from_seeds([0], b.latent_shape), 3, 1.0))
    assert trip.stability[0].dtype == torch.float64 and trip.z0.shape == (1, *b.latent_shape)


# ---- the inversion point, from stability to the bench ----------------------------------------------------------

@pytest.mark.parametrize("make, default", [(_gaussian, "destination"),
                                           (lambda: gaussian_flow_backend(FlowMatchEulerDiscreteScheduler()), "source")])
def test_the_inversion_point_is_a_backend_default_and_a_per_call_option(make, default):
    b = make()
    other = "source" if default == "destination" else "destination"
    assert b.inversion_point == default and "inversion_point" not in json.dumps(b.describe())
    switched = b.with_inversion_point(other)
    assert switched.describe()["inversion_point"] == other and switched.pipe is b.pipe
    noise = sn.noises_from_seeds([0, 1, 2], b.latent_shape).double()
    plain = sn.stability(b, "a", noise, steps=3)
    assert torch.equal(sn.stability(b, "a", noise, steps=3, inversion_point=default), plain)
    moved = sn.stability(b, "a", noise, steps=3, inversion_point=other)
    assert torch.equal(sn.stability(switched, "a", noise, steps=3), moved) and (moved - plain).abs().min() > 1e-6
    r = sn.select(b, "a", seeds=[0, 1, 2], steps=3, progress=False, inversion_point=other)
    assert r.scores == moved.tolist() and r.inversion_point == other
    assert sn.score_seeds(b, "a", [0, 1, 2], steps=3, progress=False, inversion_point=other) == moved.tolist()
    bank = build_bank(b, 3, steps=3, progress=False, inversion_point=other)
    assert bank.inversion_point == other and bank.stability == sn.stability(b, "", noise, 3, inversion_point=other).tolist()
    assert build_bank(b, 1, steps=3, progress=False).inversion_point == default


def test_a_bad_inversion_point_is_refused_before_any_work(tmp_path):
    toy = ToyBackend()
    noise = sn.noises_from_seeds([0], toy.latent_shape)
    message = "^inversion_point must be one of destination, source, got 'middle'$"
    for call in (lambda: sn.stability(toy, "a", noise, inversion_point="middle"),
                 lambda: sn.select(toy, "a", k=2, progress=False, inversion_point="middle"),
                 lambda: build_bank(toy, 2, progress=False, inversion_point="middle"),
                 lambda: _gaussian().with_inversion_point("middle")):
        with pytest.raises(StablenoiseError, match=message):
            call()
    assert toy.calls == 0
    bank = build_bank(toy, 2, progress=False)
    assert bank.inversion_point is None  # a backend without one: nothing to record
    bank.inversion_point = "sideways"
    bank.save(tmp_path / "bank.json")
    with pytest.raises(StablenoiseError, match="not a seed bank: inversion_point 'sideways' is not one of"):
        SeedBank.load(tmp_path / "bank.json")


@pytest.mark.model
def test_the_bench_records_the_inversion_point_only_when_it_is_not_the_default(tmp_path):
    """``--inversion-point`` reaches the config through the backend's description, which names it only when it
    differs from the family's: a run with the default keeps the config identity of earlier stores."""
    from click.testing import CliRunner

    from stablenoise.bench.store import Store
    from stablenoise.cli import main

    def bench(out, *extra):
        r = CliRunner().invoke(main, ["bench", "--prompts", "shapes-heldout", "--limit", "1", "-k", "2", "--steps",
                                      "1", "--methods", "random", "--rewards", "shapes-verifier", "--no-report",
                                      "--out", str(tmp_path / out), *extra])
        assert r.exit_code == 0, r.output
        store = Store(tmp_path / out, create=False)
        try:
            [(digest, config)] = store.db.execute("SELECT digest, json FROM configs").fetchall()
            stability = [row["stability"] for row in store.rows()]
        finally:
            store.close()
        return digest, json.loads(config), stability

    plain, default, source = bench("plain"), bench("default", "--inversion-point", "destination"), \
        bench("source", "--inversion-point", "source")
    assert plain[0] == default[0] and "inversion_point" not in json.dumps(plain[1])
    assert source[1]["backend"]["inversion_point"] == "source" and source[0] != plain[0]
    backend = sn.load("shapes")
    prompt = sn.load_prompts("shapes-heldout", limit=1).prompts[0].text
    expected = sn.stability(backend, prompt, sn.noises_from_seeds([0, 1], backend.latent_shape), 1,
                            inversion_point="source")
    # the same 2-seed batch, a 1-step shapes round trip under CFG 2
    assert source[2] == pytest.approx(expected.tolist(), abs=f32(round_trip_n(SHAPES, 1), cfg(2.0)))
    assert source[2] != plain[2]
