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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..backends.base import Backend, uses_cfg
from ..errors import StablenoiseError
from ..noise import check_noise_norm, check_seed_range, noises_from_seeds
from ..records import atomic_write
from ..rewards import Reward
from ..stability import conditioning, evaluations as _evaluations, resolve, round_trips
from .methods import Method
from .schema import SEED_METHOD, STABILITY_PREFIX, start_method
from .store import Store


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
              command: str | None = None,
              progress: bool = True, log: Callable[[str], None] = print) -> Store:
    """Fill ``out/bench.sqlite``; returns the open store. ``optimize_prompts``: the optimizing methods run on
    the first N prompts only (they cost about a hundred scores each). ``batch_size`` (seed rows per model call;
    None: from free memory, as ``select``) is halved and retried on out-of-memory."""
    prompts = list(prompt_set.prompts)
    if not prompts:
        raise StablenoiseError(f"prompt set {prompt_set.name!r} is empty")
    configs = sweep.configs(backend)  # every setting checked before the store exists
    check_seed_range(sweep.first_seed, len(prompts) * sweep.k)  # also what SQLite INTEGERs hold
    store = Store(out)
    if command:
        store.note_command(command)
    ablation = any(m.entry.needs_variant for m in methods)
    for steps, guidance, inv, norm in configs:
        config = {"prompt_set": prompt_set.name, "prompt_set_digest": prompt_set.digest(),
                  "model": backend.name, "backend": backend.describe(), "steps": steps, "guidance": guidance,
                  "inversion_guidance": inv, "k": sweep.k, "first_seed": sweep.first_seed,
                  **({"noise_norm": norm} if norm != "keep" else {})}  # keep: the configs of earlier stores
        cid = store.config_id(config, [(p.text, p.tag) for p in prompts])
        log(f"config {cid}: {len(prompts)} prompts of {prompt_set.name}, {steps} steps, guidance {guidance:g}, "
            f"inversion guidance {inv:g}, K={sweep.k}" + (", noises on the sqrt(d) shell" if norm == "shell" else ""))
        seeds = prompt_seeds(len(prompts), sweep.k, sweep.first_seed)
        extra_inv = ablation_inversion_guidance(guidance, inv) if ablation else None
        _score_seeds(store, cid, backend, prompts, seeds, rewards, steps, guidance, inv, extra_inv, batch_size,
                     progress, norm)
        if extra_inv is not None:
            _add_variant(store, cid, backend, prompts, steps, guidance, extra_inv, batch_size, norm)
        for method in (m for m in methods if m.optimizing):
            _optimize(store, cid, backend, prompts[:optimize_prompts], seeds, rewards, method, steps, guidance, inv,
                      optimize_batch_size, optimizing_rewards or {}, progress, log, norm)
        _backfill(store, cid, prompts, rewards)
    return store


def _image_path(cid: int, prompt_idx: int, method: str, seed: int, folder: str = "images",
                suffix: str = ".png") -> str:
    return f"{folder}/c{cid}/{prompt_idx:04d}/{_slug(method)}-{seed}{suffix}"


def _save_image(store: Store, rel: str, image) -> None:
    atomic_write(store.file(rel), lambda tmp: image.save(tmp, format="PNG"))


def _judge(rewards: Mapping[str, Reward], images: list, prompts: list[str]) -> list[dict[str, float]]:
    scores = [{} for _ in images]
    for name, reward in rewards.items():
        values = reward(images, prompts).detach().float().cpu().tolist()
        for s, v in zip(scores, values):
            s[name] = v
    return scores


def _score_seeds(store, cid, backend, prompts, seeds, rewards, steps, guidance, inv, extra_inv, batch_size,
                 progress, noise_norm="keep") -> None:
    """The seed rows still missing, in batches that fit: ``batch_size=None`` picks one (batching.auto_batch_size)
    and a batch that runs out of memory is retried at half the size; each batch commits when done."""
    done = store.done(cid, SEED_METHOD)
    todo = [(i, r) for i in range(len(prompts)) for r in range(len(seeds[i])) if (i, seeds[i][r]) not in done]
    if not todo:
        return
    inversions = (inv,) if extra_inv is None else (inv, extra_inv)

    def batch(chunk):
        texts = [prompts[i].text for i, _ in chunk]
        noise = noises_from_seeds([seeds[i][r] for i, r in chunk], backend.latent_shape, noise_norm)
        return conditioning(backend, texts, len(chunk), max(guidance, *inversions)), noise

    def read(chunk, trip) -> list[tuple[dict, object]]:
        texts, n = [prompts[i].text for i, _ in chunk], len(chunk)
        images = backend.decode(trip.z0)
        scores = _judge(rewards, images, texts)
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

    bar = tqdm(total=len(todo), desc=f"score config {cid}", unit="seed", disable=not progress)

    def commit(chunk, rows) -> None:  # images first, then the rows: a killed run never stores a row without its image
        for row, image in rows:
            _save_image(store, row["image_path"], image)
        store.add(cid, [row for row, _ in rows])
        bar.update(len(chunk))

    try:
        round_trips(backend, todo, batch, steps, guidance, inversions, read=read, batch_size=batch_size,
                    on_batch=commit)
    finally:
        bar.close()


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


def _optimize(store, cid, backend, prompts, seeds, rewards, method, steps, guidance, inv, batch_size,
              optimizing_rewards, progress, log, noise_norm="keep") -> None:
    """Each prompt's optimized noise (started from its first seed) and, as its own row, the exact noise the
    optimizer started from (``start_method``): with ``preserve_norm`` that is the seed's noise on the shell,
    not the seed row's noise, so a method is compared with its real start. A store with method rows but no
    start rows (made before they existed) gets them by running the optimizer for zero iterations."""
    label, start_label = method.label, start_method(method.label)
    done, started = store.done(cid, label), store.done(cid, start_label)
    todo = [i for i in range(len(prompts)) if (i, seeds[i][0]) not in done]
    starts_only = [i for i in range(len(prompts)) if (i, seeds[i][0]) in done and (i, seeds[i][0]) not in started]
    if todo:
        log(f"config {cid}: {label} for {len(todo)} prompts")
    if starts_only:
        log(f"config {cid}: the start rows of {label} for {len(starts_only)} prompts")
    for chunk, iterations in [*((todo[a:a + batch_size], None) for a in range(0, len(todo), batch_size)),
                              *((starts_only[a:a + batch_size], 0) for a in range(0, len(starts_only), batch_size))]:
        t0 = time.perf_counter()
        texts = [prompts[i].text for i in chunk]
        noise = noises_from_seeds([seeds[i][0] for i in chunk], backend.latent_shape, noise_norm)
        c0 = _evaluations(backend)
        res, extras, reward_calls = method.run(backend, texts, noise, steps, guidance, inv, optimizing_rewards,
                                               progress and iterations is None, iterations)
        rows = []
        if iterations is None:
            rows += _noise_rows(store, cid, backend, chunk, seeds, texts, res.noise, label, rewards, steps, guidance,
                                inv, c0, t0, reward_calls, [{**e, "settings": method.settings.__dict__} for e in extras])
        t1 = time.perf_counter()
        rows += _noise_rows(store, cid, backend, chunk, seeds, texts, res.start_noise, start_label, rewards, steps,
                            guidance, inv, _evaluations(backend), t1, 0, [{} for _ in chunk])
        store.add(cid, rows)


def _noise_rows(store, cid, backend, chunk, seeds, texts, noises, label, rewards, steps, guidance, inv, c0, t0,
                reward_calls, extras) -> list[dict]:
    """Rows of given noises, one per prompt of ``chunk``: the image, its scores, the noise itself and the
    stability of the noise (a measurement, not part of the method's cost: ``unet_calls`` counts the method's
    evaluations since ``c0`` and the image's)."""
    from safetensors.torch import save_file

    n, method_calls = len(chunk), _evaluations(backend) - c0
    norms = (noises.flatten(1).norm(dim=1) / noises[0].numel() ** 0.5).tolist()

    def batch(positions):
        cond = conditioning(backend, [texts[j] for j in positions], len(positions), max(guidance, inv))
        return cond, noises[positions]

    def read(positions, trip) -> list[dict]:
        images = backend.decode(trip.z0)
        scores = _judge(rewards, images, [texts[j] for j in positions])
        seconds = (time.perf_counter() - t0) / n
        image_calls = trip.evaluations[0] // len(positions)
        rows = []
        for k, (j, image, stab) in enumerate(zip(positions, images, trip.stability[0].tolist())):
            i, seed = chunk[j], seeds[chunk[j]][0]
            rel, noise_rel = _image_path(cid, i, label, seed), _image_path(cid, i, label, seed, "noises",
                                                                           ".safetensors")
            _save_image(store, rel, image)
            atomic_write(store.file(noise_rel),
                         lambda tmp, x=noises[j:j + 1].contiguous(): save_file({"noise": x}, str(tmp)))
            rows.append({"prompt_idx": i, "method": label, "seed": seed, "seed_rank": 0, "stability": stab,
                         "image_path": rel, "noise_path": noise_rel, "unet_calls": method_calls // n + image_calls,
                         "image_calls": image_calls, "reward_calls": reward_calls, "seconds": seconds,
                         "scores": scores[k], "extra": {**extras[j], "norm_ratio": norms[j]}})
        return rows

    return round_trips(backend, list(range(n)), batch, steps, guidance, (inv,), read=read, batch_size=n)


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
