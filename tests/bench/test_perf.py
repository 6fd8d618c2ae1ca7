"""``stablenoise perf``: the measurements count what they claim (calls replayed, bytes held, simulated two-stage
selection) and the command runs end to end on the shipped model."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import stablenoise as sn
from stablenoise.bench import perf
from stablenoise.cli import main
from tolerance import SHAPES, cfg, f32, round_trip_n

pytestmark = pytest.mark.model


def test_overhead_replays_exactly_the_calls_of_a_score(sd):
    o = perf.overhead(sd, "a red cube", 3, 2.0, 1.0, batch=2, repeats=1)
    assert o["denoiser_calls"] == 6  # one call per step each way (CFG batches both branches into one call)
    assert o["seconds"]["stability"] > 0 and o["seconds"]["raw_denoiser_calls"] > 0


def test_checkpointing_holds_only_the_inputs_of_each_call(sd):
    m = perf.memory(sd, "a red cube", 1, 2.0, 1.0, batch=2, repeats=1)
    latent = 2 * 4 * 16 * 16 * 4  # the batch's float32 latent
    rows = {r["steps"]: r for r in m["rows"]}
    assert list(rows) == [1, 2, 4, 8]
    for t, r in rows.items():
        # Each of the 2T checkpointed calls keeps its input latent (and the conditioning, shared by all).
        assert r["checkpoint_held_bytes"] >= 2 * t * latent
        assert r["checkpoint_held_bytes"] < r["plain_held_bytes"] / 10
        assert r["checkpoint_peak_bytes_cpu_estimate"] == r["checkpoint_held_bytes"] + m["one_call_bytes"]
    # Without checkpointing every call's activations are held: linear in T.
    assert rows[8]["plain_held_bytes"] > 7 * rows[1]["plain_held_bytes"]
    assert m["held_ratio_checkpoint_over_plain_T8"] == rows[8]["checkpoint_held_bytes"] / rows[8]["plain_held_bytes"]


def _state(full, proxy):
    def scores(values):
        return {"stability": list(map(float, values)), "z0_cosine": list(map(float, values)), "denoise_evals": 0,
                "invert_evals": 0, "denoise_seconds": 0.0, "invert_seconds": 0.0}
    prompts = {}
    for i, (f, p) in enumerate(zip(full, proxy)):
        entry = {"prompt": f"p{i}", "seeds": list(range(i * len(f), (i + 1) * len(f))), "full": scores(f),
                 "cheap": scores(p), "bank": scores(p)}
        k = len(f)
        entry["full"].update(denoise_evals=10 * k, invert_evals=5 * k, denoise_seconds=1.0 * k, invert_seconds=0.5 * k)
        entry["cheap"].update(denoise_evals=2 * k, invert_evals=1 * k, denoise_seconds=0.2 * k, invert_seconds=0.1 * k)
        entry["bank"].update(denoise_evals=2 * k, invert_evals=1 * k, denoise_seconds=0.2 * k, invert_seconds=0.1 * k)
        prompts[str(i)] = entry
    return {"prompts": prompts}


def test_two_stage_is_simulated_from_the_stored_scores():
    full = [[0.1, 0.9, 0.5, 0.3], [0.8, 0.2, 0.4, 0.6]]
    reversed_proxy = [[-v for v in row] for row in full]
    settings = [perf.Setting("full", 5, 2.0, 1.0), perf.Setting("cheap", 1, 2.0, 1.0),
                perf.Setting("bank", 5, 1.0, 1.0, "")]
    a = perf.analyse_proxies(_state(full, reversed_proxy), settings, keeps=(1, 3, 4))
    rows = {r["proxy"]: r for r in a["proxies"]}
    assert a["full_evals_per_seed"] == 15 and a["seeds"] == 8
    cheap = rows["cheap:stability"]  # float64 ratios and ranks of a few numbers: approx's rel 1e-6 >> f64 rounding
    assert cheap["cost_ratio_evals"] == 5 and cheap["cost_ratio_seconds"] == pytest.approx(5)
    assert cheap["spearman_within_prompt"]["mean"] == pytest.approx(-1) and cheap["spearman_pooled"] == pytest.approx(-1)
    # Reversed: the full winner is the proxy's last, kept only when every seed is kept.
    assert [t["same_seed"]["mean"] for t in cheap["two_stage"]] == [0, 0, 1]
    # K proxy scores (3 evals each) + m full scores (15 each), against K full scores.
    assert [t["cheaper"] for t in cheap["two_stage"]] == pytest.approx([60 / (12 + 15), 60 / (12 + 45), 60 / (12 + 60)])
    assert rows["cheap:z0_cosine"]["evals_per_seed"] == 2 and rows["full:z0_cosine"]["cost_ratio_evals"] == 1.5
    # A prompt-independent proxy is a bank: per prompt only the kept seeds' full scores are paid.
    bank = rows["bank:stability"]
    assert bank["prompt_independent"] and [t["cheaper"] for t in bank["two_stage"]] == [4, pytest.approx(4 / 3), 1]
    a = perf.analyse_proxies(_state(full, full), settings, keeps=(1,))
    assert {r["proxy"]: r for r in a["proxies"]}["cheap:stability"]["two_stage"][0]["same_seed"]["mean"] == 1


def test_perf_command_end_to_end_on_the_shipped_model(tmp_path):
    out = tmp_path / "perf"
    args = ["perf", "--steps", "1", "--repeats", "1", "--batching-k", "4", "--batch-size", "2", "--proxy-prompts",
            "2", "--proxy-k", "3", "--bank-seeds", "3", "--bank-keep", "2", "--bank-prompts", "2", "--out", out]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "perf.json").read_text())
    assert set(perf.PARTS) <= set(result) and result["settings"]["steps"] == 1
    assert "## Seed bank" in (out / "perf.md").read_text() and "## Proxies" in r.output
    b = result["bank"]
    assert b["prompts"] == 2 and set(b["per_prompt"]) <= {0.0, 1.0} and b["evals_per_prompt"] == 2 * 3
    assert set(b["winners"]) <= set(b["top"]) and len(b["top"]) == 2
    state = json.loads((out / "proxy_scores.json").read_text())
    backend = sn.load("shapes")
    first = state["prompts"]["0"]
    s = sn.stability(backend, first["prompt"], sn.noises_from_seeds(first["seeds"], backend.latent_shape), steps=1)
    # stored scores are the library's: a 1-step round trip of the shapes UNet under its CFG 2, in other batches
    assert first["full"]["stability"] == pytest.approx(s.tolist(), abs=f32(round_trip_n(SHAPES, 1), cfg(2.0)))
    assert all(c["matches_simulation"] == c["prompts"] for c in result["proxies"]["checked"])


@pytest.mark.parametrize("args, message", [
    (["--parts", "overhead,speed"], "unknown perf part(s) speed"),
    (["--bench-db", "nowhere.sqlite"], "bench database not found"),
    (["--prompts", "no-such-set"], "no-such-set"),
])
def test_perf_bad_input(tmp_path, args, message):
    r = CliRunner().invoke(main, ["perf", "--out", str(tmp_path / "o"), *args])
    assert r.exit_code != 0 and message in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_bench_reference_matches_prompts_by_position_when_captions_repeat(tmp_path):
    import sqlite3

    from stablenoise.bench.schema import DDL, SCHEMA_VERSION

    db_path = tmp_path / "bench.sqlite"
    db = sqlite3.connect(db_path)
    db.executescript(DDL)
    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))  # read through the Store
    db.execute("INSERT INTO configs (id, digest, prompt_set, model, steps, guidance, inversion_guidance, k, first_seed,"
               " json, versions, created) VALUES (1, 'd', 's', 'm', 5, 2.0, 1.0, 2, 0, '{}', '{}', 'now')")
    texts = ["a triangle", "a circle", "a triangle"]  # a repeated caption, as held-out sets have
    verdicts = {0: [(0.9, 1.0), (0.1, 0.0)], 1: [(0.5, 0.0), (0.6, 0.0)], 2: [(0.2, 1.0), (0.8, 0.0)]}
    for i, text in enumerate(texts):
        db.execute("INSERT INTO prompts (config_id, idx, text) VALUES (1, ?, ?)", (i, text))
        for rank, (stab, passed) in enumerate(verdicts[i]):
            cur = db.execute("INSERT INTO samples (config_id, prompt_idx, method, seed, seed_rank, stability, "
                             "image_path, unet_calls, image_calls, reward_calls, seconds, created) "
                             "VALUES (1, ?, 'seed', ?, ?, ?, 'x.png', 0, 0, 0, 0, 'now')", (i, 2 * i + rank, rank, stab))
            db.execute("INSERT INTO scores (sample_id, name, value) VALUES (?, 'v', ?)", (cur.lastrowid, passed))
    db.commit()
    db.close()
    bank = {"judge": "v", "per_prompt": [1.0, 1.0, 0.0]}
    a = perf.compare_with_bench(bank, texts, db_path, perf.Setting("full", 5, 2.0, 1.0))
    assert a["prompts"] == 3 and a["k"] == 2
    assert a["full_selection"]["mean"] == pytest.approx(1 / 3)  # most stable: pass, fail, fail
    assert a["random"]["mean"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert a["bank_minus_full_selection"]["mean"] == pytest.approx(1 / 3)
    other = perf.compare_with_bench({"judge": "v", "per_prompt": [1.0]}, ["a circle"], db_path,
                                    perf.Setting("full", 5, 2.0, 1.0))
    assert other["prompts"] == 0  # index 0 holds another caption: not compared
    with pytest.raises(sn.StablenoiseError, match="no run with steps=4"):
        perf.check_bench(db_path, perf.Setting("full", 4, 2.0, 1.0))
