import contextlib
import shutil

import pytest
from click.testing import CliRunner

from stablenoise.cli import main

BENCH = ["bench", "--model", "shapes", "--prompts", "shapes-heldout", "--limit", "6", "-k", "4", "--steps", "2",
         "--rewards", "shapes-verifier,shapes-clip", "--methods", "random,most-stable,least-stable,best",
         "--no-report"]


@pytest.fixture(scope="session")
def bench_run(tmp_path_factory):
    """A small real bench run of the shipped model (6 prompts, K=4), made once; tests copy it (run_copy)."""
    out = tmp_path_factory.mktemp("bench") / "run"
    result = CliRunner().invoke(main, BENCH + ["--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def run_copy(bench_run, tmp_path):
    """A private copy of the bench run that a test may add a study (or anything) to."""
    return shutil.copytree(bench_run, tmp_path / "run")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@contextlib.contextmanager
def serving(study, n_boot: int):
    """A study served on a free loopback port for the duration of the block; yields its URL."""
    from stablenoise.study.server import serve_in_thread, study_server, url

    study.set_wal(True)
    server = study_server(study, n_boot=n_boot)
    serve_in_thread(server)
    try:
        yield url(server)
    finally:
        server.shutdown()
        server.server_close()
