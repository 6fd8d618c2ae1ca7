"""The shipped shapes-world model: loads offline from the installed package and actually draws the world."""

import json
import os

import numpy as np
import pytest
import torch

import stablenoise as sn
from stablenoise.backends import shipped_models
from stablenoise.shapes import world
from stablenoise.shapes.verifier import detect, verify

SHIPPED_MODEL = shipped_models()["shapes"]


@pytest.fixture(scope="module")
def shapes():
    return sn.load()  # no --model: the shipped model


def test_shipped_weights_are_small_safetensors():
    files = [os.path.join(d, f) for d, _, fs in os.walk(SHIPPED_MODEL) for f in fs]
    weights = [f for f in files if f.endswith((".safetensors", ".bin", ".pt", ".ckpt"))]
    assert weights and all(f.endswith(".safetensors") for f in weights)
    assert sum(os.path.getsize(f) for f in weights) <= 25 * 2**20
    assert json.loads((SHIPPED_MODEL / "model_index.json").read_text())["_class_name"] == "ShapesPipeline"


def test_every_step_count_starts_from_pure_noise(shapes):
    """SD/SDXL's scaled-linear betas with trailing spacing: 1, 2, 5 or 10 steps all start at t = 999, where
    alpha_bar ~ 0.005 (as in SDXL-turbo), not at a partly denoised level."""
    assert shapes.ddim_config["beta_schedule"] == "scaled_linear" and shapes.ddim_config["timestep_spacing"] == "trailing"
    for steps in (1, 2, 5, 10):
        sched = shapes.schedule(steps)
        assert int(sched.timesteps[0]) == 999 and float(sched.alphas[0]) == pytest.approx(0.0047, abs=2e-4)


def test_the_first_model_ships_beside_it():
    cosine = sn.load("shapes-cosine")
    assert cosine.ddim_config["beta_schedule"] == "squaredcos_cap_v2"
    assert [int(cosine.schedule(n).timesteps[0]) for n in (5, 10)] == [801, 901]  # leading spacing


def test_loads_offline_and_generates(shapes):
    assert type(shapes).__name__ == "ShapesBackend" and shapes.latent_shape == (3, 32, 32)
    prompts = ["a red circle", "a blue square", "a yellow triangle", "two green squares"]
    images = sn.generate(shapes, prompts, sn.noises_from_seeds(range(4), shapes.latent_shape))
    assert [im.size for im in images] == [(32, 32)] * 4
    # Not noise and not blank: every image holds at least one object the verifier can see.
    assert all(len(detect(im)) >= 1 for im in images)


def test_draws_training_captions(shapes):
    """Seeded, so deterministic: accuracy on 24 training-split captions, seed 0 each."""
    pairs = world.prompts(24, seed=11, split="train")
    images = sn.generate(shapes, [c for c, _ in pairs], sn.noises_from_seeds([0] * 24, shapes.latent_shape))
    accuracy = np.mean([verify(im, c).passed for im, (c, _) in zip(images, pairs)])
    assert accuracy >= 0.5, accuracy


def test_stability_is_a_real_round_trip(shapes):
    s = sn.stability(shapes, "a red circle", sn.noises_from_seeds(range(4), shapes.latent_shape))
    assert ((s > 0.3) & (s < 0.9999)).all(), s
    assert s.std() > 1e-4


def test_demo_runs_end_to_end(tmp_path):
    from click.testing import CliRunner

    from stablenoise.cli import main

    out = tmp_path / "demo"
    r = CliRunner().invoke(main, ["demo", "--prompt", "a red circle", "-k", "3", "--iterations", "1",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "done" and len(record["items"]) == 1
    item = record["items"][0]
    assert len(item["scores"]) == 3 and item["best_seed"] in range(3)
    assert set(item["verifier"]) == {"seed0", "most_stable", "least_stable", "optimized", "optimized_equiv"}
    assert [item["optimization"][n]["lr"] for n in ("optimized", "optimized_equiv")] == [100.0, 18.75]
    html = (out / "index.html").read_text()
    assert "a red circle" in html and (out / item["folder"] / "summary.png").exists()
    # A rerun with the same settings resumes: nothing recomputed, nothing lost.
    r = CliRunner().invoke(main, ["demo", "--prompt", "a red circle", "-k", "3", "--iterations", "1",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    again = json.loads((out / "run.json").read_text())
    assert again["items"] == record["items"] and again["status"] == "done" and len(again["resumed"]) == 1


def test_demo_rejects_a_caption_the_verifier_cannot_read(tmp_path):
    from click.testing import CliRunner

    from stablenoise.cli import main

    r = CliRunner().invoke(main, ["demo", "--prompt", "a purple hexagon", "--out", str(tmp_path / "d")])
    assert r.exit_code != 0 and "not a shapes-world caption" in r.output and "Traceback" not in r.output
