"""The ``stablenoise`` command: a thin shell over the library. Every run writes PNGs and a JSON record."""

from __future__ import annotations

from pathlib import Path

import click
from tqdm.auto import tqdm

from .cli_common import guarded as _guarded
from .errors import StablenoiseError

NOISE_KEYS = ("optimized", "best", "noise", "initial")


def model_options(fn):
    opts = [
        click.option("--model", default="shapes", show_default=True,
                     help="Hub id (stabilityai/sdxl-turbo), local pipeline folder, or 'shapes' (the shipped model)."),
        click.option("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)."),
        click.option("--dtype", default=None, help="float32, float16 or bfloat16 (default: the pipeline's)."),
        click.option("--steps", type=click.IntRange(min=1), default=None,
                     help="DDIM steps of the round trip (default: the model family's)."),
        click.option("--guidance", type=click.FloatRange(min=0), default=None,
                     help="Denoising CFG scale (<= 1: no CFG; default: the model family's)."),
        click.option("--inversion-guidance", type=click.FloatRange(min=0), default=None,
                     help="CFG scale of the inversion (default 1: conditional branch only)."),
        click.option("--variant", default=None, help="Weight variant to load, as in diffusers (e.g. fp16)."),
        click.option("--timestep-spacing", type=click.Choice(["leading", "trailing"]), default=None,
                     help="Override the DDIM timestep spacing (default: the pipeline scheduler's)."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Output folder (default: stablenoise-out/COMMAND)."),
        click.option("--prompt", "prompt_list", multiple=True, help="A prompt; repeat for several."),
        click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
                     help="A file of prompts: one a line, or a CSV/TSV with a 'prompt' column."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


class Session:
    """What every subcommand resolves first: the backend, the prompts, the round-trip settings."""

    def __init__(self, command: str, model, device, dtype, steps, guidance, inversion_guidance, variant,
                 timestep_spacing, out, prompt_list, prompts_file):
        from .backends import load
        from .outputs import read_prompts
        from .stability import resolve

        prompts = list(prompt_list) + (read_prompts(prompts_file) if prompts_file else [])
        if not prompts:
            raise StablenoiseError("no prompt given: use --prompt TEXT or --prompts FILE")
        if any(not p.strip() for p in prompts):
            raise StablenoiseError("empty prompt")
        self.backend = load(model, device=device, dtype=dtype, variant=variant, timestep_spacing=timestep_spacing)
        self.steps, self.guidance, self.inversion_guidance = resolve(self.backend, steps, guidance,
                                                                     inversion_guidance)
        self.prompts = prompts
        self.command = command
        self.out = Path(out) if out else Path("stablenoise-out") / command

    def round_trip_kwargs(self) -> dict:
        return {"steps": self.steps, "guidance": self.guidance, "inversion_guidance": self.inversion_guidance}

    def folder(self, **parameters):
        from .outputs import RunFolder

        params = {"prompts": self.prompts, **self.round_trip_kwargs(), **parameters}
        return RunFolder(self.out, self.command, params, self.backend.describe())

    def each_prompt(self):
        return enumerate(tqdm(self.prompts, desc=self.command, unit="prompt", disable=len(self.prompts) < 2))


def _load_noise(path: Path, shape):
    from safetensors.torch import load_file

    from .noise import check_noise

    if not path.is_file():
        raise StablenoiseError(f"noise file not found: {path}")
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise StablenoiseError(f"{path}: not a safetensors file ({e})") from None
    key = next((k for k in NOISE_KEYS if k in tensors), None) or (next(iter(tensors)) if len(tensors) == 1 else None)
    if key is None:
        raise StablenoiseError(f"{path}: holds {sorted(tensors)}; expected one of {', '.join(NOISE_KEYS)}")
    return check_noise(tensors[key].float(), shape)


def _seed_noises(session: Session, seed: int, n: int, noise_file: Path | None):
    from .noise import noises_from_seeds

    if noise_file is not None:
        return None, _load_noise(noise_file, session.backend.latent_shape)
    seeds = list(range(seed, seed + n))
    return seeds, noises_from_seeds(seeds, session.backend.latent_shape)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stablenoise")
def main():
    """Pick and improve the initial noise of a text-to-image diffusion model by inversion stability
    (Qi et al., arXiv 2407.14041). Without --model every command uses the shipped shapes-world model."""


def seed_options(default_num: int):
    def decorate(fn):
        fn = click.option("--noise", "noise_file", type=click.Path(path_type=Path), default=None,
                          help="Use a saved noise (safetensors from select/optimize) instead of seeds.")(fn)
        fn = click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                          help="Noises per model call.")(fn)
        fn = click.option("-n", "--num", type=click.IntRange(min=1), default=default_num, show_default=True,
                          help="Seeds per prompt.")(fn)
        return click.option("--seed", type=int, default=0, show_default=True, help="First seed.")(fn)
    return decorate


@main.command()
@model_options
@seed_options(default_num=1)
@click.option("--sampler", type=click.Choice(["pipeline", "ddim"]), default="pipeline", show_default=True,
              help="The pipeline's own sampler, or the DDIM that the stability score uses.")
@_guarded
def generate(seed, num, noise_file, batch_size, sampler, **kw):
    """Generate images from seeded (or saved) noises."""
    from .generation import generate as gen

    s = Session("generate", **kw)
    seeds, noise = _seed_noises(s, seed, num, noise_file)
    run = s.folder(seeds=seeds, noise_file=str(noise_file) if noise_file else None, sampler=sampler)
    for i, prompt in s.each_prompt():
        images = [im for chunk in noise.split(batch_size)
                  for im in gen(s.backend, prompt, chunk, s.steps, s.guidance, sampler=sampler)]
        names = [f"seed-{x}" for x in seeds] if seeds else [f"noise-{j}" for j in range(len(images))]
        run.add(i, prompt, {"images": [n + ".png" for n in names]}, dict(zip(names, images)))
    run.finish()
    click.echo(f"wrote {run.root}")


@main.command()
@model_options
@seed_options(default_num=8)
@_guarded
def score(seed, num, noise_file, batch_size, **kw):
    """Inversion stability of seeded (or saved) noises."""
    from .stability import stability

    s = Session("score", **kw)
    seeds, noise = _seed_noises(s, seed, num, noise_file)
    run = s.folder(seeds=seeds, noise_file=str(noise_file) if noise_file else None, batch_size=batch_size)
    for i, prompt in s.each_prompt():
        scores = [x for chunk in tqdm(noise.split(batch_size), desc="score", unit="batch",
                                      disable=len(noise) <= batch_size)
                  for x in stability(s.backend, prompt, chunk, **s.round_trip_kwargs()).tolist()]
        run.add(i, prompt, {"seeds": seeds, "scores": scores})
        for label, value in zip(seeds or range(len(scores)), scores):
            click.echo(f"{prompt!r}\tseed {label}\tstability {value:.6f}")
    run.finish()
    click.echo(f"wrote {run.root}")


@main.command()
@model_options
@click.option("-k", type=click.IntRange(min=1), default=100, show_default=True, help="Seeds to score per prompt.")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed: seeds are SEED..SEED+K-1.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@_guarded
def select(k, seed, batch_size, **kw):
    """Score K seeds per prompt and keep the most stable (and the least stable, for comparison)."""
    import torch

    from .generation import generate as gen
    from .outputs import side_by_side
    from .selection import select as sel

    s = Session("select", **kw)
    run = s.folder(k=k, first_seed=seed, batch_size=batch_size)
    for i, prompt in s.each_prompt():
        r = sel(s.backend, prompt, seeds=range(seed, seed + k), batch_size=batch_size, **s.round_trip_kwargs())
        best, worst = gen(s.backend, prompt, torch.cat([r.best_noise, r.worst_noise]), s.steps, s.guidance)
        score = dict(zip(r.seeds, r.scores))
        images = {"best": best, "worst": worst, "best_vs_worst": side_by_side(
            [best, worst], [f"best {r.best_seed}: {score[r.best_seed]:.4f}", f"worst {r.worst_seed}: {score[r.worst_seed]:.4f}"])}
        run.add(i, prompt, {"seeds": r.seeds, "scores": r.scores, "best_seed": r.best_seed,
                            "worst_seed": r.worst_seed, "best_score": score[r.best_seed],
                            "worst_score": score[r.worst_seed]},
                images, {"best": r.best_noise, "worst": r.worst_noise})
        click.echo(f"{prompt!r}: best seed {r.best_seed} ({score[r.best_seed]:.4f}), "
                   f"worst seed {r.worst_seed} ({score[r.worst_seed]:.4f})")
    run.finish()
    click.echo(f"wrote {run.root}")


@main.command()
@model_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the starting noise.")
@click.option("--noise", "noise_file", type=click.Path(path_type=Path), default=None,
              help="Start from a saved noise (safetensors) instead of the seed.")
@click.option("--iterations", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True)
@click.option("--momentum", type=click.FloatRange(min=0, max=1, max_open=True), default=0.5, show_default=True)
@click.option("--preserve-norm", is_flag=True, help="Keep the noise norm at sqrt(d) after every step.")
@click.option("--no-checkpoint", is_flag=True, help="Keep activations instead of recomputing (more memory).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Prompts optimized together.")
@_guarded
def optimize(seed, noise_file, iterations, lr, momentum, preserve_norm, no_checkpoint, batch_size, **kw):
    """Optimize a noise per prompt for inversion stability (gradient descent with momentum).
    Prompts are optimized --batch-size at a time, each independently, from the same starting noise."""
    import torch

    from .generation import generate as gen
    from .optimization import optimize as opt
    from .outputs import side_by_side
    from .plots import plot_history

    s = Session("optimize", **kw)
    seeds, noise = _seed_noises(s, seed, 1, noise_file)
    run = s.folder(seed=seed if seeds else None, noise_file=str(noise_file) if noise_file else None,
                   iterations=iterations, lr=lr, momentum=momentum, preserve_norm=preserve_norm,
                   checkpoint=not no_checkpoint, batch_size=batch_size)
    for first in range(0, len(s.prompts), batch_size):
        prompts = s.prompts[first:first + batch_size]
        r = opt(s.backend, prompts, noise[:1].expand(len(prompts), *noise.shape[1:]), iterations=iterations,
                lr=lr, momentum=momentum, preserve_norm=preserve_norm, checkpoint=not no_checkpoint,
                **s.round_trip_kwargs())
        for j, prompt in enumerate(prompts):
            start, best = r.initial_noise[j:j + 1], r.noise[j:j + 1]
            before, after = gen(s.backend, prompt, torch.cat([start, best]), s.steps, s.guidance)
            history = [h[j] for h in r.history]
            folder = run.add(first + j, prompt, {
                "initial_stability": history[0], "optimized_stability": r.best_stability[j],
                "best_iteration": r.best_iteration[j], "history": history, "stopped": r.stopped},
                {"initial": before, "optimized": after, "initial_vs_optimized": side_by_side(
                    [before, after], [f"start {history[0]:.4f}", f"optimized {r.best_stability[j]:.4f}"])},
                {"initial": start, "optimized": best})
            plot_history(history, folder / "stability.png", title=prompt)
            click.echo(f"{prompt!r}: stability {history[0]:.4f} -> {r.best_stability[j]:.4f}"
                       + (f" (stopped: {r.stopped})" if r.stopped else ""))
    run.finish()
    click.echo(f"wrote {run.root}")


from .rewards.command import reward  # noqa: E402
from .shapes.commands import demo, experiment, train_shapes  # noqa: E402  (subcommands of the shapes world)

main.add_command(reward)
main.add_command(demo)
main.add_command(experiment)
main.add_command(train_shapes)


if __name__ == "__main__":  # pragma: no cover
    main()
