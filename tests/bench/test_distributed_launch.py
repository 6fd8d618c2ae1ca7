"""The bench as a job of several real processes (torchrun through ``accelerate launch``, gloo on the CPU): the
same rows bit for bit from 1, 2 and 3 processes, a slow rank that does less, a second bench refused with one
line, and SIGKILL of one rank or the whole job at chosen points followed by a rerun with another process count
that ends with the store of an uninterrupted run. Every process runs one thread: float32 sums are rounded
alike only with the same thread count."""

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from stablenoise.bench.store import Store

pytestmark = pytest.mark.model

HERE = Path(__file__).parent
ARGS = ["bench", "--prompts", "shapes-heldout", "--limit", "4", "-k", "2", "--steps", "1", "--batch-size", "2",
        "--methods", "random,optimize:iterations=1", "--optimize-prompts", "2", "--optimize-batch-size", "1",
        "--rewards", "shapes-verifier,shapes-clip", "--no-report"]
ROWS = 4 * 2 + 2 * 2  # seed rows, and the optimized and start rows of two prompts
UNITS = 4 + 2  # four batches of two seeds, one unit per optimized prompt
TIMEOUT = 600


def env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent.parent / "src"), str(HERE.parent), os.environ.get("PYTHONPATH", "")]), **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(out: Path, processes: int, faulty: bool = False, args: list[str] = ARGS) -> list[str]:
    script = [str(HERE / "faulty.py")] if faulty else ["-m", "stablenoise"]
    if processes == 1:
        return [sys.executable, *script, *args, "--out", str(out)]
    return [sys.executable, "-m", "accelerate.commands.launch", "-q", "--multi_gpu", "--num_processes",
            str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), *script, *args, "--out", str(out)]


def bench(out: Path, processes: int, faulty: bool = False, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(command(out, processes, faulty), env=env(**extra), capture_output=True, text=True,
                          timeout=TIMEOUT)


def comparable(out: Path) -> list[tuple]:
    """Every row with what identifies and measures it (not its id, time or creation stamp), and the bytes of
    its image and noise."""
    store = Store(out, create=False)
    rows = store.rows()
    store.close()
    digest = lambda rel: rel and hashlib.sha256((out / rel).read_bytes()).hexdigest()  # noqa: E731
    return sorted((r["config_id"], r["prompt_idx"], r["method"], r["seed"], r["seed_rank"], r["stability"],
                   r["image_path"], r["noise_path"], r["unet_calls"], r["image_calls"], r["reward_calls"],
                   r["extra"], json.dumps(r["scores"], sort_keys=True), digest(r["image_path"]),
                   digest(r["noise_path"])) for r in rows)


def units_per_rank(stdout: str) -> dict[int, int]:
    line = next(x for x in stdout.splitlines() if x.startswith("units per rank: "))
    return {int(r): int(n) for r, n in (p.split(": ") for p in line[len("units per rank: "):].split(", "))}


def assert_whole(out: Path, reference: list[tuple]) -> None:
    """The store of an uninterrupted run: every row once, bit for bit, and nothing left to merge."""
    rows = comparable(out)
    assert len(rows) == ROWS and len({r[:4] for r in rows}) == ROWS  # 0 lost, 0 duplicated
    assert rows == reference
    assert not (out / "shards").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    r = bench(out, 1)
    assert r.returncode == 0, r.stderr
    return comparable(out)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two processes, rank 1 held on its first unit while a plain bench is started into the same folder, then
    released."""
    folder = tmp_path_factory.mktemp("two")
    out, release = folder / "run", folder / "release"
    job = subprocess.Popen(command(out, 2, faulty=True), env=env(SN_HOLD=f"1:{release}"), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + TIMEOUT
        while not list(out.glob("shards/claims/*/taken/*")) and job.poll() is None and time.time() < deadline:
            time.sleep(0.1)  # the job holds the folder from its plan on; claims appear with its first unit
        second = bench(out, 1)
    finally:
        release.touch()
    stdout, stderr = job.communicate(timeout=TIMEOUT)
    return out, subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr), second


def test_two_and_three_processes_give_the_rows_of_one_bit_for_bit(reference, two, tmp_path):
    out, job, _ = two
    assert job.returncode == 0, job.stderr
    assert comparable(out) == reference and len(reference) == ROWS
    assert not (out / "shards").exists()  # merged, and the claims removed
    r = bench(tmp_path / "three", 3)
    assert r.returncode == 0, r.stderr
    assert_whole(tmp_path / "three", reference)
    assert sum(units_per_rank(r.stdout).values()) == UNITS


def test_a_slow_rank_takes_fewer_units(two):
    """Rank 1 is held on its first unit for as long as the second bench takes: rank 0 takes the next free unit
    meanwhile, rather than waiting with a fixed half of the work undone."""
    _, job, _ = two
    per_rank = units_per_rank(job.stdout)
    assert sum(per_rank.values()) == UNITS
    assert per_rank.get(1, 0) < UNITS / 2 < per_rank[0]


def test_one_progress_bar_for_the_job_drawn_by_rank_0_with_each_ranks_rows(two):
    """The job's stderr holds rank 0's bar alone: its count never goes back (a second rank's bar would draw its
    own, interleaved), and it ends at every row, split by rank."""
    _, job, _ = two
    bars = [s for s in job.stderr.replace("\r", "\n").splitlines() if s.startswith("bench:")]
    counts = [int(s.split("|")[2].split("/")[0]) for s in bars]
    assert bars and counts == sorted(counts) and counts[-1] == ROWS, job.stderr
    per_rank = dict(p.split(":") for p in bars[-1].rsplit(", ", 1)[1].rstrip("]").split())
    assert sorted(per_rank) == ["r0", "r1"] and sum(map(int, per_rank.values())) == ROWS


def test_a_second_bench_into_a_running_jobs_folder_is_refused_with_one_line(two):
    out, job, second = two
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [f"Error: another bench is writing to {out}: wait for it to finish"]
    assert job.returncode == 0  # and the job's result is the reference's (test above)


def test_a_job_into_a_held_folder_is_refused_by_rank_0_alone(reference, tmp_path):
    """The folder is held (this test process holds its lock, as a running bench would): the two-process job
    prints the one line from rank 0, none from rank 1, no traceback, and leaves every file as it was."""
    out = tmp_path / "run"
    assert bench(out, 1).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith("bench.sqlite-")}
    holder = Store(out)
    try:
        r = bench(out, 2)
    finally:
        holder.close()
    assert r.returncode != 0
    ours = [x for x in r.stderr.splitlines() if x.startswith("Error: ")]
    assert ours == [f"Error: another bench is writing to {out}: wait for it to finish"], r.stderr
    assert "Traceback" not in r.stderr
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith("bench.sqlite-")}
    assert after == before


@pytest.mark.parametrize("fault, rerun", [
    ("images:1:1", 3),  # rank 1 dies inside its first unit (images written, rows not): the launcher ends rank 0
    ("shard:1:1", 1),  # rank 1 dies with its first shard written, not yet marked finished nor merged
    ("shard:0:1", 1),  # rank 0 dies with its own first shard written: no shard merged, the plain rerun merges them
    ("merged:0:1", 2),  # rank 0 dies between a merge's commit and the removal of the merged shards
])
def test_a_rank_killed_at_any_point_loses_and_duplicates_nothing(reference, tmp_path, fault, rerun):
    out = tmp_path / "run"
    killed = bench(out, 2, faulty=True, SN_FAULT=fault)
    assert killed.returncode != 0, killed.stdout
    stored = len(Store(out, create=False).rows())
    assert stored < ROWS or (out / "shards").is_dir()
    r = bench(out, rerun)
    assert r.returncode == 0, r.stderr
    assert_whole(out, reference)


def kill_job(job: subprocess.Popen) -> None:
    """SIGKILL the launcher and every rank: torchrun starts each rank in a session of its own, out of reach of
    a signal to the launcher's process group, and a rank left running keeps the run folder held."""
    ranks = psutil.Process(job.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(job.pid, signal.SIGKILL)
    for rank in ranks:
        with contextlib.suppress(psutil.NoSuchProcess):
            rank.kill()
    job.wait()
    psutil.wait_procs(ranks, timeout=30)


def test_the_whole_job_killed_resumes_with_another_process_count(reference, tmp_path):
    """SIGKILL to every process of a two-process job once rank 0 has handed a unit over, then a plain rerun.
    Rank 1 is held on its first unit (never released), so the job cannot finish before the kill: waiting for a
    shard file instead raced with rank 0, which merges and removes shards as they come."""
    out = tmp_path / "run"
    job = subprocess.Popen(command(out, 2, faulty=True), env=env(SN_HOLD=f"1:{tmp_path / 'never'}"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + TIMEOUT
        while job.poll() is None and time.time() < deadline and not list(out.glob("shards/claims/*/done-r0/*")):
            time.sleep(0.05)
        assert job.poll() is None, "the job ended before rank 0 finished a unit"
    finally:
        kill_job(job)
    assert len(Store(out, create=False).rows()) < ROWS
    r = bench(out, 1)
    assert r.returncode == 0, r.stderr
    assert_whole(out, reference)


def test_a_bank_from_two_processes_is_the_bank_of_one(tmp_path):
    """`stablenoise bank` under the launcher: the ranks share the seeds unit by unit; the scores are the plain
    bank's, bit for bit, and only the bank file is left."""
    args = ["bank", "-n", "10", "--steps", "1", "--batch-size", "2"]
    for name, processes in (("one", 1), ("two", 2)):
        r = subprocess.run(command(tmp_path / f"{name}.json", processes, args=args), env=env(), capture_output=True,
                           text=True, timeout=TIMEOUT)
        assert r.returncode == 0, r.stderr
    banks = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two")]
    assert banks[0]["seeds"] == banks[1]["seeds"] == list(range(10))
    assert banks[0]["stability"] == banks[1]["stability"] and None not in banks[0]["stability"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "two.json"]
