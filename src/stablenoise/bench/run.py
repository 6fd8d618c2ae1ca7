"""Run a bench: every (steps, guidance) config of a sweep, every prompt, K seeds and the optimizing methods,
into the results store. A rerun of the same command skips what is stored; a new reward is scored on the
stored images; an interrupted run loses at most the batch in flight.

Prompt i scores its own seeds ``first_seed + i*K ... + K-1``: prompts that repeat a caption are independent
samples, not duplicates. Optimizing methods start from each prompt's first seed (seed_rank 0), so their
rows pair with that seed's row.
"""

from __future__ import annotations

import math
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from tqdm.auto import tqdm

from ..backends.base import Backend, uses_cfg
from ..batching import auto_batch_size
from ..distributed import (ALONE, Claims, ProgressPoller, Shards, Unit, World, clear_claims, new_job_id, prune,
                           run_units, wait_for_units)
from ..errors import StablenoiseError
from ..noise import check_noise_norm, check_seed_range, noises_from_seeds
from ..records import atomic_write
from ..rewards import Reward
from ..stability import conditioning, evaluations as _evaluations, resolve, round_trips
from .methods import Method
from .schema import SEED_METHOD, STABILITY_PREFIX, start_method
from .store import Store, config_digest, inside


@dataclass(frozen=True)
class Sweep:
    steps: tuple[int, ...]
    guidance: tuple[float, ...]
    inversion_guidance: float | None = None
    k: int = 16
    first_seed: int = 0
    noise_norm: tuple[str, ...] = ("keep",)  # "shell": every seed's noise rescaled to norm sqrt(d) (noise.on_shell)

    def configs(self, backend: Backend) -> list[tuple[int, float, float, str]]:
        """(steps, guidance, inversion guidance, noise norm) of every config, the full grid, each checked."""
        return [(*resolve(backend, s, g, self.inversion_guidance), check_noise_norm(n))
                for n in self.noise_norm for s in self.steps for g in self.guidance]


def prompt_seeds(n_prompts: int, k: int, first_seed: int = 0) -> list[list[int]]:
    """Each prompt's own K seeds: prompt i gets first_seed + i*k ... first_seed + i*k + k-1."""
    return [[first_seed + i * k + r for r in range(k)] for i in range(n_prompts)]


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", label)



def ablation_inversion_guidance(guidance: float, inversion_guidance: float) -> float | None:
    """The other inversion guidance of the ablation: the denoising guidance when the run inverts at 1, else
    1; None without CFG (both are the same then)."""
    if not uses_cfg(guidance):
        return None
    return guidance if inversion_guidance == 1.0 else 1.0


def run_bench(backend: Backend, prompt_set, rewards: Mapping[str, Reward], methods: Sequence[Method],
              sweep: Sweep, out: str | Path, batch_size: int | None = None, optimize_batch_size: int = 8,
              optimizing_rewards: Mapping[str, Reward] | None = None, optimize_prompts: int | None = None,
              command: str | None = None, progress: bool = True, log: Callable[[str], None] = print,
              world: World = ALONE) -> Store | None:
    """Fill ``out/bench.sqlite``; returns the open store (on rank 0; None on the other ranks of a job).

    The work is cut into units of fixed content (a batch of seed rows, or one optimizing method over a few
    prompts), the same whatever the number of processes or the rows already stored, so that every row comes out
    bit for bit the same from one process, several, or a resumed run. Alone, each unit's rows commit to the store
    as it finishes. In a job of several processes (``world``), rank 0 plans the units, every rank takes the next
    free one, writes its images and a shard file (``out/shards/``), and rank 0 merges the shards into the store.

    Args:
        optimize_prompts: the optimizing methods run on the first N prompts only (about a hundred scores each).
        batch_size: seed rows per model call (None: from free memory, as ``select``), halved and retried on
            out-of-memory; fixed per config the first time a job plans it.
        world: the job's processes (:func:`stablenoise.distributed.join`); alone by default.
    Returns:
        The store, open, on rank 0; None on other ranks.
    """
    prompts = list(prompt_set.prompts)
    if not prompts:
        raise StablenoiseError(f"prompt set {prompt_set.name!r} is empty")
    configs = sweep.configs(backend)  # every setting checked before the store exists
    check_seed_range(sweep.first_seed, len(prompts) * sweep.k)  # also what SQLite INTEGERs hold
    ctx = Context(backend, prompts, prompt_seeds(len(prompts), sweep.k, sweep.first_seed), rewards,
                  tuple(m for m in methods if m.optimizing), optimizing_rewards or {}, Path(out),
                  progress and world.size == 1)
    ablation = any(m.entry.needs_variant for m in methods)
    described = [_describe(backend, prompt_set, sweep, *c) for c in configs]
    store, job = world.agree_holding(lambda: Store(out), lambda store: _plan(
        store, ctx, described, ablation, batch_size, optimize_batch_size, optimize_prompts, command, log))
    try:
        _execute(job, ctx, world, store, progress, log)
        for config in job.configs if store is not None else ():  # rank 0, on the merged store
            if config.extra_inv is not None:
                _add_variant(store, config.cid, backend, prompts, config.steps, config.guidance, config.extra_inv,
                             batch_size, config.norm)
            _backfill(store, config.cid, prompts, rewards)
    except BaseException:
        if store is not None:
            store.close()
        raise
    return store


def _describe(backend: Backend, prompt_set, sweep: Sweep, steps: int, guidance: float, inv: float,
              norm: str) -> dict:
    """A config as the store records it (its digest names it)."""
    return {"prompt_set": prompt_set.name, "prompt_set_digest": prompt_set.digest(), "model": backend.name,
            "backend": backend.describe(), "steps": steps, "guidance": guidance, "inversion_guidance": inv,
            "k": sweep.k, "first_seed": sweep.first_seed,
            **({"noise_norm": norm} if norm != "keep" else {})}  # keep: the configs of earlier stores


@dataclass(frozen=True)
class Context:
    """What every unit of a job needs, the same on every rank. ``progress``: the optimizers' own bars (alone)."""

    backend: Backend
    prompts: list
    seeds: list[list[int]]
    rewards: Mapping[str, Reward]
    optimizing: tuple[Method, ...]
    optimizing_rewards: Mapping[str, Reward]
    root: Path
    progress: bool


@dataclass(frozen=True)
class ConfigPlan:
    """One config of a job: its id and digest in the store, its round trip, and ``batch``: the seed rows of a
    unit (one model batch), fixed by rank 0 so that every rank and every rerun cuts the work alike."""

    cid: int
    digest: str
    steps: int
    guidance: float
    inv: float
    norm: str
    extra_inv: float | None
    batch: int


@dataclass(frozen=True)
class Job:
    """What rank 0 planned, shared with every rank: ``id`` names the job's claims, ``units`` the work left."""

    id: str
    configs: tuple[ConfigPlan, ...]
    units: tuple[Unit, ...]


SHARDS = "shards"  # under the run folder: finished units not yet merged (distributed.Shards)
CLAIMS = "claims"  # under SHARDS: which rank took and finished which unit (distributed.Claims)


def _plan(store: Store, ctx: Context, described: list[dict], ablation: bool, batch_size: int | None,
          optimize_batch_size: int, optimize_prompts: int | None, command: str | None, log) -> Job:
    """Rank 0: merge what a killed job left, register the configs, and list the units still to do."""
    if command:
        store.note_command(command)
    shards = Shards(store.file(SHARDS))
    shards.clean_partials()
    clear_claims(shards.folder / CLAIMS)
    merged = merge_shards(store, shards)
    if merged:
        log(f"merged {merged} rows that an earlier run left in {shards.folder}")
    prune(shards.folder / CLAIMS, shards.folder)  # a job makes them again
    plans, units = [], []
    n_opt = len(ctx.prompts[:optimize_prompts])
    for config in described:
        cid = store.config_id(config, [(p.text, p.tag) for p in ctx.prompts])
        steps, guidance, inv = config["steps"], config["guidance"], config["inversion_guidance"]
        norm = config.get("noise_norm", "keep")
        log(f"config {cid}: {len(ctx.prompts)} prompts of {config['prompt_set']}, {steps} steps, guidance "
            f"{guidance:g}, inversion guidance {inv:g}, K={config['k']}"
            + (", noises on the sqrt(d) shell" if norm == "shell" else ""))
        extra_inv = ablation_inversion_guidance(guidance, inv) if ablation else None
        plan = ConfigPlan(cid, config_digest(config), steps, guidance, inv, norm, extra_inv, 0)
        plan = replace(plan, batch=batch_size or _auto_batch(ctx, plan))
        plans.append(plan)
        units += _seed_units(store, ctx, len(plans) - 1, plan)
        for m in range(len(ctx.optimizing)):
            units += _method_units(store, ctx, len(plans) - 1, plan, m, n_opt, optimize_batch_size, log)
    return Job(new_job_id(), tuple(plans), tuple(units))


def _auto_batch(ctx: Context, plan: ConfigPlan) -> int:
    """The batch of a config's units (batching.auto_batch_size over all its seed rows, not the rows left, so
    that a rerun cuts the work as the first run did; on an accelerator one row, scored and dropped, measures)."""
    items = [(i, r) for i in range(len(ctx.prompts)) for r in range(len(ctx.seeds[i]))]
    make, read = _seed_trip(ctx, plan)
    return auto_batch_size(ctx.backend.device, lambda: round_trips(
        ctx.backend, items[:1], make, plan.steps, plan.guidance, _inversions(plan), read=read, batch_size=1),
        len(items), math.prod(ctx.backend.latent_shape))


def _seed_units(store: Store, ctx: Context, index: int, plan: ConfigPlan) -> list[Unit]:
    """The config's seed rows in consecutive batches of ``plan.batch`` (prompt by prompt, seed by seed); a unit
    holds the rows of its batch still missing."""
    done = store.done(plan.cid, SEED_METHOD)
    items = [(i, r) for i in range(len(ctx.prompts)) for r in range(len(ctx.seeds[i]))]
    units = []
    for a in range(0, len(items), plan.batch):
        todo = tuple((i, r) for i, r in items[a:a + plan.batch] if (i, ctx.seeds[i][r]) not in done)
        if todo:
            units.append(Unit(f"c{plan.cid}-seeds-{a:07d}", len(todo), ("seeds", index, todo)))
    return units


def _method_units(store: Store, ctx: Context, index: int, plan: ConfigPlan, m: int, n_prompts: int,
                  batch: int, log) -> list[Unit]:
    """An optimizing method over consecutive batches of ``batch`` prompts: a unit optimizes those of its prompts
    without the method's row, and adds the start row (``start_method``) where only that is missing (a store made
    before start rows existed gets them by running the optimizer for zero iterations)."""
    label = ctx.optimizing[m].label
    done, started = store.done(plan.cid, label), store.done(plan.cid, start_method(label))
    units, todo_n, starts_n = [], 0, 0
    for a in range(0, n_prompts, batch):
        chunk = range(a, min(a + batch, n_prompts))
        todo = tuple(i for i in chunk if (i, ctx.seeds[i][0]) not in done)
        starts = tuple(i for i in chunk if (i, ctx.seeds[i][0]) in done and (i, ctx.seeds[i][0]) not in started)
        if todo or starts:
            units.append(Unit(f"c{plan.cid}-m{m}-{a:06d}", 2 * len(todo) + len(starts),
                              ("method", index, m, todo, starts)))
        todo_n, starts_n = todo_n + len(todo), starts_n + len(starts)
    if todo_n:
        log(f"config {plan.cid}: {label} for {todo_n} prompts")
    if starts_n:
        log(f"config {plan.cid}: the start rows of {label} for {starts_n} prompts")
    return units


def _execute(job: Job, ctx: Context, world: World, store: Store | None, progress: bool, log) -> None:
    """Every rank does the units it takes; alone, each unit commits to the store; in a job, each becomes a shard
    that rank 0 merges as they come and, once every unit is finished, for good."""
    shards = Shards(inside(ctx.root, SHARDS))
    claims = Claims(shards.folder / CLAIMS, job.id, world.rank) if world.size > 1 else None
    boxes = {i: [c.batch] for i, c in enumerate(job.configs)}  # a batch halved on out-of-memory stays halved

    def hand(unit: Unit, config: ConfigPlan, rows: list[dict]) -> None:
        if world.size == 1:
            store.add(config.cid, rows)
        else:
            shards.write(unit, world.rank, {"config": config.digest, "rows": rows})

    def do(unit: Unit) -> None:
        config = job.configs[unit.work[1]]
        if unit.work[0] == "seeds":
            rows = seed_rows(ctx, config, unit.work[2], boxes[unit.work[1]])
        else:
            rows = method_rows(ctx, config, ctx.optimizing[unit.work[2]], *unit.work[3:])
        hand(unit, config, rows)

    merge = (lambda: merge_shards(store, shards)) if world.main and world.size > 1 else None
    bar = tqdm(total=sum(u.size for u in job.units), desc="bench", unit="row",
               disable=not (progress and world.main) or not job.units)
    try:
        with ProgressPoller(bar, job.units, claims) if merge else nullcontext():
            run_units(world, job.units, do, claims, bar, merge)
            per_rank = wait_for_units(job.units, claims, merge, world.size) if merge else {}
    finally:
        bar.close()
    if merge:
        merge_shards(store, shards)
        clear_claims(claims.root)
        prune(claims.root, shards.folder)  # a shard written since (by a rank of a killed job) stays for the next run
        log("units per rank: " + ", ".join(f"{r}: {n}" for r, n in per_rank.items()))


def merge_shards(store: Store, shards: Shards) -> int:
    """Merge every finished unit's shard into the store in one transaction, then remove the shards: rows
    already stored are skipped, so a merge cut short after its commit is merged again without a duplicate.

    Returns:
        The rows added.
    """
    pending = shards.pending()
    if not pending:
        return 0
    added = store.merge([(payload, path) for path, payload in pending])
    shards.remove([path for path, _ in pending])
    return added


def _image_path(cid: int, prompt_idx: int, method: str, seed: int, folder: str = "images",
                suffix: str = ".png") -> str:
    return f"{folder}/c{cid}/{prompt_idx:04d}/{_slug(method)}-{seed}{suffix}"


def _save_image(root: Path, rel: str, image) -> None:
    atomic_write(inside(root, rel), lambda tmp: image.save(tmp, format="PNG"))


def _judge(rewards: Mapping[str, Reward], images: list, prompts: list[str]) -> list[dict[str, float]]:
    scores = [{} for _ in images]
    for name, reward in rewards.items():
        values = reward(images, prompts).detach().float().cpu().tolist()
        for s, v in zip(scores, values):
            s[name] = v
    return scores


def _seed_trip(ctx: Context, config: ConfigPlan):
    """``round_trips``' ``batch`` and ``read`` for a config's seed rows: a chunk of (prompt index, seed rank)
    -> its conditioning and noises; a chunk and its round trip -> each row with its image."""
    backend, prompts, seeds, cid, extra_inv = ctx.backend, ctx.prompts, ctx.seeds, config.cid, config.extra_inv

    def batch(chunk):
        texts = [prompts[i].text for i, _ in chunk]
        noise = noises_from_seeds([seeds[i][r] for i, r in chunk], backend.latent_shape, config.norm)
        return conditioning(backend, texts, len(chunk), max(config.guidance, *_inversions(config))), noise

    def read(chunk, trip) -> list[tuple[dict, object]]:
        texts, n = [prompts[i].text for i, _ in chunk], len(chunk)
        images = backend.decode(trip.z0)
        scores = _judge(ctx.rewards, images, texts)
        seconds = (time.perf_counter() - trip.started) / n
        s, rows = [x.tolist() for x in trip.stability], []
        for j, (i, r) in enumerate(chunk):
            if extra_inv is not None:
                scores[j][f"{STABILITY_PREFIX}inversion_guidance={extra_inv:g}"] = s[1][j]
            rows.append(({"prompt_idx": i, "method": SEED_METHOD, "seed": seeds[i][r], "seed_rank": r,
                          "stability": s[0][j], "image_path": _image_path(cid, i, SEED_METHOD, seeds[i][r]),
                          "unet_calls": sum(trip.evaluations[:2]) // n, "image_calls": trip.evaluations[0] // n,
                          "seconds": seconds, "scores": scores[j],
                          "extra": {"variant_calls": trip.evaluations[2] // n} if extra_inv is not None else {}},
                         images[j]))
        return rows

    return batch, read


def _inversions(config: ConfigPlan) -> tuple[float, ...]:
    """The inversion guidances a seed row is scored under: the run's, then the ablation's other one."""
    return (config.inv,) if config.extra_inv is None else (config.inv, config.extra_inv)


def seed_rows(ctx: Context, config: ConfigPlan, todo: Sequence[tuple[int, int]], batch: list[int]) -> list[dict]:
    """The rows of one unit of seeds, its images written first (a killed run never has a row without its image).

    Args:
        ctx: the job; config: the unit's config; todo: its (prompt index, seed rank) pairs.
        batch: ``[size]``, the config's batch; a batch that runs out of memory is retried at half the size
            (``round_trips``), and the halved size is kept here for the next units.
    Returns:
        The rows, for the store.
    """
    make, read = _seed_trip(ctx, config)
    size, done = min(batch[0], len(todo)), [0]

    def saved(chunk, pairs) -> None:
        if len(chunk) < min(size, len(todo) - done[0]):  # shorter than asked and than what was left: halved
            batch[0] = len(chunk)
        done[0] += len(chunk)
        for row, image in pairs:
            _save_image(ctx.root, row["image_path"], image)

    pairs = round_trips(ctx.backend, list(todo), make, config.steps, config.guidance, _inversions(config),
                        read=read, batch_size=size, on_batch=saved)
    return [row for row, _ in pairs]


def _add_variant(store, cid, backend, prompts, steps, guidance, extra_inv, batch_size, noise_norm="keep") -> None:
    """The inversion ablation's stability for seed rows stored before it was asked for (batched as the seeds)."""
    name = f"{STABILITY_PREFIX}inversion_guidance={extra_inv:g}"
    missing = store.missing_scores(cid, [name], method=SEED_METHOD).get(name, [])
    if not missing:
        return

    def batch(chunk):
        texts = [prompts[p].text for _, p, _, _ in chunk]
        noise = noises_from_seeds([seed for _, _, _, seed in chunk], backend.latent_shape, noise_norm)
        return conditioning(backend, texts, len(chunk), max(guidance, extra_inv)), noise

    def read(chunk, trip) -> list[tuple[int, float, int]]:
        calls = trip.evaluations[1] // len(chunk)
        return [(sid, v, calls) for (sid, _, _, _), v in zip(chunk, trip.stability[0].tolist())]

    def commit(chunk, values) -> None:
        store.add_scores([(sid, name, v) for sid, v, _ in values],
                         extra={sid: {"variant_calls": calls} for sid, _, calls in values})

    round_trips(backend, missing, batch, steps, guidance, (extra_inv,), read=read, batch_size=batch_size,
                on_batch=commit)


def method_rows(ctx: Context, config: ConfigPlan, method: Method, todo: Sequence[int],
                starts: Sequence[int]) -> list[dict]:
    """One unit of an optimizing method: each prompt of ``todo`` optimized from its first seed, with, as its own
    row, the exact noise the optimizer started from (``start_method``): with ``preserve_norm`` that is the seed's
    noise on the shell, not the seed row's noise, so a method is compared with its real start. ``starts``:
    prompts that have the method's row but no start row (a store made before they existed): the optimizer runs
    for zero iterations. Images and noises are written before the rows are returned."""
    backend, seeds, steps, guidance, inv = ctx.backend, ctx.seeds, config.steps, config.guidance, config.inv
    label, start_label = method.label, start_method(method.label)
    rows = []
    for chunk, iterations in ((list(todo), None), (list(starts), 0)):
        if not chunk:
            continue
        t0 = time.perf_counter()
        texts = [ctx.prompts[i].text for i in chunk]
        noise = noises_from_seeds([seeds[i][0] for i in chunk], backend.latent_shape, config.norm)
        c0 = _evaluations(backend)
        res, extras, reward_calls = method.run(backend, texts, noise, steps, guidance, inv, ctx.optimizing_rewards,
                                               ctx.progress and iterations is None, iterations)
        if iterations is None:
            rows += _noise_rows(ctx, config, chunk, texts, res.noise, label, c0, t0, reward_calls,
                                [{**e, "settings": method.settings.__dict__} for e in extras])
        rows += _noise_rows(ctx, config, chunk, texts, res.start_noise, start_label, _evaluations(backend),
                            time.perf_counter(), 0, [{} for _ in chunk])
    return rows


def _noise_rows(ctx: Context, config: ConfigPlan, chunk, texts, noises, label, c0, t0, reward_calls,
                extras) -> list[dict]:
    """Rows of given noises, one per prompt of ``chunk``: the image, its scores, the noise itself and the
    stability of the noise (a measurement, not part of the method's cost: ``unet_calls`` counts the method's
    evaluations since ``c0`` and the image's)."""
    from safetensors.torch import save_file

    backend, cid, guidance, inv = ctx.backend, config.cid, config.guidance, config.inv
    n, method_calls = len(chunk), _evaluations(backend) - c0
    norms = (noises.flatten(1).norm(dim=1) / noises[0].numel() ** 0.5).tolist()

    def batch(positions):
        cond = conditioning(backend, [texts[j] for j in positions], len(positions), max(guidance, inv))
        return cond, noises[positions]

    def read(positions, trip) -> list[dict]:
        images = backend.decode(trip.z0)
        scores = _judge(ctx.rewards, images, [texts[j] for j in positions])
        seconds = (time.perf_counter() - t0) / n
        image_calls = trip.evaluations[0] // len(positions)
        rows = []
        for k, (j, image, stab) in enumerate(zip(positions, images, trip.stability[0].tolist())):
            i, seed = chunk[j], ctx.seeds[chunk[j]][0]
            rel, noise_rel = _image_path(cid, i, label, seed), _image_path(cid, i, label, seed, "noises",
                                                                           ".safetensors")
            _save_image(ctx.root, rel, image)
            atomic_write(inside(ctx.root, noise_rel),
                         lambda tmp, x=noises[j:j + 1].contiguous(): save_file({"noise": x}, str(tmp)))
            rows.append({"prompt_idx": i, "method": label, "seed": seed, "seed_rank": 0, "stability": stab,
                         "image_path": rel, "noise_path": noise_rel, "unet_calls": method_calls // n + image_calls,
                         "image_calls": image_calls, "reward_calls": reward_calls, "seconds": seconds,
                         "scores": scores[k], "extra": {**extras[j], "norm_ratio": norms[j]}})
        return rows

    return round_trips(backend, list(range(n)), batch, config.steps, guidance, (inv,), read=read, batch_size=n)


def _backfill(store: Store, cid: int, prompts, rewards: Mapping[str, Reward]) -> None:
    """Score stored images with rewards added since they were made."""
    from PIL import Image

    missing = store.missing_scores(cid, list(rewards))
    for name, items in missing.items():
        for start in range(0, len(items), 64):
            chunk = items[start:start + 64]
            images = [Image.open(store.file(path)).convert("RGB") for _, _, path, _ in chunk]
            values = rewards[name](images, [prompts[p].text for _, p, _, _ in chunk]).detach().float().cpu().tolist()
            store.add_scores([(sid, name, v) for (sid, _, _, _), v in zip(chunk, values)])
