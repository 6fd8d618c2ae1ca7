"""The bench end to end: real runs on the shipped model and a tiny random SD, the store's contents checked
against the library's own functions, resume after a kill, reruns, bad input."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

import stablenoise as sn
from stablenoise.bench.store import Store
from stablenoise.cli import main
from tolerance import SHAPES, cfg, f32, round_trip_n

SCORE_2 = f32(round_trip_n(SHAPES, 2), cfg(2.0))  # a 2-step shapes score computed in two batch compositions

pytestmark = pytest.mark.model

CLIP_TINY = Path(__file__).parent.parent / "rewards" / "fixtures" / "clip-tiny"
SHAPES_ARGS = ["--prompts", "shapes-heldout", "--limit", "3", "-k", "3", "--rewards", "shapes-verifier,shapes-clip",
               "--no-report"]
METHODS = "random,most-stable,best,inversion-ablation,optimize:iterations=1,reno:shapes-clip=1;iterations=1"
# shapes-clip: 100 x a cosine of a tiny CLIP whose longest reduction is its 128-wide MLP (patches: 3 x 4 x 4)
CLIP_TOL = f32(128, 100.0)


def invoke(*args):
    return CliRunner().invoke(main, ["bench", *map(str, args)])


def comparable(rows):
    """Rows without what legitimately differs between two runs (timing, creation time, row ids)."""
    return sorted((r["config_id"], r["prompt_idx"], r["method"], r["seed"], r["seed_rank"], r["stability"],
                   r["image_path"], r["noise_path"], r["unet_calls"], r["image_calls"], r["reward_calls"],
                   json.dumps({k: v for k, v in json.loads(r["extra"]).items()}, sort_keys=True),
                   json.dumps(r["scores"], sort_keys=True)) for r in rows)


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    r = invoke(*SHAPES_ARGS, "--steps", "1,2", "--methods", METHODS, "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_store_holds_every_row_with_the_library_values(shapes_run):
    store = Store(shapes_run, create=False)
    rows = store.rows()
    configs = store.db.execute("SELECT id, steps, guidance, inversion_guidance, k FROM configs").fetchall()
    assert sorted(c[1] for c in configs) == [1, 2]
    # 2 configs x (3 prompts x 3 seeds + 3 optimized + 3 reward-optimized + a start row for each of those 6)
    assert len(rows) == 2 * (9 + 3 + 3 + 6)
    prompts = [p.text for p in sn.load_prompts("shapes-heldout").prompts[:3]]
    backend = sn.load("shapes")
    for cid, steps, guidance, inv, k in configs:
        seed_rows = [r for r in rows if r["config_id"] == cid and r["method"] == "seed"]
        # Every prompt has its own seeds: prompt i gets i*K ... i*K + K-1.
        assert sorted(r["seed"] for r in seed_rows) == list(range(9))
        for r in seed_rows:
            assert r["seed"] == r["prompt_idx"] * k + r["seed_rank"]
        # The stored stability is the library's stability of that seed's noise under that prompt.
        noise = sn.noises_from_seeds([r["seed"] for r in seed_rows], backend.latent_shape)
        expected = sn.stability(backend, [prompts[r["prompt_idx"]] for r in seed_rows], noise, steps, guidance, inv)
        # the bench's batches against one of 9: a round trip of the shapes UNet under CFG (denoising or inversion)
        tol = f32(round_trip_n(SHAPES, steps), max(cfg(guidance), cfg(inv)))
        assert [r["stability"] for r in seed_rows] == pytest.approx(expected.tolist(), abs=tol)
        # The stored image is the image of that noise, and its rewards are the rewards of that image.
        r0 = seed_rows[4]
        image = sn.generate(backend, prompts[r0["prompt_idx"]], noise[4:5], steps, guidance, sampler="ddim")[0]
        stored = Image.open(shapes_run / r0["image_path"])
        # Equal up to one 8-bit level: a batch of 9 and a batch of 1 round float32 sums differently.
        diff = np.abs(np.asarray(stored, dtype=int) - np.asarray(image, dtype=int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99
        clip = sn.load_reward("shapes-clip")
        assert r0["scores"]["shapes-clip"] == pytest.approx(float(clip([stored], [prompts[r0["prompt_idx"]]])[0]),
                                                            abs=CLIP_TOL)
        assert r0["scores"]["shapes-verifier"] in (0.0, 1.0)
        # Cost: guidance 2 denoises with two UNet evaluations a step, inverts with one.
        assert all(r["image_calls"] == 2 * steps and r["unet_calls"] == 3 * steps for r in seed_rows)
        # The inversion ablation inverts again at the denoising guidance (two evaluations a step).
        assert all(f"stability@inversion_guidance={guidance:g}" in r["scores"] for r in seed_rows)
        assert all(json.loads(r["extra"])["variant_calls"] == 2 * steps for r in seed_rows)
        opt = [r for r in rows if r["config_id"] == cid and r["method"] == "optimize:iterations=1"]
        assert len(opt) == 3 and all(r["seed_rank"] == 0 and r["seed"] == 3 * r["prompt_idx"] for r in opt)
        # 1 iteration = 2 round trips, plus one denoising pass for the image.
        assert all(r["unet_calls"] == 2 * 3 * steps + 2 * steps for r in opt)
        for r in opt:
            extra = json.loads(r["extra"])
            start = next(s for s in seed_rows if s["prompt_idx"] == r["prompt_idx"] and s["seed_rank"] == 0)
            assert extra["start_stability"] == pytest.approx(start["stability"], abs=tol)
            assert r["stability"] >= start["stability"] - tol  # the best iterate, never worse than the start
            saved = load_file(shapes_run / r["noise_path"])["noise"]
            s = sn.stability(backend, prompts[r["prompt_idx"]], saved, steps, guidance, inv)
            assert float(s[0]) == pytest.approx(r["stability"], abs=tol)
            # Its start row: the seed's own noise (no preserve_norm), scored like the seed row.
            first = next(x for x in rows if x["config_id"] == cid and x["method"] == "optimize:iterations=1@start"
                         and x["prompt_idx"] == r["prompt_idx"])
            assert first["seed"] == r["seed"] and first["unet_calls"] == first["image_calls"] == 2 * steps
            assert torch.equal(load_file(shapes_run / first["noise_path"])["noise"],
                               sn.noises_from_seeds([r["seed"]], backend.latent_shape))
            assert first["stability"] == pytest.approx(extra["start_stability"], abs=tol)
            assert set(first["scores"]) == {"shapes-verifier", "shapes-clip"}  # rewards; no ablation variant
            # The seed row's image up to one 8-bit level (a batch of 9 vs a batch of 3).
            a, b = (np.asarray(Image.open(shapes_run / x["image_path"]), dtype=int) for x in (first, start))
            assert np.abs(a - b).max() <= 1
        reno = [r for r in rows if r["config_id"] == cid and r["method"] == "reno:iterations=1,shapes-clip=1"]
        assert len(reno) == 3 and all(r["reward_calls"] >= 1 for r in reno)
        starts = [r for r in rows if r["config_id"] == cid and r["method"] == "reno:iterations=1,shapes-clip=1@start"]
        assert sorted(r["prompt_idx"] for r in starts) == [0, 1, 2] and all(r["reward_calls"] == 0 for r in starts)


def test_a_method_is_compared_with_the_noise_it_started_from(tmp_path):
    """With preserve_norm the optimizer starts from the seed's noise moved onto the sqrt(d) shell: the start row
    holds that noise, its image and scores, and the report's "vs its start" reads it, not the seed row. A store
    without start rows (made before them) gets them on the next run, without optimizing again."""
    from stablenoise.bench.methods import derive_methods
    from stablenoise.bench.results import load_results

    out = tmp_path / "run"
    args = ["--prompts", "shapes-heldout", "--limit", "2", "-k", "2", "--steps", "2", "--rewards", "shapes-verifier",
            "--methods", "optimize:iterations=1;preserve_norm=1", "--no-report", "--out", out]
    assert invoke(*args).exit_code == 0
    rows = Store(out, create=False).rows()
    label = "optimize:iterations=1,preserve_norm=1"
    starts = sorted((r for r in rows if r["method"] == label + "@start"), key=lambda r: r["prompt_idx"])
    seeds = {r["prompt_idx"]: r for r in rows if r["method"] == "seed" and r["seed_rank"] == 0}
    d = 3 * 32 * 32
    for r in starts:
        noise = load_file(out / r["noise_path"])["noise"]
        seed_noise = sn.noises_from_seeds([r["seed"]], noise.shape[1:])
        # on the shell: float32 entries |x| <= 4 rescaled by a norm over d terms
        assert torch.allclose(noise, seed_noise * d ** 0.5 / seed_noise.norm(), rtol=0, atol=f32(d, 4.0))
        opt = next(x for x in rows if x["method"] == label and x["prompt_idx"] == r["prompt_idx"])
        assert r["stability"] == pytest.approx(json.loads(opt["extra"])["start_stability"], abs=SCORE_2)
        assert abs(r["stability"] - seeds[r["prompt_idx"]]["stability"]) > 1e-3  # not the seed row's value
    method = derive_methods(load_results(out).tables[0])[label]
    assert method.start["stability"].tolist() == pytest.approx([r["stability"] for r in starts])
    assert method.start["shapes-verifier"].tolist() == [r["scores"]["shapes-verifier"] for r in starts]
    # Remove the start rows, as in a store made before they existed: the rerun adds the same rows back.
    with sqlite3.connect(out / "bench.sqlite") as db:
        db.execute("DELETE FROM scores WHERE sample_id IN (SELECT id FROM samples WHERE method LIKE '%@start')")
        db.execute("DELETE FROM samples WHERE method LIKE '%@start'")
    assert derive_methods(load_results(out).tables[0])[label].start is None  # preserve_norm: no seed fallback
    before = [r for r in Store(out, create=False).rows() if r["method"] == label]
    assert invoke(*args).exit_code == 0
    again = Store(out, create=False).rows()
    assert [r for r in again if r["method"] == label] == before  # not optimized again
    redone = sorted((r for r in again if r["method"] == label + "@start"), key=lambda r: r["prompt_idx"])
    assert [r["stability"] for r in redone] == pytest.approx([r["stability"] for r in starts], abs=SCORE_2)


def test_same_command_twice_adds_nothing_and_changes_nothing(shapes_run, tmp_path):
    before = comparable(Store(shapes_run, create=False).rows())
    r = invoke(*SHAPES_ARGS, "--steps", "1,2", "--methods",
               METHODS, "--out", shapes_run)
    assert r.exit_code == 0, r.output
    assert comparable(Store(shapes_run, create=False).rows()) == before
    # A fresh run of the same command gives the same rows.
    fresh = tmp_path / "fresh"
    r = invoke(*SHAPES_ARGS, "--steps", "1", "--methods", METHODS, "--out", fresh)
    assert r.exit_code == 0, r.output
    first = [x for x in before if x[0] == 1]
    assert [x[1:] for x in comparable(Store(fresh, create=False).rows())] == [x[1:] for x in first]


def test_a_reward_added_later_scores_the_stored_images(tmp_path):
    out = tmp_path / "run"
    assert invoke("--prompts", "shapes-heldout", "--limit", "2", "-k", "2", "--steps", "1", "--methods", "random",
                  "--rewards", "shapes-verifier", "--no-report", "--out", out).exit_code == 0
    r = invoke("--prompts", "shapes-heldout", "--limit", "2", "-k", "2", "--steps", "1", "--methods", "random",
               "--rewards", "shapes-verifier,shapes-clip", "--no-report", "--out", out)
    assert r.exit_code == 0, r.output
    rows = Store(out, create=False).rows()
    assert len(rows) == 4 and all(set(r["scores"]) == {"shapes-verifier", "shapes-clip"} for r in rows)
    clip = sn.load_reward("shapes-clip")
    r0 = rows[0]
    image = Image.open(out / r0["image_path"])
    prompt = sn.load_prompts("shapes-heldout").prompts[r0["prompt_idx"]].text
    assert r0["scores"]["shapes-clip"] == pytest.approx(float(clip([image], [prompt])[0]), abs=CLIP_TOL)


def test_the_inversion_ablation_added_later_completes_the_stored_seeds(tmp_path):
    out = tmp_path / "run"
    base = ["--prompts", "shapes-heldout", "--limit", "2", "-k", "2", "--steps", "2", "--rewards", "shapes-verifier",
            "--no-report", "--out", out]
    assert invoke(*base, "--methods", "random").exit_code == 0
    r = invoke(*base, "--methods", "random,inversion-ablation")
    assert r.exit_code == 0, r.output
    later = Store(out, create=False).rows()
    fresh = tmp_path / "fresh"
    assert invoke(*base[:-1], fresh, "--methods", "random,inversion-ablation").exit_code == 0
    assert comparable(later) == comparable(Store(fresh, create=False).rows())


def test_optimizing_methods_can_run_on_the_first_prompts_only(tmp_path):
    out = tmp_path / "run"
    r = invoke("--prompts", "shapes-heldout", "--limit", "3", "-k", "2", "--steps", "1", "--rewards", "shapes-verifier",
               "--methods", "random,optimize:iterations=1", "--optimize-prompts", "2", "--no-report", "--out", out)
    assert r.exit_code == 0, r.output
    rows = Store(out, create=False).rows()
    assert sorted(x["prompt_idx"] for x in rows if x["method"] == "optimize:iterations=1") == [0, 1]
    assert sorted(x["prompt_idx"] for x in rows if x["method"] == "optimize:iterations=1@start") == [0, 1]
    assert len([x for x in rows if x["method"] == "seed"]) == 6 and len(rows) == 6 + 2 + 2


def test_tiny_random_sd_with_a_tiny_random_reward(sd_folder, tmp_path):
    out = tmp_path / "sd"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n")
    reward = f"clipscore:{CLIP_TINY}"
    r = invoke("--model", sd_folder, "--prompts", prompts, "-k", "2", "--steps", "2", "--guidance", "1,3",
               "--methods", "random,most-stable,optimize:iterations=1", "--rewards", reward, "--batch-size", "3",
               "--no-report", "--out", out)
    assert r.exit_code == 0, r.output
    rows = Store(out, create=False).rows()
    assert len(rows) == 2 * (4 + 2 + 2)  # 2 configs x (2 prompts x 2 seeds + 2 optimized + their 2 start rows)
    assert all(reward in r["scores"] and r["scores"][reward] is not None for r in rows)
    cfg = dict(Store(out, create=False).db.execute("SELECT guidance, id FROM configs").fetchall())
    # guidance 1: no CFG (one evaluation per step both ways); guidance 3: CFG doubles the denoising pass.
    assert {r["unet_calls"] for r in rows if r["config_id"] == cfg[1.0] and r["method"] == "seed"} == {4}
    assert {r["unet_calls"] for r in rows if r["config_id"] == cfg[3.0] and r["method"] == "seed"} == {6}


def test_a_killed_run_resumes_without_losing_or_duplicating_rows(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "stablenoise.cli", "bench", "--prompts", "shapes-heldout", "--limit", "4", "-k", "3",
            "--steps", "2", "--methods", "random", "--rewards", "shapes-verifier", "--batch-size", "1",
            "--no-report", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.2)
            if (out / "bench.sqlite").exists():
                try:
                    with sqlite3.connect(out / "bench.sqlite") as db:
                        if db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] >= 3:
                            break
                except sqlite3.OperationalError:
                    pass
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    with sqlite3.connect(out / "bench.sqlite") as db:
        partial = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    assert 3 <= partial < 12
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    resumed = Store(out, create=False).rows()
    assert len(resumed) == 12 and len({(x["prompt_idx"], x["seed"]) for x in resumed}) == 12
    for x in resumed:  # every committed row's image is on disk
        assert (out / x["image_path"]).is_file()
    clean = tmp_path / "clean"
    args[args.index(str(out))] = str(clean)
    assert subprocess.run(args, capture_output=True).returncode == 0
    assert [x[1:] for x in comparable(resumed)] == [x[1:] for x in comparable(Store(clean, create=False).rows())]


@pytest.mark.parametrize("args, message", [
    (["--methods", "random,bogus"], "unknown method 'bogus'"),
    (["--rewards", "no-such-reward"], "no-such-reward"),
    (["--methods", "best:shapes-clip", "--rewards", "shapes-verifier"], "needs shapes-clip among --rewards"),
    (["--methods", "reno:shapes-verifier=1"], "not differentiable"),
    (["--methods", "optimize:lr=-1"], "lr > 0"),
    (["--steps", "0"], "--steps"),
    (["--guidance", "nan"], "--guidance"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    base = {"--prompts": "shapes-heldout", "--rewards": "shapes-verifier", "--methods": "random", "-k": "2",
            "--out": str(tmp_path / "run"), "--limit": "2"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    r = invoke(*[x for kv in base.items() for x in kv])
    assert r.exit_code != 0
    assert message in r.output
    assert not (tmp_path / "run" / "bench.sqlite").exists()


def test_empty_prompt_set_and_foreign_store_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    r = invoke("--prompts", empty, "--rewards", "shapes-verifier", "--out", tmp_path / "a")
    assert r.exit_code != 0 and "empty" in r.output.lower() and len(r.output.strip().splitlines()) == 1
    other = tmp_path / "b"
    other.mkdir()
    with sqlite3.connect(other / "bench.sqlite") as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '999')")
    r = invoke("--prompts", "shapes-heldout", "--limit", "1", "-k", "1", "--rewards", "shapes-verifier",
               "--methods", "random", "--out", other)
    assert r.exit_code != 0 and "schema version 999" in r.output and len(r.output.strip().splitlines()) == 1


def test_both_noise_norm_arms_in_one_bench(tmp_path):
    """--noise-norm keep,shell: two configs; the shell arm scores and images each seed's noise on the sqrt(d)
    shell (the library's numbers for those noises); the report gives stability's Spearman with |eps|."""
    from stablenoise.bench.report import write_report
    from stablenoise.noise import on_shell

    out = tmp_path / "run"
    r = invoke("--prompts", "shapes-heldout", "--limit", "2", "-k", "4", "--steps", "2", "--rewards",
               "shapes-verifier,shapes-clip", "--methods", "random,most-stable", "--noise-norm", "keep,shell",
               "--no-report", "--out", out)
    assert r.exit_code == 0, r.output
    store = Store(out, create=False)
    configs = {json.loads(j).get("noise_norm", "keep"): cid for cid, j in store.db.execute("SELECT id, json FROM configs")}
    assert set(configs) == {"keep", "shell"}
    backend = sn.load("shapes")
    prompts = [p.text for p in sn.load_prompts("shapes-heldout").prompts[:2]]
    for norm, cid in configs.items():
        rows = [x for x in store.rows(cid) if x["method"] == "seed"]
        noise = sn.noises_from_seeds([x["seed"] for x in rows], backend.latent_shape)
        noise = on_shell(noise) if norm == "shell" else noise
        expected = sn.stability(backend, [prompts[x["prompt_idx"]] for x in rows], noise, steps=2)
        assert [x["stability"] for x in rows] == pytest.approx(expected.tolist(), abs=SCORE_2)
        image = sn.generate(backend, prompts[rows[1]["prompt_idx"]], noise[1:2], 2)[0]
        diff = np.abs(np.asarray(Image.open(out / rows[1]["image_path"]), dtype=int) - np.asarray(image, dtype=int))
        assert diff.max() <= 1  # the image of the scored noise (one 8-bit level: batch of 8 vs 1)
    html, md = write_report(out, n_boot=20, grid_prompts=0)
    text = md.read_text().replace("\\|", "|")  # Markdown escapes the | of |ε|
    assert "noise on the shell" in text and "Within-prompt Spearman between stability and the noise's norm" in text
    assert "Every noise was on the √d shell" in text and "|ε| partialled out" in text


def test_a_batch_that_runs_out_of_memory_is_halved_and_the_rows_stay_the_same(tmp_path, monkeypatch):
    from stablenoise.bench.methods import parse_methods
    from stablenoise.bench.run import Sweep, run_bench

    prompt_set = sn.load_prompts("shapes-heldout", limit=2)
    rewards = {"shapes-verifier": sn.load_reward("shapes-verifier")}

    def bench(out, backend, batch_size):
        store = run_bench(backend, prompt_set, rewards, parse_methods("random"), Sweep((1,), (2.0,), k=4), out,
                          batch_size=batch_size, progress=False, log=lambda _: None)
        rows = store.rows()
        store.close()
        return comparable(rows)

    backend, sizes = sn.load("shapes"), []
    real = backend.denoise

    def denoise(noise, *args, **kwargs):
        sizes.append(len(noise))
        if len(noise) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(noise, *args, **kwargs)

    monkeypatch.setattr(backend, "denoise", denoise)
    with pytest.warns(UserWarning, match="out of memory with a batch of 4: retrying with 2"):
        halved = bench(tmp_path / "oom", backend, 4)
    assert sizes == [4, 2, 2, 2, 2]  # the failed batch of 4, then every batch at the smaller size
    assert halved == bench(tmp_path / "clean", sn.load("shapes"), 2)  # the same rows as batches of 2 from the start
