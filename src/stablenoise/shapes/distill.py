"""Distil the shipped DDIM model into a few-step student: ``stablenoise distill-shapes`` (``shapes-turbo``).

Recipe: reflow on the teacher's coupling (Liu et al. 2022, "Flow Straight and Fast"; InstaFlow, Liu et al.
2023, did it for Stable Diffusion). The teacher maps a noise z, with a training caption, to an image y by
deterministic guided DDIM; that pair fixes one DDIM line x(a) = sqrt(a) x0 + sqrt(1 - a) eps through z (at the
first timestep's level) and y (at the level the last step lands on). The student, initialised from the teacher
and run without classifier-free guidance (guidance folded in), learns to predict that line's eps from any point
of it at the trailing 1-, 2- and 4-step timesteps and between them. A DDIM step keeps eps and x0 when the
prediction is exact, so 1, 2 or 4 student steps land on the teacher's image, and DDIM inversion runs unchanged.

Points of the teacher's lines are not where the student's later steps start when its first step errs: there
x is the student's own state, which no line passes through. ``rollout`` puts a share of each batch there: the
pair's noise taken 1 to T - 1 DDIM steps along a T-step student schedule by the student itself (no gradient),
with the target still the teacher's image, so the later steps learn to correct the earlier ones (the
"own-state" training of multistep distillation; on this model the first step's error was nearly all of the
4-step error, and later steps trained on lines alone left it in place).

A state the student reached has its own right answer, and it is not the pair's image: the student's first step
errs, and the teacher, run from the student's state, draws a somewhat different (but sound) image. Rows whose
target is the pair's image teach the later steps to average over what that state could become, a blur that
rounds squares into circles. ``finish`` puts a share of each batch at the starting student's own states with the
*teacher's finish from that state* as target (the coupling's guided DDIM, from the state's timestep down):
DAgger's remedy (Ross et al. 2011), an expert labelling the learner's own states, here paid once like the
pairs, for ``finish_pairs`` of them. The stage-4 student's 3 steps then the teacher's finish passed the
verifier 71.5% of the time where its own 4 steps passed 56.0% (benchmarks/turbo_handoff.py, docs/bench.md): its
states were sound and its last step was not.

``adversarial`` adds ADD's second loss (Sauer et al. 2023): a discriminator (discriminator.py) judges the
student's one-step images against the teacher's, and the student is pulled toward fooling it as hard as toward
the regression times ``adversarial``. Measured on the shipped student it did not help (docs/bench.md), so the
shipped recipe has none.

Cost decides the recipe on a CPU: a pair costs one teacher sampling (teacher_steps x 2 UNet calls), paid once
and stored in safetensors shards (resumable, each shard seeded by its index), after which a training step
costs one student forward and backward; progressive and consistency distillation call the teacher inside
every training step. Training is seeded like ``train.py``: step i draws its pairs and timesteps from
``default_rng([seed, i])``, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from types import SimpleNamespace
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .. import ddim
from ..errors import StablenoiseError
from ..records import atomic_write, versions
from . import world
from .discriminator import Discriminator, adaptive_weight, discriminator_step
from .pipeline import ShapesPipeline
from .train import atomic_dir, plot_losses

PAIR_STREAM, TRAIN_STREAM, ROLLOUT_STREAM, FINISH_STREAM = 1, 2, 3, 4  # independent random streams, one seed


@dataclass
class DistillConfig:
    teacher: str = "shapes"  # a shipped model name or a shapes pipeline folder
    init: str | None = None  # the student's starting weights (a student to train on); None: the teacher's
    pairs: int = 1024  # training pairs (whole shards): stage 1 of the shipped student; its stages 3-4 had 4,096
    val_pairs: int = 128  # held-back pairs for the validation curve (whole shards, drawn first)
    shard_size: int = 64
    teacher_steps: int = 25  # DDIM at 25 steps is within 1-2 verifier points of 50 at half the cost
    guidance: float = 2.0  # the teacher's CFG; the student runs without CFG
    student_steps: tuple[int, ...] = (1, 2, 4)  # the step counts whose timesteps training covers
    at_steps: float = 0.5  # share of training timesteps exactly at those steps' timesteps; the rest between
    rollout: float = 0.0  # share of each batch moved to the student's own states (module docstring)
    finish: float = 0.0  # share of each batch at the starting student's states, the teacher's finish as target
    finish_pairs: int = 2048  # training pairs (the first ones, whole shards) whose states the teacher finishes
    finish_keeps_first: bool = False  # rows at the first timestep stay on the lines (with_finishes); the shipped: no
    adversarial: float = 0.0  # the adversarial term's pull relative to the regression's (discriminator.py); 0: none
    adversarial_start: int = 100  # steps the discriminator trains alone before the student feels it
    discriminator_lr: float = 4e-4  # faster than the student's (Heusel et al. 2017's two time-scale rule)
    steps: int = 800
    batch_size: int = 16  # the shipped student's: 800 steps of 16 took 15 min on one CPU thread
    lr: float = 2e-4
    warmup: int = 30
    ema_decay: float = 0.99
    huber: float = 0.0  # 0: squared error; c > 0: element-wise pseudo-Huber with this c (weighted_loss)
    high_frequency: float = 0.0  # extra weight on the error's energy above half the Nyquist frequency (weighted_loss)
    seed: int = 0
    checkpoint_every: int = 100
    eval_every: int = 100
    threads: int = 0  # 0: torch's default
    device: str = "cpu"

    def __post_init__(self):
        if self.finish_keeps_first and not self.finish:
            raise StablenoiseError("finish_keeps_first (--finish-keeps-first) keeps rows off the finishes: it needs "
                                   "finish (--finish) > 0")
        if self.huber and self.high_frequency:
            raise StablenoiseError("huber (--huber) and high_frequency (--high-frequency-weight) are two losses; "
                                   "choose one")


# ---------------------------------------------------------------- the coupling: teacher pairs

def training_caption(rng: np.random.Generator) -> str:
    """A caption drawn like the teacher's training data: never a held-out combination."""
    tag = world.sample_tag(rng)
    return world.caption_of(tag, world.sample_combo(rng, tag, "train"))


def line_through(z: torch.Tensor, y: torch.Tensor, a_start: float | torch.Tensor, a_end: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The DDIM line x(a) = sqrt(a) x0 + sqrt(1 - a) eps with x(a_start) = z and x(a_end) = y: (x0, eps);
    ``a_start`` a number, or one per row.

    Solves the 2x2 system per pixel. With a_end = 1 it is x0 = y, eps = (z - sqrt(a_start) y) / sqrt(1 - a_start);
    the shapes schedule ends at alpha_bar(0) < 1, where the teacher's image still holds sqrt(1 - a_end) of eps.
    """
    a = torch.as_tensor(a_start, dtype=torch.float64)
    a = a.view(-1, *[1] * (z.dim() - 1)) if a.dim() else a
    sa, sb = a.sqrt(), (1 - a).sqrt()
    ea, eb = math.sqrt(a_end), math.sqrt(1 - a_end)
    det = sa * eb - ea * sb
    if bool((det.abs() < 1e-6).any()):
        raise StablenoiseError("the teacher's first and last noise levels coincide: no line through the pair")
    z, y = z.double(), y.double()
    return ((eb * z - sb * y) / det).float(), ((sa * y - ea * z) / det).float()


def coupling_levels(ddim_config: dict, cfg: DistillConfig) -> tuple[float, float, list[torch.Tensor]]:
    """(alpha_bar where the teacher starts, where it lands, the student's timesteps per step count), refused
    unless every student schedule starts at the teacher's first timestep (trailing spacing): the student's
    first input is then the very noise the teacher started from."""
    sched = ddim.schedule(ddim_config, cfg.teacher_steps)
    grids = [ddim.schedule(ddim_config, s).timesteps.cpu() for s in cfg.student_steps]
    first = int(sched.timesteps[0])
    if any(int(g[0]) != first for g in grids):
        raise StablenoiseError(f"the teacher's {cfg.teacher_steps}-step schedule starts at t={first}, a student's "
                               f"at t={[int(g[0]) for g in grids]}: distillation needs trailing spacing")
    return float(sched.alphas[0]), float(sched.alphas[-1]), grids


def pair_settings(cfg: DistillConfig, fingerprint: str) -> dict:
    """What a shard's content depends on; shards made under other settings are refused, not mixed."""
    return {"teacher": cfg.teacher, "teacher_weights": fingerprint, "teacher_steps": cfg.teacher_steps,
            "guidance": cfg.guidance, "shard_size": cfg.shard_size, "seed": cfg.seed}


def teacher_shard(backend, cfg: DistillConfig, index: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Shard ``index``: noises and captions from ``default_rng([seed, PAIR_STREAM, index])``, and the teacher's
    images of them (deterministic guided DDIM, exactly the bench's sampler)."""
    rng = np.random.default_rng([cfg.seed, PAIR_STREAM, index])
    captions = [training_caption(rng) for _ in range(cfg.shard_size)]
    z = torch.from_numpy(rng.standard_normal((cfg.shard_size, *backend.latent_shape), dtype=np.float32))
    with torch.inference_mode():
        y = backend.denoise(z, backend.encode(captions, cfg.guidance), cfg.teacher_steps, cfg.guidance)
    return {"noise": z, "image": y.float().cpu().contiguous()}, captions


def shard_count(n: int, cfg: DistillConfig) -> int:
    return -(-n // cfg.shard_size)


def _ensure_shards(paths: list[Path], expected: dict, make, desc: str, progress: bool, part: tuple[int, int]) -> None:
    """Make the missing shards of ``paths`` (``make(i) -> (tensors, metadata)``), each written atomically with
    ``expected`` as its settings; a shard made under other settings is refused, not mixed or replaced. ``part=(r,
    n)``: only the shards whose index is r modulo n, so n processes can share the work (a shard depends on its index
    only). A killed run loses at most the shard in progress."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for i, path in enumerate(tqdm(paths, desc=desc, disable=not progress)):
        if i % part[1] != part[0]:
            continue
        if path.exists():
            with safe_open(path, "pt") as f:
                if json.loads(f.metadata()["settings"]) != expected:
                    raise StablenoiseError(f"{path} was made under other settings than {expected}; "
                                           "use another --out or the same settings")
            continue
        t0 = time.time()
        tensors, meta = make(i)
        meta = {"settings": json.dumps(expected), **meta, "seconds": f"{time.time() - t0:.3f}"}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _teacher(cfg: DistillConfig):
    from .. import load

    backend = load(cfg.teacher, device=cfg.device)
    if type(backend.pipe) is not ShapesPipeline:
        raise StablenoiseError(f"the teacher must be a DDIM shapes model (ShapesPipeline), not {cfg.teacher!r}")
    coupling_levels(backend.ddim_config, cfg)
    return backend


def ensure_pairs(out: Path, cfg: DistillConfig, progress: bool = True, part: tuple[int, int] = (0, 1)) -> list[Path]:
    """The shards of ``cfg.val_pairs + cfg.pairs`` pairs under OUT/pairs, making the missing ones (validation
    shards first; ``part`` as in :func:`_ensure_shards`)."""
    from ..bank import weights_fingerprint

    backend = _teacher(cfg)
    n = shard_count(cfg.val_pairs, cfg) + shard_count(cfg.pairs, cfg)
    paths = [out / "pairs" / f"shard-{i:05d}.safetensors" for i in range(n)]

    def make(i):
        tensors, captions = teacher_shard(backend, cfg, i)
        return tensors, {"captions": json.dumps(captions)}

    _ensure_shards(paths, pair_settings(cfg, weights_fingerprint(backend)), make, "teacher pairs", progress, part)
    return paths


# ---------------------------------------------------------------- the teacher's finishes of the student's states

def finish_levels(levels: tuple[ddim.Level, ...], t: int, alpha_bar: float) -> tuple[ddim.Level, ...]:
    """The coupling's sampler from timestep ``t`` (at ``alpha_bar``): a level there, then the levels of the
    teacher's schedule (``levels``, noisiest first, ending at its clean level) whose timesteps are below it."""
    here = ddim.alpha_level(alpha_bar, torch.tensor(t, device=levels[0].t.device))
    return (here, *[lv for lv in levels[1:] if int(lv.t) < t])


def own_states_of(pipe: ShapesPipeline, z: torch.Tensor, captions: list[str], grids: list[torch.Tensor],
                  alphas_cumprod: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(timestep, states) where the student's own sampling of each noise pauses: after k of T steps, for each
    schedule of T > 1 steps and 0 < k < T (every state its later steps start from)."""
    model = student_eps(pipe, captions)
    out = []
    one = torch.ones(len(z), dtype=torch.long)
    for grid in (g.tolist() for g in grids if len(g) > 1):
        x = z
        for k in range(1, len(grid)):  # one step at a time, each state from the last: no step is taken twice
            x, _ = own_sampling(model, x, grid[k - 1:], alphas_cumprod, one)
            out.append((grid[k], x))
    return out


def finish_settings(cfg: DistillConfig, teacher_fingerprint: str, student_fingerprint: str) -> dict:
    """What a finish shard depends on beyond its pair shard."""
    return {"teacher": cfg.teacher, "teacher_weights": teacher_fingerprint, "teacher_steps": cfg.teacher_steps,
            "guidance": cfg.guidance, "student": cfg.init or cfg.teacher, "student_weights": student_fingerprint,
            "student_steps": list(cfg.student_steps), "seed": cfg.seed}


def ensure_finishes(out: Path, cfg: DistillConfig, pair_paths: list[Path], progress: bool = True,
                    part: tuple[int, int] = (0, 1)) -> list[Path]:
    """For the first ``cfg.finish_pairs`` training pairs (``pair_paths``: the training shards), the starting
    student's own states (:func:`own_states_of`) and the teacher's image of each (guided DDIM from the state's
    timestep, :func:`finish_levels`), as OUT/finishes/shard-i (i: the pair shard's index). Resumable like the pairs."""
    from ..bank import weights_fingerprint

    if cfg.finish_pairs > cfg.pairs:
        raise StablenoiseError(f"finish_pairs ({cfg.finish_pairs}) cannot exceed the training pairs ({cfg.pairs})")
    backend, student = _teacher(cfg), _student(cfg)
    _, _, grids = coupling_levels(backend.ddim_config, cfg)
    alphas_cumprod = DDPMScheduler.from_config(student.scheduler.config).alphas_cumprod.double()
    levels = backend.levels(cfg.teacher_steps)
    n_val = shard_count(cfg.val_pairs, cfg)
    sources = pair_paths[n_val:n_val + shard_count(cfg.finish_pairs, cfg)]
    paths = [out / "finishes" / p.name for p in sources]

    def make(i):
        z, _, captions, _ = load_pairs([sources[i]])
        states, timesteps, rows, images = [], [], [], []
        cond = backend.encode(captions, cfg.guidance)
        for t, x in own_states_of(student, z, captions, grids, alphas_cumprod):
            with torch.inference_mode():
                y = ddim.to_data(backend.denoiser(cond, cfg.guidance), x.to(backend.device, backend.work_dtype),
                                 finish_levels(levels, t, float(alphas_cumprod[t])))
            states.append(x)
            images.append(y.float().cpu())
            timesteps.append(torch.full((len(x),), t))
            rows.append(torch.arange(len(x)))
        return ({"state": torch.cat(states).contiguous(), "timestep": torch.cat(timesteps),
                 "row": torch.cat(rows), "image": torch.cat(images).contiguous()}, {})

    expected = finish_settings(cfg, weights_fingerprint(backend), weights_fingerprint(SimpleNamespace(pipe=student)))
    # a part finishes the pair shards it made itself: its index among all shards is r modulo n
    _ensure_shards(paths, expected, make, "teacher finishes", progress, ((part[0] - n_val) % part[1], part[1]))
    return paths


def load_finishes(paths: list[Path], first_pair: list[int], alphas_cumprod: torch.Tensor, a_end: float) -> dict:
    """The finishes as lines through each state and its teacher image: x0, eps, timestep, and the training pair
    each came from (``first_pair[i]``: the index of shard i's first pair among the training pairs)."""
    from safetensors.torch import load_file

    parts = [load_file(p) for p in paths]
    t = torch.cat([d["timestep"] for d in parts])
    x0, eps = line_through(torch.cat([d["state"] for d in parts]), torch.cat([d["image"] for d in parts]),
                           alphas_cumprod[t], a_end)
    pairs = torch.cat([d["row"] + first for d, first in zip(parts, first_pair)])
    return {"x0": x0, "eps": eps, "t": t, "pairs": pairs}


def load_pairs(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor, list[str], float]:
    """(noises, teacher images, captions, teacher seconds spent) of the shards, in order."""
    from safetensors import safe_open

    zs, ys, captions = [], [], []
    for path in paths:
        with safe_open(path, "pt") as f:
            zs.append(f.get_tensor("noise"))
            ys.append(f.get_tensor("image"))
            captions += json.loads(f.metadata()["captions"])
    return torch.cat(zs), torch.cat(ys), captions, _seconds(paths)


# ---------------------------------------------------------------- the student's training batches

def sample_timesteps(rng: np.random.Generator, n: int, grids: list[torch.Tensor], at_steps: float) -> torch.Tensor:
    """n training timesteps: with probability ``at_steps`` one of the student schedules' timesteps (uniform over
    their union: the 4-step ones hold the 1- and 2-step ones), otherwise uniform between the lowest and highest."""
    union = torch.unique(torch.cat(grids))
    lo, hi = int(union.min()), int(union.max())
    on_grid = union[torch.from_numpy(rng.integers(len(union), size=n))]
    between = torch.from_numpy(rng.integers(lo, hi + 1, size=n))
    return torch.where(torch.from_numpy(rng.random(n) < at_steps), on_grid, between)


class Batch(NamedTuple):
    x_t: torch.Tensor  # the model's input
    t: torch.Tensor  # its timesteps
    target: torch.Tensor  # the eps whose x0 estimate is the teacher's image
    weight: torch.Tensor  # the loss weight 1 / alpha_bar(t)
    captions: list[str]
    pairs: torch.Tensor  # which training pair each row is


def distill_batch(cfg: DistillConfig, step: int, x0: torch.Tensor, eps: torch.Tensor, captions: list[str],
                  grids: list[torch.Tensor], alphas_cumprod: torch.Tensor) -> Batch:
    """The :class:`Batch` of training step ``step`` on the teacher's lines: pairs drawn with
    replacement, each moved to its timestep on its own line. The weight 1 / alpha_bar(t) makes the loss
    |eps error|^2 + |x0 error|^2 (Salimans & Ho 2022's "SNR + 1"), so the 1-step timestep, where an eps error
    is magnified 14x in the image, is not drowned by the easy low-noise ones."""
    rng = np.random.default_rng([cfg.seed, TRAIN_STREAM, step])
    idx = torch.from_numpy(rng.integers(len(x0), size=cfg.batch_size))
    t = sample_timesteps(rng, cfg.batch_size, grids, cfg.at_steps)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return Batch(line_point(x0[idx], eps[idx], a), t, eps[idx], (1 / a).float().flatten(),
                 [captions[i] for i in idx.tolist()], idx)


def rollout_rows(cfg: DistillConfig, step: int, n: int, grids: list[torch.Tensor]) -> list[tuple[int, int, int]]:
    """(row, schedule, steps taken) for the rows of training step ``step`` that go to the student's own states:
    each row with probability ``cfg.rollout``, a uniform schedule of more than one step, 1 to T - 1 steps."""
    multi = [j for j, g in enumerate(grids) if len(g) > 1]
    if not multi:
        return []
    rng = np.random.default_rng([cfg.seed, ROLLOUT_STREAM, step])
    chosen = np.flatnonzero(rng.random(n) < cfg.rollout)
    picks = []
    for row in chosen.tolist():
        j = multi[int(rng.integers(len(multi)))]
        picks.append((row, j, int(rng.integers(1, len(grids[j])))))
    return picks


def with_finishes(cfg: DistillConfig, step: int, batch: Batch, finishes: dict, captions: list[str],
                  alphas_cumprod: torch.Tensor, first: int) -> Batch:
    """``batch`` with each row, with probability ``cfg.finish``, replaced by a uniformly drawn finish (a starting
    student's state at its timestep; target: the eps whose x0 estimate there is the teacher's finish). With
    ``cfg.finish_keeps_first``, rows at ``first`` (the timestep every schedule starts at) are kept: the student's own
    state there is the pair's noise itself, a point of the lines, and with ``finish`` 1 the first step would
    otherwise go untrained and drift (at 1.0 it did, and its images lost high frequencies, docs/bench.md)."""
    rng = np.random.default_rng([cfg.seed, FINISH_STREAM, step])
    drawn = rng.random(len(batch.t)) < cfg.finish
    if cfg.finish_keeps_first:
        drawn &= batch.t.numpy() != first
    rows = torch.from_numpy(np.flatnonzero(drawn))
    if not len(rows):
        return batch
    pick = torch.from_numpy(rng.integers(len(finishes["t"]), size=len(rows)))
    x_t, t, target, weight, caps, pairs = (v.clone() if torch.is_tensor(v) else list(v) for v in batch)
    t[rows] = finishes["t"][pick]
    a = alphas_cumprod[t[rows]]
    x_t[rows] = line_point(finishes["x0"][pick], finishes["eps"][pick], a.view(-1, 1, 1, 1))
    target[rows], weight[rows], pairs[rows] = finishes["eps"][pick], (1 / a).float(), finishes["pairs"][pick]
    for r, pair in zip(rows.tolist(), pairs[rows].tolist()):
        caps[r] = captions[pair]
    return Batch(x_t, t, target, weight, caps, pairs)


def line_point(x0: torch.Tensor, eps: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
    """The point of the DDIM line (x0, eps) at alpha_bar ``a`` (a number, or one per row), computed in float64."""
    a = torch.as_tensor(a, dtype=torch.float64)
    return (a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()).float()


def x0_estimate(x: torch.Tensor, eps: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
    """The image a noise estimate implies at alpha_bar ``a`` (a number, or one per row): DDIM's x0."""
    a = torch.as_tensor(a, dtype=torch.float64, device=x.device)  # the roots in float64, as line_point's
    return (x - (1 - a).sqrt().to(x.dtype) * eps) / a.sqrt().to(x.dtype)


def student_eps(pipe: ShapesPipeline, captions: list[str]):
    """The student as it is now, as ``eps_model(x, t, rows) -> eps`` for the rows of a batch with these captions
    (inputs and outputs on the CPU, whatever the student's device). The captions are encoded once, not per call:
    the text encoder is frozen."""
    dev = pipe.device
    with torch.no_grad():
        cond = pipe.encode_prompt(captions)

    def model(x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return pipe.unet(x.to(dev), t.to(dev), encoder_hidden_states=cond[rows.to(cond.device)]).sample.float().cpu()
    return model


@torch.no_grad()
def own_sampling(eps_model, x: torch.Tensor, grid: list[int], alphas_cumprod: torch.Tensor,
                 taken: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The student's own DDIM sampling along ``grid`` from ``x`` (its rows' states at grid[0]): row i takes
    ``taken[i]`` model calls (default: all of them, the last one only estimating x0). Returns the rows' states
    where they stopped and, for each call k, the x0 estimates of the rows that made it."""
    rows = torch.arange(len(x))
    taken = torch.full((len(x),), len(grid)) if taken is None else taken
    x, estimates = x.clone(), []
    for k, t in enumerate(grid[:int(taken.max())]):
        go, a = taken > k, float(alphas_cumprod[t])
        e = eps_model(x[go], torch.full((int(go.sum()),), int(t)), rows[go])
        estimates.append(x0_estimate(x[go], e, a))
        if k + 1 < len(grid):
            x[go] = ddim.step(e, x[go], a, float(alphas_cumprod[grid[k + 1]]))
    return x, estimates


@torch.no_grad()
def own_states(batch: Batch, picks: list[tuple[int, int, int]], x0: torch.Tensor, eps: torch.Tensor,
               grids: list[torch.Tensor], alphas_cumprod: torch.Tensor, eps_model) -> Batch:
    """``batch`` with the rows of ``picks`` moved to the student's own states: each row's pair noise (its line at
    the schedule's first timestep) taken its steps along its schedule by ``eps_model(x, t, rows) -> eps`` with
    DDIM; the target is the eps that makes the x0 estimate there the teacher's image."""
    x_t, t, target, weight = (v.clone() for v in batch[:4])
    for j, grid in enumerate(grids):
        mine = [(row, taken) for row, s, taken in picks if s == j]
        if not mine:
            continue
        rows, taken = (torch.tensor(v) for v in zip(*mine))
        pairs = batch.pairs[rows]
        start = line_point(x0[pairs], eps[pairs], float(alphas_cumprod[grid[0]]))
        x, _ = own_sampling(lambda x, t, local: eps_model(x, t, rows[local]), start, grid.tolist(),
                            alphas_cumprod, taken)
        t[rows] = grid[taken]
        a = alphas_cumprod[t[rows]].view(-1, 1, 1, 1)
        x_t[rows], weight[rows] = x, (1 / a).float().flatten()
        target[rows] = ((x.double() - a.sqrt() * x0[pairs].double()) / (1 - a).sqrt()).float()
    return batch._replace(x_t=x_t, t=t, target=target, weight=weight)


def high_band(height: int, width: int, device=None) -> torch.Tensor:
    """The 2-D DFT bins above half the Nyquist frequency (max(|fy|, |fx|) > 1/4 cycle per pixel): the band whose
    share of the energy the bench reports as the images' high-frequency share (benchmarks/stability_proxies.py)."""
    fy = torch.fft.fftfreq(height, device=device).abs().view(-1, 1)
    fx = torch.fft.fftfreq(width, device=device).abs().view(1, -1)
    return torch.maximum(fy, fx) > 0.25


def weighted_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, huber: float = 0.0,
                  high_frequency: float = 0.0) -> torch.Tensor:
    """The batch's mean of weight x the squared eps error (per pixel). With ``huber`` = c > 0, each pixel's error
    e = sqrt(weight) x (eps error) costs sqrt(e^2 + c^2) - c instead (the pseudo-Huber loss of LCM, Luo et al.
    2023, and iCT, Song & Dhariwal 2023): quadratic below c, linear above. Where a state could become either of
    two images, the squared error's minimiser is their pixel mean, a blur (a square's rounded corner); a loss
    that grows linearly is minimised nearer the pixel's likelier value.

    With ``high_frequency`` = h > 0, the error's energy in :func:`high_band` counts 1 + h times (a frequency-weighted
    squared error, as the focal frequency loss of Jiang et al. 2021 with a fixed weight): the band holds about a
    tenth of an image's energy, so a student that fits the coarse image is barely pulled toward the grain it
    smooths away. The minimiser is still the mean; only the fit's emphasis moves."""
    err = pred.float() - target
    if huber:
        err = weight.view(-1, 1, 1, 1).sqrt() * err
        return ((err.square() + huber ** 2).sqrt() - huber).mean()
    per_row = err.square().mean(dim=(1, 2, 3))
    if high_frequency:
        # orthonormal DFT: a bin's |E|^2 is energy in pixel units (Parseval), so the band's part adds up exactly
        power = torch.fft.fft2(err, norm="ortho").abs().square()
        per_row = per_row + high_frequency * (power * high_band(*err.shape[-2:], err.device)).mean(dim=(1, 2, 3))
    return (weight * per_row).mean()


def lr_at(cfg: DistillConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def validation_error(pipe: ShapesPipeline, lines: dict, grids: list[torch.Tensor], alphas_cumprod) -> dict:
    """Mean squared x0 error of the student on the held-back pairs (image units, [-1, 1] scale): from the line's
    point at each trailing timestep (key: the timestep), and at the last step of the student's own T-step
    sampling from the pair's noise (key: "T steps", for each schedule of more than one step)."""
    x0, eps, model = lines["x0"], lines["eps"], student_eps(pipe, lines["captions"])

    def error(grid: list[int]) -> float:
        start = line_point(x0, eps, float(alphas_cumprod[grid[0]]))
        return float((own_sampling(model, start, grid, alphas_cumprod)[1][-1] - x0).square().mean())

    out = {str(t): error([t]) for t in sorted({int(v) for g in grids for v in g}, reverse=True)}
    out.update({f"{len(g)} steps": error(g.tolist()) for g in grids if len(g) > 1})
    return out


# ---------------------------------------------------------------- the training run

def _lines(paths: list[Path], a_start: float, a_end: float) -> dict:
    z, y, captions, seconds = load_pairs(paths)
    x0, eps = line_through(z, y, a_start, a_end)
    return {"x0": x0, "eps": eps, "captions": captions, "teacher_seconds": seconds}


def _student(cfg: DistillConfig) -> ShapesPipeline:
    from ..backends import shipped_models

    start = cfg.init or cfg.teacher
    folder = shipped_models().get(start, Path(start))
    pipe = ShapesPipeline.from_pretrained(str(folder))
    pipe.text_encoder.requires_grad_(False)  # the captions' encoding stays the teacher's
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(cfg.device)


def distill(out: str | Path, cfg: DistillConfig = DistillConfig(), progress: bool = True) -> Path:
    """Make (or reuse) the teacher pairs, then train the student; returns OUT/model (a ShapesPipeline folder
    with train_log.json and loss.png). Resumes from OUT/checkpoint."""
    torch.set_flush_denormal(True)  # ~18x faster small convolutions on CPU
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out)
    paths = ensure_pairs(out, cfg, progress)
    finish_paths = ensure_finishes(out, cfg, paths, progress) if cfg.finish else []
    pipe = _student(cfg)
    a_start, a_end, grids = coupling_levels(ddim.settings(pipe.scheduler.config), cfg)
    n_val = shard_count(cfg.val_pairs, cfg)
    val, train = _lines(paths[:n_val], a_start, a_end), _lines(paths[n_val:], a_start, a_end)
    alphas_cumprod = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod.double()
    finishes = load_finishes(finish_paths, [i * cfg.shard_size for i in range(len(finish_paths))], alphas_cumprod,
                             a_end) if finish_paths else None
    state = _Run(out / "checkpoint", pipe, cfg, alphas_cumprod, first=int(grids[0][0]))
    bar = tqdm(range(state.step, cfg.steps), initial=state.step, total=cfg.steps, desc="distill shapes-turbo",
               disable=not progress)
    t0 = time.time()
    for step in bar:
        batch = distill_batch(cfg, step, train["x0"], train["eps"], train["captions"], grids, alphas_cumprod)
        picks = rollout_rows(cfg, step, len(batch.t), grids) if cfg.rollout else []
        if picks:
            batch = own_states(batch, picks, train["x0"], train["eps"], grids, alphas_cumprod,
                               student_eps(pipe, batch.captions))
        if finishes is not None:
            batch = with_finishes(cfg, step, batch, finishes, train["captions"], alphas_cumprod, int(grids[0][0]))
        state.update(step, batch, train["x0"][batch.pairs], train["eps"][batch.pairs])
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            state.log["validation"][str(step + 1)] = validation_error(pipe, val, grids, alphas_cumprod)
            val_mse = state.log["validation"][str(step + 1)]
            bar.set_postfix(loss=f"{np.mean(state.log['losses'][-100:]):.4f}",
                            val=" ".join(f"{t}:{v:.4f}" for t, v in val_mse.items()))
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            state.save(step + 1)
    state.log["seconds"].append(time.time() - t0)
    state.ema.copy_to(pipe.unet.parameters())  # the shipped weights: the EMA, validated once more
    shipped = validation_error(pipe, val, grids, alphas_cumprod)
    return state.finish(out / "model", {"train_pairs": len(train["x0"]), "val_pairs": len(val["x0"]),
                                        "teacher_seconds": train["teacher_seconds"] + val["teacher_seconds"],
                                        "finish_states": 0 if finishes is None else len(finishes["t"]),
                                        "finish_seconds": _seconds(finish_paths),
                                        "timesteps": sorted({int(v) for g in grids for v in g}),
                                        "validation_x0_mse_shipped": shipped})


def _seconds(paths: list[Path]) -> float:
    from safetensors import safe_open

    total = 0.0
    for path in paths:
        with safe_open(path, "pt") as f:
            total += float(f.metadata()["seconds"])
    return total


def run_identity(cfg: DistillConfig) -> dict:
    """The settings a checkpoint must share with the run resuming it (threads, device and checkpointing may
    change)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("threads", "device", "checkpoint_every")}


class _Run:
    """The optimizer, the EMA, the discriminator (with ``cfg.adversarial``) and the log of one distillation run,
    resumed from a checkpoint if one exists."""

    def __init__(self, ckpt: Path, pipe: ShapesPipeline, cfg: DistillConfig, alphas_cumprod: torch.Tensor, first: int):
        self.ckpt, self.pipe, self.cfg = ckpt, pipe, cfg
        self.first, self.a_first = first, float(alphas_cumprod[first])  # the timestep every schedule starts at
        params = list(pipe.unet.parameters())
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        self.ema = EMAModel(params, decay=cfg.ema_decay, foreach=True)
        self.log = {"losses": [], "validation": {}, "seconds": []}
        self.disc = self.disc_opt = None
        if cfg.adversarial:
            with torch.random.fork_rng(devices=[]):  # the discriminator's initial weights, from the seed
                torch.manual_seed(cfg.seed)
                self.disc = Discriminator(pipe.text_encoder.config.hidden_size, pipe.unet.config.in_channels)
            self.disc.to(cfg.device)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.discriminator_lr, betas=(0.0, 0.99))
            self.log.update({"discriminator_losses": [], "adversarial_weights": []})
        self.step = 0
        if (ckpt / "state.pt").exists():
            state = torch.load(ckpt / "state.pt", weights_only=True, map_location=cfg.device)
            saved = {**run_identity(DistillConfig()), **state["config"]}  # an option newer than the run: its default
            if saved != run_identity(cfg):
                raise StablenoiseError(f"{ckpt} belongs to a run with other settings; use another --out")
            pipe.unet.load_state_dict(state["unet"])
            self.opt.load_state_dict(state["optimizer"])
            self.ema.load_state_dict(state["ema"])
            if self.disc is not None:
                self.disc.load_state_dict(state["discriminator"])
                self.disc_opt.load_state_dict(state["discriminator_optimizer"])
            self.log, self.step = state["log"], int(state["step"])

    def update(self, step: int, batch: Batch, x0: torch.Tensor, eps: torch.Tensor) -> None:
        """One step of the student on ``batch`` (x0, eps: the lines of its pairs) and, with a discriminator, one of
        the discriminator. The discriminator judges the student's one-step images of the pairs' noises against the
        teacher's images of them: the first step is where the student is unsure (its later x0 estimates are all but
        the teacher's: with them among the fakes its hinge loss was still 1.77 of 2 after 900 steps)."""
        dev = self.pipe.device
        with torch.no_grad():
            cond = self.pipe.encode_prompt(batch.captions)
        pred = self.pipe.unet(batch.x_t.to(dev), batch.t.to(dev), encoder_hidden_states=cond).sample
        loss = total = weighted_loss(pred, batch.target.to(dev), batch.weight.to(dev), self.cfg.huber,
                                     self.cfg.high_frequency)
        if self.disc is not None:
            text, noise = cond.mean(dim=1), line_point(x0, eps, self.a_first).to(dev)
            t = torch.full((len(noise),), self.first, device=dev)
            with torch.set_grad_enabled(step >= self.cfg.adversarial_start):
                fake = x0_estimate(noise, self.pipe.unet(noise, t, encoder_hidden_states=cond).sample.float(),
                                   self.a_first)
            if step >= self.cfg.adversarial_start:
                fooled = -self.disc(fake, text).mean()
                weight = adaptive_weight(loss, fooled, self.pipe.unet.conv_out.weight)
                total = loss + self.cfg.adversarial * weight * fooled
                self.log["adversarial_weights"].append(weight.item())
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.cfg, step)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.pipe.unet.parameters(), 1.0)
        self.opt.step()
        self.ema.step(self.pipe.unet.parameters())
        self.log["losses"].append(loss.item())
        if self.disc is not None:
            self.log["discriminator_losses"].append(
                discriminator_step(self.disc, self.disc_opt, real=x0.to(dev), fake=fake, text=text))

    def save(self, step: int) -> None:
        state = {"unet": self.pipe.unet.state_dict(), "optimizer": self.opt.state_dict(),
                 "ema": self.ema.state_dict(), "log": self.log, "step": step, "config": run_identity(self.cfg)}
        if self.disc is not None:
            state.update(discriminator=self.disc.state_dict(), discriminator_optimizer=self.disc_opt.state_dict())
        atomic_dir(self.ckpt, lambda d: torch.save(state, d / "state.pt"))

    def finish(self, final: Path, provenance: dict) -> Path:
        self.pipe.to("cpu")
        losses = self.log["losses"]
        c = self.cfg
        loss_name = f"pseudo-Huber loss, c = {c.huber:g}" if c.huber else "MSE"
        recipe = (f"reflow on {c.teacher}'s coupling: {c.teacher_steps}-step DDIM at guidance {c.guidance:g}; "
                  f"student without CFG at the timesteps of {list(c.student_steps)} steps"
                  + (f"; {c.finish:g} of each batch at its starting weights' own states of {c.finish_pairs} pairs, "
                     "the teacher's finish from each as target" if c.finish else "")
                  + ("; rows at the first timestep kept on the lines" if c.finish and c.finish_keeps_first else "")
                  + (f"; {loss_name}" if c.huber else "")
                  + (f"; the error above half the Nyquist frequency weighted {1 + c.high_frequency:g}x"
                     if c.high_frequency else ""))
        log = {"config": asdict(self.cfg), "recipe": recipe,
               **provenance, "versions": versions(), "final_loss_ema100": float(np.mean(losses[-100:])),
               "seconds_per_run": self.log["seconds"], "validation_x0_mse": self.log["validation"],
               "device": self.cfg.device, "losses": losses,
               **{k: self.log[k] for k in ("discriminator_losses", "adversarial_weights") if k in self.log}}

        def write(d: Path) -> None:
            self.pipe.save_pretrained(d, safe_serialization=True)
            (d / "train_log.json").write_text(json.dumps(log))
            plot_losses(losses, d / "loss.png", title=f"shapes-turbo distillation loss (eps + x0 {loss_name})")

        atomic_dir(final, write)
        shutil.rmtree(self.ckpt, ignore_errors=True)
        return final
