"""The bench and its store against hostile input: every case ends with exit code 1 and one line on stderr,
and leaves every file in the test's folder byte-identical (a user's files, the store, anything outside --out)."""

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import stablenoise as sn
from stablenoise.bench.run import Sweep, run_bench
from stablenoise.bench.store import Store
from stablenoise.cli import main
from stablenoise.errors import StablenoiseError

pytestmark = pytest.mark.model

ARGS = ["--model", "shapes", "--prompts", "shapes-heldout", "--limit", "2", "-k", "2", "--steps", "1",
        "--methods", "random,most-stable", "--rewards", "shapes-verifier", "--no-report"]
# SQLite's own shared-memory and WAL files appear beside a store when it is read; they hold no data.
SQLITE_SIDE = ("bench.sqlite-shm", "bench.sqlite-wal")


def bench(*args):
    return CliRunner().invoke(main, ["bench", *ARGS, *map(str, args)])


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (symlinks as their targets, not followed) -> its sha256."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            if path.is_symlink():
                out[str(path.relative_to(root))] = "link:" + os.readlink(path)
            elif path.is_file() and name not in SQLITE_SIDE:
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def one_error_line(r) -> str:
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "run"
    r = bench("--out", out)
    assert r.exit_code == 0, r.output
    return out


def _copy(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns(".bench.lock", *SQLITE_SIDE))
    return out


def _sql(out, *statements):
    with sqlite3.connect(out / "bench.sqlite") as db:
        for s in statements:
            db.execute(s)
    db.close()
    return out


def _user_file(tmp_path):
    (tmp_path / "afile").write_text("mine\n")
    return tmp_path / "afile"


def _user_folder(finished, tmp_path):
    out = tmp_path / "out"
    (out / "images" / "c1" / "0000").mkdir(parents=True)
    (out / "report.md").write_text("my notes\n")
    (out / "images" / "c1" / "0000" / "seed-0.png").write_bytes(b"my picture")
    return out


def _link(finished, tmp_path, rel, target_is_file=False):
    out = _copy(finished, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "mine.png" if target_is_file else outside
    if target_is_file:
        target.write_bytes(b"my picture")
    link = out / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_dir():
        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    link.symlink_to(target)
    return out


def _corrupt_middle_page(finished, tmp_path):
    """Overwrite the page of the samples' unique index: reading the tables still works, so only an integrity
    check finds it before a write goes through the broken index."""
    out = _copy(finished, tmp_path)
    with sqlite3.connect(out / "bench.sqlite") as db:
        pages, size = db.execute("PRAGMA page_count").fetchone()[0], db.execute("PRAGMA page_size").fetchone()[0]
        page = db.execute("SELECT rootpage FROM sqlite_master WHERE name='sqlite_autoindex_samples_1'").fetchone()[0]
    db.close()
    assert 1 < page < pages  # a middle page, not the header or the end
    with open(out / "bench.sqlite", "r+b") as f:
        f.seek(size * (page - 1))
        f.write(b"\xff" * size)
    return out


def _unwritable(tmp_path, monkeypatch, folder):
    """As root every folder is writable: os.access answers for a folder we may not write to."""
    folder.mkdir(parents=True)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: not (mode & os.W_OK and Path(p) == folder)
                        and real(p, mode, **kw))


CASES = {
    # name: (setup(finished, tmp_path[, monkeypatch]) -> --out, extra arguments, the error line)
    "user-folder": (_user_folder, [], "Error: --out {out} is not empty and holds no bench run: use another --out"),
    "images-symlink": (lambda f, t: _link(f, t, "images"), ["-k", 3],
                       "Error: {out}/images leads outside {out} (a symlink?): remove it or use another --out"),
    "deeper-symlink": (lambda f, t: _link(f, t, "images/c1"), [],
                       "Error: {out}/images/c1 leads outside {out} (a symlink?): remove it or use another --out"),
    "noises-symlink": (lambda f, t: _link(f, t, "noises"), ["--methods", "optimize:iterations=1"],
                       "Error: {out}/noises leads outside {out} (a symlink?): remove it or use another --out"),
    "image-file-symlink": (lambda f, t: _link(f, t, "images/c1/0000/seed-0.png", target_is_file=True), [],
                           "Error: {out}/images/c1/0000/seed-0.png leads outside {out} (a symlink?): remove it or "
                           "use another --out"),
    "store-symlink": (lambda f, t: _link(f, t, "bench.sqlite", target_is_file=True), [],
                      "Error: {out}/bench.sqlite leads outside {out} (a symlink?): remove it or use another --out"),
    "first-seed-near-2**63": (lambda f, t: t / "out", ["--first-seed", 2**63 - 3],
                              "Error: seeds 9223372036854775805..9223372036854775808 run past 2**63 - 1"),
    "out-under-a-file": (lambda f, t: _user_file(t) / "sub", [],
                         "Error: cannot write to {out}: {tmp}/afile is not a folder"),
    "out-is-a-file": (lambda f, t: _user_file(t), [], "Error: --out {out} is a file, not a folder"),
    "unwritable-out": (lambda f, t, m: _unwritable(t, m, t / "out") or t / "out", [],
                       "Error: cannot write to {out}: permission denied"),
    "unwritable-parent": (lambda f, t, m: _unwritable(t, m, t / "parent") or t / "parent" / "out", [],
                          "Error: cannot write to {out}: permission denied"),
    "non-numeric-score": (lambda f, t: _sql(_copy(f, t), "UPDATE scores SET value='high' WHERE rowid=2"), [],
                          "Error: {out}/bench.sqlite: scores.value holds 'high' (row 2), not a number"),
    "non-numeric-stability": (
        lambda f, t: _sql(_copy(f, t), "UPDATE samples SET stability='x' WHERE id=1"), [],
        "Error: {out}/bench.sqlite: samples.stability holds 'x' (row 1), not a number"),
    "missing-table": (lambda f, t: _sql(_copy(f, t), "DROP TABLE prompts"), [],
                      "Error: {out}/bench.sqlite: not a whole bench store (no prompts table)"),
    "corrupted-middle-page": (_corrupt_middle_page, [], "Error: {out}/bench.sqlite: the store is damaged ("),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_bench_is_one_line_and_changes_nothing(case, finished, tmp_path, monkeypatch):
    setup, extra, expected = CASES[case]
    out = setup(finished, tmp_path, monkeypatch) if case.startswith("unwritable") else setup(finished, tmp_path)
    assert tmp_path in out.parents
    before = snapshot(tmp_path)
    # Every case is refused before the model loads (a large model takes minutes to load).
    monkeypatch.setattr("stablenoise.backends.load", lambda *a, **k: pytest.fail("the model loaded"))
    line = one_error_line(bench(*extra, "--out", out))
    expected = expected.format(out=out, tmp=tmp_path)
    if case == "corrupted-middle-page":  # then SQLite's own words
        assert line.startswith(expected), line
    else:
        assert line == expected
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["non-numeric-score", "missing-table", "corrupted-middle-page"])
def test_report_of_a_broken_store_is_one_line_and_changes_nothing(case, finished, tmp_path):
    out = CASES[case][0](finished, tmp_path)
    before = snapshot(tmp_path)
    line = one_error_line(CliRunner().invoke(main, ["report", str(out)]))
    expected = CASES[case][2].format(out=out)
    assert line.startswith(expected) if case == "corrupted-middle-page" else line == expected
    assert snapshot(tmp_path) == before


def test_a_finished_run_reruns(finished, tmp_path):
    """The guards refuse only what they must: the same command into a finished run is accepted."""
    out = _copy(finished, tmp_path)
    rows = Store(out, create=False).rows()
    r = bench("--out", out)
    assert r.exit_code == 0, r.output
    assert Store(out, create=False).rows() == rows


@pytest.mark.parametrize("sweep, message", [
    (Sweep(steps=(1,), guidance=(2.0,), inversion_guidance=float("nan"), k=2), "guidance scales must be finite"),
    (Sweep(steps=(1,), guidance=(2.0,), k=2, first_seed=2**63 - 3), "run past 2**63 - 1"),
])
def test_run_bench_checks_every_setting_before_the_store_exists(sweep, message, tmp_path):
    """The library's own guard, behind the command's early one."""
    backend = sn.load("shapes")
    with pytest.raises(StablenoiseError, match=re.escape(message)):
        run_bench(backend, sn.load_prompts("shapes-heldout", limit=2), {}, [], sweep, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_symlink_made_during_a_run_is_refused_at_the_write(tmp_path):
    store = Store(tmp_path / "out")
    (tmp_path / "outside").mkdir()
    (tmp_path / "out" / "images").symlink_to(tmp_path / "outside")
    with pytest.raises(StablenoiseError, match="images/c1/0000/seed-0.png leads outside"):
        store.file("images/c1/0000/seed-0.png")
    assert store.file("noises/c1/0000/x.safetensors") == tmp_path / "out" / "noises/c1/0000/x.safetensors"
    store.close()


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    """A write refused by the system after the early check passed (a read-only mount, a race)."""
    out = tmp_path / "out"
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == out:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(StablenoiseError, match=f"^cannot write to {re.escape(str(out))}: Permission denied$"):
        Store(out)
    assert not out.exists()


def test_two_benches_into_one_folder_at_once(tmp_path):
    """Two identical benches started together: whichever takes the folder first runs, the other refuses with one
    line (before or after its model loads, depending on the race), and the store equals a clean run's."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "stablenoise.cli", "bench", "--prompts", "shapes-heldout", "--limit", "6",
            "-k", "4", "--steps", "4", "--methods", "random", "--rewards", "shapes-verifier", "--batch-size", "1",
            "--no-report", "--out", str(out)]
    both = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in both]
    codes = sorted(p.returncode for p in both)
    assert codes == [0, 1], errors
    refused = errors[[p.returncode for p in both].index(1)]
    assert refused.strip().splitlines() == [f"Error: another bench is writing to {out}: wait for it to finish"]
    clean = tmp_path / "clean"
    assert subprocess.run(args[:-1] + [str(clean)], capture_output=True).returncode == 0
    keep = ("config_id", "prompt_idx", "method", "seed", "seed_rank", "stability", "image_path", "scores")
    assert ([{k: r[k] for k in keep} for r in Store(out, create=False).rows()]
            == [{k: r[k] for k in keep} for r in Store(clean, create=False).rows()])
