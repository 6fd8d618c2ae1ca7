"""Hostile input to the seed bank, select, reward and the prompt checks: each case ends with exit code 1 and
exactly one line on stderr (the library: one StablenoiseError), and leaves the user's files as they were."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import stablenoise as sn
from stablenoise.bank import SeedBank, build_bank, identity, weights_fingerprint
from stablenoise.cli import main
from stablenoise.errors import StablenoiseError
from toy import ToyBackend

SEEDS = [0, 1, 2]


def _png(width: int, height: int) -> bytes:
    """A PNG header claiming width x height RGB pixels (PIL refuses one past its bomb limit from the header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --- the library ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda b: sn.select(b, ["a", "b"], k=2, progress=False),
     "select takes one prompt (a string), got a list of 2: call select once per prompt"),
    (lambda b: sn.select(b, None, k=2, progress=False), "select takes one prompt (a string), got None"),
    (lambda b: sn.select(b, 7, k=2, progress=False), "select takes one prompt (a string), got int"),
    (lambda b: sn.stability(b, None, torch.zeros(1, *b.latent_shape)),
     "prompt must be a string or a list of strings, got None"),
    (lambda b: sn.stability(b, ["a", None], torch.zeros(2, *b.latent_shape)),
     "prompt must be a string or a list of strings, got None"),
    (lambda b: sn.stability(b, 3.5, torch.zeros(1, *b.latent_shape)),
     "prompt must be a string or a list of strings, got float"),
    (lambda b: sn.optimize(b, None, torch.zeros(1, *b.latent_shape), iterations=1, progress=False),
     "prompt must be a string or a list of strings, got None"),
    (lambda b: sn.optimize(b, [b"bytes"], torch.zeros(1, *b.latent_shape), iterations=1, progress=False),
     "prompt must be a string or a list of strings, got bytes"),
    (lambda b: build_bank(b, 2, prompt=["", "a"], progress=False),
     "build_bank takes one prompt (a string), got a list of 2: call build_bank once per prompt"),
    (lambda b: sn.select(b, "a", seeds=SEEDS, proxy=dict.fromkeys(SEEDS, 0.5), keep=4, progress=False),
     "keep 4 is more than the 3 seeds to choose from"),
])
def test_bad_prompts_and_keep_are_one_error_before_any_model_call(call, message):
    b = ToyBackend()
    with pytest.raises(StablenoiseError) as e:
        call(b)
    assert str(e.value) == message and b.calls == 0


@pytest.fixture(scope="module")
def toy_bank():
    return build_bank(ToyBackend(), 3, progress=False)


def _edited(bank: SeedBank, **identity_changes) -> SeedBank:
    return SeedBank(**{**bank.__dict__, "identity": {**bank.identity, **identity_changes}})


@pytest.mark.parametrize("change, message", [
    ({"weights": "f" * 64}, "the seed bank was built on another model (?, weights ffffffffffff; this one: toy, "
                            "weights {here}): rebuild the bank for this model"),
    ({"latent_shape": [4, 128, 128]}, "the seed bank was built for latent shape [4, 128, 128]; this model's is "
                                      "[2, 4, 4]: rebuild the bank at this size"),
    ({"schedule": {"ddim": {"timestep_spacing": "leading"}}},
     "the seed bank was built with another schedule (ddim.timestep_spacing: 'leading' in the bank, None here): "
     "rebuild the bank with these settings"),
])
def test_select_refuses_a_bank_of_another_model_naming_what_differs(toy_bank, change, message):
    b = ToyBackend()
    with pytest.raises(StablenoiseError) as e:
        sn.select(b, "a", seeds=toy_bank.seeds, proxy=_edited(toy_bank, **change), keep=2, progress=False)
    assert str(e.value) == message.format(here=weights_fingerprint(b)[:12]) and b.calls == 0


def test_a_matching_bank_is_the_proxy_and_an_old_one_asks_for_a_rebuild(toy_bank, tmp_path):
    b = ToyBackend()
    toy_bank.save(tmp_path / "bank.json")
    loaded = SeedBank.load(tmp_path / "bank.json")
    assert loaded.identity == identity(b) and loaded.identity["latent_shape"] == [2, 4, 4]
    r = sn.select(b, "a", seeds=loaded.seeds, proxy=loaded, keep=1, progress=False)
    assert r.proxy_scores == loaded.stability and r.best_seed == toy_bank.top(1)[0]
    with pytest.raises(StablenoiseError) as e:
        sn.select(b, "a", seeds=loaded.seeds, proxy=SeedBank(**{**loaded.__dict__, "identity": {}}), keep=1)
    assert str(e.value) == "the seed bank was built before banks recorded their model: rebuild it with stablenoise bank"


def test_nan_and_inf_bank_scores_load_as_no_score(toy_bank, tmp_path):
    data = {**toy_bank.__dict__, "stability": [float("nan"), 0.5, float("inf")]}
    (tmp_path / "bank.json").write_text(json.dumps(data))  # NaN and Infinity: what json writes for them
    loaded = SeedBank.load(tmp_path / "bank.json")
    assert loaded.stability == [None, 0.5, None] and loaded.top(3) == [1]


@pytest.mark.model
def test_weights_fingerprint_tells_models_apart_and_ignores_float16(sd_pipe):
    from tiny import tiny_sd

    fp32 = weights_fingerprint(sn.from_pipeline(sd_pipe))
    half = tiny_sd()
    half.to(torch.float16)
    assert weights_fingerprint(sn.from_pipeline(half)) == fp32  # float16 of the same weights: the same model
    assert weights_fingerprint(sn.from_pipeline(tiny_sd(seed=1))) != fp32
    other = tiny_sd()
    with torch.no_grad():  # one weight of the UNet moved: another model
        next(other.unet.parameters()).view(-1)[0] += 1.0
    assert weights_fingerprint(sn.from_pipeline(other)) != fp32


# --- the CLI ----------------------------------------------------------------------------------------------

def _run(args: list[str]):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stderr


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    """Real banks of the shipped shapes model and of shapes-flow (3 seeds, 1 step)."""
    root = tmp_path_factory.mktemp("banks")
    for model in ("shapes", "shapes-flow"):
        code, err = _run(["bank", "--model", model, "-n", 3, "--steps", 1, "--out", root / f"{model}.json"])
        assert code == 0, err
    return root


def _bank_edit(banks: Path, tmp: Path, edit) -> Path:
    data = json.loads((banks / "shapes.json").read_text())
    edit(data)
    (tmp / "bank.json").write_text(json.dumps(data))
    return tmp / "bank.json"


def _weights(banks: Path, model: str) -> str:
    return json.loads((banks / f"{model}.json").read_text())["identity"]["weights"][:12]


def _set_score(value):
    def edit(data):
        data["stability"][1] = value
    return edit


SELECT = ["select", "--prompt", "a red circle", "--steps", 1, "--keep", 2]
BANK_CASES = {  # name: (how the bank file is made, extra select options, the one line)
    "shapes-flow bank": (lambda banks, tmp: banks / "shapes-flow.json", [],
                         "Error: {bank} was built on another model (shapes-flow, weights {flow}; this one: shapes, "
                         "weights {shapes}): rebuild the bank for this model"),
    "SDXL latent shape": (lambda banks, tmp: _bank_edit(banks, tmp, lambda d: d["identity"].update(
        latent_shape=[4, 128, 128])), [], "Error: {bank} was built for latent shape [4, 128, 128]; this model's is "
                                          "[3, 32, 32]: rebuild the bank at this size"),
    "other spacing": (lambda banks, tmp: banks / "shapes.json", ["--timestep-spacing", "leading"],
                      "Error: {bank} was built with another schedule (ddim.timestep_spacing: 'trailing' in the bank, "
                      "'leading' here): rebuild the bank with these settings"),
    "old bank": (lambda banks, tmp: _bank_edit(banks, tmp, lambda d: d.pop("identity")), [],
                 "Error: {bank} was built before banks recorded their model: rebuild it with stablenoise bank"),
    "score 'abc'": (lambda banks, tmp: _bank_edit(banks, tmp, _set_score("abc")), [],
                    "Error: {bank} is not a seed bank: the score of seed 1 is 'abc', not a number"),
    "score a list": (lambda banks, tmp: _bank_edit(banks, tmp, _set_score([0.5])), [],
                     "Error: {bank} is not a seed bank: the score of seed 1 is [0.5], not a number"),
    "score true": (lambda banks, tmp: _bank_edit(banks, tmp, _set_score(True)), [],
                   "Error: {bank} is not a seed bank: the score of seed 1 is True, not a number"),
    "seed 'x'": (lambda banks, tmp: _bank_edit(banks, tmp, lambda d: d["seeds"].__setitem__(0, "x")), [],
                 "Error: {bank} is not a seed bank: seed 'x' is not an integer in [0, 2**63)"),
    "keep > seeds": (lambda banks, tmp: banks / "shapes.json", ["--keep", 4],
                     "Error: keep 4 is more than the 3 seeds to choose from"),
}


@pytest.mark.model
@pytest.mark.parametrize("case", list(BANK_CASES))
def test_select_refuses_a_bad_bank_in_one_line_writing_nothing(banks, tmp_path, case):
    make, extra, line = BANK_CASES[case]
    bank = make(banks, tmp_path)
    before = bank.read_bytes()
    code, err = _run([*SELECT, "--bank", bank, "--out", tmp_path / "out", *extra])
    assert (code, err) == (1, line.format(bank=bank, flow=_weights(banks, "shapes-flow"),
                                          shapes=_weights(banks, "shapes")) + "\n")
    assert bank.read_bytes() == before and not (tmp_path / "out").exists()


@pytest.mark.model
def test_select_takes_a_bank_of_its_model_and_nan_scores_stay_no_score(banks, tmp_path):
    bank = _bank_edit(banks, tmp_path, _set_score(None))
    code, err = _run([*SELECT, "--bank", bank, "--out", tmp_path / "out"])
    record = json.loads(next((tmp_path / "out").glob("*/record.json")).read_text())
    assert code == 0 and record["proxy_scores"][1] is None and record["scores"][1] is None


@pytest.mark.model
def test_bank_out_under_a_file_is_one_line_before_any_scoring(tmp_path):
    (tmp_path / "f").write_text("user's file")
    code, err = _run(["bank", "-n", 2, "--steps", 1, "--out", tmp_path / "f" / "bank.json"])
    assert (code, err) == (1, f"Error: cannot write {tmp_path / 'f' / 'bank.json'}: {tmp_path / 'f'} is not a "
                              "writable folder\n")
    assert (tmp_path / "f").read_text() == "user's file"


IMAGE_CASES = {  # name: (file contents, None: no file; the one line after the path)
    "claims 100000x100000 pixels": (_png(100_000, 100_000),
                                    "refused, too many pixels (Image size (10000000000 pixels) exceeds limit of "
                                    "178956970 pixels, could be decompression bomb DOS attack.)"),
    "not an image": (b"hello", "not an image (cannot identify image file '{path}')"),
    "missing": (None, None),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_reward_refuses_a_bad_image_in_one_line_before_loading_the_reward(tmp_path, case, monkeypatch):
    import stablenoise.rewards.registry as registry

    content, tail = IMAGE_CASES[case]
    image = tmp_path / "image.png"
    if content is not None:
        image.write_bytes(content)
    monkeypatch.setattr(registry, "load_reward", lambda *a, **k: pytest.fail("the reward was loaded"))
    out = tmp_path / "scores.json"
    code, err = _run(["reward", image, "--reward", "shapes-verifier", "--prompt", "a red circle", "--out", out])
    line = f"image not found: {image}" if tail is None else f"{image}: {tail.format(path=image)}"
    assert (code, err) == (1, f"Error: {line}\n") and not out.exists()
    assert content is None or image.read_bytes() == content
