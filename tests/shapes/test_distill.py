import json
import math
import shutil
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import stablenoise as sn
from stablenoise import ddim, load
from stablenoise.backends import shipped_models
from stablenoise.errors import StablenoiseError
from stablenoise.shapes import distill as D
from stablenoise.shapes import world
from stablenoise.shapes.commands import distill_shapes

A_START, A_END = 0.0046600, 0.9991500  # the shapes schedule's alpha_bar(999) and alpha_bar(0)
TINY = dict(pairs=4, val_pairs=4, shard_size=4, teacher_steps=2, steps=4, batch_size=4, warmup=1,
            checkpoint_every=2, eval_every=2)


def _gaussian_line(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randn(n, 3, 8, 8, generator=g,
                                                                                 dtype=torch.float64)


@pytest.mark.parametrize("a_end", [A_END, 1.0])
def test_line_through_recovers_the_line_of_both_endpoints(a_end):
    x0, eps = _gaussian_line()
    z = math.sqrt(A_START) * x0 + math.sqrt(1 - A_START) * eps
    y = math.sqrt(a_end) * x0 + math.sqrt(1 - a_end) * eps
    got_x0, got_eps = D.line_through(z.float(), y.float(), A_START, a_end)
    # float32 inputs, solved in float64: the error is the inputs' rounding times the 2x2 inverse (norm ~15)
    assert torch.allclose(got_x0.double(), x0, atol=2e-5) and torch.allclose(got_eps.double(), eps, atol=2e-5)


def test_line_through_is_the_one_step_formula_when_the_teacher_lands_on_clean_data():
    z, y = (t.float() for t in _gaussian_line(1))
    x0, eps = D.line_through(z, y, A_START, 1.0)
    assert torch.allclose(x0, y, atol=1e-6)
    assert torch.allclose(eps, (z - math.sqrt(A_START) * y) / math.sqrt(1 - A_START), atol=1e-5)


def _config_and_grids(**kw):
    backend = load("shapes", device="cpu")
    cfg = D.DistillConfig(**{**TINY, **kw})
    return backend, cfg, D.coupling_levels(backend.ddim_config, cfg)


def test_training_inputs_lie_on_each_pairs_line_and_start_at_its_noise():
    backend, cfg, (a_start, a_end, grids) = _config_and_grids(batch_size=64, at_steps=1.0)
    assert [g.tolist() for g in grids] == [[999], [999, 499], [999, 749, 499, 249]]
    x0, eps = _gaussian_line(2, n=5)
    x0, eps = x0.float(), eps.float()
    captions = [f"pair {i}" for i in range(5)]
    alphas = torch.from_numpy(np.cumprod(1 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2))  # scaled-linear
    x_t, t, target, weight, caps, idx = D.distill_batch(cfg, 3, x0, eps, captions, grids, alphas)
    assert caps == [captions[i] for i in idx]
    a = alphas[t].view(-1, 1, 1, 1)
    assert torch.allclose(x_t.double(), a.sqrt() * x0[idx].double() + (1 - a).sqrt() * eps[idx].double(), atol=1e-6)
    assert torch.equal(target, eps[idx]) and torch.allclose(weight.double(), 1 / alphas[t], rtol=1e-6)
    first = t == 999
    z = math.sqrt(a_start) * x0 + math.sqrt(1 - a_start) * eps  # the noise the teacher started from
    assert first.any() and torch.allclose(x_t[first], z[idx][first], atol=1e-5)
    # diffusers takes the cumulative product in float32: 1,000 factors, relative error well under 1e-5
    assert a_start == pytest.approx(float(alphas[999]), rel=1e-5) and a_end == pytest.approx(float(alphas[0]), rel=1e-5)


SCALED_LINEAR = torch.from_numpy(np.cumprod(1 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2))


def _own_state_batch(rollout=1.0, n=5):
    _, cfg, (_, _, grids) = _config_and_grids(batch_size=64, at_steps=1.0, rollout=rollout)
    x0, eps = (v.float() for v in _gaussian_line(4, n=n))
    batch = D.distill_batch(cfg, 7, x0, eps, [f"pair {i}" for i in range(n)], grids, SCALED_LINEAR)
    return cfg, grids, x0, eps, batch, D.rollout_rows(cfg, 7, len(batch.t), grids)


def test_rollout_rows_take_one_to_t_minus_1_steps_of_a_multistep_schedule():
    cfg, grids, *_, picks = _own_state_batch(rollout=0.5)
    assert 16 < len(picks) < 48 and len({row for row, _, _ in picks}) == len(picks)  # about half of 64 rows
    assert {(s, taken) for _, s, taken in picks} == {(1, 1), (2, 1), (2, 2), (2, 3)}  # 2- and 4-step schedules
    assert picks == D.rollout_rows(cfg, 7, 64, grids) != D.rollout_rows(cfg, 8, 64, grids)  # seeded by the step
    assert D.rollout_rows(D.DistillConfig(**TINY), 7, 64, grids) == []  # the default: lines only
    assert D.rollout_rows(cfg, 7, 64, grids[:1]) == []  # a 1-step schedule has no own states


def test_an_exact_student_s_own_states_are_its_lines_points():
    """With the line's own eps as the student's output, DDIM stays on the line: the own states are the line's
    points at the timestep reached, and the target is the line's eps."""
    _, grids, x0, eps, batch, picks = _own_state_batch()
    exact = lambda x, t, rows: eps[batch.pairs[rows]]  # noqa: E731
    own = D.own_states(batch, picks, x0, eps, grids, SCALED_LINEAR, exact)
    rows = torch.tensor([row for row, _, _ in picks])
    assert torch.equal(own.t[rows], torch.tensor([int(grids[s][taken]) for _, s, taken in picks]))
    a = SCALED_LINEAR[own.t].view(-1, 1, 1, 1)
    line = (a.sqrt() * x0[batch.pairs].double() + (1 - a).sqrt() * eps[batch.pairs].double()).float()
    assert torch.allclose(own.x_t, line, atol=1e-5) and torch.allclose(own.target, eps[batch.pairs], atol=1e-4)
    assert torch.allclose(own.weight.double(), 1 / SCALED_LINEAR[own.t], rtol=1e-6)
    assert own.captions == batch.captions and torch.equal(own.pairs, batch.pairs)


def test_an_inexact_student_s_own_states_are_its_ddim_steps_and_the_target_still_the_teacher_s_image():
    """A student that predicts no noise (eps = 0): each of its DDIM steps rescales x by sqrt(a'/a), so after k
    steps x = sqrt(a_k / a_0) z; off the line, the target is the eps whose x0 estimate is the pair's x0."""
    _, grids, x0, eps, batch, picks = _own_state_batch(rollout=0.5)
    own = D.own_states(batch, picks, x0, eps, grids, SCALED_LINEAR, lambda x, t, rows: torch.zeros_like(x))
    for row, s, taken in picks:
        a0, a = (float(SCALED_LINEAR[grids[s][i]]) for i in (0, taken))
        z = math.sqrt(a0) * x0[batch.pairs[row]] + math.sqrt(1 - a0) * eps[batch.pairs[row]]
        assert torch.allclose(own.x_t[row], math.sqrt(a / a0) * z, atol=1e-5)
        x0_hat = (own.x_t[row] - math.sqrt(1 - a) * own.target[row]) / math.sqrt(a)
        assert torch.allclose(x0_hat, x0[batch.pairs[row]], atol=1e-4)
    untouched = torch.tensor(sorted(set(range(len(batch.t))) - {row for row, _, _ in picks}), dtype=torch.long)
    assert len(untouched) > 16
    for old, new in zip(batch[:4], own[:4]):
        assert torch.equal(old[untouched], new[untouched])


def test_own_sampling_estimates_x0_at_every_call_and_stops_each_row_after_its_steps():
    """An exact student (its line's eps) estimates the line's x0 at every call; an eps = 0 student's DDIM steps
    rescale x by sqrt(a'/a), so a row that made k steps sits at sqrt(a_k / a_0) z, and its x0 estimate at call k
    is z / sqrt(a_0) whatever k. Without ``taken`` every row makes every call, the last one without a step."""
    x0, eps = (v.float() for v in _gaussian_line(5, n=4))
    grid = [999, 749, 499, 249]
    z = D.line_point(x0, eps, float(SCALED_LINEAR[999]))
    exact = lambda x, t, rows: eps[rows]  # noqa: E731
    x, estimates = D.own_sampling(exact, z, grid, SCALED_LINEAR)
    # float32 states: an x0 estimate divides by sqrt(alpha_bar) >= 0.068 (t = 999), so rounding of ~1e-6 in x
    # grows to ~2e-5; 1e-4 (x0) and 1e-5 (states) bound that, while a wrong step is off by O(1)
    assert len(estimates) == 4 and all(torch.allclose(e, x0, atol=1e-4) for e in estimates)
    assert torch.allclose(x, D.line_point(x0, eps, float(SCALED_LINEAR[249])), atol=1e-5)  # no step after the last
    taken = torch.tensor([1, 3, 2, 3])
    x, estimates = D.own_sampling(lambda x, t, rows: torch.zeros_like(x), z, grid, SCALED_LINEAR, taken)
    assert [len(e) for e in estimates] == [4, 3, 2]  # rows still going at each call
    a0 = float(SCALED_LINEAR[999])
    for row, k in enumerate(taken.tolist()):
        assert torch.allclose(x[row], math.sqrt(float(SCALED_LINEAR[grid[k]]) / a0) * z[row], atol=1e-5)
    assert all(torch.allclose(e, z[taken > k] / math.sqrt(a0), atol=1e-4) for k, e in enumerate(estimates))


def test_the_loss_is_the_eps_error_plus_the_image_error():
    g = torch.Generator().manual_seed(3)
    x0, eps, pred = (torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    a = torch.tensor([0.0047, 0.2, 0.6, 0.99], dtype=torch.float64).view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    x0_hat = (x_t - (1 - a).sqrt() * pred) / a.sqrt()
    per_sample = (pred - eps).square().mean(dim=(1, 2, 3)) + (x0_hat - x0).square().mean(dim=(1, 2, 3))
    got = D.weighted_loss(pred.float(), eps.float(), (1 / a).flatten().float())
    assert abs(float(got) - float(per_sample.mean())) < 1e-4 * float(per_sample.mean())


def test_the_pseudo_huber_loss_weighs_each_pixel_s_weighted_error():
    g = torch.Generator().manual_seed(4)
    pred, target = torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 3, 4, 4, generator=g)
    w, c = torch.tensor([1.0, 4.0, 200.0]), 0.05
    e = w.sqrt().view(-1, 1, 1, 1) * (pred - target)
    want = ((e.square() + c * c).sqrt() - c).mean()
    # the same float32 operations as the formula: equal up to the order of the mean's sum
    assert torch.allclose(D.weighted_loss(pred, target, w, huber=c), want, rtol=1e-6, atol=0)
    # far below c it is half the squared loss over c. The expansion's next term is -(e/c)^2 / 4 of it (e/c up to
    # 0.05 here), and float32 loses sqrt(e^2 + c^2) - c to cancellation as e shrinks; this scale keeps both under
    # 1e-3 (measured 6.0e-4)
    tiny = 5e-5 * (pred - target)
    assert torch.allclose(D.weighted_loss(tiny, 0 * tiny, w, huber=c), D.weighted_loss(tiny, 0 * tiny, w) / (2 * c),
                          rtol=1e-3, atol=0)
    # far above c, the absolute error: off by about c per pixel, 1e-6 against errors near 1
    assert torch.allclose(D.weighted_loss(pred, target, w, huber=1e-6), e.abs().mean(), rtol=1e-4, atol=0)


def test_the_pseudo_huber_loss_draws_a_pixel_s_likelier_value_where_mse_draws_the_mean():
    """A state whose pixel becomes +1 seven times in ten and -1 otherwise: the squared error's best constant
    answer is the mean 0.4 (the blur); the pseudo-Huber's is near +1."""
    target = torch.tensor([1.0] * 7 + [-1.0] * 3).view(10, 1, 1, 1)
    best = {}
    for huber in (0.0, 0.01):
        x = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([x], lr=0.02)
        for _ in range(800):
            opt.zero_grad()
            D.weighted_loss(x.expand(10).view(10, 1, 1, 1), target, torch.ones(10), huber=huber).backward()
            opt.step()
        best[huber] = float(x.detach())
    # 800 Adam steps of 0.02 settle within a step of each minimum (measured 0.4000 and 0.9953). The pseudo-Huber's
    # is where 7 g(1 - x) = 3 g(1 + x), g(u) = u / sqrt(u^2 + c^2): 1 - x = c (3/7) / sqrt(1 - (3/7)^2) = 0.474 c
    assert abs(best[0.0] - 0.4) < 0.02
    assert abs(best[0.01] - (1 - 0.474 * 0.01)) < 0.02


def test_the_high_frequency_weight_counts_the_band_s_energy_1_plus_h_times():
    """An error made of three waves along x: 3/32 and 8/32 cycles per pixel (half the Nyquist frequency itself:
    not above it) are outside the band, 12/32 inside; the waves are orthogonal, so each part's energy adds."""
    x = torch.arange(32, dtype=torch.float64)
    waves = {k: torch.cos(2 * math.pi * k * x / 32).expand(3, 32, 32).unsqueeze(0) for k in (3, 8, 12)}
    amp = {3: 0.5, 8: 0.3, 12: 0.2}
    err = sum(amp[k] * waves[k] for k in waves).float().expand(2, 3, 32, 32)
    w = torch.tensor([1.0, 3.0])
    energy = {k: 0.5 * amp[k] ** 2 for k in amp}  # mean square of a cosine of amplitude A: A^2 / 2
    for h in (0.0, 4.0):
        want = float(w.mean()) * (energy[3] + energy[8] + (1 + h) * energy[12])
        got = float(D.weighted_loss(err, torch.zeros_like(err), w, high_frequency=h))
        # the waves rounded to float32 and summed in float32: 9e-8 relative under default, avx2 and avx512
        assert abs(got - want) < 1e-6 * want, (h, got, want)
    assert torch.equal(D.weighted_loss(err, 0 * err, w, high_frequency=0.0), D.weighted_loss(err, 0 * err, w))
    band = D.high_band(32, 32)  # the bench's band: a quarter of the bins below it, three quarters above
    assert int(band.sum()) == 32 * 32 - 16 * 16 - 2 * 16 - 1 and not band[8, 0] and band[12, 0] and band[16, 16]


def test_huber_and_the_high_frequency_weight_are_not_combined():
    with pytest.raises(StablenoiseError, match="choose one"):
        D.DistillConfig(huber=0.05, high_frequency=2.0)


def test_timesteps_are_at_or_between_the_students():
    grids = [torch.tensor([999]), torch.tensor([999, 499]), torch.tensor([999, 749, 499, 249])]
    t = D.sample_timesteps(np.random.default_rng(0), 20000, grids, 0.5)
    assert int(t.min()) >= 249 and int(t.max()) <= 999
    on_grid = torch.isin(t, torch.tensor([999, 749, 499, 249]))
    assert 0.5 < float(on_grid.float().mean()) < 0.53  # half drawn on the grid, a few between land on it too
    for step in (999, 749, 499, 249):  # uniform over the union of the schedules' timesteps
        assert abs(float((t == step).float().mean()) - (0.5 / 4 + 0.5 / 751)) < 0.01
    assert len(set(t[~on_grid].tolist())) > 600


def test_training_captions_are_never_held_out():
    heldout = {world.caption_of(tag, c) for tag in world.TAGS for c in world.heldout_combinations(tag)}
    rng = np.random.default_rng(0)
    drawn = [D.training_caption(rng) for _ in range(3000)]
    assert not heldout & set(drawn) and len(set(drawn)) > 500


def test_pairs_are_the_teachers_images_kept_and_extended(tmp_path):
    backend, cfg, _ = _config_and_grids()
    paths = D.ensure_pairs(tmp_path, cfg, progress=False)
    assert len(paths) == 2
    for path in paths:  # shard by shard: a batch of another size may take other kernels, and round otherwise
        z, y, captions, seconds = D.load_pairs([path])
        again = backend.denoise(z, backend.encode(captions, 2.0), 2, 2.0)
        assert torch.equal(again.float(), y) and seconds > 0
    first = paths[0].read_bytes()
    more = D.ensure_pairs(tmp_path, D.DistillConfig(**{**TINY, "pairs": 8}), progress=False)
    assert more[:2] == paths and len(more) == 3 and paths[0].read_bytes() == first
    assert not torch.equal(load_file(str(more[1]))["noise"], load_file(str(more[2]))["noise"])
    with pytest.raises(StablenoiseError, match="other settings"):
        D.ensure_pairs(tmp_path, D.DistillConfig(**{**TINY, "teacher_steps": 3}), progress=False)
    assert paths[0].read_bytes() == first


def test_pairs_made_in_parts_equal_pairs_made_at_once(tmp_path):
    cfg = D.DistillConfig(**{**TINY, "pairs": 8})
    whole = D.ensure_pairs(tmp_path / "whole", cfg, progress=False)
    odd = D.ensure_pairs(tmp_path / "parts", cfg, progress=False, part=(1, 2))
    assert [p.exists() for p in odd] == [False, True, False]  # only index 1 of 0, 1, 2
    D.ensure_pairs(tmp_path / "parts", cfg, progress=False, part=(0, 2))
    for a, b in zip(odd, whole):  # the same tensors and captions; only the recorded seconds differ
        (za, ya, ca, _), (zb, yb, cb, _) = D.load_pairs([a]), D.load_pairs([b])
        assert torch.equal(za, zb) and torch.equal(ya, yb) and ca == cb


def test_line_through_takes_one_start_level_per_row():
    x0, eps = _gaussian_line(5, n=4)
    a = torch.tensor([A_START, 0.2, 0.5, 0.8], dtype=torch.float64)
    z = a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * eps
    y = math.sqrt(A_END) * x0 + math.sqrt(1 - A_END) * eps
    got_x0, got_eps = D.line_through(z.float(), y.float(), a, A_END)
    assert torch.allclose(got_x0.double(), x0, atol=2e-5) and torch.allclose(got_eps.double(), eps, atol=2e-5)


def _guided_ddim(pipe, x, captions, timesteps, a_levels, guidance=2.0):
    """DDIM with CFG, written out: the check on the finishes does not go through the backend's sampler."""
    with torch.no_grad():
        cond, empty = pipe.encode_prompt(captions), pipe.encode_prompt([""] * len(captions))
        for t, a, a_next in zip(timesteps, a_levels, a_levels[1:]):
            tt = torch.full((len(x),), t)
            u = pipe.unet(x, tt, encoder_hidden_states=empty).sample
            c = pipe.unet(x, tt, encoder_hidden_states=cond).sample
            x = ddim.step(u + guidance * (c - u), x, a, a_next)
    return x


def test_finishes_are_the_teacher_s_images_of_the_student_s_own_states(tmp_path):
    """A finish is the starting student's state after k of T steps from a pair's noise (its own DDIM, no CFG) and
    the teacher's guided DDIM from that state's timestep down through the coupling's timesteps below it."""
    backend, cfg, (_, a_end, grids) = _config_and_grids(finish=0.5, finish_pairs=4)
    paths = D.ensure_pairs(tmp_path, cfg, progress=False)
    finishes = D.ensure_finishes(tmp_path, cfg, paths, progress=False)
    assert [p.name for p in finishes] == ["shard-00001.safetensors"]  # the training shard, not the validation one
    f = load_file(str(finishes[0]))
    z, _, captions, _ = D.load_pairs(paths[1:])
    assert f["timestep"].tolist() == [499] * 4 + [749] * 4 + [499] * 4 + [249] * 4 and f["row"].tolist() == [0, 1, 2, 3] * 4
    a = backend.pipe.scheduler.alphas_cumprod.double()
    pipe = backend.pipe
    with torch.no_grad():
        cond = pipe.encode_prompt(captions)
        x = z.clone()
        for i, (t, t_next) in enumerate([(999, 749), (749, 499), (499, 249)]):
            e = pipe.unet(x, torch.full((4,), t), encoder_hidden_states=cond).sample
            x = ddim.step(e, x, float(a[t]), float(a[t_next]))
            assert torch.allclose(f["state"][4 * (i + 1):4 * (i + 2)], x, atol=1e-5), t_next
        e = pipe.unet(z, torch.full((4,), 999), encoder_hidden_states=cond).sample
        assert torch.allclose(f["state"][:4], ddim.step(e, z, float(a[999]), float(a[499])), atol=1e-5)
    # the coupling's 2-step schedule is [999, 499]: from 749 the teacher visits 749 and 499, from 499 only 499
    from_749 = _guided_ddim(pipe, f["state"][4:8], captions, [749, 499], [float(a[749]), float(a[499]), a_end])
    from_249 = _guided_ddim(pipe, f["state"][12:], captions, [249], [float(a[249]), a_end])
    assert torch.allclose(f["image"][4:8], from_749, atol=1e-4) and torch.allclose(f["image"][12:], from_249, atol=1e-4)
    assert not torch.allclose(f["image"][4:8], f["image"][8:12], atol=1e-2)  # another state, another finish

    first = finishes[0].read_bytes()
    again = D.ensure_finishes(tmp_path, cfg, paths, progress=False)
    assert again == finishes and finishes[0].read_bytes() == first  # kept, not remade
    with pytest.raises(StablenoiseError, match="other settings"):  # another starting student: refused, kept
        D.ensure_finishes(tmp_path, D.DistillConfig(**{**TINY, "finish": 0.5, "finish_pairs": 4,
                                                       "init": str(shipped_models()["shapes-turbo"])}),
                          paths, progress=False)
    assert finishes[0].read_bytes() == first
    with pytest.raises(StablenoiseError, match="cannot exceed"):
        D.ensure_finishes(tmp_path, D.DistillConfig(**{**TINY, "finish": 0.5, "finish_pairs": 8}), paths, progress=False)


def test_a_one_step_teacher_s_finishes_are_its_guided_noise_prediction_at_each_state(tmp_path):
    """With --teacher-steps 1 a finish is one guided DDIM step from the state to clean data, so the line through
    state and finish carries the teacher's guided eps at that state: the per-step target of guidance distillation
    (Meng et al. 2023), at the student's own states (docs/bench.md: guidance folded one step at a time).
    The float32 rounding of state and finish, solved back for eps: 4e-6 under every ATEN_CPU_CAPABILITY."""
    backend, cfg, _ = _config_and_grids(finish=1.0, finish_pairs=4, teacher_steps=1, guidance=1.5)
    paths = D.ensure_pairs(tmp_path, cfg, progress=False)
    a = backend.pipe.scheduler.alphas_cumprod.double()
    got = D.load_finishes(D.ensure_finishes(tmp_path, cfg, paths, progress=False), [0], a, A_END)
    z, _, captions, _ = D.load_pairs(paths[1:])
    assert got["t"].tolist() == [499] * 4 + [749] * 4 + [499] * 4 + [249] * 4
    pipe, caps = backend.pipe, captions * 4
    states = D.line_point(got["x0"], got["eps"], a[got["t"]].view(-1, 1, 1, 1)).float()
    with torch.no_grad():
        u = pipe.unet(states, got["t"], encoder_hidden_states=pipe.encode_prompt([""] * 16)).sample
        c = pipe.unet(states, got["t"], encoder_hidden_states=pipe.encode_prompt(caps)).sample
    guided = (u + 1.5 * (c - u)).double()
    assert torch.allclose(got["eps"].double(), guided, atol=1e-4)
    assert not torch.allclose(got["eps"].double(), c.double(), atol=1e-2)  # the guided target, not the conditional one


def test_load_finishes_are_lines_through_state_and_image_numbered_by_training_pair(tmp_path):
    from safetensors.torch import save_file

    states, images = (v.float() for v in _gaussian_line(8, n=6))
    t = torch.tensor([749, 249, 499, 749, 499, 249])
    for i, rows in enumerate([slice(0, 2), slice(2, 6)]):
        save_file({"state": states[rows].contiguous(), "image": images[rows].contiguous(), "timestep": t[rows],
                   "row": torch.tensor([1, 0, 0, 3, 1, 2][rows])}, str(tmp_path / f"f{i}.safetensors"))
    got = D.load_finishes([tmp_path / "f0.safetensors", tmp_path / "f1.safetensors"], [0, 64], SCALED_LINEAR, A_END)
    assert got["pairs"].tolist() == [1, 0, 64, 67, 65, 66] and torch.equal(got["t"], t)
    a = SCALED_LINEAR[t].view(-1, 1, 1, 1)
    assert torch.allclose(D.line_point(got["x0"], got["eps"], a), states, atol=1e-5)
    assert torch.allclose(D.line_point(got["x0"], got["eps"], A_END), images, atol=1e-5)


def test_finish_rows_sit_at_their_states_with_the_teacher_s_finish_as_target():
    _, cfg, (_, a_end, grids) = _config_and_grids(batch_size=64, finish=0.5)
    x0, eps = (v.float() for v in _gaussian_line(6, n=3))
    captions = ["pair 0", "pair 1", "pair 2"]
    batch = D.distill_batch(cfg, 5, x0, eps, captions, grids, SCALED_LINEAR)
    states, images = (v.float() for v in _gaussian_line(7, n=4))
    t = torch.tensor([749, 499, 249, 499])
    fx0, feps = D.line_through(states, images, SCALED_LINEAR[t], a_end)
    finishes = {"x0": fx0, "eps": feps, "t": t, "pairs": torch.tensor([2, 0, 1, 2])}
    out = D.with_finishes(cfg, 5, batch, finishes, captions, SCALED_LINEAR, 999)
    changed = [r for r in range(64) if not torch.equal(out.x_t[r], batch.x_t[r])]
    assert 16 < len(changed) < 48
    for r in range(64):
        if r not in changed:
            assert out.t[r] == batch.t[r] and torch.equal(out.target[r], batch.target[r])
            assert out.captions[r] == batch.captions[r] and out.pairs[r] == batch.pairs[r]
            continue
        k = next(i for i in range(4) if torch.allclose(out.x_t[r], states[i], atol=1e-5))
        a = float(SCALED_LINEAR[t[k]])
        assert out.t[r] == t[k] and out.weight[r] == pytest.approx(1 / a, rel=1e-6)
        # the eps whose x0 estimate lands, one DDIM step to a_end, on the teacher's image
        assert torch.allclose(ddim.step(out.target[r], out.x_t[r], a, a_end), images[k], atol=1e-4)
        assert out.pairs[r] == finishes["pairs"][k] and out.captions[r] == captions[int(finishes["pairs"][k])]
    assert D.with_finishes(D.DistillConfig(**TINY), 5, batch, finishes, captions, SCALED_LINEAR, 999) == batch


def test_with_finish_keeps_first_the_first_timestep_s_rows_stay_on_the_lines_and_no_others(tmp_path):
    _, cfg, (_, a_end, grids) = _config_and_grids(batch_size=64, finish=1.0, finish_keeps_first=True)
    x0, eps = (v.float() for v in _gaussian_line(6, n=3))
    captions = ["pair 0", "pair 1", "pair 2"]
    batch = D.distill_batch(cfg, 5, x0, eps, captions, grids, SCALED_LINEAR)
    states, images = (v.float() for v in _gaussian_line(7, n=2))
    t = torch.tensor([749, 249])
    fx0, feps = D.line_through(states, images, SCALED_LINEAR[t], a_end)
    finishes = {"x0": fx0, "eps": feps, "t": t, "pairs": torch.tensor([2, 0])}
    out = D.with_finishes(cfg, 5, batch, finishes, captions, SCALED_LINEAR, 999)
    first = batch.t == 999
    assert 0 < int(first.sum()) < 64  # the batch has both kinds of rows
    assert torch.equal(out.x_t[first], batch.x_t[first]) and torch.equal(out.target[first], batch.target[first])
    assert bool(torch.isin(out.t[~first], t).all())  # every other row moved to a finish, as finish 1.0 asks
    moved = D.with_finishes(replace(cfg, finish_keeps_first=False), 5, batch, finishes, captions, SCALED_LINEAR, 999)
    assert bool(torch.isin(moved.t, t).all())  # without it, the first timestep's rows move too
    r = CliRunner().invoke(distill_shapes, ["--out", str(tmp_path / "t"), "--finish-keeps-first"])
    assert r.exit_code == 1 and "needs finish (--finish) > 0" in r.output and not (tmp_path / "t").exists()


def _unet(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("rollout, adversarial, finish, loss", [(0.0, 0.0, 0.0, {}), (0.5, 0.0, 0.0, {}),
                                                                 (0.0, 0.5, 0.0, {}), (0.0, 0.0, 0.5, {}),
                                                                 (0.0, 0.0, 0.0, {"huber": 0.05}),
                                                                 (0.0, 0.0, 0.0, {"high_frequency": 3.0})])
def test_distill_resumes_like_an_uninterrupted_run(tmp_path, monkeypatch, rollout, adversarial, finish, loss):
    huber = loss.get("huber", 0.0)
    extra = {"rollout": rollout, "adversarial": adversarial, "adversarial_start": 1, "finish": finish,
             "finish_pairs": 4, **loss}
    cfg = D.DistillConfig(**TINY, **extra)
    straight = D.distill(tmp_path / "a", cfg, progress=False)
    real = D.distill_batch

    def interrupt_at_3(c, step, *args):
        if step == 3:
            raise KeyboardInterrupt
        return real(c, step, *args)

    monkeypatch.setattr(D, "distill_batch", interrupt_at_3)
    with pytest.raises(KeyboardInterrupt):
        D.distill(tmp_path / "b", cfg, progress=False)
    assert (tmp_path / "b" / "checkpoint" / "state.pt").exists() and not (tmp_path / "b" / "model").exists()
    monkeypatch.setattr(D, "distill_batch", real)
    if not loss:  # a checkpoint from before --huber and --high-frequency-weight resumes as the run it was
        state_file = tmp_path / "b" / "checkpoint" / "state.pt"
        state = torch.load(state_file, weights_only=True)
        del state["config"]["huber"], state["config"]["high_frequency"]
        torch.save(state, state_file)
    with pytest.raises(StablenoiseError, match="other settings"):
        D.distill(tmp_path / "b", D.DistillConfig(**{**TINY, **extra, "lr": 1e-3}), progress=False)
    resumed = D.distill(tmp_path / "b", cfg, progress=False)
    a, b = _unet(straight), _unet(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k  # same steps on the same batches: same sums
    teacher = _unet(shipped_models()["shapes"])
    assert any(not torch.equal(a[k], teacher[k]) for k in a)  # it trained
    if rollout or adversarial or finish or loss:  # on other batches than the lines alone, or with another loss
        lines_only = _unet(D.distill(tmp_path / "d", D.DistillConfig(**TINY), progress=False))
        assert any(not torch.allclose(a[k], lines_only[k], atol=1e-6) for k in a)
    log_a = json.loads((straight / "train_log.json").read_text())
    log_b = json.loads((resumed / "train_log.json").read_text())
    assert log_a["losses"] == pytest.approx(log_b["losses"], rel=1e-5) and len(log_a["losses"]) == 4
    if adversarial:  # the discriminator resumed too; the student felt it from step 1 on
        assert log_a["discriminator_losses"] == pytest.approx(log_b["discriminator_losses"], rel=1e-5)
        assert len(log_a["discriminator_losses"]) == 4 and len(log_a["adversarial_weights"]) == 3
        assert all(math.isfinite(w) and w > 0 for w in log_a["adversarial_weights"])
    else:
        assert "discriminator_losses" not in log_a
    assert list(log_a["validation_x0_mse"]) == ["2", "4"] and log_a["train_pairs"] == 4
    assert log_a["finish_states"] == (16 if finish else 0) and ("own states" in log_a["recipe"]) == bool(finish)
    assert list(log_a["validation_x0_mse_shipped"]) == ["999", "749", "499", "249", "2 steps", "4 steps"]
    assert (straight / "loss.png").exists() and not (tmp_path / "a" / "checkpoint").exists()
    assert ("pseudo-Huber loss, c = 0.05" in log_a["recipe"]) == bool(huber)
    assert ("Nyquist frequency weighted 4x" in log_a["recipe"]) == ("high_frequency" in loss)

    # A second run can start from the student (--init): its first weights are the student's, its pairs the same.
    shutil.copytree(tmp_path / "a" / "pairs", tmp_path / "c" / "pairs")
    further = D.DistillConfig(**{**TINY, **extra, "init": str(straight)})
    start = D._student(further).unet.state_dict()
    assert all(torch.equal(start[k], a[k]) for k in a)
    longer = _unet(D.distill(tmp_path / "c", further, progress=False))
    assert any(not torch.equal(longer[k], a[k]) for k in a)
    assert json.loads((tmp_path / "c" / "model" / "train_log.json").read_text())["config"]["init"] == str(straight)


def test_the_discriminator_judges_the_student_s_one_step_images_against_the_teacher_s(tmp_path, monkeypatch):
    """At step 0 the student is the teacher's weights: its fakes must be its x0 estimates at the first timestep,
    without guidance, from the noises of that step's pairs, and the reals the teacher's images of those pairs."""
    seen = []
    real_step = D.discriminator_step
    monkeypatch.setattr(D, "discriminator_step", lambda *a, **kw: seen.append(kw) or real_step(*a, **kw))
    cfg = D.DistillConfig(**{**TINY, "steps": 1, "adversarial": 0.5})
    D.distill(tmp_path, cfg, progress=False)
    backend = load("shapes", device="cpu")
    _, a_end, grids = D.coupling_levels(backend.ddim_config, cfg)
    z, y, captions, _ = D.load_pairs(sorted((tmp_path / "pairs").iterdir())[1:])  # after the validation shard
    a = backend.pipe.scheduler.alphas_cumprod.double()
    x0, eps = D.line_through(z, y, float(a[999]), a_end)
    pairs = D.distill_batch(cfg, 0, x0, eps, captions, grids, a).pairs
    with torch.no_grad():
        cond = backend.pipe.encode_prompt([captions[i] for i in pairs])
        e = backend.pipe.unet(z[pairs], torch.full((len(pairs),), 999), encoder_hidden_states=cond).sample
    assert len(seen) == 1 and torch.equal(seen[0]["real"], x0[pairs])
    assert torch.allclose(seen[0]["fake"], D.x0_estimate(z[pairs], e, float(a[999])), atol=1e-4)
    assert torch.allclose(seen[0]["text"], cond.mean(dim=1))


@pytest.mark.parametrize("teacher, message", [("shapes-flow", "must be a DDIM shapes model"),
                                              ("shapes-cosine", "needs trailing spacing")])
def test_distill_shapes_refuses_a_teacher_it_cannot_distil(tmp_path, teacher, message):
    r = CliRunner().invoke(distill_shapes, ["--out", str(tmp_path / "t"), "--teacher", teacher, "--pairs", "4"])
    assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("option", ["--huber", "--guidance", "--lr", "--finish", "--ema-decay",
                                    "--high-frequency-weight"])
def test_distill_shapes_refuses_a_number_that_is_not_finite(tmp_path, option):
    r = CliRunner().invoke(distill_shapes, ["--out", str(tmp_path / "t"), option, "nan"])
    assert r.exit_code == 2 and "'nan' is not a finite number" in r.output
    assert not (tmp_path / "t").exists()


def test_distill_shapes_options_reach_the_recipe_and_unset_ones_keep_its_values(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(D, "distill", lambda out, cfg: seen.append(cfg) or out)
    r = CliRunner().invoke(distill_shapes, ["--out", str(tmp_path / "t"), "--ema-decay", "0.999", "--lr", "3e-5",
                                            "--batch-size", "8", "--high-frequency-weight", "2"])
    assert r.exit_code == 0, r.output
    want = D.DistillConfig(ema_decay=0.999, lr=3e-5, batch_size=8, high_frequency=2.0)
    assert seen == [want] and want.ema_decay != D.DistillConfig().ema_decay
    r = CliRunner().invoke(distill_shapes, ["--out", str(tmp_path / "t"), "--ema-decay", "1"])
    assert r.exit_code == 2 and "--ema-decay" in r.output  # a decay of 1 never moves the average: refused


def test_distill_shapes_pairs_part_makes_only_its_shards_and_trains_nothing(tmp_path):
    args = ["--out", str(tmp_path / "t"), "--pairs", "4", "--val-pairs", "4", "--teacher-steps", "2"]
    r = CliRunner().invoke(distill_shapes, [*args, "--pairs-part", "1/2"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "t" / "pairs").iterdir()) == ["shard-00001.safetensors"]
    assert not (tmp_path / "t" / "model").exists() and not (tmp_path / "t" / "checkpoint").exists()
    r = CliRunner().invoke(distill_shapes, ["--out", str(tmp_path / "f"), "--pairs", "8", "--val-pairs", "4",
                                            "--teacher-steps", "2", "--finish", "0.5", "--finish-pairs", "8",
                                            "--pairs-part", "1/2"])
    assert r.exit_code == 0, r.output  # the finishes of the pair shard it made (1), not of the other's (2)
    assert sorted(p.name for p in (tmp_path / "f" / "pairs").iterdir()) == ["shard-00001.safetensors"]
    assert sorted(p.name for p in (tmp_path / "f" / "finishes").iterdir()) == ["shard-00001.safetensors"]
    for bad in ("2/2", "1", "a/2", "-1/2"):
        r = CliRunner().invoke(distill_shapes, [*args, "--pairs-part", bad])
        assert r.exit_code == 2 and "R/N" in r.output


def test_the_shipped_student_is_the_recipe_s_and_runs_as_a_turbo_model():
    """shapes-turbo loads by name with turbo defaults (4 steps at CFG 1.5), is not the teacher, and its logs say how
    it was made: the recipe from the teacher (stage 1), then the same recipe from that student (stage 2), then from
    stage 2 on four times the pairs (stage 3), then from stage 3 with half of each batch at its own states
    (stage 4), then two rounds with half of each batch at the teacher's finishes of the starting student's own
    states (stages 5 and 6)."""
    folder = shipped_models()["shapes-turbo"]
    backend = load("shapes-turbo")
    assert (backend.defaults.steps, backend.defaults.guidance) == (4, 1.5)
    student, teacher = _unet(folder), _unet(shipped_models()["shapes"])
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)
    names = [f"train_log_stage{i}.json" for i in range(1, 6)] + ["train_log.json"]
    logs = [json.loads((folder / name).read_text()) for name in names]
    assert logs[0]["config"].get("init") is None  # stage 1 predates --init
    # each stage from the one before: a run's model folder, or (stage 5) the shipped weights of stage 4
    assert [log["config"]["init"] for log in logs[1:]] == [
        "/work/runs/shapes-turbo/model", "/work/runs/shapes-turbo-b/model", "/work/runs/shapes-turbo-c/model",
        "src/stablenoise/weights/shapes-turbo", "/work/runs/shapes-turbo-g/model"]
    recipe = {**asdict(D.DistillConfig()), "student_steps": [1, 2, 4], "threads": 1, "init": None, "steps": None}
    before = {"rollout": 0.0, "adversarial": 0.0, "adversarial_start": 100, "discriminator_lr": 4e-4,
              "finish": 0.0, "finish_pairs": 2048, "huber": 0.0, "finish_keeps_first": False,
              "high_frequency": 0.0}  # newer options
    finishing = {**recipe, "pairs": 4096, "threads": 2, "finish": 0.5, "lr": 1e-4}
    assert [{**before, **log["config"], "init": None, "steps": None} for log in logs] == [
        recipe, recipe, {**recipe, "pairs": 4096, "threads": 2},
        {**recipe, "pairs": 4096, "threads": 2, "rollout": 0.5}, finishing, finishing]
    assert [log["config"]["steps"] for log in logs] == [800, 1600, 2400, 2400, 2000, 1500]
    assert [log["train_pairs"] for log in logs[1:]] == [1024, 4096, 4096, 4096, 4096]
    assert [log.get("finish_states", 0) for log in logs] == [0, 0, 0, 0, 8192, 8192]
    noise = sn.noises_from_seeds([0], backend.latent_shape)
    image = backend.denoise(noise, backend.encode(["a red circle"], 1.0), 4, 1.0)
    assert torch.isfinite(image).all() and image.abs().max() <= 1.5
    # its default CFG runs the unconditional branch too, and moves the image
    guided = backend.denoise(noise, backend.encode(["a red circle"], 1.5), 4, 1.5)
    assert torch.isfinite(guided).all() and not torch.allclose(guided, image, atol=1e-3)
