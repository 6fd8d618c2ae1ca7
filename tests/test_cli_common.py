"""The CLI's shared option groups (cli_common): each option declared once with one default, one seed range,
automatic batch sizes through batching, and experiment calling the bench's function with Python values."""

import json
import re
import warnings
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

import stablenoise as sn
from stablenoise import cli_common
from stablenoise.cli import main
from stablenoise.errors import StablenoiseError
from stablenoise.noise import SEED_LIMIT

SRC = Path(sn.__file__).parent
SHARED = ("--model", "--device", "--dtype", "--batch-size", "--prompt", "--prompts", "--out", "--seed",
          "--steps", "--guidance", "--inversion-guidance", "--variant", "--timestep-spacing", "--compile", "--inversion-point")
# Options of the same name that mean something else, each with its reason:
OWN = {("train-shapes", "--batch-size"): "training images per step, a hyperparameter of the recipe",
       ("train-shapes", "--device"): "where the model trains (default cpu: the recipe's provenance)",
       ("train-shapes", "--out"): "the training run folder (runs/shapes)",
       ("train-shapes", "--seed"): "the training seed",
       ("train-shapes", "--steps"): "training steps",
       ("distill-shapes", "--batch-size"): "training pairs per step, a hyperparameter of the recipe",
       ("distill-shapes", "--device"): "where the student trains (default cpu: the recipe's provenance)",
       ("distill-shapes", "--out"): "the distillation run folder (runs/shapes-turbo)",
       ("distill-shapes", "--seed"): "the distillation seed (unset: the recipe's)",
       ("distill-shapes", "--steps"): "training steps", ("distill-shapes", "--guidance"): "the teacher's CFG scale",
       ("bank", "--prompt"): "the one prompt the bank scores under (default: the empty prompt)",
       ("bench", "--steps"): "a list to sweep", ("bench", "--guidance"): "a list to sweep",
       ("experiment", "--steps"): "a list to sweep", ("experiment", "--guidance"): "a list to sweep",
       ("perf", "--steps"): "the full score's steps of the measurements (default 5)"}


def commands(group=main, prefix=""):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, prefix + name + " ")
        else:
            yield prefix + name, command


def test_every_number_option_refuses_nan_and_inf():
    """click.FloatRange lets nan (and, without a maximum, inf) through; every float option uses the finite one."""
    floats = [(name, param.opts[0]) for name, command in commands() for param in command.params
              if isinstance(param.type, (click.types.FloatParamType, click.FloatRange))]
    assert len(floats) >= 12 and ("distill-shapes", "--huber") in floats
    assert [(n, o) for n, o in floats
            if not isinstance(next(p for p in dict(commands())[n].params if p.opts[0] == o).type,
                              cli_common.FiniteFloatRange)] == []
    for value in ("nan", "inf", "-inf", "NaN"):
        with pytest.raises(click.BadParameter, match="is not a finite number"):
            cli_common.FiniteFloatRange().convert(value, None, None)
    assert cli_common.FiniteFloatRange(0, 1).convert("0.5", None, None) == 0.5
    with pytest.raises(click.BadParameter, match="not in the range"):
        cli_common.FiniteFloatRange(0, 1).convert("2", None, None)


def test_each_shared_option_has_one_declaration_and_one_default():
    """Every command's --device, --batch-size, ... is the same option: same default, type and help."""
    seen = {}
    for name, command in commands():
        for param in command.params:
            flag = next((o for o in param.opts if o in SHARED), None)
            if flag is None or (name, flag) in OWN:
                continue
            help_text = None if flag == "--seed" else param.help  # a seed's help says what it seeds
            described = (param.default, repr(param.type), help_text, param.multiple)
            seen.setdefault(flag, {})[name] = described
    for flag, by_command in seen.items():
        assert len(set(by_command.values())) == 1, (flag, by_command)
    assert seen["--batch-size"] and {v[0] for v in seen["--batch-size"].values()} == {None}  # automatic
    assert {v[0] for v in seen["--device"].values()} == {None} and len(seen["--device"]) >= 9
    assert len(seen["--batch-size"]) >= 8 and len(seen["--out"]) >= 10


# Where the options of OWN are declared.
OWN_DECLARED = {("shapes/commands.py", f) for f in ("--batch-size", "--device", "--out", "--seed", "--steps", "--guidance")} | {
    ("cli.py", "--prompt"), ("bench/command.py", "--steps")}


def test_options_are_declared_in_cli_common_only():
    """No module but cli_common declares a shared option (but for the options of OWN, which mean other things)."""
    pattern = re.compile(r'click\.option\(\s*"(--[a-z-]+)"')
    found = set()
    for path in SRC.rglob("*.py"):
        if path.name != "cli_common.py":
            found |= {(path.relative_to(SRC).as_posix(), f) for f in pattern.findall(path.read_text()) if f in SHARED}
    assert found == OWN_DECLARED
    assert "2**63" not in (SRC / "cli.py").read_text() + (SRC / "bench" / "command.py").read_text()


def test_every_seed_option_stops_where_a_seed_means_one_noise():
    seeds = [(name, p) for name, c in commands() for p in c.params
             if p.name in ("seed", "first_seed") and (name, "--seed") not in OWN]
    assert {n for n, _ in seeds} >= {"generate", "score", "select", "optimize", "bank", "bench", "study create"}
    assert all((p.type.min, p.type.max) == (0, SEED_LIMIT - 1) for _, p in seeds)


def test_gather_prompts():
    s = cli_common.gather_prompts(("a cat", "a dog"), "drawbench", limit=3)
    assert s.texts == ["a cat", "a dog", "A red colored car."] and s.name == "prompts"
    assert cli_common.gather_prompts((), "drawbench").name == "drawbench"
    with pytest.raises(StablenoiseError, match="no prompt given"):
        cli_common.gather_prompts((), None)
    with pytest.raises(StablenoiseError, match="empty prompt"):
        cli_common.gather_prompts(("a", " "), None)


def test_out_defaults_under_one_folder():
    assert cli_common.out_path(None, "score") == Path("stablenoise-out/score")
    assert cli_common.out_path(None, "bank", "seed-bank.json") == Path("stablenoise-out/bank/seed-bank.json")
    assert cli_common.out_path(Path("mine"), "bank", "seed-bank.json") == Path("mine")


def _record_bench(monkeypatch):
    from stablenoise.bench import command

    calls = []
    monkeypatch.setattr(command.bench, "callback", lambda **kw: calls.append(kw))
    return calls


def test_experiment_calls_the_bench_function_with_what_the_command_line_gives(monkeypatch, tmp_path):
    calls = _record_bench(monkeypatch)
    r = CliRunner().invoke(main, ["experiment", "shapes", "-k", "3", "--steps", "1,2", "--limit", "5",
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    from stablenoise.shapes.commands import SHAPES_METHODS

    r = CliRunner().invoke(main, ["bench", "--prompts", "shapes-heldout", "--rewards", "shapes-verifier,shapes-clip",
                                  "--methods", SHAPES_METHODS, "-k", "3", "--steps", "1,2", "--limit", "5",
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    assert len(calls) == 2 and calls[0] == calls[1]
    assert calls[0]["noise_norm"] == ("keep",) and calls[0]["steps_list"] == (1, 2)  # through the callbacks


def test_experiment_defaults_to_its_own_folder(monkeypatch):
    calls = _record_bench(monkeypatch)
    assert CliRunner().invoke(main, ["experiment", "shapes"]).exit_code == 0
    assert calls[0]["out"] == Path("stablenoise-out/experiment") and calls[0]["k"] == 100


@pytest.fixture()
def common(sd_folder):
    return ["--model", str(sd_folder), "--steps", "2", "--device", "cpu", "--prompt", "a cat"]


def _scores(tmp_path, name, common, *extra):
    r = CliRunner().invoke(main, ["score", *common, "-n", "5", *extra, "--out", str(tmp_path / name)])
    assert r.exit_code == 0, r.output
    return json.loads((tmp_path / name / "run.json").read_text())["items"][0]["scores"]


def test_batch_size_is_automatic_through_batching_and_halves_on_out_of_memory(common, tmp_path, monkeypatch):
    import sys

    from stablenoise import batching

    stability_module = sys.modules["stablenoise.stability"]  # the package's `stability` is the function

    sizes = []
    real_auto = batching.auto_batch_size
    monkeypatch.setattr(batching, "auto_batch_size", lambda *a, **k: sizes.append(a[2]) or real_auto(*a, **k))
    auto = _scores(tmp_path, "auto", common)
    assert sizes == [5]  # asked for the 5 seeds of the prompt
    explicit = _scores(tmp_path, "two", common, "--batch-size", "2")
    real, batches = stability_module.stability, []

    def out_of_memory_above_two(backend, prompt, noise, *a, **k):
        batches.append(len(noise))
        if len(noise) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(backend, prompt, noise, *a, **k)

    monkeypatch.setattr(stability_module, "stability", out_of_memory_above_two)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        halved = _scores(tmp_path, "oom", common, "--batch-size", "5")
    assert batches == [5, 2, 2, 1]  # 5 failed; halved to 2 and kept
    from tolerance import TINY_SD, cfg, f32, round_trip_n

    tol = f32(round_trip_n(TINY_SD, 2), cfg(7.5))  # the same seeds in other batches
    assert auto == pytest.approx(explicit, abs=tol) and halved == pytest.approx(explicit, abs=tol)


def test_optimize_pairs_are_batched_automatically(common, tmp_path, monkeypatch):
    from stablenoise import batching

    sizes = []
    monkeypatch.setattr(batching, "auto_batch_size", lambda device, measure, limit, elements: sizes.append(
        (limit, elements)) or 2)
    r = CliRunner().invoke(main, ["optimize", *common, "--prompt", "a dog", "--prompt", "a bird", "--iterations", "1",
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert sizes == [(3, 4 * 16 * 16)]
    items = json.loads((tmp_path / "o" / "run.json").read_text())["items"]
    assert [it["prompt"] for it in items] == ["a cat", "a dog", "a bird"] and all(len(it["history"]) == 2
                                                                                 for it in items)
