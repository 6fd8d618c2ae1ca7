"""A seed bank: N seeds scored once per model under a prompt-independent setting (the empty prompt by
default), so that per prompt only the bank's most stable few need the full score.

On the shipped model the seed alone explains most of a seed's stability (benchmarks/seed_effect.py), which
is what makes this pay: ``select(backend, prompt, seeds=bank.seeds, proxy=bank, keep=m)``.

A bank's scores mean something only for the model they were computed on, so a bank records what it was scored
on (:func:`identity`) and :meth:`SeedBank.check` refuses another model. What must match: the weights (their
fingerprint), the latent shape (a seed is another noise in another shape) and the round trip's schedule (which
timesteps the round trip visits). What need not: the bank's prompt, steps and guidance are the proxy's own
cheap setting by design (the empty prompt, 1 step, no CFG all rank seeds as the full score does:
docs/performance.md), and device or dtype change a score by rounding only.
"""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .backends.protocol import Backend
from .batching import auto_batch_size
from .ddim import INVERSION_POINTS
from .distributed import (ALONE, Claims, ProgressPoller, Shards, Unit, World, clear_claims, hold, new_job_id,
                          prune, run_units, wait_for_units)
from .errors import StablenoiseError
from .noise import NOISE_NORMS, SEED_LIMIT
from .records import now, versions, write_json_atomic
from .selection import check_one_prompt, score_seeds
from .stability import check_point, resolve

SAMPLES_PER_TENSOR = 1024
ROUND_TRIP_KEYS = ("ddim", "flow")  # where describe() puts the round trip's schedule (DDIM or flow matching)


def weights_fingerprint(backend: Backend) -> str:
    """sha256 over every weight tensor of the model: its name, shape and 1,024 evenly spaced values rounded to
    float16. Cheap whatever the model's size (SDXL: ~2,500 small reads, no pass over gigabytes), stable across
    devices, and float32, float16 and fp16-variant loads of one checkpoint agree (bfloat16 rounds otherwise);
    any fine-tune moves the sampled values of the tensors it touches."""
    pipe = getattr(backend, "pipe", None)
    if pipe is not None:
        modules = sorted((k, m) for k, m in pipe.components.items() if isinstance(m, torch.nn.Module))
        tensors = [(f"{k}.{n}", t) for k, m in modules for n, t in m.state_dict().items()]
    else:  # a backend without a diffusers pipeline: its own tensor attributes
        tensors = sorted((k, v) for k, v in vars(backend).items() if isinstance(v, torch.Tensor))
    h = hashlib.sha256()
    for name, t in tensors:
        flat = t.detach().reshape(-1)
        k = min(flat.numel(), SAMPLES_PER_TENSOR)
        idx = torch.arange(k, device=flat.device) * (flat.numel() - 1) // max(k - 1, 1)
        h.update(f"{name}{list(t.shape)}".encode())
        h.update(flat[idx].to(torch.float16).cpu().numpy().tobytes())
    return h.hexdigest()


def identity(backend: Backend) -> dict:
    """What a bank's scores depend on and must match: weights fingerprint, latent shape, round-trip schedule."""
    described = backend.describe() if hasattr(backend, "describe") else {}
    schedule = {k: described[k] for k in ROUND_TRIP_KEYS if k in described}
    # Through JSON, so that a live backend compares equal to what a bank file holds (tuples as lists).
    return json.loads(json.dumps({"weights": weights_fingerprint(backend), "latent_shape": list(backend.latent_shape),
                                  "schedule": schedule}))


@dataclass
class SeedBank:
    seeds: list[int]
    stability: list[float | None]  # None: non-finite
    prompt: str
    steps: int
    guidance: float
    inversion_guidance: float
    model: dict = field(default_factory=dict)  # the backend's describe(): its name (hub id or path) and settings
    identity: dict = field(default_factory=dict)  # what must match to use the bank (see :func:`identity`)
    created: str = ""
    versions: dict = field(default_factory=dict)
    noise_norm: str = "keep"  # "shell": the seeds' noises were scored on the sqrt(d) shell
    inversion_point: str | None = None  # where inversion evaluated the network (None: a bank from before it was kept)

    @property
    def scores(self) -> dict[int, float | None]:
        """seed -> stability (None: non-finite), what :func:`stablenoise.select` takes as a proxy."""
        return dict(zip(self.seeds, self.stability))

    def top(self, m: int) -> list[int]:
        """The m most stable seeds of the bank (finite scores only), most stable first.

        Args:
            m: how many seeds (fewer come back when fewer have a finite score).

        Returns:
            The seeds, most stable first; ties keep the bank's order.
        """
        ranked = sorted((i for i, v in enumerate(self.stability) if v is not None),
                        key=lambda i: (-self.stability[i], i))
        return [self.seeds[i] for i in ranked[:m]]

    def check(self, backend: Backend, where: str | Path = "the seed bank") -> None:
        """Refuse a bank scored on another model, latent shape or schedule, naming what differs.

        Args:
            backend: the model the bank is to be used with.
            where: how the bank is named in messages (its file, say).

        Returns:
            None: a bank that passes may be used with ``backend``.

        Raises:
            StablenoiseError: a bank that recorded no model, or whose weights, latent shape or schedule differ.
        """
        if not self.identity:
            raise StablenoiseError(f"{where} was built before banks recorded their model: rebuild it with "
                                   "stablenoise bank")
        here = identity(backend)
        name = self.model.get("name", "?")
        if self.identity.get("weights") != here["weights"]:
            raise StablenoiseError(f"{where} was built on another model ({name}, weights "
                                   f"{str(self.identity.get('weights'))[:12]}; this one: {backend.name}, weights "
                                   f"{here['weights'][:12]}): rebuild the bank for this model")
        if self.identity.get("latent_shape") != here["latent_shape"]:
            raise StablenoiseError(f"{where} was built for latent shape {_short(self.identity.get('latent_shape'))}; "
                                   f"this model's is {here['latent_shape']}: rebuild the bank at this size")
        theirs, ours = _flat(self.identity.get("schedule", {})), _flat(here["schedule"])
        differ = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
        if differ:
            k = differ[0]
            raise StablenoiseError(f"{where} was built with another schedule ({k}: {theirs.get(k)!r} in the bank, "
                                   f"{ours.get(k)!r} here): rebuild the bank with these settings")

    def save(self, path: str | Path) -> None:
        """Write the bank as JSON, atomically (a reader never sees half a file).

        Args:
            path: the file to write.

        Returns:
            None.
        """
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "SeedBank":
        """Read a bank that :meth:`save` wrote, checked; null, NaN and inf scores all read as None (no score).

        Args:
            path: the bank's JSON file.

        Returns:
            The :class:`SeedBank`.

        Raises:
            StablenoiseError: a missing file, a folder, or a file that is not a valid seed bank (bad JSON or fields,
                seeds outside [0, 2**63), scores that are not numbers, an unknown noise_norm or inversion_point).
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            bank = cls(**data)
        except FileNotFoundError:
            raise StablenoiseError(f"seed bank not found: {path}") from None
        except IsADirectoryError:
            raise StablenoiseError(f"{path} is a folder, not a seed bank") from None
        except (ValueError, TypeError, UnicodeDecodeError):
            raise StablenoiseError(f"{path} is not a seed bank") from None
        if not (isinstance(bank.seeds, list) and isinstance(bank.stability, list)) \
                or len(bank.seeds) != len(bank.stability) or not bank.seeds:
            raise StablenoiseError(f"{path} is not a seed bank (seeds and scores differ in length, or are empty)")
        for seed in bank.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
                raise StablenoiseError(f"{path} is not a seed bank: seed {_short(seed)} is not an integer in "
                                       "[0, 2**63)")
        for seed, v in zip(bank.seeds, bank.stability):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise StablenoiseError(f"{path} is not a seed bank: the score of seed {seed} is {_short(v)}, "
                                       "not a number")
        # null, NaN and inf all mean "no score" (json reads NaN and Infinity as floats).
        bank.stability = [float(v) if v is not None and math.isfinite(v) else None for v in bank.stability]
        if not isinstance(bank.model, dict) or not isinstance(bank.identity, dict):
            raise StablenoiseError(f"{path} is not a seed bank (model and identity must be objects)")
        if bank.noise_norm not in NOISE_NORMS:
            raise StablenoiseError(f"{path} is not a seed bank: noise_norm {_short(bank.noise_norm)} is not one of "
                                   f"{', '.join(NOISE_NORMS)}")
        if bank.inversion_point is not None and bank.inversion_point not in INVERSION_POINTS:
            raise StablenoiseError(f"{path} is not a seed bank: inversion_point {_short(bank.inversion_point)} is not "
                                   f"one of {', '.join(INVERSION_POINTS)}")
        return bank


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"ddim": {"timestep_spacing": "x"}} -> {"ddim.timestep_spacing": "x"}: a difference named by its key."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def build_bank(backend: Backend, n: int, first_seed: int = 0, prompt: str = "", steps: int | None = None,
               guidance: float | None = None, inversion_guidance: float | None = None, batch_size: int | None = None,
               progress: bool = True, noise_norm: str = "keep", inversion_point: str | None = None,
               world: World = ALONE, shards: str | Path | None = None) -> SeedBank | None:
    """Score seeds ``first_seed .. first_seed + n - 1`` once, under one prompt: a proxy for two-stage selection.

    :func:`stablenoise.select` then takes the bank as its ``proxy`` only with the same ``noise_norm``, and only
    for the same model, latent shape and schedule (:meth:`SeedBank.check`).

    Args:
        backend: the model.
        n: how many seeds to score (>= 1).
        first_seed: the first seed.
        prompt: the one prompt the seeds are scored under (default: the empty prompt).
        steps, guidance, inversion_guidance: the round trip (None: the model family's).
        batch_size: noises per model call (None: picked from free memory; halved on out-of-memory).
        progress: show a progress bar.
        noise_norm: as in :func:`stablenoise.select`: "keep" (each seed's noise as drawn) or "shell" (rescaled to
            norm sqrt(d)).
        inversion_point: as in :func:`stablenoise.select`, "destination" or "source" (None: the backend's); it is
            recorded in the bank.
        world, shards: with a ``shards`` folder the seeds are scored in units of one batch, shared by the ranks
            of ``world`` (a launched job; :func:`stablenoise.distributed.join`), each unit's scores kept there
            until the bank is whole, so that a killed run's rerun, with any number of processes, scores only
            what is missing. The folder is held by one job at a time and removed at the end.

    Returns:
        A :class:`SeedBank`: each seed's stability (None where not finite), with the model, schedule and settings
        it was scored under; None on ranks other than 0.

    Raises:
        StablenoiseError: n < 1, a prompt that is not one string, a seed outside [0, 2**63), or a bad round-trip
            setting, ``noise_norm`` or ``inversion_point``.
    """
    if n < 1:
        raise StablenoiseError(f"a bank needs n >= 1 seeds, got {n}")
    check_one_prompt(prompt, "build_bank")
    steps, guidance, inversion_guidance = resolve(backend, steps, guidance, inversion_guidance)
    point = check_point(inversion_point) or getattr(backend, "inversion_point", None)
    seeds = list(range(first_seed, first_seed + n))
    if shards is None:
        scores = score_seeds(backend, prompt, seeds, None, batch_size, steps, guidance, inversion_guidance, progress,
                             desc="bank", noise_norm=noise_norm, inversion_point=inversion_point)
    else:
        setting = (prompt, steps, guidance, inversion_guidance, noise_norm, inversion_point)
        scores = _score_in_units(backend, seeds, setting, batch_size, progress, world, Path(shards))
        if scores is None:
            return None
    return SeedBank(seeds, [v if v is not None and math.isfinite(v) else None for v in scores], prompt, steps,
                    guidance, inversion_guidance, backend.describe(), identity(backend), now(), versions(),
                    noise_norm, point)


SHARDS_LOCK = ".lock"


def _score_in_units(backend: Backend, seeds: list[int], setting: tuple, batch_size: int | None, progress: bool,
                    world: World, folder: Path) -> list[float | None] | None:
    """The seeds' scores, unit by unit (see :func:`build_bank`); None on ranks other than 0."""
    lock, (job, digest, units) = world.agree_holding(lambda: hold_shards(folder),
                                                    lambda _: _plan_units(backend, seeds, setting, batch_size, folder))
    box = Shards(folder)
    claims = Claims(folder / "claims", job, world.rank) if world.size > 1 else None

    def do(unit: Unit) -> None:
        values = _scores(backend, unit.work, setting)
        box.write(unit, world.rank, {"setting": digest, "seeds": list(unit.work), "scores": values})

    bar = tqdm(total=sum(u.size for u in units), desc="bank", unit="seed", disable=not (progress and world.main))
    try:
        with ProgressPoller(bar, units, claims) if claims and world.main else nullcontext():
            run_units(world, units, do, claims, bar)
            if claims and world.main:
                wait_for_units(units, claims, lambda: None, world.size)
        return _collect(box, digest, seeds) if world.main else None
    finally:
        bar.close()
        if lock is not None:
            lock.close()


def hold_shards(folder: Path):
    """Hold a bank's shards folder for this process (two jobs building one bank would share its units)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StablenoiseError(f"cannot write to {folder}: {e.strerror or e}") from None
    return hold(folder / SHARDS_LOCK, f"another bank is being built with {folder}: wait for it to finish")


def _plan_units(backend: Backend, seeds: list[int], setting: tuple, batch_size: int | None, folder: Path):
    """Rank 0: the seeds not in the folder's shards yet, in units of one batch (the same cut for any number of
    processes: the batch, on CPU, depends on the bank's size only)."""
    digest = hashlib.sha256(json.dumps([identity(backend), *setting], sort_keys=True).encode()).hexdigest()
    box = Shards(folder)
    box.clean_partials()
    clear_claims(folder / "claims")
    done = _stored(box, digest)
    size = batch_size or auto_batch_size(backend.device, lambda: _scores(backend, seeds[:1], setting), len(seeds),
                                         math.prod(backend.latent_shape))
    units = []
    for a in range(0, len(seeds), size):
        todo = tuple(s for s in seeds[a:a + size] if s not in done)
        if todo:
            units.append(Unit(f"seeds-{seeds[a]:019d}", len(todo), todo))
    return new_job_id(), digest, tuple(units)


def _scores(backend: Backend, seeds, setting: tuple) -> list[float | None]:
    """The scores of one unit's seeds, in one batch (halved on out-of-memory)."""
    prompt, steps, guidance, inv, noise_norm, point = setting
    return score_seeds(backend, prompt, list(seeds), batch_size=len(seeds), steps=steps, guidance=guidance,
                       inversion_guidance=inv, progress=False, noise_norm=noise_norm, inversion_point=point)


def _stored(box: Shards, digest: str) -> dict[int, float | None]:
    """seed -> score, from the shards of this bank's setting; shards of another setting are refused."""
    out = {}
    for path, payload in box.pending():
        if not isinstance(payload, dict) or not {"setting", "seeds", "scores"} <= payload.keys():
            raise StablenoiseError(f"{path} is not a bank shard: move it away")
        if payload["setting"] != digest:
            raise StablenoiseError(f"{path} holds scores of another bank (model, prompt, steps, guidance or noise "
                                   f"norm differ): remove {path.parent} or use another --out")
        out.update(zip(payload["seeds"], payload["scores"]))
    return out


def _collect(box: Shards, digest: str, seeds: list[int]) -> list[float | None]:
    """Every seed's score from the shards, which are then removed with their folder."""
    stored = _stored(box, digest)
    missing = [s for s in seeds if s not in stored]
    if missing:
        raise StablenoiseError(f"{box.folder}: no score for seed {missing[0]} ({len(missing)} missing): run again")
    box.remove([p for p, _ in box.pending()])
    clear_claims(box.folder / "claims")
    (box.folder / SHARDS_LOCK).unlink(missing_ok=True)
    prune(box.folder / "claims", box.folder)
    return [stored[s] for s in seeds]
