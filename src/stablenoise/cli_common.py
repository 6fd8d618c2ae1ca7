"""What every CLI command shares: bad input becomes one line on stderr and a non-zero exit code, and the options
that several commands take, each declared here once with its one default."""

from __future__ import annotations

import functools
import math
import signal
import sys
import threading
from pathlib import Path

import click

from .errors import PeerFailed, StablenoiseError
from .noise import SEED_LIMIT


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan and +-inf: nan compares false with every bound, so FloatRange lets it
    through, and inf passes any range without a maximum."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


SEED = click.IntRange(0, SEED_LIMIT - 1)  # a seed means one noise: torch aliases s and s + 2**63
MAX_SEEDS = 100_000  # per prompt: far beyond any useful K, and a typo like -k 1e9 fails at once
OUT_ROOT = Path("stablenoise-out")


def _terminate(signum, frame):
    raise KeyboardInterrupt  # `kill` ends a run like Ctrl-C: temporary files removed, status "interrupted"


def guarded(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
        try:
            return fn(*args, **kwargs)
        except PeerFailed:
            sys.exit(1)  # rank 0 of the job printed the line
        except StablenoiseError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: finished items are kept in the output folder", err=True)
            sys.exit(130)
    return wrapper


def noise_norm_option(fn):
    """``--noise-norm`` (noise.NOISE_NORMS), shared by every command that turns seeds into noises."""
    return click.option("--noise-norm", type=click.Choice(["keep", "shell"]), default="keep", show_default=True,
                        help="shell: rescale each seed's noise to norm sqrt(d) before it is scored or generated "
                             "(the image is the scored noise's), so the noise's length cannot decide a ranking.")(fn)


def option_group(*decorators):
    """Several click options as one decorator.

    Args:
        *decorators: click option decorators, in the order they would be stacked (top first).

    Returns:
        A decorator that applies them all.
    """
    def apply(fn):
        for d in reversed(decorators):
            fn = d(fn)
        return fn
    return apply


model_option = click.option(
    "--model", default="shapes", show_default=True,
    help="Hub id (stabilityai/sdxl-turbo), local pipeline folder, or a shipped model name (shapes, shapes-flow, "
         "shapes-cosine).")
device_option = click.option("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available).")
dtype_option = click.option("--dtype", default=None,
                            help="float32, float16 or bfloat16 (default: the model's own, float32 for rewards).")
batch_size_option = click.option(
    "--batch-size", type=click.IntRange(min=1), default=None,
    help="Samples per model call [default: automatic, from free GPU memory; on CPU up to 16, fewer for large "
         "latents; halved on out-of-memory].")
prompt_options = option_group(
    click.option("--prompt", "prompt_list", multiple=True, help="A prompt; repeat for several."),
    click.option("--prompts", "prompts_spec", default=None,
                 help="A shipped prompt set (drawbench, pickapic, geneval, partiprompts, shapes-heldout) or a "
                      ".txt/.csv/.tsv/.jsonl file (one prompt a line, or a 'prompt' column)."))
out_option = click.option("--out", type=click.Path(path_type=Path), default=None,
                          help="Where to write [default: stablenoise-out/COMMAND; a JSON file there for bank and "
                               "reward].")


steps_option = click.option("--steps", type=click.IntRange(min=1), default=None,
                            help="Steps of the round trip, DDIM or flow Euler (default: the model family's).")
guidance_option = click.option("--guidance", type=FiniteFloatRange(min=0), default=None,
                               help="Denoising CFG scale (<= 1: no CFG; default: the model family's).")
inversion_guidance_option = click.option(
    "--inversion-guidance", type=FiniteFloatRange(min=0), default=None,
    help="CFG scale of the inversion (default: the model family's, 1: conditional branch only).")
round_trip_options = option_group(steps_option, guidance_option, inversion_guidance_option)
inversion_point_option = click.option(
    "--inversion-point", type=click.Choice(["destination", "source"]), default=None,
    help="Where inversion evaluates the model: the timestep x moves to (destination: DDIM's default) or the level x "
         "is at (source: flow models' default); a config records it only when not the default.")
variant_option = click.option("--variant", default=None, help="Weight variant to load, as in diffusers (e.g. fp16).")
timestep_spacing_option = click.option(
    "--timestep-spacing", type=click.Choice(["leading", "trailing", "linspace"]), default=None,
    help="Override the DDIM timestep spacing (default: the pipeline scheduler's).")
size_options = option_group(
    click.option("--height", type=click.IntRange(min=1), default=None,
                 help="Image height in pixels (default: the model's native size)."),
    click.option("--width", type=click.IntRange(min=1), default=None,
                 help="Image width in pixels (default: the model's native size)."))
compile_option = click.option("--compile", "compile_model", is_flag=True,
                              help="torch.compile the UNet/transformer (pays off on a GPU for long runs).")
model_loading_options = option_group(variant_option, timestep_spacing_option, size_options, compile_option)


def seed_option(*flags: str, dest: str = "seed", help: str = "First seed: seeds are SEED, SEED+1, ..."):
    """The first seed (``--seed``, or the flags given), in the range where a seed means one noise.

    Args:
        *flags: the option's flags (default ``--seed``).
        dest: the parameter's name in the command's function.
        help: what the seed seeds.

    Returns:
        The click option decorator.
    """
    return click.option(*(flags or ("--seed",)), dest, type=SEED, default=0, show_default=True, help=help)


def count_option(*flags: str, default: int, help: str = "Seeds per prompt.", maximum: int = MAX_SEEDS):
    """How many seeds per prompt (``-n``/``-k``): at least 1, at most ``maximum``.

    Args:
        *flags: the option's flags.
        default: the count when not given.
        help: what is counted.
        maximum: the largest count accepted.

    Returns:
        The click option decorator.
    """
    return click.option(*flags, type=click.IntRange(1, maximum), default=default, show_default=True, help=help)


def number_list(kind, minimum):
    """A click callback: ``"1,2,4"`` -> (1, 2, 4), each a finite number >= ``minimum``, repeats dropped.

    Args:
        kind: ``int`` or ``float``.
        minimum: the smallest value accepted.

    Returns:
        The callback (None stays None).
    """
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            items = [kind(x) for x in str(value).split(",") if x.strip()]
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
        if not items or any(not math.isfinite(x) or x < minimum for x in items):
            raise click.BadParameter(f"{value!r}: every value must be a finite number >= {minimum}")
        return tuple(dict.fromkeys(items))
    return parse


sweep_options = option_group(
    click.option("--steps", "steps_list", callback=number_list(int, 1), default=None,
                 help="DDIM steps; a list (1,2,4,8) sweeps them (default: the model family's)."),
    click.option("--guidance", "guidance_list", callback=number_list(float, 0), default=None,
                 help="Denoising CFG scale; a list sweeps it (default: the model family's)."))


def gather_prompts(prompt_list, prompts_spec, limit: int | None = None):
    """The prompts of ``--prompt`` (in order) then ``--prompts``, as a :class:`~stablenoise.prompts.PromptSet`.

    Args:
        prompt_list: the ``--prompt`` values.
        prompts_spec: the ``--prompts`` value (a prompt set's name or a prompt file), or None.
        limit: keep the first ``limit`` prompts.

    Returns:
        The prompt set, named after ``--prompts`` when it is the only source.
    """
    from .prompts import Prompt, PromptSet, load_prompts

    if any(not p.strip() for p in prompt_list):
        raise StablenoiseError("empty prompt")
    loaded = load_prompts(prompts_spec) if prompts_spec else None
    prompts = [Prompt(p) for p in prompt_list] + (loaded.prompts if loaded else [])
    if not prompts:
        raise StablenoiseError("no prompt given: use --prompt TEXT or --prompts SET_OR_FILE")
    if loaded is not None and not prompt_list:
        return PromptSet(loaded.name, prompts[:limit], loaded.source)
    return PromptSet("prompts", prompts[:limit], "--prompt" + (f" and {loaded.source}" if loaded else ""))


def out_path(out: Path | None, command: str, file_name: str | None = None) -> Path:
    """Where a command writes.

    Args:
        out: ``--out`` (None: not given).
        command: the command's name.
        file_name: the file it writes under stablenoise-out/COMMAND/ by default, if it writes one file.

    Returns:
        ``out``, or stablenoise-out/COMMAND (/FILE_NAME).
    """
    if out is not None:
        return Path(out)
    return OUT_ROOT / command / file_name if file_name else OUT_ROOT / command


def invoke(ctx: click.Context, command: click.Command, **values):
    """Run another command's function with Python values: each parameter not in ``values`` takes its default
    exactly as an empty command line gives it (converted and passed through its callback).

    Args:
        ctx: the calling command's context.
        command: the command to run.
        **values: its parameters, by their Python names.

    Returns:
        What the command's function returns.
    """
    sub = click.Context(command, info_name=command.name, parent=ctx)
    with sub:
        for param in command.params:
            if param.expose_value and param.name not in values:
                values[param.name], _ = param.handle_parse_result(sub, {}, [])
    return ctx.invoke(command, **values)
