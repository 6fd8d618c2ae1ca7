"""The reward interface, registry, loader errors, the shapes verifier reward and the CLI command."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import stablenoise as sn
from stablenoise.cli import main
from stablenoise.errors import StablenoiseError
from stablenoise.rewards import Reward, available, register
from stablenoise.rewards.registry import resolve

from .conftest import AESTHETIC_FILE, CLIP_TINY, REFERENCE, assert_matches_reference


class Brightness(Reward):
    name = "brightness"
    differentiable = True
    needs_prompts = False

    def score_pil(self, images, prompts):
        return torch.tensor([np.asarray(im, dtype=np.float32).mean() / 255 for im in images])

    def score_tensor(self, pixels, prompts):
        return pixels.mean(dim=(1, 2, 3))


def test_builtin_and_entry_point_names():
    names = available()
    for name in ("clipscore", "pickscore", "hpsv2", "hpsv2.1", "imagereward", "aesthetic", "shapes-verifier"):
        assert name in names


def test_third_party_registration():
    register("test-brightness", lambda source, device, dtype: Brightness())
    reward = sn.load_reward("test-brightness")
    white = Image.new("RGB", (5, 7), (255, 255, 255))
    assert reward([white, Image.new("RGB", (3, 3))]).tolist() == [1.0, 0.0]
    pixels = torch.full((1, 3, 4, 4), 0.25, requires_grad=True)
    reward(pixels).sum().backward()
    assert pixels.grad.sum().item() == pytest.approx(1.0)
    with pytest.raises(StablenoiseError, match="already registered"):
        register("test-brightness", lambda s, d, t: Brightness())


def test_names_hub_ids_and_files_resolve():
    assert resolve("HPSv2")[0].name == "hpsv2" and resolve("hps")[0].name == "hpsv2"
    assert resolve("yuvalkirstain/PickScore_v1") == (resolve("pickscore")[0], "yuvalkirstain/PickScore_v1")
    assert resolve("clipscore:openai/clip-vit-base-patch32")[1] == "openai/clip-vit-base-patch32"
    assert resolve(str(AESTHETIC_FILE))[0].name == "aesthetic"
    assert resolve("/w/HPS_v2.1_compressed.pt")[0].name == "hpsv2.1"
    assert resolve("hpsv2.1:xswu/HPSv2") == (resolve("hpsv2.1")[0], "xswu/HPSv2")


@pytest.mark.parametrize("source, message", [
    ("hpsv3", "unknown reward 'hpsv3'; known: aesthetic, clipscore"),
    ("/nowhere/HPS_v2_compressed.pt", "reward weights not found: /nowhere/HPS_v2_compressed.pt"),
    ("hpsv2:/nowhere/x.pt", "reward weights not found: /nowhere/x.pt"),
    (str(CLIP_TINY), "cannot tell which reward"),
    ("xswu/HPSv2", "xswu/HPSv2 holds more than one reward; name it: hpsv2:xswu/HPSv2 or hpsv2.1:xswu/HPSv2"),
])
def test_bad_names_and_paths(source, message):
    with pytest.raises(StablenoiseError, match=message.replace("(", r"\(")) as e:
        sn.load_reward(source, device="cpu")
    assert "\n" not in str(e.value)


def test_wrong_architecture(tmp_path):
    with pytest.raises(StablenoiseError, match="not an open_clip ViT checkpoint") as e:
        sn.load_reward(f"hpsv2:{AESTHETIC_FILE}", device="cpu")
    assert "\n" not in str(e.value)
    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}}, tmp_path / "HPS_v2_compressed.pt")
    with pytest.raises(StablenoiseError, match="missing 'visual.conv1.weight'"):
        sn.load_reward(str(tmp_path / "HPS_v2_compressed.pt"), device="cpu")
    with pytest.raises(StablenoiseError, match="not an ImageReward checkpoint"):
        sn.load_reward(f"imagereward:{AESTHETIC_FILE}", device="cpu")
    torch.save({"layers.0.weight": torch.zeros(2, 3)}, tmp_path / "head.pth")
    with pytest.raises(StablenoiseError, match="not a LAION aesthetic MLP checkpoint"):
        sn.load_reward(f"aesthetic:{tmp_path / 'head.pth'}", device="cpu")


class NotWeights:  # a pickle that needs this class (code) to load
    pass


def test_pickles_that_are_not_weights_only_are_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "config": NotWeights()}, tmp_path / "HPS_v2_compressed.pt")
    with pytest.raises(StablenoiseError, match="refused, this pickle needs full unpickling") as e:
        sn.load_reward(str(tmp_path / "HPS_v2_compressed.pt"), device="cpu")
    assert "\n" not in str(e.value)
    (tmp_path / "garbage.pth").write_bytes(b"not a pickle")
    with pytest.raises(StablenoiseError, match="not a PyTorch weights file"):
        sn.load_reward(f"aesthetic:{tmp_path / 'garbage.pth'}", device="cpu")


@pytest.fixture(scope="module")
def clipscore():
    return sn.load_reward(f"clipscore:{CLIP_TINY}", device="cpu")


def test_input_checks(clipscore, images):
    with pytest.raises(StablenoiseError, match="2 images but 3 prompts"):
        clipscore(images[:2], ["a", "b", "c"])
    with pytest.raises(StablenoiseError, match="needs a prompt per image"):
        clipscore(images[:2])
    with pytest.raises(StablenoiseError, match=r"float \[B, 3, H, W\]"):
        clipscore(torch.zeros(2, 4, 8, 8), "a")
    with pytest.raises(StablenoiseError, match="PIL images or a"):
        clipscore(["image.png"], "a")
    one = clipscore(images[:2], REFERENCE["prompts"][0])  # one prompt for all
    assert one.tolist() == pytest.approx(clipscore(images[:2], [REFERENCE["prompts"][0]] * 2).tolist())


def test_shapes_verifier_reward():
    from stablenoise.shapes import world

    sample = world.sample(np.random.default_rng(0), "train", tag="single_object")
    image = Image.fromarray(sample.image)
    other = "a red circle" if "circle" not in sample.caption else "a blue square"
    reward = sn.load_reward("shapes-verifier")
    assert not reward.differentiable
    assert reward([image, image], [sample.caption, other]).tolist() == [1.0, 0.0]
    pixels = torch.from_numpy(sample.image).permute(2, 0, 1)[None].float() / 255
    assert reward(pixels, sample.caption).tolist() == [1.0]
    with pytest.raises(StablenoiseError):
        reward([image], ["a photo of a cat"])  # not a shapes-world caption


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_scores_files_and_writes_json(tmp_path, images):
    files = []
    for i, im in enumerate(images[:2]):
        im.save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    prompts = REFERENCE["prompts"][:2]
    r = run("reward", "--reward", f"pickscore:{CLIP_TINY}", "--device", "cpu", "--prompt", prompts[0],
            "--prompt", prompts[1], *files, "--out", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "s.json").read_text())
    assert rec["reward"] == "pickscore" and [it["prompt"] for it in rec["items"]] == prompts
    assert_matches_reference([it["score"] for it in rec["items"]], "pickscore", 2)
    assert f"{rec['items'][0]['score']:.6f}\t{files[0]}" in r.output

    r = run("reward", "--reward", str(AESTHETIC_FILE), "--device", "cpu", *files, "--out", tmp_path / "a.json")
    assert r.exit_code == 0, r.output
    scores = [it["score"] for it in json.loads((tmp_path / "a.json").read_text())["items"]]
    assert_matches_reference(scores, "aesthetic", 2)


def test_cli_run_folder(tmp_path):
    from stablenoise.outputs import RunFolder
    from stablenoise.shapes import world

    rng = np.random.default_rng(1)
    run_folder = RunFolder(tmp_path / "run", "generate", {}, {})
    for i in range(2):
        s = world.sample(rng, "train", tag="single_object")
        run_folder.add(i, s.caption, {}, {"seed-0": Image.fromarray(s.image), "a_vs_b": Image.new("RGB", (4, 4))})
    run_folder.finish()
    r = run("reward", "--reward", "shapes-verifier", tmp_path / "run", "--out", tmp_path / "v.json")
    assert r.exit_code == 0, r.output
    items = json.loads((tmp_path / "v.json").read_text())["items"]
    assert len(items) == 2 and all(it["score"] == 1.0 and it["image"].endswith("seed-0.png") for it in items)


@pytest.mark.parametrize("args, message", [
    (["--reward", "nope", "x.png"], "Error: image not found: x.png"),
    (["--reward", "nope", "{img}"], "Error: unknown reward 'nope'"),
    (["--reward", "clipscore", "--prompt", "a", "--prompt", "b", "{img}"], "Error: 1 images but 2 prompts"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "i.png")
    r = run("reward", *[a.replace("{img}", str(tmp_path / "i.png")) for a in args])
    assert r.exit_code != 0 and r.output.strip().startswith(message) and len(r.output.strip().splitlines()) == 1
