import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from stablenoise.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture()
def common(sd_folder):
    return ["--model", sd_folder, "--steps", "2", "--device", "cpu"]


def test_help_lists_commands():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("generate", "score", "select", "optimize", "demo", "experiment"):
        assert cmd in r.output


def test_score_select_optimize_generate(common, tmp_path):
    r = run("score", *common, "--prompt", "a red cube", "-n", 3, "--out", tmp_path / "score")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "score" / "run.json").read_text())
    assert rec["status"] == "complete" and rec["parameters"]["steps"] == 2
    scores = rec["items"][0]["scores"]
    assert len(scores) == 3 and all(0 < s < 1 for s in scores)
    assert rec["versions"]["torch"] == torch.__version__ and rec["model"]["pipeline"] == "StableDiffusionPipeline"

    r = run("select", *common, "--prompt", "a red cube", "-k", 3, "--batch-size", 2, "--out", tmp_path / "select")
    assert r.exit_code == 0, r.output
    item = json.loads((tmp_path / "select" / "run.json").read_text())["items"][0]
    assert item["scores"] == pytest.approx(scores, abs=1e-5)  # same seeds, same scores as `score`
    assert item["best_score"] == pytest.approx(max(scores), abs=1e-5)
    assert item["worst_score"] == pytest.approx(min(scores), abs=1e-5)
    folder = tmp_path / "select" / item["folder"]
    assert {"best.png", "worst.png", "best_vs_worst.png", "noise.safetensors", "record.json"} <= {
        p.name for p in folder.iterdir()}

    r = run("optimize", *common, "--prompt", "a red cube", "--iterations", 3, "--out", tmp_path / "opt")
    assert r.exit_code == 0, r.output
    item = json.loads((tmp_path / "opt" / "run.json").read_text())["items"][0]
    assert item["optimized_stability"] > item["initial_stability"]
    opt_noise = tmp_path / "opt" / item["folder"] / "noise.safetensors"

    # A saved noise feeds back into score and generate.
    r = run("score", *common, "--prompt", "a red cube", "--noise", opt_noise, "--out", tmp_path / "rescore")
    assert r.exit_code == 0, r.output
    rescored = json.loads((tmp_path / "rescore" / "run.json").read_text())["items"][0]["scores"][0]
    assert rescored == pytest.approx(item["optimized_stability"], abs=1e-5)
    r = run("generate", *common, "--prompts", _prompts(tmp_path, ["a cat", "a dog"]), "--seed", 5, "-n", 2,
            "--out", tmp_path / "gen")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "gen").glob("*/seed-*.png"))) == 4


def _prompts(tmp_path, lines):
    p = tmp_path / "prompts.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("args, message", [
    (["select", "-k", "0"], "0 is not in the range"),
    (["score", "--steps", "0"], "0 is not in the range"),
    (["score", "--model", "./missing/model"], "model path not found"),
    (["score", "--model", "nobody/no-such-model"], "could not load model"),
    (["score", "--prompts", "EMPTY"], "no prompts in file"),
    (["score", "--prompts", "MISSING"], "prompts file not found"),
    (["score", "--noise", "BADSHAPE"], "noise has shape"),
    (["score", "--noise", "NAN"], "NaN"),
    (["score", "--model", "DDPM"], "unsupported pipeline class"),
    (["score", "--prompt", " "], "empty prompt"),
])
def test_bad_input_one_line_error(args, message, sd_folder, tmp_path):
    files = {"EMPTY": _prompts(tmp_path, ["# nothing"]), "MISSING": tmp_path / "nope.txt",
             "BADSHAPE": tmp_path / "bad.safetensors", "NAN": tmp_path / "nan.safetensors", "DDPM": _ddpm(tmp_path)}
    save_file({"noise": torch.zeros(1, 3, 8, 8)}, str(files["BADSHAPE"]))
    save_file({"noise": torch.full((1, 4, 16, 16), float("nan"))}, str(files["NAN"]))
    args = [str(files.get(a, a)) for a in args]
    if "--model" not in args:
        args += ["--model", str(sd_folder)]
    if "--prompt" not in args and "--prompts" not in args:
        args += ["--prompt", "a cat"]
    r = CliRunner().invoke(main, args + ["--steps", "2"] if "--steps" not in args else args)
    assert r.exit_code != 0
    assert message in r.output
    assert "Traceback" not in r.output
    error_lines = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(error_lines) == 1


def _ddpm(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    return tmp_path / "ddpm"


def test_no_prompt(sd_folder):
    r = CliRunner().invoke(main, ["score", "--model", str(sd_folder)])
    assert r.exit_code != 0 and "no prompt given" in r.output
