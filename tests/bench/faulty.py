"""``stablenoise`` with faults injected, for the tests that kill a job at a chosen point (a launcher runs this
file as each rank's script). ``SN_FAULT=POINT:RANK:N``: rank RANK SIGKILLs itself at the N-th time it reaches
POINT; ``SN_HOLD=RANK:FILE``: rank RANK, having taken its first unit, waits until FILE exists (a rank that is
slow for as long as a test wants).

Points: ``images`` (a seed unit's images are written, its rows not handed over), ``shard`` (a unit's shard
file is written, the unit not marked finished), ``merged`` (rank 0 has committed a merge and not yet removed
the merged shards).
"""

import os
import signal
import sys
import time

from stablenoise import distributed
from stablenoise.bench import run
from stablenoise.cli import main

RANK = int(os.environ.get("RANK", "0"))
reached: dict[str, int] = {}


def reach(point: str) -> None:
    spec = os.environ.get("SN_FAULT", "")
    if not spec:
        return
    name, rank, n = spec.split(":")
    if name == point and int(rank) == RANK:
        reached[point] = reached.get(point, 0) + 1
        if reached[point] == int(n):
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def after(fn, point):
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        reach(point)
        return out
    return wrapped


def before(fn, point):
    def wrapped(*args, **kwargs):
        if args[-1]:  # remove(paths) with something to remove: a merge has just committed
            reach(point)
        return fn(*args, **kwargs)
    return wrapped


run.seed_rows = after(run.seed_rows, "images")
distributed.Shards.write = after(distributed.Shards.write, "shard")
distributed.Shards.remove = before(distributed.Shards.remove, "merged")
if os.environ.get("SN_HOLD"):
    held_rank, release = os.environ["SN_HOLD"].split(":", 1)
    take = distributed.Claims.take

    def held_take(self, unit):
        taken = take(self, unit)
        while taken and RANK == int(held_rank) and not os.path.exists(release):
            time.sleep(0.05)
        return taken

    distributed.Claims.take = held_take

if __name__ == "__main__":
    main(prog_name="stablenoise")
