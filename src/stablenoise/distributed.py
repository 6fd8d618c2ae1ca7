"""Several processes on one job (``accelerate launch``, torchrun, SLURM through either): this process's rank,
rank 0's word shared with the others, and work taken unit by unit, so that a slow rank does not idle the rest.

A plain process is a job of one (:data:`ALONE`); accelerate is imported only under a launch. What the files
rely on, so that a job can span nodes on a shared filesystem (NFS v3+, Lustre, GPFS): creating a file with
``O_CREAT | O_EXCL`` succeeds for exactly one process (a claim), and a rename within a folder is atomic (a
finished unit's shard file appears whole or not at all). No SQLite file is ever opened by two processes: ranks
write shard files and rank 0 alone merges them into a store (docs/scaling.md).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .errors import PeerFailed, StablenoiseError
from .records import strict_json, write_json_atomic

# Set by every launcher a job can come from: torchrun and accelerate (WORLD_SIZE), MPI implementations.
WORLD_SIZE_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
POLL_SECONDS = 0.5  # how often rank 0 looks for the other ranks' finished units
UNIT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.=_-]*$")  # unit ids are file names
JOB_ID = re.compile(r"^job-[0-9a-f]{32}$")


@dataclass(frozen=True)
class World:
    """The processes of a job: ``rank`` of ``size``; ``state`` is accelerate's ``PartialState`` under a launch."""

    rank: int = 0
    size: int = 1
    state: object = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj):
        """Rank 0's ``obj`` (picklable), on every rank."""
        if self.size == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        box = [obj if self.main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def agree(self, fn: Callable[[], object]):
        """``fn()`` run on rank 0 alone, its result on every rank. If it raises a StablenoiseError, rank 0
        raises it and every other rank raises :class:`PeerFailed` (one line from the job, not one per rank)."""
        if self.size == 1:
            return fn()
        if not self.main:
            said = self.broadcast(None)
            if isinstance(said, _Refused):
                raise PeerFailed(said.message)
            return said
        try:
            result = fn()
        except StablenoiseError as e:
            self.broadcast(_Refused(str(e)))
            raise
        return self.broadcast(result)

    def agree_holding(self, acquire: Callable[[], object], fn: Callable[[object], object]) -> tuple[object, object]:
        """Rank 0 acquires something to hold for the job (the store, a lock: anything with ``close``) and runs
        ``fn`` on it; every rank gets ``fn``'s result (as :meth:`agree`). Returns (what rank 0 holds, closed
        again if ``fn`` failed; None on the other ranks, the result)."""
        held = []

        def run():
            held.append(acquire())
            try:
                return fn(held[0])
            except BaseException:
                held.pop().close()
                raise

        result = self.agree(run)
        return (held[0] if held else None), result


@dataclass(frozen=True)
class _Refused:
    message: str


ALONE = World()


def launched() -> bool:
    """Whether this process is one of several started by a launcher."""
    sizes = [os.environ.get(k, "") for k in WORLD_SIZE_ENV]
    return any(s.isdigit() and int(s) > 1 for s in sizes)


def join(device: str | None) -> tuple[World, str | None]:
    """This process's place in a launched job (:data:`ALONE` otherwise) and the device it should load on.

    Args:
        device: the ``--device`` asked for (None: cuda if available).
    Returns:
        The world, and the device: under a launch, ``cuda`` (or none given, on a GPU machine) is this rank's
        own GPU (accelerate's process device); an explicit ``cuda:N`` or ``cpu`` is kept as given.
    """
    if not launched():
        return ALONE, device
    from accelerate import PartialState

    kind = _device_type(device)
    state = PartialState(cpu=kind == "cpu")
    return World(state.process_index, state.num_processes, state), rank_device(device, state.device)


def _device_type(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        raise StablenoiseError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None


def rank_device(device: str | None, process_device: torch.device) -> str | None:
    """The device of one rank: ``process_device`` (the rank's own accelerator) when ``device`` is None or names
    its type without an index (``cuda``); ``device`` itself otherwise.

    Args:
        device: what the user asked for; process_device: accelerate's device for this rank.
    Returns:
        The device name to load the model on. A CPU rank gets ``cpu``, never accelerate's ``cpu:0``: the model
        on ``cpu:0`` rounds differently from ``cpu`` (measured: 1.5e-8 on a stability), which would break
        "the same rows as one process".
    """
    if process_device.type == "cpu":
        return device or "cpu"
    if device is None or (":" not in device and torch.device(device).type == process_device.type):
        return str(process_device)
    return device


def hold(path: Path, busy: str):
    """Hold ``path`` for this process, until the returned object is closed or the process dies (the kernel frees
    it then, even after SIGKILL). A folder is held itself (``flock`` on its descriptor), so nothing is left in it;
    any other path is a lock file, created if missing, held with a POSIX record lock. Where the filesystem
    cannot lock at all (an NFS mount with ``nolock``), nothing is held: only a lock held by another process is
    refused.

    Args:
        path: the folder or lock file; busy: the error when another process holds it.
    Returns:
        An object whose ``close()`` lets go.
    """
    if path.is_dir():
        return _FolderHold(path, busy)
    try:
        lock = open(path, "a")
    except OSError as e:
        raise StablenoiseError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in _HELD:
            lock.close()
            raise StablenoiseError(busy) from None
    return lock


_HELD = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)  # what a lock held elsewhere answers; other errors: no locks


class _FolderHold:
    def __init__(self, folder: Path, busy: str):
        try:
            self.fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:  # one line, as for a lock file that cannot be opened
            raise StablenoiseError(f"cannot read {folder}: {e.strerror or e}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in _HELD:
                os.close(self.fd)
                raise StablenoiseError(busy) from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass(frozen=True)
class Unit:
    """One piece of a job: ``id`` names it (a file name, unique in the job), ``size`` is the rows it makes
    (for progress), ``work`` says what to do (picklable; the caller's)."""

    id: str
    size: int
    work: object


class Claims:
    """A job's claims under ``folder`` (one folder per job id): ``taken/UNIT`` is created O_EXCL by the rank
    that takes the unit; ``done-rR/UNIT`` once rank R has handed its result over."""

    def __init__(self, folder: Path, job: str, rank: int):
        if not JOB_ID.match(job):
            raise StablenoiseError(f"not a job id: {job!r}")
        self.root, self.folder, self.rank = folder, folder / job, rank

    def take(self, unit: Unit) -> bool:
        """Claim ``unit`` for this rank; False if another rank has."""
        (self.folder / "taken").mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self.folder / "taken" / unit.id, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        return True

    def finish(self, unit: Unit) -> None:
        done = self.folder / f"done-r{self.rank}"
        done.mkdir(parents=True, exist_ok=True)
        (done / unit.id).touch()

    def leave(self) -> None:
        """This rank has walked the whole unit list (it will take nothing more)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"left-r{self.rank}").touch()

    def left(self) -> set[int]:
        """The ranks that have walked the whole list: until every rank has, a late one could still take a unit,
        so the claims must stay."""
        names = [p.name for p in self.folder.iterdir()] if self.folder.is_dir() else []
        return {int(n[6:]) for n in names if n.startswith("left-r") and n[6:].isdigit()}

    def finished(self) -> dict[int, set[str]]:
        """rank -> the units it finished."""
        out = {}
        for d in (self.folder.iterdir() if self.folder.is_dir() else ()):
            if d.name.startswith("done-r") and d.name[6:].isdigit():
                out[int(d.name[6:])] = {p.name for p in d.iterdir()}
        return out


def clear_claims(folder: Path) -> None:
    """Remove every job's claims under ``folder`` (only folders named like job ids: ours). Rank 0 calls it when
    its job is over, and when a new job starts (the claims of a killed job mean nothing to the next)."""
    for d in (folder.iterdir() if folder.is_dir() else ()):
        if JOB_ID.match(d.name):
            shutil.rmtree(d, ignore_errors=True)


def prune(*folders: Path) -> None:
    """Remove each folder if it is empty, in order (a child before its parent); a non-empty one stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex}"


class Shards:
    """Finished units' results waiting to be merged: one strict-JSON file per unit, written atomically, named
    ``UNIT.rR.json``. A file that is not whole JSON cannot appear (atomic rename); one that does not parse
    was not written by us and is refused."""

    def __init__(self, folder: Path):
        self.folder = folder

    def write(self, unit: Unit, rank: int, payload: dict) -> None:
        write_json_atomic(self.folder / f"{unit.id}.r{rank}.json", strict_json(payload))

    def pending(self) -> list[tuple[Path, dict]]:
        """Every shard, oldest unit id first (sorted by name: a stable merge order)."""
        out = []
        names = sorted(p.name for p in self.folder.glob("*.json")) if self.folder.is_dir() else []
        for name in names:
            if name.startswith("."):
                continue  # a temporary file a killed writer left: never merged (atomic_write replaces it)
            path = self.folder / name
            try:
                out.append((path, json.loads(path.read_text(encoding="utf-8"))))
            except FileNotFoundError:
                continue  # merged and removed meanwhile
            except (ValueError, UnicodeDecodeError):
                raise StablenoiseError(f"{path} is not a shard of this run: move it away") from None
        return out

    def remove(self, paths: Sequence[Path]) -> None:
        for p in paths:
            p.unlink(missing_ok=True)

    def clean_partials(self) -> None:
        """Temporary files of writers killed mid-write (atomic_write's ``.NAME.partial.json``)."""
        for p in (self.folder.glob(".*.partial.json") if self.folder.is_dir() else ()):
            p.unlink(missing_ok=True)


def run_units(world: World, units: Sequence[Unit], do: Callable[[Unit], None], claims: Claims | None,
              bar=None, between: Callable[[], None] | None = None) -> int:
    """Do every unit of ``units`` that no other rank has taken, in order: each rank takes the next free unit,
    so a fast rank does more. Alone, every unit is done and ``bar`` advances by its size.

    Args:
        world: the job; units: the same list on every rank; do: does one unit and hands its result over.
        claims: the job's claims (None alone); bar: rank 0's progress bar (tqdm) or None.
        between: rank 0 runs it after each of its units (merging the others' shards as they come).
    Returns:
        The units this rank did.
    """
    done = 0
    for unit in units:
        if world.size > 1 and not claims.take(unit):
            continue
        do(unit)
        done += 1
        if world.size > 1:
            claims.finish(unit)
        elif bar is not None:
            bar.update(unit.size)
        if world.main and between is not None:
            between()
    if world.size > 1:
        claims.leave()
    return done


def wait_for_units(units: Sequence[Unit], claims: Claims, on_poll: Callable[[], None], ranks: int,
                   sleep: Callable[[float], object] | None = None) -> dict[int, int]:
    """Rank 0, its own units done: wait until every unit is finished and all ``ranks`` have walked the list,
    calling ``on_poll`` (merge what came) each time. A rank that dies ends the job through its launcher; this
    waits on files, not on a collective, so a long unit elsewhere cannot time a barrier out. Returns units
    finished per rank."""
    import time

    sleep = sleep or time.sleep
    wanted = {u.id for u in units}
    while True:
        finished, left = claims.finished(), claims.left()
        on_poll()
        if wanted <= set().union(*finished.values()) and left >= set(range(ranks)):
            return {r: len(ids & wanted) for r, ids in sorted(finished.items())}
        sleep(POLL_SECONDS)


class ProgressPoller:
    """Rank 0's one bar for the whole job: a thread sets it from the units finished by every rank, with each
    rank's count beside it; the other ranks draw nothing, so nothing interleaves."""

    def __init__(self, bar, units: Sequence[Unit], claims: Claims):
        self.bar, self.sizes, self.claims = bar, {u.id: u.size for u in units}, claims
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.refresh()

    def refresh(self) -> None:
        finished = self.claims.finished()
        per_rank = {r: sum(self.sizes.get(u, 0) for u in ids) for r, ids in sorted(finished.items())}
        self.bar.n = sum(per_rank.values())
        self.bar.set_postfix_str(" ".join(f"r{r}:{n}" for r, n in per_rank.items()), refresh=False)
        self.bar.refresh()

    def _loop(self) -> None:
        while not self.stop.wait(POLL_SECONDS):
            try:
                self.refresh()
            except OSError:  # a folder listed while another rank writes into it: the next poll sees it
                pass
