import json
import os

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import stablenoise as sn
from stablenoise.cli import main
from stablenoise.errors import StablenoiseError
from tolerance import SHAPES, TINY_SD, cfg, f32, round_trip_n

# Two runs' scores of the same seeds (other batches): a 2-step round trip of the tiny UNet under SD's CFG 7.5.
SCORE_TOL = f32(round_trip_n(TINY_SD, 2), cfg(7.5))


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
    assert rec["status"] == "done" and rec["parameters"]["steps"] == 2
    scores = rec["items"][0]["scores"]
    assert len(scores) == 3 and all(0 < s < 1 for s in scores)
    assert rec["versions"]["torch"] == torch.__version__ and rec["model"]["pipeline"] == "StableDiffusionPipeline"

    r = run("select", *common, "--prompt", "a red cube", "-k", 3, "--batch-size", 2, "--out", tmp_path / "select")
    assert r.exit_code == 0, r.output
    item = json.loads((tmp_path / "select" / "run.json").read_text())["items"][0]
    assert item["scores"] == pytest.approx(scores, abs=SCORE_TOL)  # same seeds, same scores as `score`
    assert item["best_score"] == pytest.approx(max(scores), abs=SCORE_TOL)
    assert item["worst_score"] == pytest.approx(min(scores), abs=SCORE_TOL)
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
    assert rescored == pytest.approx(item["optimized_stability"], abs=SCORE_TOL)
    # With --preserve-norm the start is the seed's noise on the shell: the saved initial noise and its image
    # are that noise, whose stability is the recorded initial_stability.
    r = run("optimize", *common, "--prompt", "a red cube", "--iterations", 1, "--preserve-norm",
            "--out", tmp_path / "opt-shell")
    assert r.exit_code == 0, r.output
    item = json.loads((tmp_path / "opt-shell" / "run.json").read_text())["items"][0]
    initial = load_file(tmp_path / "opt-shell" / item["folder"] / "noise.safetensors")["initial"]
    assert float(initial.norm()) == pytest.approx(initial.numel() ** 0.5, rel=f32(initial.numel()))  # a d-term norm
    backend = sn.load(str(common[1]), device="cpu")
    assert float(sn.stability(backend, "a red cube", initial, steps=2)[0]) == pytest.approx(
        item["initial_stability"], abs=SCORE_TOL)
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
    (["score", "--guidance", "nan"], "'nan' is not a finite number"),
    (["score", "--guidance", "inf"], "'inf' is not a finite number"),
    (["optimize", "--lr", "inf"], "'inf' is not a finite number"),
    (["bench", "--inversion-guidance", "nan"], "'nan' is not a finite number"),
    (["score", "--noise", "INT"], "floating point"),
    (["score", "--noise", "BOOL"], "floating point"),
    (["score", "--seed", "-1"], "is not in the range"),
    (["score", "--seed", str(2**63)], "is not in the range"),
    (["score", "--seed", str(2**70)], "is not in the range"),
    (["score", "--seed", str(2**63 - 1), "-n", "2"], "run past 2**63 - 1"),
    (["bank", "--seed", str(2**63 - 1), "-n", "2"], "run past 2**63 - 1"),
    (["select", "-k", "1000000000"], "is not in the range"),
    (["score", "-n", "1000000000"], "is not in the range"),
    (["score", "--prompts", "LATIN1"], "not UTF-8"),
    (["score", "--device", "bogus"], "unknown device"),
    (["score", "--device", "cuda"], "not available"),
    (["score", "--device", "mps"], "not available"),
    (["score", "--model", "BADINDEX"], "not a valid model_index.json"),
    (["score", "--out", "UNDERFILE"], "output folder"),
    (["score", "--out", "FILE"], "is a file"),
    (["score", "--timestep-spacing", "karras"], "is not one of"),
])
def test_bad_input_one_line_error(args, message, sd_folder, tmp_path):
    files = {"EMPTY": _prompts(tmp_path, ["# nothing"]), "MISSING": tmp_path / "nope.txt",
             "BADSHAPE": tmp_path / "bad.safetensors", "NAN": tmp_path / "nan.safetensors", "DDPM": _ddpm(tmp_path),
             "INT": tmp_path / "int.safetensors", "BOOL": tmp_path / "bool.safetensors",
             "LATIN1": tmp_path / "latin1.txt", "BADINDEX": tmp_path / "badindex", "FILE": tmp_path / "a-file",
             "UNDERFILE": tmp_path / "a-file" / "out"}
    save_file({"noise": torch.zeros(1, 3, 8, 8)}, str(files["BADSHAPE"]))
    save_file({"noise": torch.full((1, 4, 16, 16), float("nan"))}, str(files["NAN"]))
    save_file({"noise": torch.zeros(1, 4, 16, 16, dtype=torch.int64)}, str(files["INT"]))
    save_file({"noise": torch.zeros(1, 4, 16, 16, dtype=torch.bool)}, str(files["BOOL"]))
    files["LATIN1"].write_bytes("une pomme rôtie\n".encode("latin-1"))
    files["BADINDEX"].mkdir()
    (files["BADINDEX"] / "model_index.json").write_text("{not json")
    files["FILE"].write_text("a user's file\n")
    before = _snapshot(tmp_path)
    args = [str(files.get(a, a)) for a in args]
    if "--model" not in args:
        args += ["--model", str(sd_folder)]
    if "--prompt" not in args and "--prompts" not in args:
        args += ["--prompt", "a cat"]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    r = CliRunner().invoke(main, args + ["--steps", "2"] if "--steps" not in args else args)
    assert r.exit_code != 0
    assert message in r.output
    assert "Traceback" not in r.output
    error_lines = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(error_lines) == 1
    assert _snapshot(tmp_path) == before  # nothing written, nothing lost (the run never started)


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def _ddpm(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    return tmp_path / "ddpm"


def test_no_prompt(sd_folder):
    r = CliRunner().invoke(main, ["score", "--model", str(sd_folder)])
    assert r.exit_code != 0 and "no prompt given" in r.output


def test_rerun_resumes_and_never_deletes_what_it_did_not_write(common, tmp_path):
    out = tmp_path / "run"
    args = ["score", *common, "--prompt", "a cat", "--prompt", "a dog", "-n", 2, "--out", out]
    assert run(*args).exit_code == 0
    rec = json.loads((out / "run.json").read_text())
    folder = out / rec["items"][0]["folder"]
    (folder / "my-notes.txt").write_text("mine")  # a user's file inside a prompt folder
    (out / "extra.txt").write_text("also mine")
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert (folder / "my-notes.txt").read_text() == "mine" and (out / "extra.txt").read_text() == "also mine"
    again = json.loads((out / "run.json").read_text())
    assert again["items"] == rec["items"] and len(again["resumed"]) == 1 and again["status"] == "done"
    # Other settings into the same folder: refused, nothing touched.
    r = run("score", *common, "--prompt", "a cat", "-n", 3, "--out", out)
    assert r.exit_code != 0 and "holds a run with other parameters (prompts, seeds)" in r.output
    assert json.loads((out / "run.json").read_text()) == again
    # A folder that is not a stablenoise run: refused.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "photo.png").write_bytes(b"png")
    r = run("score", *common, "--prompt", "a cat", "--out", foreign)
    assert r.exit_code != 0 and "not empty and holds no stablenoise run" in r.output
    assert [p.name for p in foreign.iterdir()] == ["photo.png"]


def test_interrupted_run_keeps_finished_prompts_then_resumes(common, tmp_path, monkeypatch):
    import sys

    stability_module = sys.modules["stablenoise.stability"]

    out = tmp_path / "run"
    args = ["score", *common, "--prompt", "a cat", "--prompt", "a dog", "-n", 2, "--out", out]
    real, calls = stability_module.stability, []

    def interrupt_second_prompt(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(stability_module, "stability", interrupt_second_prompt)
    r = run(*args)
    assert r.exit_code == 130
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "interrupted" and [it["prompt"] for it in rec["items"]] == ["a cat"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder
    monkeypatch.setattr(stability_module, "stability", real)
    r = run(*args)
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "done" and [it["prompt"] for it in rec["items"]] == ["a cat", "a dog"]


def test_non_finite_scores_are_null_and_fail_the_run(common, tmp_path):
    path = tmp_path / "huge.safetensors"
    save_file({"noise": torch.cat([torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16) * 1e30])}, str(path))
    r = run("score", *common, "--prompt", "a cat", "--noise", path, "--out", tmp_path / "s")
    text = (tmp_path / "s" / "run.json").read_text()
    rec = json.loads(text)
    assert r.exit_code == 1 and "1 stability score(s) were NaN or inf" in r.output
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))  # strict JSON
    scores = rec["items"][0]["scores"]
    assert scores[1] is None and 0 < scores[0] < 1
    assert rec["status"].startswith("failed: 1 stability score(s)")
    assert "nan" not in r.output.lower().replace("nan or inf", "")


def test_optimize_uses_every_noise_of_a_file(common, tmp_path):
    path = tmp_path / "three.safetensors"
    noises = torch.stack([torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)])
    save_file({"noise": noises}, str(path))
    r = run("optimize", *common, "--prompt", "a cat", "--noise", path, "--iterations", 2, "--batch-size", 2,
            "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    item = json.loads((tmp_path / "o" / "run.json").read_text())["items"][0]
    assert len(item["noises"]) == 3 and all(len(n["history"]) == 3 for n in item["noises"])
    folder = tmp_path / "o" / item["folder"]
    assert {f"optimized-{j}.png" for j in range(3)} <= {p.name for p in folder.iterdir()}
    from safetensors.torch import load_file
    saved = load_file(str(folder / "noise.safetensors"))
    assert torch.equal(saved["initial"], noises) and saved["optimized"].shape == (3, 4, 16, 16)
    # Each start was optimized on its own: its first stability is its own score.
    import stablenoise as sn
    expected = sn.stability(sn.load(str(common[1]), device="cpu"), "a cat", noises, steps=2)
    assert [n["initial_stability"] for n in item["noises"]] == pytest.approx(expected.tolist(), abs=SCORE_TOL)


def test_optimize_that_never_scores_fails_with_a_final_status(common, tmp_path):
    path = tmp_path / "huge.safetensors"
    save_file({"noise": torch.randn(1, 4, 16, 16) * 1e30}, str(path))
    r = run("optimize", *common, "--prompt", "a cat", "--noise", path, "--iterations", 2, "--out", tmp_path / "o")
    assert r.exit_code == 1 and "never had a finite stability" in r.output and "Traceback" not in r.output
    rec = json.loads((tmp_path / "o" / "run.json").read_text())
    assert rec["status"].startswith("failed: 1 (prompt, noise) pair(s)")
    assert rec["items"][0]["optimized_stability"] is None and rec["items"][0]["history"] == []


def test_prompts_file_with_a_byte_order_mark(tmp_path):
    from stablenoise.outputs import read_prompts

    (tmp_path / "p.txt").write_bytes("\ufeffa red cube\nb\n".encode("utf-8"))
    assert read_prompts(tmp_path / "p.txt") == ["a red cube", "b"]
    (tmp_path / "p.csv").write_bytes("\ufeffprompt,category\na cat,x\n".encode("utf-8"))
    assert read_prompts(tmp_path / "p.csv") == ["a cat"]


def test_long_prompt_warns_once(sd):
    long = " ".join(["a red cube"] * 10)
    noise = torch.randn(1, *sd.latent_shape, generator=torch.Generator().manual_seed(0))
    import stablenoise as sn
    with pytest.warns(UserWarning, match=r"is \d+ tokens long; the text encoder reads 16") as seen:
        sn.stability(sd, long, noise, steps=1)
        sn.stability(sd, long, noise, steps=1)
    assert sum("tokens long" in str(w.message) for w in seen) == 1


def test_killed_process_ends_interrupted_with_finished_prompts_kept(sd_folder, tmp_path):
    """A real process, killed with SIGTERM while it works: the finished prompt stays, the status says so,
    no temporary folder is left, and a rerun finishes the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    prompts = _prompts(tmp_path, [f"a cat {i}" for i in range(40)])
    cmd = [sys.executable, "-m", "stablenoise.cli", "score", "--model", str(sd_folder), "--device", "cpu",
           "--steps", "2", "-n", "2", "--prompts", str(prompts), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "run.json").exists() and json.loads((out / "run.json").read_text())["items"]:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 130
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "interrupted" and 1 <= len(rec["items"]) < 40
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(it["folder"] for it in rec["items"])


def test_compile_flag_compiles_the_denoiser_and_says_so(common, tmp_path, monkeypatch):
    from stablenoise.backends.base import DiffusersBackend

    compile_ = DiffusersBackend.compile
    monkeypatch.setattr(DiffusersBackend, "compile", lambda self: compile_(self, backend="eager"))  # no C++ build
    r = run("score", *common, "--compile", "--prompt", "a red cube", "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "c" / "run.json").read_text())
    plain = run("score", *common, "--prompt", "a red cube", "--out", tmp_path / "p")
    assert plain.exit_code == 0
    assert rec["model"]["compiled"] is True
    assert json.loads((tmp_path / "p" / "run.json").read_text())["model"]["compiled"] is False
    assert rec["items"][0]["scores"] == pytest.approx(
        json.loads((tmp_path / "p" / "run.json").read_text())["items"][0]["scores"], abs=1e-6)  # eager: same sums


def test_height_and_width_set_the_latent_size(common, tmp_path):
    r = run("score", *common, "--height", 48, "--width", 64, "--prompt", "a red cube", "--out", tmp_path / "s")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s" / "run.json").read_text())["model"]["latent_shape"] == [4, 24, 32]  # tiny VAE: /2
    r = CliRunner().invoke(main, ["score", *map(str, common), "--height", "51", "--prompt", "a", "--out",
                                  str(tmp_path / "bad")])
    assert r.exit_code != 0 and "positive multiples of 2" in r.output and not (tmp_path / "bad").exists()
    r = CliRunner().invoke(main, ["score", "--height", "64", "--prompt", "a", "--out", str(tmp_path / "fixed")])
    assert r.exit_code != 0 and "fixed image size" in r.output


def test_select_by_a_reward(tmp_path):
    """`select --by REWARD` ranks the seeds by the reward of each seed's image (the library's score_seeds), with a
    fewer-step image as its two-stage proxy; a bad reward name writes nothing."""
    args = ["--model", "shapes", "--prompt", "a red circle", "-k", 4, "--steps", 2]
    r = run("select", *args, "--by", "shapes-clip", "--out", tmp_path / "by")
    assert r.exit_code == 0, r.output
    item = json.loads((tmp_path / "by" / "run.json").read_text())["items"][0]
    backend = sn.load("shapes")
    expected = sn.score_seeds(backend, "a red circle", range(4), sn.RewardScorer(sn.load_reward("shapes-clip")),
                              steps=2, progress=False)
    # shapes-clip is 100 cos of 128-wide embeddings
    assert item["scorer"] == "shapes-clip" and item["scores"] == pytest.approx(expected, abs=f32(128, 100))
    assert item["best_seed"] == max(range(4), key=expected.__getitem__) and item["best_score"] == max(item["scores"])
    r = run("select", *args, "--by", "shapes-clip", "--proxy-steps", 1, "--keep", 2, "--out", tmp_path / "two")
    assert r.exit_code == 0, r.output
    item = json.loads((tmp_path / "two" / "run.json").read_text())["items"][0]
    assert sum(v is not None for v in item["scores"]) == 2 and len(item["proxy_scores"]) == 4
    r = run("select", *args, "--by", "no-such-reward", "--out", tmp_path / "bad")
    assert r.exit_code != 0 and "no-such-reward" in r.output and not (tmp_path / "bad").exists()


def test_score_and_generate_on_the_shell(tmp_path):
    from stablenoise.noise import on_shell

    args = ["--model", "shapes", "--prompt", "a red circle", "-n", 3, "--steps", 2, "--noise-norm", "shell"]
    r = run("score", *args, "--out", tmp_path / "s")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "s" / "run.json").read_text())
    backend = sn.load("shapes")
    noise = on_shell(sn.noises_from_seeds(range(3), backend.latent_shape))
    assert rec["parameters"]["noise_norm"] == "shell"
    assert rec["items"][0]["scores"] == pytest.approx(sn.stability(backend, "a red circle", noise, 2).tolist(),
                                                      abs=f32(round_trip_n(SHAPES, 2), cfg(2.0)))
    r = run("generate", *args, "--out", tmp_path / "g")
    assert r.exit_code == 0, r.output
    folder = next(p for p in (tmp_path / "g").iterdir() if p.is_dir())
    from PIL import Image
    import numpy as np

    image = sn.generate(backend, "a red circle", noise[2:], 2)[0]
    diff = np.abs(np.asarray(Image.open(folder / "seed-2.png"), dtype=int) - np.asarray(image, dtype=int))
    assert diff.max() <= 1  # one 8-bit level: a batch of 3 vs 1
    saved = tmp_path / "n.safetensors"
    save_file({"noise": noise[:1]}, str(saved))
    r = run("score", *args, "--noise", saved, "--out", tmp_path / "bad")
    assert r.exit_code != 0 and "--noise-norm applies to seeds" in r.output and not (tmp_path / "bad").exists()


def test_a_second_run_into_a_folder_in_use_is_refused_in_one_line(tmp_path):
    """Another process holds the folder (a run in progress): select refuses in one line and changes nothing; once
    the holder has finished, the folder takes the next run."""
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from stablenoise.outputs import RunFolder; "
         f"r = RunFolder({str(out)!r}, 'select', {{}}, {{}}); print('held', flush=True); sys.stdin.read(); r.finish()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        r = CliRunner().invoke(main, ["select", "--prompt", "a red circle", "-k", "2", "--out", str(out)])
        assert r.exit_code == 1
        assert r.output.strip().splitlines() == [
            f"Error: another run is writing to {out}: wait for it to finish, or use another --out"]
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    finally:
        holder.communicate("", timeout=60)
    assert json.loads((out / "run.json").read_text())["status"] == "done"
    with sn.outputs.RunFolder(out, "select", {}, {}) as again:  # free again: the same run resumes
        assert again.record["status"] == "running" and len(again.record["resumed"]) == 1


@pytest.mark.parametrize("call", ["flock", "lockf"])
def test_a_filesystem_that_cannot_lock_runs_unheld_and_only_a_held_lock_is_refused(tmp_path, monkeypatch, call):
    """Only "held by another process" refuses a run; a filesystem without locks (ENOLCK, EBADF on NFS) does not."""
    import errno
    import fcntl

    from stablenoise.distributed import hold

    path = tmp_path if call == "flock" else tmp_path / "x.lock"
    for code, refused in ((errno.ENOLCK, False), (errno.EBADF, False), (errno.EAGAIN, True), (errno.EACCES, True)):
        def cannot(*_, code=code):
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(fcntl, call, cannot)
        if refused:
            with pytest.raises(StablenoiseError, match="^busy$"):
                hold(path, "busy")
        else:
            hold(path, "busy").close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if call == "flock" else ["x.lock"])
