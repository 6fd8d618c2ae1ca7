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


MODEL_FIXTURES = {"sd", "sdxl", "sd_pipe", "sd64", "sd_folder", "shapes_backend"}


def pytest_configure(config):
    config.addinivalue_line("markers", "model: runs a (tiny) diffusion model; deselect with -m 'not model' for "
                                       "the fast algorithm checks that mutation testing runs")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or "shapes" in item.nodeid.split("::")[0]:
            item.add_marker(pytest.mark.model)
