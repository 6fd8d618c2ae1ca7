import os
import sys
from pathlib import Path

# No network in tests: the hub must answer "not available" at once instead of trying to connect.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def sd_pipe():
    from tiny import tiny_sd

    return tiny_sd()


@pytest.fixture(scope="session")
def sd(sd_pipe):
    import stablenoise

    return stablenoise.from_pipeline(sd_pipe)


@pytest.fixture(scope="session")
def sdxl():
    import stablenoise
    from tiny import tiny_sdxl

    return stablenoise.from_pipeline(tiny_sdxl())


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory, sd_pipe):
    path = tmp_path_factory.mktemp("tiny-sd")
    sd_pipe.save_pretrained(path, safe_serialization=True)
    return path
