"""`select` as a job of real processes (`accelerate launch`, gloo on the CPU): the ranks share the prompts, each
writes its own item folders, rank 0 alone writes run.json, and the records are those of one process; a rerun
after a killed rank adopts the item folder that rank finished but nobody recorded. One thread per process: the
float32 sums then round alike, so the records are compared exactly."""

import hashlib
import json
import shutil
import subprocess

import pytest

from bench.test_distributed_launch import TIMEOUT, command, env

pytestmark = pytest.mark.model

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
ARGS = ["select", *(a for p in PROMPTS for a in ("--prompt", p)), "-k", "2", "--steps", "1", "--device", "cpu"]


def select(out, processes: int) -> subprocess.CompletedProcess:
    r = subprocess.run(command(out, processes, args=ARGS), env=env(), capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    return r


def finished(out) -> tuple[list[dict], dict[str, str]]:
    """The run's item records, and the bytes (hashed) of every item file."""
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "done"
    files = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(out.glob("*/*")) if p.is_file()}
    return rec["items"], files


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    select(out, 1)
    return finished(out)


def test_two_processes_share_the_prompts_and_record_what_one_does(one, tmp_path):
    items, files = one
    assert [it["prompt"] for it in items] == PROMPTS and all(len(it["scores"]) == 2 for it in items)
    r = select(tmp_path / "two", 2)
    assert finished(tmp_path / "two") == (items, files)  # scores, best/worst seeds, images and noises, bit for bit
    assert r.stdout.count("best seed by") == len(PROMPTS)  # each prompt scored once, by one rank
    assert not list((tmp_path / "two").glob(".*"))  # no temporary folder left


@pytest.mark.parametrize("processes", [1, 2])
def test_rerun_after_a_killed_rank_adopts_its_finished_item(one, tmp_path, processes):
    """As a 2-process job killed after rank 1 renamed prompt 1's folder into place and before rank 0 recorded
    it, with prompts 2 and 3 never finished: a rerun (1 or 2 processes) adopts prompt 1 rather than refusing or
    redoing it, does 2 and 3, and deletes nothing it did not write."""
    items, files = one
    out = tmp_path / "run"
    select(out, 1)
    rec = json.loads((out / "run.json").read_text())
    for it in items[2:]:
        shutil.rmtree(out / it["folder"])
    rec.update(status="running", items=rec["items"][:1])
    (out / "run.json").write_text(json.dumps(rec))
    (out / items[1]["folder"] / "mine.txt").write_text("written before the kill")  # shows it was not redone
    (out / "notes").mkdir()  # a user's folder: not an item, never adopted nor deleted
    select(out, processes)
    assert (out / items[1]["folder"] / "mine.txt").read_text() == "written before the kill" and (out / "notes").is_dir()
    (out / items[1]["folder"] / "mine.txt").unlink()
    (out / "notes").rmdir()
    again = finished(out)
    assert again == (items, files)
    assert len(json.loads((out / "run.json").read_text())["resumed"]) == 1
