"""The ``stablenoise`` command: a thin shell over the library. Every run writes PNGs and a JSON record."""

from __future__ import annotations

import math
import os
from pathlib import Path

import click
from tqdm.auto import tqdm

from .cli_common import (MAX_SEEDS, SEED, batch_size_option, count_option, device_option,  # noqa: F401 (SEED)
                         dtype_option, FiniteFloatRange, gather_prompts, model_loading_options, model_option,
                         noise_norm_option, option_group, out_option, out_path, prompt_options, round_trip_options,
                         seed_option)
from .cli_common import guarded as _guarded
from .errors import StablenoiseError
from .settings import OptimizerSettings

NOISE_KEYS = ("optimized", "best", "noise", "initial")
PAPER = OptimizerSettings.paper()


# The model, its round trip, the prompts and the run folder: what every Session takes.
model_options = option_group(model_option, device_option, dtype_option, round_trip_options, model_loading_options,
                             out_option, prompt_options)


class Session:
    """What every subcommand resolves first: the backend, the prompts, the round-trip settings."""

    def __init__(self, command: str, model, device, dtype, steps, guidance, inversion_guidance, variant,
                 timestep_spacing, height, width, compile_model, out, prompt_list, prompts_spec):
        from .backends import load
        from .stability import resolve

        self.prompts = gather_prompts(prompt_list, prompts_spec).texts
        self.backend = load(model, device=device, dtype=dtype, variant=variant, timestep_spacing=timestep_spacing,
                            height=height, width=width, compile=compile_model)
        self.steps, self.guidance, self.inversion_guidance = resolve(self.backend, steps, guidance,
                                                                     inversion_guidance)
        self.command = command
        self.out = out_path(out, command)

    def round_trip_kwargs(self) -> dict:
        return {"steps": self.steps, "guidance": self.guidance, "inversion_guidance": self.inversion_guidance}

    def folder(self, **parameters):
        """The run folder; used as a context manager, the run ends as done, interrupted or failed: why."""
        from .outputs import RunFolder

        params = {"prompts": self.prompts, **self.round_trip_kwargs(), **parameters}
        return RunFolder(self.out, self.command, params, self.backend.describe())

    def each_prompt(self, world=None):
        """(index, prompt) of every prompt, or under a launch of this rank's share (prompt i to rank i % N);
        only rank 0 draws a bar."""
        rank, size = (world.rank, world.size) if world else (0, 1)
        mine = [(i, p) for i, p in enumerate(self.prompts) if i % size == rank]
        return tqdm(mine, desc=self.command, unit="prompt", disable=len(mine) < 2 or rank != 0)


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
    """Seeds SEED..SEED+N-1 (or a saved noise), with the noise norm and the batch size."""
    return option_group(
        seed_option(), count_option("-n", "--num", default=default_num),
        batch_size_option,
        click.option("--noise", "noise_file", type=click.Path(path_type=Path), default=None,
                     help="Use a saved noise (safetensors from select/optimize) instead of seeds."),
        noise_norm_option)


def _batches(fn, noise, batch_size, device):
    """``fn`` over batches of ``noise`` that fit (batching: automatic when ``batch_size`` is None, halved on
    out-of-memory); its per-noise results, in order."""
    from .batching import auto_batch_size, map_batches

    if batch_size is None:
        batch_size = auto_batch_size(device, lambda: fn(noise[:1]), len(noise), noise[0].numel())
    return map_batches(fn, noise, batch_size)


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
            images = _batches(lambda chunk: gen(s.backend, prompt, chunk, s.steps, s.guidance, sampler=sampler),
                              noise, batch_size, s.backend.device)
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
            scores = _batches(lambda chunk: stability(s.backend, prompt, chunk, **s.round_trip_kwargs()).tolist(),
                              noise, batch_size, s.backend.device)
            scores = [x if math.isfinite(x) else None for x in scores]
            run.add(i, prompt, {"seeds": seeds, "scores": scores})
            for label, value in zip(seeds or range(len(scores)), scores):
                shown = f"{value:.6f}" if value is not None else "none (NaN or inf)"
                click.echo(f"{prompt!r}\t{'seed' if seeds else 'noise'} {label}\tstability {shown}")
            bad += scores.count(None)
        if bad:
            raise StablenoiseError(f"{bad} stability score(s) were NaN or inf (recorded as null in {run.root})")
    click.echo(f"wrote {run.root}")


def _selection_proxy(seed, k, keep, proxy_steps, proxy_prompt, proxy_guidance, bank_file, by):
    """``select``'s two-stage options checked: (the bank or None, the proxy or None, the --proxy-* setting, the
    seeds)."""
    from .bank import SeedBank
    from .noise import check_seed_range
    from .selection import Proxy, check_keep

    bank, proxy, seeds = None, None, list(check_seed_range(seed, k))
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
    return bank, proxy, setting, seeds


@main.command()
@model_options
@count_option("-k", default=100, help="Seeds to score per prompt.")
@seed_option(help="First seed: seeds are SEED..SEED+K-1.")
@batch_size_option
@click.option("--keep", type=click.IntRange(min=1), default=None,
              help="Two-stage selection: a proxy scores the K seeds, the KEEP best get the full score.")
@click.option("--proxy-steps", type=click.IntRange(min=1), default=None, help="Proxy: the round trip with fewer steps.")
@click.option("--proxy-prompt", default=None, help="Proxy: the round trip under this prompt (\"\": the empty one).")
@click.option("--proxy-guidance", type=FiniteFloatRange(min=0), default=None, help="Proxy: this CFG scale (1: none).")
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
    the worst for comparison. Under ``accelerate launch`` the ranks share the prompts (docs/scaling.md)."""
    from .distributed import join

    bank, proxy, setting, seeds = _selection_proxy(seed, k, keep, proxy_steps, proxy_prompt, proxy_guidance,
                                                   bank_file, by)
    world, kw["device"] = join(kw["device"])  # this rank's own GPU under a launch
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
    with _select_run(world, s, params) as run:
        for i, prompt in s.each_prompt(world):
            if not run.done(i, prompt):
                _select_prompt(s, run, i, prompt, dict(seeds=seeds, batch_size=batch_size, proxy=proxy, keep=keep,
                                                       scorer=scorer, noise_norm=noise_norm, progress=world.main))
        if world.size > 1 and world.main:
            _gather_items(run, s.prompts)
    if world.main:
        click.echo(f"wrote {run.root}")


def _select_run(world, s: Session, params: dict):
    """``select``'s run folder. Rank 0 (or the only process) creates it, or resumes it adopting the item folders
    a killed rank finished, before any rank starts, and is the only one to write ``run.json``; every other rank
    writes only its items' folders (docs/scaling.md)."""
    from .outputs import RankItems

    held = []

    def open_run():
        held.append(s.folder(**params))
        held[0].adopt()
        return held[0].record["items"]

    items = world.agree(open_run)
    return held[0] if world.main else RankItems(s.out, items)


def _gather_items(run, prompts) -> None:
    """Under a launch, rank 0 once its share is done: wait until every prompt's item folder is in place (on
    files, not a collective: a slow prompt elsewhere cannot time a barrier out; a rank that fails ends the job
    through its launcher), then record the other ranks' items."""
    import time

    from .distributed import POLL_SECONDS

    while not all(run.item_dir(i, p).is_dir() for i, p in enumerate(prompts)):
        time.sleep(POLL_SECONDS)
    run.adopt()


def _select_prompt(s: Session, run, i: int, prompt: str, how: dict) -> None:
    """One prompt of ``select``: its K seeds scored, the best and worst images, its item folder."""
    import torch

    from .generation import generate as gen
    from .outputs import side_by_side
    from .selection import select as sel

    proxy = how["proxy"]
    r = sel(s.backend, prompt, **how, **s.round_trip_kwargs())
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


@main.command()
@model_options
@seed_option(help="Seed of the starting noise.")
@click.option("--noise", "noise_file", type=click.Path(path_type=Path), default=None,
              help="Start from saved noises (safetensors): every prompt is optimized from each of them.")
@click.option("--iterations", type=click.IntRange(min=0), default=PAPER.iterations, show_default=True)
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=PAPER.lr, show_default=True)
@click.option("--momentum", type=FiniteFloatRange(min=0, max=1, max_open=True), default=PAPER.momentum,
              show_default=True)
@click.option("--preserve-norm", is_flag=True, help="Keep the noise norm at sqrt(d) (start and every step).")
@click.option("--no-checkpoint", is_flag=True, help="Keep activations instead of recomputing (more memory).")
@batch_size_option
@_guarded
def optimize(seed, noise_file, iterations, lr, momentum, preserve_norm, no_checkpoint, batch_size, **kw):
    """Optimize a noise per prompt for inversion stability (gradient descent with momentum).
    Each (prompt, starting noise) pair is optimized independently, --batch-size pairs at a time. A pair
    whose stability turns NaN/inf stops alone; if one never had a finite score, the command fails at the end."""
    settings = PAPER.override(iterations=iterations, lr=lr, momentum=momentum, preserve_norm=preserve_norm)
    s = Session("optimize", **kw)
    seeds, noise = _seed_noises(s, seed, 1, noise_file)
    failed = []
    with s.folder(seed=seed if seeds else None, noise_file=str(noise_file) if noise_file else None,
                  iterations=iterations, lr=lr, momentum=momentum, preserve_norm=preserve_norm,
                  checkpoint=not no_checkpoint, batch_size=batch_size) as run:
        pending = [i for i, p in enumerate(s.prompts) if not run.done(i, p)]
        pairs = [(i, j) for i in pending for j in range(noise.shape[0])]
        if pairs:
            failed = _optimize_pairs(s, run, pairs, noise, settings, not no_checkpoint, batch_size)
        if failed:
            raise StablenoiseError(f"{len(failed)} (prompt, noise) pair(s) never had a finite stability: "
                                   f"{failed[0]}")
    click.echo(f"wrote {run.root}")


def _optimize_pairs(s, run, pairs, noise, settings, checkpoint, batch_size) -> list[str]:
    """Optimize (prompt, noise) pairs in batches that fit; each prompt is written once all its noises are done.
    Returns the pairs that never had a finite stability."""
    from .batching import auto_batch_size, map_batches
    from .optimization import optimize as opt

    n, results, failed = noise.shape[0], {}, []

    def optimize_pairs(chunk, settings=settings, progress=False):
        r = opt(s.backend, [s.prompts[i] for i, _ in chunk], noise[[j for _, j in chunk]], settings,
                checkpoint=checkpoint, progress=progress, **s.round_trip_kwargs())
        return [{"initial": r.start_noise[pos], "optimized": r.noise[pos],
                 "initial_stability": r.initial_stability[pos], "optimized_stability": r.best_stability[pos],
                 "best_iteration": r.best_iteration[pos], "history": r.history[pos], "stopped": r.stopped[pos]}
                for pos in range(len(chunk))]

    if batch_size is None:  # one pair's iteration (forward and backward) measures the memory a pair needs
        batch_size = auto_batch_size(s.backend.device, lambda: optimize_pairs(pairs[:1], settings.override(
            iterations=min(1, settings.iterations))), len(pairs), noise[0].numel())
    bar = tqdm(total=len(pairs), desc="optimize", unit="pair", disable=len(pairs) <= batch_size)

    def finish(chunk, done):
        results.update(zip(chunk, done))
        bar.update(len(chunk))
        for i in dict.fromkeys(i for i, _ in chunk):
            if all((i, j) in results for j in range(n)):
                failed.extend(_write_optimized(s, run, i, [results.pop((i, j)) for j in range(n)]))

    map_batches(lambda chunk: optimize_pairs(chunk, progress=len(pairs) <= batch_size), pairs, batch_size, finish)
    bar.close()
    return failed


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
@model_option
@count_option("-n", default=1000, help="Seeds in the bank.", maximum=10 * MAX_SEEDS)
@seed_option(help="First seed: seeds are SEED..SEED+N-1.")
@click.option("--prompt", default="", show_default=True, help="The prompt the bank scores under (default: empty).")
@round_trip_options
@batch_size_option
@device_option
@dtype_option
@model_loading_options
@out_option
@noise_norm_option
@_guarded
def bank(model, n, seed, prompt, steps, guidance, inversion_guidance, batch_size, device, dtype, variant,
         timestep_spacing, height, width, compile_model, out, noise_norm):
    """Score N seeds once for a model (under the empty prompt) into a seed bank for two-stage selection:
    stablenoise select --bank OUT --keep M. The bank records the model's weights fingerprint, latent shape and
    schedule; select refuses it for any other (build it with select's --timestep-spacing, --height, --width)."""
    from .backends import load
    from .bank import build_bank
    from .distributed import join
    from .noise import check_seed_range

    check_seed_range(seed, n)
    out = out_path(out, "bank", "seed-bank.json")
    if out.exists() and out.is_dir():
        raise StablenoiseError(f"--out {out} is a folder")
    parent = next(p for p in out.absolute().parents if p.exists())  # the bank is written after all the scoring
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise StablenoiseError(f"cannot write {out}: {parent} is not a writable folder")
    world, device = join(device)  # under a launch the ranks share the seeds (docs/scaling.md)
    backend = load(model, device=device, dtype=dtype, variant=variant, timestep_spacing=timestep_spacing,
                   height=height, width=width, compile=compile_model)
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
from .plugins import Registry  # noqa: E402
from .rewards.command import reward  # noqa: E402
from .study.command import study  # noqa: E402

# Subcommands: the core's, and those other packages register in the entry point group ``stablenoise.commands``
# (the shapes world's demo, experiment and train-shapes), which the core never imports; a core name wins.
COMMANDS: Registry = Registry("command", "stablenoise.commands")
for _command in (*main.commands.values(), reward, bench, report, perf, study):
    COMMANDS.register(_command.name, _command)
for _name, _entry in COMMANDS.entries().items():
    main.add_command(_entry if isinstance(_entry, click.Command) else _entry.load(), _name)


if __name__ == "__main__":  # pragma: no cover
    main()
