"""The ``stablenoise`` command: a thin shell over the library. Every run writes PNGs and a JSON record."""

from __future__ import annotations

import math
import os
from pathlib import Path

import click
from tqdm.auto import tqdm

from .cli_common import guarded as _guarded
from .cli_common import noise_norm_option
from .errors import StablenoiseError

NOISE_KEYS = ("optimized", "best", "noise", "initial")
MAX_SEEDS = 100_000  # per prompt: far beyond any useful K, and a typo like -k 1e9 fails at once
SEED = click.IntRange(0, 2**63 - 1)  # noise.SEED_LIMIT (a seed means one noise: torch aliases s and s + 2**63)


def model_options(fn):
    opts = [
        click.option("--model", default="shapes", show_default=True,
                     help="Hub id (stabilityai/sdxl-turbo), local pipeline folder, or 'shapes' (the shipped model)."),
        click.option("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)."),
        click.option("--dtype", default=None, help="float32, float16 or bfloat16 (default: the pipeline's)."),
        click.option("--steps", type=click.IntRange(min=1), default=None,
                     help="Steps of the round trip, DDIM or flow Euler (default: the model family's)."),
        click.option("--guidance", type=click.FloatRange(min=0), default=None,
                     help="Denoising CFG scale (<= 1: no CFG; default: the model family's)."),
        click.option("--inversion-guidance", type=click.FloatRange(min=0), default=None,
                     help="CFG scale of the inversion (default 1: conditional branch only)."),
        click.option("--variant", default=None, help="Weight variant to load, as in diffusers (e.g. fp16)."),
        click.option("--timestep-spacing", type=click.Choice(["leading", "trailing", "linspace"]), default=None,
                     help="Override the DDIM timestep spacing (default: the pipeline scheduler's)."),
        click.option("--height", type=click.IntRange(min=1), default=None,
                     help="Image height in pixels (default: the model's native size)."),
        click.option("--width", type=click.IntRange(min=1), default=None,
                     help="Image width in pixels (default: the model's native size)."),
        click.option("--compile", "compile_model", is_flag=True,
                     help="torch.compile the UNet/transformer (pays off on a GPU for long runs)."),
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
                 timestep_spacing, height, width, compile_model, out, prompt_list, prompts_file):
        from .backends import load
        from .outputs import read_prompts
        from .stability import resolve

        prompts = list(prompt_list) + (read_prompts(prompts_file) if prompts_file else [])
        if not prompts:
            raise StablenoiseError("no prompt given: use --prompt TEXT or --prompts FILE")
        if any(not p.strip() for p in prompts):
            raise StablenoiseError("empty prompt")
        self.backend = load(model, device=device, dtype=dtype, variant=variant, timestep_spacing=timestep_spacing,
                            height=height, width=width, compile=compile_model)
        self.steps, self.guidance, self.inversion_guidance = resolve(self.backend, steps, guidance,
                                                                     inversion_guidance)
        self.prompts = prompts
        self.command = command
        self.out = Path(out) if out else Path("stablenoise-out") / command

    def round_trip_kwargs(self) -> dict:
        return {"steps": self.steps, "guidance": self.guidance, "inversion_guidance": self.inversion_guidance}

    def folder(self, **parameters):
        """The run folder; used as a context manager, the run ends as done, interrupted or failed: why."""
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
    return check_noise(tensors[key], shape).float()


def _seed_noises(session: Session, seed: int, n: int, noise_file: Path | None, noise_norm: str = "keep"):
    from .noise import check_seed_range, noises_from_seeds

    if noise_file is not None:
        if noise_norm != "keep":
            raise StablenoiseError("--noise-norm applies to seeds: a saved noise (--noise) is used as it is")
        return None, _load_noise(noise_file, session.backend.latent_shape)
    seeds = list(check_seed_range(seed, n))
    return seeds, noises_from_seeds(seeds, session.backend.latent_shape, noise_norm)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stablenoise")
def main():
    """Pick and improve the initial noise of a text-to-image diffusion model by inversion stability
    (Qi et al., arXiv 2407.14041). Without --model every command uses the shipped shapes-world model."""


def seed_options(default_num: int):
    def decorate(fn):
        fn = noise_norm_option(fn)
        fn = click.option("--noise", "noise_file", type=click.Path(path_type=Path), default=None,
                          help="Use a saved noise (safetensors from select/optimize) instead of seeds.")(fn)
        fn = click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                          help="Noises per model call.")(fn)
        fn = click.option("-n", "--num", type=click.IntRange(1, MAX_SEEDS), default=default_num, show_default=True,
                          help="Seeds per prompt.")(fn)
        return click.option("--seed", type=SEED, default=0, show_default=True, help="First seed.")(fn)
    return decorate


@main.command()
@model_options
@seed_options(default_num=1)
@click.option("--sampler", type=click.Choice(["ddim", "pipeline"]), default="ddim", show_default=True,
              help="ddim: the image whose stability was scored (the round trip's denoised half); pipeline: the "
                   "pipeline's own scheduler, its fresh noise (if any) seeded by the noise itself.")
@_guarded
def generate(seed, num, noise_file, batch_size, noise_norm, sampler, **kw):
    """Generate images from seeded (or saved) noises."""
    from .generation import generate as gen

    s = Session("generate", **kw)
    seeds, noise = _seed_noises(s, seed, num, noise_file, noise_norm)
    with s.folder(seeds=seeds, noise_file=str(noise_file) if noise_file else None, sampler=sampler,
                  batch_size=batch_size, noise_norm=noise_norm) as run:
        for i, prompt in s.each_prompt():
            if run.done(i, prompt):
                continue
            images = [im for chunk in noise.split(batch_size)
                      for im in gen(s.backend, prompt, chunk, s.steps, s.guidance, sampler=sampler)]
            names = [f"seed-{x}" for x in seeds] if seeds else [f"noise-{j}" for j in range(len(images))]
            run.add(i, prompt, {"images": [n + ".png" for n in names]}, dict(zip(names, images)))
    click.echo(f"wrote {run.root}")


@main.command()
@model_options
@seed_options(default_num=8)
@_guarded
def score(seed, num, noise_file, batch_size, noise_norm, **kw):
    """Inversion stability of seeded (or saved) noises. A noise whose stability is NaN/inf is recorded
    as null and makes the command fail once every prompt is done."""
    from .stability import stability

    s = Session("score", **kw)
    seeds, noise = _seed_noises(s, seed, num, noise_file, noise_norm)
    bad = 0
    with s.folder(seeds=seeds, noise_file=str(noise_file) if noise_file else None, batch_size=batch_size,
                  noise_norm=noise_norm) as run:
        for i, prompt in s.each_prompt():
            if run.done(i, prompt):
                continue
            scores = [x if math.isfinite(x) else None
                      for chunk in tqdm(noise.split(batch_size), desc="score", unit="batch",
                                        disable=len(noise) <= batch_size)
                      for x in stability(s.backend, prompt, chunk, **s.round_trip_kwargs()).tolist()]
            run.add(i, prompt, {"seeds": seeds, "scores": scores})
            for label, value in zip(seeds or range(len(scores)), scores):
                shown = f"{value:.6f}" if value is not None else "none (NaN or inf)"
                click.echo(f"{prompt!r}\t{'seed' if seeds else 'noise'} {label}\tstability {shown}")
            bad += scores.count(None)
        if bad:
            raise StablenoiseError(f"{bad} stability score(s) were NaN or inf (recorded as null in {run.root})")
    click.echo(f"wrote {run.root}")


@main.command()
@model_options
@click.option("-k", type=click.IntRange(1, MAX_SEEDS), default=100, show_default=True,
              help="Seeds to score per prompt.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="First seed: seeds are SEED..SEED+K-1.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Noises per model call [default: from free GPU memory; on CPU up to 16, fewer for large latents; halved on out-of-memory].")
@click.option("--keep", type=click.IntRange(min=1), default=None,
              help="Two-stage selection: a proxy scores the K seeds, the KEEP best get the full score.")
@click.option("--proxy-steps", type=click.IntRange(min=1), default=None, help="Proxy: the round trip with fewer steps.")
@click.option("--proxy-prompt", default=None, help="Proxy: the round trip under this prompt (\"\": the empty one).")
@click.option("--proxy-guidance", type=click.FloatRange(min=0), default=None, help="Proxy: this CFG scale (1: none).")
@click.option("--bank", "bank_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Proxy: a seed bank (stablenoise bank); its seeds replace -k/--seed.")
@click.option("--by", "by", default="stability", show_default=True,
              help="What ranks the seeds: inversion stability, or a reward of each seed's image (hpsv2, pickscore, "
                   "imagereward, aesthetic, clipscore, shapes-clip, NAME:PATH); with a reward, --proxy-steps judges "
                   "a fewer-step image.")
@noise_norm_option
@_guarded
def select(k, seed, batch_size, keep, proxy_steps, proxy_prompt, proxy_guidance, bank_file, by, noise_norm, **kw):
    """Score K seeds per prompt and keep the best (most stable by default; the best by a reward with --by), and
    the worst for comparison."""
    import torch

    from .bank import SeedBank
    from .generation import generate as gen
    from .noise import check_seed_range
    from .outputs import side_by_side
    from .selection import Proxy, check_keep
    from .selection import select as sel

    proxy, seeds = None, list(check_seed_range(seed, k))
    setting = Proxy(proxy_steps, proxy_guidance, None, proxy_prompt)
    if bank_file is not None:
        if setting != Proxy():
            raise StablenoiseError("--bank is the proxy: do not combine it with --proxy-* options")
        bank = SeedBank.load(bank_file)
        proxy, seeds = bank.scores, bank.seeds
    elif setting != Proxy():
        proxy = setting
    if (proxy is None) != (keep is None):
        raise StablenoiseError("two-stage selection needs --keep and a proxy (--bank or --proxy-steps/-prompt/-guidance)")
    if keep is not None:
        check_keep(keep, len(seeds))
    if by != "stability" and bank_file is not None:
        raise StablenoiseError("a seed bank ranks by stability: use --proxy-steps as the proxy of --by REWARD")
    s = Session("select", **kw)
    if bank_file is not None:
        bank.check(s.backend, bank_file)  # before the run folder exists: a refused bank writes nothing
        if bank.noise_norm != noise_norm:
            raise StablenoiseError(f"{bank_file} scored its noises with --noise-norm {bank.noise_norm}: use the same "
                                   "--noise-norm, or rebuild the bank")
    scorer = None
    if by != "stability":
        from .rewards import load_reward

        scorer = load_reward(by, device=s.backend.device)  # before the run folder exists: a bad name writes nothing
    params = {"k": len(seeds), "first_seed": seeds[0], "batch_size": batch_size, "keep": keep, "by": by,
              "noise_norm": noise_norm,
              "proxy": None if proxy is None else (str(bank_file) if bank_file else setting.__dict__)}
    with s.folder(**params) as run:
        for i, prompt in s.each_prompt():
            if run.done(i, prompt):
                continue
            r = sel(s.backend, prompt, seeds=seeds, batch_size=batch_size, proxy=proxy, keep=keep, scorer=scorer,
                    noise_norm=noise_norm, **s.round_trip_kwargs())
            best, worst = gen(s.backend, prompt, torch.cat([r.best_noise, r.worst_noise]), s.steps, s.guidance)
            score = dict(zip(r.seeds, r.scores))
            excluded = r.scores.count(None) if proxy is None else 0  # pruned seeds have no full score
            images = {"best": best, "worst": worst, "best_vs_worst": side_by_side(
                [best, worst], [f"best {r.best_seed}: {score[r.best_seed]:.4f}",
                                f"worst {r.worst_seed}: {score[r.worst_seed]:.4f}"])}
            run.add(i, prompt, {"scorer": r.scorer, "seeds": r.seeds, "scores": r.scores, "best_seed": r.best_seed,
                                "worst_seed": r.worst_seed, "best_score": score[r.best_seed],
                                "worst_score": score[r.worst_seed], "proxy_scores": r.proxy_scores,
                                "excluded_non_finite": excluded if proxy is None else None},
                    images, {"best": r.best_noise, "worst": r.worst_noise})
            click.echo(f"{prompt!r}: best seed by {r.scorer} {r.best_seed} ({score[r.best_seed]:.4f}), "
                       f"worst seed {r.worst_seed} ({score[r.worst_seed]:.4f})"
                       + (f"; {excluded} seed(s) scored NaN/inf and were excluded" if excluded else ""))
    click.echo(f"wrote {run.root}")


@main.command()
@model_options
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the starting noise.")
@click.option("--noise", "noise_file", type=click.Path(path_type=Path), default=None,
              help="Start from saved noises (safetensors): every prompt is optimized from each of them.")
@click.option("--iterations", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True)
@click.option("--momentum", type=click.FloatRange(min=0, max=1, max_open=True), default=0.5, show_default=True)
@click.option("--preserve-norm", is_flag=True, help="Keep the noise norm at sqrt(d) (start and every step).")
@click.option("--no-checkpoint", is_flag=True, help="Keep activations instead of recomputing (more memory).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="(prompt, noise) pairs optimized together.")
@_guarded
def optimize(seed, noise_file, iterations, lr, momentum, preserve_norm, no_checkpoint, batch_size, **kw):
    """Optimize a noise per prompt for inversion stability (gradient descent with momentum).
    Each (prompt, starting noise) pair is optimized independently, --batch-size pairs at a time. A pair
    whose stability turns NaN/inf stops alone; if one never had a finite score, the command fails at the end."""
    from .optimization import optimize as opt

    if not math.isfinite(lr):
        raise StablenoiseError(f"lr must be finite, got {lr}")
    s = Session("optimize", **kw)
    seeds, noise = _seed_noises(s, seed, 1, noise_file)
    n = noise.shape[0]
    failed = []
    with s.folder(seed=seed if seeds else None, noise_file=str(noise_file) if noise_file else None,
                  iterations=iterations, lr=lr, momentum=momentum, preserve_norm=preserve_norm,
                  checkpoint=not no_checkpoint, batch_size=batch_size) as run:
        pending = [i for i, p in enumerate(s.prompts) if not run.done(i, p)]
        pairs = [(i, j) for i in pending for j in range(n)]
        results = {}
        for first in tqdm(range(0, len(pairs), batch_size), desc="optimize", unit="batch",
                          disable=len(pairs) <= batch_size):
            chunk = pairs[first:first + batch_size]
            r = opt(s.backend, [s.prompts[i] for i, _ in chunk], noise[[j for _, j in chunk]], iterations=iterations,
                    lr=lr, momentum=momentum, preserve_norm=preserve_norm, checkpoint=not no_checkpoint,
                    progress=len(pairs) <= batch_size, **s.round_trip_kwargs())
            for pos, pair in enumerate(chunk):
                results[pair] = {"initial": r.start_noise[pos], "optimized": r.noise[pos],
                                 "initial_stability": r.initial_stability[pos],
                                 "optimized_stability": r.best_stability[pos],
                                 "best_iteration": r.best_iteration[pos], "history": r.history[pos],
                                 "stopped": r.stopped[pos]}
            for i in dict.fromkeys(i for i, _ in chunk):
                if all((i, j) in results for j in range(n)):
                    failed += _write_optimized(s, run, i, [results.pop((i, j)) for j in range(n)])
        if failed:
            raise StablenoiseError(f"{len(failed)} (prompt, noise) pair(s) never had a finite stability: "
                                   f"{failed[0]}")
    click.echo(f"wrote {run.root}")


def _write_optimized(s, run, i, results) -> list[str]:
    """One prompt's folder: images, noises, stability curves and the record of each starting noise."""
    import torch

    from .generation import generate as gen
    from .outputs import side_by_side
    from .plots import plot_history

    prompt, n = s.prompts[i], len(results)
    starts = torch.stack([r["initial"] for r in results])
    bests = torch.stack([r["optimized"] for r in results])
    images = gen(s.backend, prompt, torch.cat([starts, bests]), s.steps, s.guidance)
    suffix = [f"-{j}" if n > 1 else "" for j in range(n)]
    pictures, failed = {}, []
    for j, r in enumerate(results):
        before, after = images[j], images[n + j]
        start, end = (f"{v:.4f}" if v is not None else "none" for v in (r["initial_stability"],
                                                                       r["optimized_stability"]))
        pictures.update({f"initial{suffix[j]}": before, f"optimized{suffix[j]}": after,
                         f"initial_vs_optimized{suffix[j]}": side_by_side([before, after],
                                                                          [f"start {start}", f"optimized {end}"])})
        if r["history"]:
            pictures[f"stability{suffix[j]}"] = plot_history(r["history"], title=prompt)
        if r["optimized_stability"] is None:
            failed.append(f"{prompt!r}, noise {j}: {r['stopped']}")
        click.echo(f"{prompt!r}{' noise ' + str(j) if n > 1 else ''}: stability {start} -> {end}"
                   + (f" (stopped: {r['stopped']})" if r["stopped"] else ""))
    fields = ("initial_stability", "optimized_stability", "best_iteration", "history", "stopped")
    record = {k: results[0][k] for k in fields} if n == 1 else {"noises": [{k: r[k] for k in fields} for r in results]}
    run.add(i, prompt, record, pictures, {"initial": starts, "optimized": bests})
    return failed


@main.command()
@click.option("--model", default="shapes", show_default=True)
@click.option("-n", type=click.IntRange(1, 10 * MAX_SEEDS), default=1000, show_default=True, help="Seeds in the bank.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="First seed: seeds are SEED..SEED+N-1.")
@click.option("--prompt", default="", show_default=True, help="The prompt the bank scores under (default: empty).")
@click.option("--steps", type=click.IntRange(min=1), default=None)
@click.option("--guidance", type=click.FloatRange(min=0), default=None)
@click.option("--inversion-guidance", type=click.FloatRange(min=0), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Noises per model call [default: from free GPU memory; on CPU up to 16, fewer for large latents; halved on out-of-memory].")
@click.option("--device", default=None)
@click.option("--dtype", default=None)
@click.option("--timestep-spacing", type=click.Choice(["leading", "trailing", "linspace"]), default=None,
              help="As select's: a bank is used only under the schedule it was built with.")
@click.option("--height", type=click.IntRange(min=1), default=None, help="As select's (the latent shape must match).")
@click.option("--width", type=click.IntRange(min=1), default=None, help="As select's (the latent shape must match).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("seed-bank.json"),
              show_default=True)
@noise_norm_option
@_guarded
def bank(model, n, seed, prompt, steps, guidance, inversion_guidance, batch_size, device, dtype, timestep_spacing,
         height, width, out, noise_norm):
    """Score N seeds once for a model (under the empty prompt) into a seed bank for two-stage selection:
    stablenoise select --bank OUT --keep M. The bank records the model's weights fingerprint, latent shape and
    schedule; select refuses it for any other."""
    from .backends import load
    from .bank import build_bank
    from .distributed import join
    from .noise import check_seed_range

    check_seed_range(seed, n)
    if out.exists() and out.is_dir():
        raise StablenoiseError(f"--out {out} is a folder")
    parent = next(p for p in out.absolute().parents if p.exists())  # the bank is written after all the scoring
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise StablenoiseError(f"cannot write {out}: {parent} is not a writable folder")
    world, device = join(device)  # under a launch the ranks share the seeds (docs/scaling.md)
    backend = load(model, device=device, dtype=dtype, timestep_spacing=timestep_spacing, height=height, width=width)
    b = build_bank(backend, n, seed, prompt, steps, guidance, inversion_guidance, batch_size, noise_norm=noise_norm,
                   world=world, shards=out.with_name(out.name + ".shards"))
    if b is None:
        return  # another rank: its scores are in the shards, which rank 0 gathers
    try:
        b.save(out)
    except OSError as e:
        raise StablenoiseError(f"cannot write {out}: {e.strerror or e}") from None
    click.echo(f"wrote {out}: {n} seeds, most stable {b.top(3)}")


from .bench.command import bench, perf, report  # noqa: E402
from .rewards.command import reward  # noqa: E402
from .study.command import study  # noqa: E402

main.add_command(reward)
main.add_command(bench)
main.add_command(report)
main.add_command(perf)
main.add_command(study)


def _add_plugin_commands() -> None:
    """Subcommands other packages register in the entry point group ``stablenoise.commands`` (the shapes
    world's demo, experiment and train-shapes): the core never imports them."""
    from importlib import metadata

    for ep in metadata.entry_points(group="stablenoise.commands"):
        if ep.name not in main.commands:
            main.add_command(ep.load(), ep.name)


_add_plugin_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
