import gzip
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())
CLIP_TINY = FIXTURES / "clip-tiny"
AESTHETIC_FILE = CLIP_TINY / "sac+logos+ava1-l14-linearMSE.pth"


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
