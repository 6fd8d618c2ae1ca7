"""The pieces of a multi-process job, in one process: claims, shards, the merge, rank 0's word, device
placement (tests/bench/test_distributed_launch.py runs real processes)."""

import json
import threading

import pytest
import torch

from stablenoise.bench.run import merge_shards
from stablenoise.bench.store import Store, config_digest
from stablenoise.distributed import (ALONE, Claims, ProgressPoller, Shards, Unit, World, clear_claims, join,
                                     new_job_id, rank_device, run_units, wait_for_units)
from stablenoise.errors import PeerFailed, StablenoiseError

CONFIG = {"prompt_set": "p", "model": "m", "steps": 1, "guidance": 1.0, "inversion_guidance": 1.0, "k": 2,
          "first_seed": 0}


def row(prompt, seed, value=0.5):
    return {"prompt_idx": prompt, "method": "seed", "seed": seed, "seed_rank": seed % 2, "stability": value,
            "image_path": f"images/{prompt}-{seed}.png", "unet_calls": 2, "image_calls": 1, "seconds": 0.1,
            "scores": {"r": value / 2}, "extra": {}}


def units(n, size=1):
    return [Unit(f"u-{i:03d}", size, i) for i in range(n)]


def test_a_unit_is_taken_by_exactly_one_rank(tmp_path):
    job = new_job_id()
    ranks = [Claims(tmp_path, job, r) for r in range(3)]
    unit = Unit("c1-seeds-0000000", 4, None)
    assert [c.take(unit) for c in ranks] == [True, False, False]
    assert ranks[1].take(Unit("c1-seeds-0000004", 4, None))
    ranks[0].finish(unit)
    assert ranks[2].finished() == {0: {unit.id}}
    other = Claims(tmp_path, new_job_id(), 1)  # another job's claims are its own: a killed job blocks nothing
    assert other.take(unit)
    clear_claims(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_ranks_take_the_next_free_unit_so_a_slow_rank_does_less(tmp_path):
    """Two ranks over one unit list (threads standing in for processes): every unit is done exactly once, and
    the rank that is slowed down does fewer units than a fixed half."""
    job, todo, done = new_job_id(), units(12), {0: [], 1: []}
    start, never = threading.Barrier(2), threading.Event()

    def rank(r, seconds):
        def do(unit):
            done[r].append(unit.work)
            never.wait(seconds)  # rank 1's units take ten times as long as rank 0's
        start.wait()
        run_units(World(r, 2), todo, do, Claims(tmp_path, job, r))

    threads = [threading.Thread(target=rank, args=(r, [0.02, 0.2][r])) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(done[0] + done[1]) == list(range(12))
    assert 1 <= len(done[1]) < 6 < len(done[0])
    claims = Claims(tmp_path, job, 0)
    assert wait_for_units(todo, claims, lambda: None, 2) == {0: len(done[0]), 1: len(done[1])}


def test_rank_0_waits_for_every_unit_and_every_rank_and_merges_while_it_waits(tmp_path):
    """Rank 0 waits until every unit is finished and every rank has walked the list: a late rank that had not
    started could otherwise take a unit again after the claims are removed."""
    job, todo = new_job_id(), units(3)
    mine, theirs, late = (Claims(tmp_path, job, r) for r in range(3))
    for u in todo:
        theirs.take(u)
    mine.leave()
    polls = []

    def sleep(_):  # each wait: rank 1 finishes one more unit; then it leaves; then the late rank 2 leaves
        steps = [*(lambda u=u: theirs.finish(u) for u in todo), theirs.leave, late.leave]
        steps[len(polls) - 1]()

    per_rank = wait_for_units(todo, mine, lambda: polls.append(1), 3, sleep=sleep)
    assert per_rank == {1: 3} and len(polls) == 6  # five waits, then the poll that sees everything
    assert not late.take(todo[0])  # the claims are still there for a rank that comes late


def test_alone_every_unit_is_done_in_order_and_counted():
    seen, bar = [], type("Bar", (), {"n": 0, "update": lambda self, k: setattr(self, "n", self.n + k)})()
    run_units(ALONE, units(4, size=3), lambda u: seen.append(u.work), None, bar)
    assert seen == [0, 1, 2, 3] and bar.n == 12


def test_rank_0s_bar_counts_the_rows_every_rank_has_finished(tmp_path):
    job, todo = new_job_id(), units(3, size=4)
    mine, theirs = Claims(tmp_path, job, 0), Claims(tmp_path, job, 1)
    mine.finish(todo[0])
    theirs.finish(todo[1])
    theirs.finish(todo[2])
    bar = type("Bar", (), {"n": 0, "refresh": lambda self: None,
                           "set_postfix_str": lambda self, s, refresh: setattr(self, "postfix", s)})()
    ProgressPoller(bar, todo, mine).refresh()
    assert bar.n == 12 and bar.postfix == "r0:4 r1:8"


def test_shards_are_merged_once_and_a_merge_cut_short_merges_again_without_duplicates(tmp_path):
    store = Store(tmp_path / "run")
    cid = store.config_id(CONFIG, [("a", ""), ("b", "")])
    shards = Shards(tmp_path / "run" / "shards")
    shards.write(Unit("c1-seeds-0000000", 2, None), 1, {"config": config_digest(CONFIG),
                                                        "rows": [row(0, 0), row(0, 1, float("nan"))]})
    shards.write(Unit("c1-seeds-0000002", 2, None), 0, {"config": config_digest(CONFIG), "rows": [row(1, 2)]})
    (shards.folder / ".c1-seeds-0000004.r0.partial.json").write_text('{"half')  # a writer killed mid-write
    pending = shards.pending()
    assert [p.name for p, _ in pending] == ["c1-seeds-0000000.r1.json", "c1-seeds-0000002.r0.json"]
    assert store.merge([(payload, path) for path, payload in pending]) == 3  # the commit, then a kill: no removal
    assert merge_shards(store, shards) == 0  # the rerun merges the same shards again: nothing added
    assert shards.pending() == []
    rows = store.rows(cid)
    assert [(r["prompt_idx"], r["seed"]) for r in rows] == [(0, 0), (0, 1), (1, 2)]
    assert rows[1]["stability"] is None and rows[0]["scores"] == {"r": 0.25}
    shards.clean_partials()
    assert list(shards.folder.iterdir()) == []
    store.close()


@pytest.mark.parametrize("content, message", [
    ("not json", "is not a shard of this run: move it away"),
    (json.dumps({"config": "0" * 64, "rows": []}), "no config of the store"),
    (json.dumps({"config": config_digest(CONFIG), "rows": [{"seed": 1}]}), "a malformed row"),
    (json.dumps([1, 2]), "is not a shard of this run"),
])
def test_a_file_in_the_shards_that_we_did_not_write_is_one_line_and_changes_nothing(tmp_path, content, message):
    store = Store(tmp_path / "run")
    store.config_id(CONFIG, [("a", "")])
    shards = Shards(tmp_path / "run" / "shards")
    shards.write(Unit("c1-seeds-0000000", 1, None), 0, {"config": config_digest(CONFIG), "rows": [row(0, 0)]})
    (shards.folder / "z.json").write_text(content)
    with pytest.raises(StablenoiseError, match=message):
        merge_shards(store, shards)
    assert store.rows() == [] and len(list(shards.folder.iterdir())) == 2  # the whole merge rolled back
    store.close()


class TwoRanks(World):
    """World.agree's two sides, with the broadcast done by hand: rank 0 records what it sends."""

    def __init__(self, rank, said=None):
        object.__setattr__(self, "rank", rank)
        object.__setattr__(self, "size", 2)
        object.__setattr__(self, "state", None)
        object.__setattr__(self, "sent", said if said is not None else [])

    def broadcast(self, obj):
        if self.main:
            self.sent.append(obj)
            return obj
        return self.sent[0]


def test_rank_0_decides_and_its_refusal_is_one_line_for_the_job():
    def refuse():
        raise StablenoiseError("another bench is writing to out: wait for it to finish")

    rank0 = TwoRanks(0)
    with pytest.raises(StablenoiseError, match="another bench") as raised:
        rank0.agree(refuse)
    assert not isinstance(raised.value, PeerFailed)  # rank 0 prints it
    calls = []
    with pytest.raises(PeerFailed, match="another bench"):  # the other ranks exit without printing it again
        TwoRanks(1, rank0.sent).agree(lambda: calls.append(1))
    assert calls == []  # only rank 0 runs the check
    rank0 = TwoRanks(0)
    assert rank0.agree(lambda: {"units": 3}) == {"units": 3}
    assert TwoRanks(1, rank0.sent).agree(lambda: calls.append(1)) == {"units": 3} and calls == []


def test_rank_0_alone_holds_what_the_plan_needs_and_lets_it_go_when_the_plan_fails():
    class Held:
        closed = False

        def close(self):
            self.closed = True

    held, rank0 = [], TwoRanks(0)
    acquire = lambda: held.append(Held()) or held[-1]  # noqa: E731
    assert rank0.agree_holding(acquire, lambda h: ("plan", h)) == (held[0], ("plan", held[0]))
    assert TwoRanks(1, rank0.sent).agree_holding(acquire, lambda h: 1 / 0) == (None, ("plan", held[0]))
    assert len(held) == 1 and not held[0].closed  # rank 1 acquired nothing; rank 0 holds it for the job

    def broken(h):
        raise StablenoiseError("a shard of another run")

    with pytest.raises(StablenoiseError, match="another run"):
        TwoRanks(0).agree_holding(acquire, broken)
    assert len(held) == 2 and held[1].closed


def test_peer_failed_exits_1_without_a_line():
    import click
    from click.testing import CliRunner

    from stablenoise.cli_common import guarded

    @click.command()
    @guarded
    def cmd():
        raise PeerFailed("said by rank 0")

    r = CliRunner().invoke(cmd, [])
    assert r.exit_code == 1 and r.output == ""


@pytest.mark.parametrize("asked, process, expected", [
    ("cuda", "cuda:3", "cuda:3"),  # --device cuda: the rank's own GPU
    (None, "cuda:1", "cuda:1"),  # nothing asked on a GPU machine: the same
    ("cuda:0", "cuda:3", "cuda:0"),  # an explicit index is kept
    ("cpu", "cuda:2", "cpu"),
    (None, "cpu", "cpu"),
    (None, "cpu:0", "cpu"),  # accelerate's CPU process device: plain cpu, which rounds as a plain process does
    ("cpu", "cpu:0", "cpu"),
])
def test_each_rank_loads_on_its_own_device(asked, process, expected):
    assert rank_device(asked, torch.device(process)) == expected


def test_a_plain_process_is_a_job_of_one(monkeypatch):
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert join("cuda:1") == (ALONE, "cuda:1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert join(None) == (ALONE, None)
    assert ALONE.agree(lambda: 7) == 7 and ALONE.broadcast("x") == "x"


def test_job_ids_are_the_only_claims_folders_removed(tmp_path):
    job = new_job_id()
    (tmp_path / job / "taken").mkdir(parents=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "job-mine.txt").write_text("x")
    clear_claims(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job-mine.txt", "notes"]
    with pytest.raises(StablenoiseError, match="not a job id"):
        Claims(tmp_path, "../elsewhere", 0)


# --- the seed bank in units ----------------------------------------------------------------------------------

def test_a_bank_in_units_is_the_bank_and_its_rerun_scores_only_what_is_missing(tmp_path, monkeypatch):
    """Units of one batch give the plain bank's scores bit for bit; a run interrupted after its first unit
    leaves that unit's shard, which the rerun takes as it is (its seeds are not scored again); the folder is
    gone once the bank is whole."""
    from toy import ToyBackend

    import stablenoise.bank as bank

    backend, folder = ToyBackend(), tmp_path / "bank.json.shards"
    plain = bank.build_bank(backend, 7, first_seed=3, batch_size=3, progress=False)
    units = bank.build_bank(backend, 7, first_seed=3, batch_size=3, progress=False, shards=folder)
    assert units.stability == plain.stability and units.seeds == plain.seeds == list(range(3, 10))
    assert not folder.exists()
    scored, real = [], bank.score_seeds

    def interrupted(backend, prompt, seeds, **kwargs):
        if scored:
            raise KeyboardInterrupt  # the second unit: the run is killed
        scored.append(list(seeds))
        return real(backend, prompt, seeds, **kwargs)

    monkeypatch.setattr(bank, "score_seeds", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bank.build_bank(backend, 7, first_seed=3, batch_size=3, progress=False, shards=folder)
    assert scored == [[3, 4, 5]] and len(Shards(folder).pending()) == 1
    scored.clear()
    monkeypatch.setattr(bank, "score_seeds", lambda backend, prompt, seeds, **kw: scored.append(list(seeds))
                        or real(backend, prompt, seeds, **kw))
    resumed = bank.build_bank(backend, 7, first_seed=3, batch_size=3, progress=False, shards=folder)
    assert scored == [[6, 7, 8], [9]]  # the stored unit is not scored again
    assert resumed.stability == plain.stability
    assert not folder.exists()


HOLDER = """import sys; from pathlib import Path; from stablenoise.bank import hold_shards
lock = hold_shards(Path(sys.argv[1])); print("held", flush=True); sys.stdin.read()"""


def test_a_bank_refuses_shards_of_another_setting_and_a_folder_another_process_holds(tmp_path):
    import subprocess
    import sys

    from toy import ToyBackend

    from stablenoise.bank import build_bank

    backend, folder = ToyBackend(), tmp_path / "bank.json.shards"
    Shards(folder).write(Unit("seeds-0000000000000000000", 2, None), 0,
                         {"setting": "0" * 64, "seeds": [0, 1], "scores": [0.1, 0.2]})
    with pytest.raises(StablenoiseError, match="holds scores of another bank"):
        build_bank(backend, 2, batch_size=2, progress=False, shards=folder)
    assert len(Shards(folder).pending()) == 1  # left as it was
    other = tmp_path / "other.shards"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(other)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(StablenoiseError, match=f"^another bank is being built with {other}: wait for it"):
            build_bank(backend, 2, batch_size=2, progress=False, shards=other)
    finally:
        holder.communicate("")
