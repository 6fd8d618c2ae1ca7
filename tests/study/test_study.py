"""The study: pairs from a bench run, its store, its HTTP API (validation, traversal, concurrency), its
statistics in the report, and its CLI's refusals. No browser needed (test_browser.py drives the pages)."""

import json
import os
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from stablenoise.bench.report import write_report
from stablenoise.bench.methods import derive_methods
from stablenoise.bench.results import load_results
from stablenoise.study.pairs import method_ids, parse_pair
from stablenoise.study.server import MAX_BODY, serve_in_thread, study_server, url
from stablenoise.study.store import Study

from .conftest import invoke, serving


def create(run, *pairs, name=None):
    result = invoke("study", "create", run, *[x for p in pairs for x in ("--pair", p)],
                    *(["--name", name] if name else []))
    assert result.exit_code == 0, result.output
    return run / (f"study-{name}.sqlite" if name else "study.sqlite")


@pytest.fixture
def served(run_copy):
    study = Study(create(run_copy, "most-stable:random", "most-stable:least-stable"))
    with serving(study, 50) as address:
        yield study, address


def request(base, path, body=None, raw=None, method=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type")


# ----------------------------------------------------------------------------- pairs

def test_pairs_are_blind_same_prompt_and_config_sides_recorded(run_copy):
    path = create(run_copy, "most-stable:random", "best:shapes-clip:least-stable")
    study = Study(path)
    table = load_results(run_copy).tables[0]
    methods = derive_methods(table)
    pairs = list(study.pairs.values())
    assert {p.comparison for p in pairs} == {"most-stable vs random", "best:shapes-clip vs least-stable"}
    for p in pairs:
        i = table.prompt_idx.index(p.prompt_idx)
        assert p.prompt == table.texts[i] and p.config_id == table.config.id
        a = methods[method_ids(methods)[p.a_method]]
        b = methods[method_ids(methods)[p.b_method]]
        assert (p.a_image, p.b_image) == (a.image[i], b.image[i]) and p.a_image != p.b_image
        assert p.a_scores["stability"] == pytest.approx(a.shown_stability[i])
    # Every prompt is a pair unless both methods showed the same image, which the study records as left out.
    same = study.meta["left_out"]["same image"]
    assert len(pairs) + same == 2 * table.n_prompts and study.meta["left_out"]["no image"] == 0
    # Sides are drawn at random: with 12 - same pairs not all on one side (seeded: the same every run).
    assert 0 < sum(p.left_is_a for p in pairs) < len(pairs)


def test_parse_pair_splits_a_colon_that_belongs_to_a_method_id():
    ids = {"random": "random", "best:clip": "best of K by clip", "lr:2": "lr:2"}
    assert parse_pair("best:clip:random", ids) == ("best:clip", "random")
    assert parse_pair("lr:2:best:clip", ids) == ("lr:2", "best:clip")
    with pytest.raises(ValueError, match="does not name two methods"):
        parse_pair("random:nope", ids)
    with pytest.raises(ValueError, match="with itself"):
        parse_pair("random:random", ids)


@pytest.mark.parametrize("args, line", [
    (["--pair", "most-stable:nope"], "--pair 'most-stable:nope' does not name two methods of the run: use A:B "
                                     "with A, B among best:shapes-clip, best:shapes-verifier, least-stable, "
                                     "most-stable, random"),
    (["--pair", "random:random"], "--pair 'random:random' compares a method with itself"),
    (["--pair", "random:most-stable", "--name", "../x"], "--name: 1 to 40 letters, digits, '_' or '-'"),
])
def test_create_refuses_bad_pairs_and_names_writing_nothing(run_copy, args, line):
    result = invoke("study", "create", run_copy, *args)
    assert result.exit_code == 1 and result.stderr == f"Error: {line}\n"
    # Reading the WAL-mode bench store may add its -wal/-shm files; nothing else appears (the bench's own lock
    # file was there before).
    assert sorted(p.name for p in run_copy.iterdir() if not p.name.startswith("bench.sqlite-")) == [
        ".bench.lock", "bench.sqlite", "images"]


def test_create_never_overwrites_a_study(run_copy):
    path = create(run_copy, "most-stable:random")
    before = path.read_bytes()
    result = invoke("study", "create", run_copy, "--pair", "least-stable:random")
    assert result.exit_code == 1
    assert result.stderr == f"Error: {path} already exists: give another --name, or delete it to start over\n"
    assert path.read_bytes() == before
    assert create(run_copy, "least-stable:random", name="second").is_file()


def test_create_on_a_folder_without_a_bench_store_is_one_line(tmp_path):
    result = invoke("study", "create", tmp_path, "--pair", "most-stable:random")
    assert result.exit_code == 1 and result.stderr == f"Error: {tmp_path}: no bench results store (bench.sqlite)\n"
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the API

def test_vote_flow_reveals_methods_only_after_the_vote_and_never_repeats_a_pair(served):
    study, base = served
    seen = []
    while True:
        status, body, _ = request(base, "/api/next?rater=ann")
        nxt = json.loads(body)
        assert status == 200 and nxt["judged"] == len(seen) and nxt["total"] == len(study.pairs)
        if nxt["done"]:
            break
        assert not {"a_method", "b_method", "left_method", "method"} & set(nxt)
        assert not any(m in body.decode() for m in ("most-stable", "least-stable", "random"))
        assert nxt["pair"] not in seen
        seen.append(nxt["pair"])
        status, body, _ = request(base, "/api/vote", {"pair": nxt["pair"], "rater": "ann", "choice": "left"})
        pair = study.pairs[nxt["pair"]]
        assert status == 200 and json.loads(body) == {"ok": True, "left": pair.side("left")[0],
                                                      "right": pair.side("right")[0]}
    assert sorted(seen) == sorted(study.pairs)
    votes = study.votes()
    assert [(v[0], v[1], v[2]) for v in votes] == [(i, "ann", "left") for i in seen]
    assert all(v[3] == study.pairs[v[0]].side("left")[0] and v[4] == study.pairs[v[0]].side("right")[0]
               for v in votes)
    # Always "left": the win rate of A is the share of pairs that showed A on the left.
    status, body, _ = request(base, "/api/results")
    first = json.loads(body)["comparisons"][0]
    mine = [p for p in study.pairs.values() if p.comparison == first["comparison"]]
    assert first["win_rate"]["mean"] == pytest.approx(sum(p.left_is_a for p in mine) / len(mine))


@pytest.mark.parametrize("path, body, raw, status, error", [
    ("/api/vote", {"pair": 999999, "rater": "ann", "choice": "left"}, None, 404, "no such pair"),
    ("/api/vote", {"pair": "1", "rater": "ann", "choice": "left"}, None, 404, "no such pair"),
    ("/api/vote", {"pair": 1, "rater": "ann", "choice": "maybe"}, None, 400,
     "choice must be one of left, right, tie, bad"),
    ("/api/vote", {"pair": 1, "rater": "a b<script>", "choice": "left"}, None, 400,
     "rater: 1 to 64 letters, digits, '.', '_' or '-'"),
    ("/api/vote", None, b"{not json", 400, "the body is not JSON"),
    ("/api/vote", None, b"[1, 2]", 400, "the body must be a JSON object"),
    ("/api/vote", None, b" " * (MAX_BODY + 1), 413, f"body over {MAX_BODY} bytes"),
    ("/api/next?rater=", None, None, 400, "rater: 1 to 64 letters, digits, '.', '_' or '-'"),
    ("/nothing", None, None, 404, "not found"),
    ("/image/1/../../bench.sqlite", None, None, 404, "not found"),
    ("/image/999/left", None, None, 404, "no such pair"),
    ("/static/../store.py", None, None, 404, "not found"),
])
def test_bad_requests_are_4xx_and_store_nothing(served, path, body, raw, status, error):
    study, base = served
    got, reply, ctype = request(base, path, body, raw)
    assert (got, json.loads(reply), ctype) == (status, {"error": error}, "application/json")
    assert study.votes() == []


def test_a_replayed_vote_is_409_and_the_first_stays(served):
    study, base = served
    assert request(base, "/api/vote", {"pair": 1, "rater": "ann", "choice": "right"})[0] == 200
    status, reply, _ = request(base, "/api/vote", {"pair": 1, "rater": "ann", "choice": "left"})
    assert (status, json.loads(reply)) == (409, {"error": "this rater has already judged this pair"})
    assert [(v[0], v[1], v[2]) for v in study.votes()] == [(1, "ann", "right")]
    assert request(base, "/api/vote", {"pair": 1, "rater": "bob", "choice": "left"})[0] == 200  # another rater


def test_images_are_served_only_from_inside_the_run_folder(served, tmp_path):
    study, base = served
    pair = study.pairs[1]
    status, png, ctype = request(base, "/image/1/left")
    assert (status, ctype) == (200, "image/png") and png == (study.run_dir / pair.side("left")[1]).read_bytes()
    # A symlink that replaces the image and leads out of the run folder is not followed.
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG secret")
    image = study.run_dir / pair.side("right")[1]
    image.unlink()
    image.symlink_to(secret)
    status, reply, _ = request(base, "/image/1/right")
    assert (status, json.loads(reply)) == (404, {"error": "no such image in the run folder"})
    # ... nor is a store edited to name a file outside the folder.
    db = study.connect()
    with db:
        db.execute("UPDATE pairs SET a_image = ?, b_image = ? WHERE id = 2", (str(secret), "../secret.png"))
    db.close()
    hostile = Study(study.path)
    server = study_server(hostile)
    serve_in_thread(server)
    try:
        for side in ("left", "right"):
            status, reply, _ = request(url(server), f"/image/2/{side}")
            assert (status, json.loads(reply)) == (404, {"error": "no such image in the run folder"})
    finally:
        server.shutdown()
        server.server_close()


def test_raters_voting_at_once_lose_no_vote(served):
    study, base = served
    raters = [f"r{i}" for i in range(8)]
    jobs = [(r, pair) for r in raters for pair in study.pairs]

    def vote(job):
        rater, pair = job
        return request(base, "/api/vote", {"pair": pair, "rater": rater, "choice": "tie"})[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(vote, jobs))
    assert statuses == [200] * len(jobs)
    assert sorted((v[0], v[1]) for v in study.votes()) == sorted((p, r) for r, p in jobs)
    # The same vote sent by 8 threads at once is taken once.
    with ThreadPoolExecutor(max_workers=8) as pool:
        again = list(pool.map(lambda _: request(base, "/api/vote", {"pair": 1, "rater": "dup", "choice": "left"})[0],
                              range(8)))
    assert sorted(again) == [200] + [409] * 7


# ----------------------------------------------------------------------------- results in the report

def test_report_shows_the_study_and_a_study_less_run_shows_none(run_copy, tmp_path):
    html, md = write_report(run_copy, n_boot=50)
    assert "Human preference study" not in md.read_text()
    study = Study(create(run_copy, "most-stable:random"))
    for pair in study.pairs:  # two raters prefer most-stable everywhere
        for rater in ("ann", "bob"):
            side = "left" if study.pairs[pair].left_is_a else "right"
            study.vote(pair, rater, side)
    html, md = write_report(run_copy, n_boot=50)
    text = md.read_text()
    n = len(study.pairs)
    assert "## Human preference study (study.sqlite)" in text
    assert (f"| most-stable vs random | {2 * n} | 2 | {n} | {2 * n} | 0 | 0 | 0 | 100.0% [100.0, 100.0] |"
            in text)
    assert f"Rater agreement: 100.0% of rater pairs agree" in text
    assert "Human preference study (study.sqlite)" in html.read_text()


def test_results_command_and_a_corrupt_study_is_one_line(run_copy):
    path = create(run_copy, "most-stable:random")
    result = invoke("study", "results", run_copy)
    assert result.exit_code == 0 and "| most-stable vs random | 0 |" in result.stdout
    path.write_bytes(b"not a database" * 100)
    result = invoke("study", "results", path)
    assert result.exit_code == 1 and result.stderr.startswith(f"Error: {path}: not a readable study (")
    assert result.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- serving

def test_serving_elsewhere_than_loopback_needs_a_flag(monkeypatch, run_copy):
    from stablenoise.study import command

    monkeypatch.setattr(command, "_run_forever", lambda server, what: server.server_close())  # never block
    path = create(run_copy, "most-stable:random")
    result = invoke("study", "serve", path, "--host", "0.0.0.0")
    assert result.exit_code == 1
    assert result.stderr == "Error: --host 0.0.0.0 is not a loopback address: add --allow-remote to serve it there\n"
    result = invoke("study", "serve", path, "--host", "0.0.0.0", "--allow-remote", "--port", "99999")
    assert result.exit_code == 2  # click's range check, after no warning
    result = invoke("study", "serve", run_copy / "missing.sqlite")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {run_copy / 'missing.sqlite'}: no such study (make one with: stablenoise "
                             "study create RUN)\n")


def test_remote_host_warns(monkeypatch, run_copy):
    from stablenoise.study import command

    monkeypatch.setattr(command, "_run_forever", lambda server, what: server.server_close())
    path = create(run_copy, "most-stable:random")
    result = invoke("study", "serve", path, "--host", "0.0.0.0", "--allow-remote", "--port", "0")
    assert result.exit_code == 0, result.output
    assert result.stderr == ("warning: serving on 0.0.0.0: anyone who can reach it can vote and read the run's "
                             "images\n")


def test_serving_a_study_in_a_read_only_folder_is_one_line(run_copy):
    path = create(run_copy, "most-stable:random")
    before = path.read_bytes()
    os.chmod(run_copy, 0o555)
    try:
        if os.access(run_copy, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        result = invoke("study", "serve", path, "--port", "0")
    finally:
        os.chmod(run_copy, 0o755)
    assert result.exit_code == 1 and result.stderr.startswith(f"Error: {path}: cannot take votes (")
    assert path.read_bytes() == before


# ----------------------------------------------------------------------------- the demo's API (no model)

class NoModel:
    """A demo that must never be reached: every request below is refused before the model runs."""
    jobs: dict = {}

    def __getattr__(self, name):
        raise AssertionError(f"the model was called: {name}")


@pytest.fixture(scope="module")
def demo_base():
    from stablenoise.study.demo import DEMO_ROUTES
    from stablenoise.study.server import make_server

    server = make_server(DEMO_ROUTES, "127.0.0.1", 0, demo=NoModel())
    serve_in_thread(server)
    yield url(server)
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path, body, status, error", [
    ("/api/candidates", {"prompt": "a red square", "k": 0}, 400, "k: an integer from 1 to 32"),
    ("/api/candidates", {"prompt": "a red square", "k": 33}, 400, "k: an integer from 1 to 32"),
    ("/api/candidates", {"prompt": "a red square", "k": "8"}, 400, "k: an integer from 1 to 32"),
    ("/api/candidates", {"prompt": "a red square", "k": True}, 400, "k: an integer from 1 to 32"),
    ("/api/candidates", {"prompt": "  ", "k": 8}, 400, "prompt: 1 to 200 characters"),
    ("/api/candidates", {"prompt": "x" * 201, "k": 8}, 400, "prompt: 1 to 200 characters"),
    ("/api/candidates", {"prompt": ["a", "b"], "k": 8}, 400, "prompt: 1 to 200 characters"),
    ("/api/optimize", {"prompt": "a red square", "seed": -1, "iterations": 5}, 400,
     f"seed: an integer from 0 to {2**63 - 1}"),
    ("/api/optimize", {"prompt": "a red square", "seed": 0, "iterations": 101}, 400,
     "iterations: an integer from 1 to 100"),
    ("/api/optimize/7", None, 404, "no such job"),
])
def test_demo_refuses_bad_input_before_the_model_runs(demo_base, path, body, status, error):
    got, reply, _ = request(demo_base, path, body)
    assert (got, json.loads(reply)) == (status, {"error": error})
