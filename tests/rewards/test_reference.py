"""Each reward against the scores its ORIGINAL code gives the same tiny checkpoints (see make_fixtures.py)."""

import pytest
import torch
from transformers import AutoTokenizer

import stablenoise as sn
from stablenoise.rewards.base import to_tensor
from stablenoise.rewards.preprocess import crop_pil, crop_tensor, pad_pil

from .conftest import AESTHETIC_FILE, CLIP_TINY, FIXTURES, REFERENCE, assert_matches_reference


def close(scores, name):
    assert_matches_reference(scores.tolist(), name)


@pytest.fixture(scope="module")
def sources(hps_folder):
    return {"clipscore": f"clipscore:{CLIP_TINY}", "pickscore": f"pickscore:{CLIP_TINY}",
            "aesthetic": str(AESTHETIC_FILE), "hpsv2": str(hps_folder / "HPS_v2_compressed.pt"),
            "imagereward": str(FIXTURES / "imagereward-tiny" / "ImageReward.pt")}


@pytest.fixture(scope="module")
def rewards(sources):
    return {name: sn.load_reward(src, device="cpu") for name, src in sources.items()}


@pytest.mark.parametrize("name", ["clipscore", "pickscore", "aesthetic", "hpsv2", "imagereward"])
def test_matches_original(rewards, images, prompts, name):
    reward = rewards[name]
    assert reward.name == name and reward.higher_is_better and reward.differentiable
    close(reward(images, prompts if name != "aesthetic" else None), name)


def test_blip_vit_layer_norm(rewards):
    # BLIP's ViT uses LayerNorm(eps=1e-6); too small to move the tiny model's scores, so checked here.
    assert rewards["imagereward"].vision.config.layer_norm_eps == 1e-6


def test_hps_tensor_path_is_the_original_transform(rewards, images, prompts):
    # HPSv2 resizes and pads the ToTensor output: the differentiable path is its own preprocessing.
    scores = torch.cat([rewards["hpsv2"](to_tensor(im)[None], p) for im, p in zip(images, prompts)])
    close(scores, "hpsv2")


def test_hps_v21_by_file_name(hps_folder, images, prompts):
    v21 = hps_folder / "HPS_v2.1_compressed.pt"
    v21.write_bytes((hps_folder / "HPS_v2_compressed.pt").read_bytes())
    reward = sn.load_reward(str(v21), device="cpu")
    assert reward.name == "hpsv2.1"  # never a bare "HPS": v2 and v2.1 scores are not comparable
    close(reward(images, prompts), "hpsv2")


@pytest.mark.parametrize("folder", ["clip-tiny", "hps-tiny", "imagereward-tiny"])
def test_tokenizers_match_the_originals(folder):
    tok = AutoTokenizer.from_pretrained(FIXTURES / folder)
    kwargs = dict(padding="max_length", truncation=True, max_length=35) if folder == "imagereward-tiny" else {}
    assert tok(REFERENCE["prompts"], **kwargs)["input_ids"] == REFERENCE["token_ids"][folder]


def test_crop_offsets_follow_each_original(images):
    # 303x200 -> 339x224: margin 115; transformers crops at 57, torchvision at round(57.5) = 58.
    im = images[1]
    floor, rnd = crop_pil(im, 224, "floor"), crop_pil(im, 224, "round")
    resized = to_tensor(im.resize((339, 224), 3))
    assert torch.equal(floor, resized[:, :, 57:281]) and torch.equal(rnd, resized[:, :, 58:282])


def test_pad_keeps_aspect_and_pads_black(images):
    x = pad_pil(images[0], 224)  # 53x37 -> 224x156, 34 rows of zeros above and below
    assert x.shape == (3, 224, 224)
    assert x[:, :34].abs().max() == 0 and x[:, -34:].abs().max() == 0 and x[:, 34:190].abs().amax(dim=(0, 2)).min() > 0
    y = pad_pil(images[3], 224)  # 251x250 -> 224x223: the odd pixel goes to the bottom
    assert y[:, -1].abs().max() == 0 and y[:, 0].abs().max() > 0
    z = pad_pil(images[2].crop((0, 0, 224, 101)), 224)  # long side already 224: padded, not resized
    assert z.shape == (3, 224, 224) and z[:, :61].abs().max() == 0
    assert torch.equal(z[:, 61:162], to_tensor(images[2])[:, :101])


def test_tensor_crop_is_close_to_pil(images):
    for im in images:
        a, b = crop_pil(im, 224, "floor"), crop_tensor(to_tensor(im)[None], 224, "floor")[0]
        assert a.shape == b.shape == (3, 224, 224)
        assert (a - b).abs().mean() < 1 / 255
    assert torch.equal(crop_pil(images[2], 224, "floor"), crop_tensor(to_tensor(images[2])[None], 224, "floor")[0])


@pytest.mark.parametrize("name", ["clipscore", "pickscore", "aesthetic", "hpsv2", "imagereward"])
def test_gradients_reach_the_pixels(rewards, prompts, name):
    pixels = torch.rand(2, 3, 61, 83, generator=torch.Generator().manual_seed(0), requires_grad=True)
    score = rewards[name](pixels, prompts[:2] if name != "aesthetic" else None)
    assert score.shape == (2,) and score.requires_grad
    score.sum().backward()
    g = pixels.grad
    assert torch.isfinite(g).all() and (g[0].abs().sum() > 0) and (g[1].abs().sum() > 0)
    # The gradient is the score's: a small step along it raises the score.
    with torch.no_grad():
        stepped = rewards[name](pixels + 1e-3 * g / g.norm(), prompts[:2] if name != "aesthetic" else None)
    assert (stepped > score.detach()).all()
