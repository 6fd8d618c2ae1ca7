import gzip
import json
import math
import shutil
from pathlib import Path

import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())
CLIP_TINY = FIXTURES / "clip-tiny"
AESTHETIC_FILE = CLIP_TINY / "sac+logos+ava1-l14-linearMSE.pth"

# Each tiny model's longest reduction is its ViT's patch embedding: 3*16*16 terms (HPS's ViT: 3*14*14).
PATCH_TERMS = {"clipscore": 768, "pickscore": 768, "aesthetic": 768, "hpsv2": 588, "imagereward": 768}
# A cosine of unit embeddings times its factor (CLIPScore and HPS x100, PickScore x exp(logit_scale));
# the aesthetic and ImageReward MLP heads: the score's own size.
COSINE_FACTOR = {"clipscore": 100.0, "hpsv2": 100.0, "pickscore": math.exp(2.6592)}


def assert_matches_reference(scores, name, n=None):
    """Scores equal the original code's float32 scores up to float32 rounding (tests/tolerance.py)."""
    from tolerance import f32

    ref = REFERENCE["scores"][name][:n]
    scores = [float(x) for x in scores]
    assert len(scores) == len(ref)
    for got, want in zip(scores, ref):
        assert abs(got - want) <= f32(PATCH_TERMS[name], COSINE_FACTOR.get(name, abs(want))), (name, scores, ref)


@pytest.fixture(scope="session")
def images():
    return [Image.open(FIXTURES / "images" / name).convert("RGB") for name in REFERENCE["images"]]


@pytest.fixture(scope="session")
def prompts():
    return list(REFERENCE["prompts"])


@pytest.fixture(scope="session")
def hps_folder(tmp_path_factory):
    """The tiny HPSv2 checkpoint as the real file (stored gzipped: its vocabulary rows are mostly zero)."""
    folder = tmp_path_factory.mktemp("hps")
    for f in (FIXTURES / "hps-tiny").iterdir():
        if f.suffix == ".gz":
            with gzip.open(f) as src, open(folder / f.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copy(f, folder / f.name)
    return folder
