"""``stablenoise bench`` and ``stablenoise report``: thin shells over :func:`stablenoise.bench.run.run_bench` and
:func:`stablenoise.bench.report.write_report`."""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

import click

from ..cli_common import (batch_size_option, compile_option, count_option, device_option, dtype_option,
                          gather_prompts, guarded, guidance_option, inversion_guidance_option, inversion_point_option,
                          model_option, out_option, out_path, prompt_options, seed_option, sweep_options,
                          timestep_spacing_option, variant_option)
from ..errors import StablenoiseError


def _choice_list(choices):
    def parse(ctx, param, value):
        items = _names(value)
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise click.BadParameter(f"{value!r}: use {' or '.join(choices)}, or a comma-separated list of them")
        return tuple(items)
    return parse


def _names(value: str) -> list[str]:
    return list(dict.fromkeys(x.strip() for x in value.split(",") if x.strip()))


@click.command()
@model_option
@prompt_options
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use the first N prompts only.")
@click.option("--methods", default=None,
              help="Comma-separated: random, most-stable, least-stable, most-stable-of[:N], best[:REWARD], "
                   "inversion-ablation, optimize[:KEY=VALUE;...], reno[:REWARD=WEIGHT;KEY=VALUE;...] "
                   "(default: random,most-stable,least-stable,most-stable-of,best,optimize,reno); the report at the "
                   "end shows these.")
@click.option("--rewards", "rewards_spec", required=True,
              help="Comma-separated rewards that judge every image (hpsv2, pickscore, imagereward, aesthetic, "
                   "clipscore, shapes-verifier, shapes-clip, or NAME:PATH).")
@count_option("-k", default=16, help="Seeds scored per prompt.")
@sweep_options
@inversion_guidance_option
@seed_option("--first-seed", dest="first_seed",
             help="First seed: prompt i scores seeds FIRST_SEED + i*K .. FIRST_SEED + i*K + K - 1.")
@click.option("--noise-norm", "noise_norm", callback=_choice_list(("keep", "shell")), default="keep", show_default=True,
              help="keep, shell (every seed's noise rescaled to norm sqrt(d) before it is scored and its image made), "
                   "or keep,shell for both arms.")
@batch_size_option
@click.option("--optimize-batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--optimize-prompts", type=click.IntRange(min=1), default=None,
              help="Run the optimizing methods on the first N prompts only (default: all).")
@device_option
@dtype_option
@variant_option
@timestep_spacing_option
@inversion_point_option
@out_option
@click.option("--report/--no-report", default=True, show_default=True, help="Write RUN/report.html at the end.")
@guarded
def bench(model, prompt_list, prompts_spec, limit, methods, rewards_spec, k, steps_list, guidance_list,
          inversion_guidance, first_seed, noise_norm, batch_size, optimize_batch_size, optimize_prompts, device,
          dtype, variant, timestep_spacing, inversion_point, out, report):
    """Benchmark noise selection and optimization methods on a model and prompt set, judged by rewards, into a
    resumable results store (OUT/bench.sqlite); rerunning the same command skips finished rows."""
    from ..backends import load
    from ..distributed import join
    from ..noise import check_seed_range
    from ..rewards import load_reward
    from .methods import DEFAULT_METHODS, parse_methods
    from .run import Sweep, run_bench
    from .store import check_run_folder

    method_list = parse_methods(methods or DEFAULT_METHODS)
    reward_names = _names(rewards_spec)
    if not reward_names:
        raise StablenoiseError("no reward given: use --rewards NAME[,NAME...]")
    for m in method_list:  # a selection method chooses by rewards the bench judges with
        for name in () if m.optimizing else m.entry.looks_at(m):
            if name not in reward_names:
                raise StablenoiseError(f"method {m.id} needs {name} among --rewards")
    world, device = join(device)  # under a launch: this rank, and its own GPU for --device cuda (docs/scaling.md)
    out = out_path(out, "bench")
    world.agree(lambda: check_run_folder(out))  # a user's folder or a broken store: refused before any model loads
    prompt_set = gather_prompts(prompt_list, prompts_spec, limit)
    check_seed_range(first_seed, len(prompt_set.prompts) * k)
    backend = load(model, device=device, dtype=dtype, variant=variant, timestep_spacing=timestep_spacing,
                   inversion_point=inversion_point)
    rewards = {name: load_reward(name, device=backend.device) for name in reward_names}
    optimizing = {}
    for m in method_list:
        for name in m.entry.looks_at(m) if m.optimizing else ():  # what it optimizes, loaded differentiable
            reward = rewards.get(name) or optimizing.get(name) or load_reward(name, device=backend.device)
            if not reward.differentiable:
                raise StablenoiseError(f"method {m.label}: reward {name} is not differentiable")
            optimizing[name] = reward
    d = backend.defaults
    sweep = Sweep(steps=steps_list or (d.steps,), guidance=guidance_list or (d.guidance,),
                  inversion_guidance=inversion_guidance, k=k, first_seed=first_seed, noise_norm=noise_norm)
    command = shlex.join(["stablenoise", *sys.argv[1:]]) if sys.argv and "bench" in sys.argv[1:2] else None
    store = run_bench(backend, prompt_set, rewards, method_list, sweep, out, batch_size=batch_size,
                      optimize_batch_size=optimize_batch_size, optimizing_rewards=optimizing,
                      optimize_prompts=optimize_prompts, command=command,
                      log=click.echo if world.main else lambda _: None, world=world)
    if store is None:
        return  # another rank: its rows are in the shards, which rank 0 merges
    store.close()
    click.echo(f"results in {out / 'bench.sqlite'}")
    if report:
        from .report import write_report

        html, md = write_report(out, methods=method_list, strict=False)  # e.g. inversion-ablation without CFG
        click.echo(f"wrote {html} and {md}")


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))  # load_results says what is wrong
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the HTML report (default: RUN/report.html).")
@click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the Markdown report; its plots go to a _files folder beside it "
                   "(default: RUN/report.md, RUN/report_files/).")
@click.option("--grid-prompts", type=click.IntRange(min=0), default=8, show_default=True,
              help="Prompts in each config's image grid (spread over tags; 0: no grid).")
@click.option("--bootstrap", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Bootstrap resamples of the captions per interval.")
@click.option("--methods", default=None,
              help="Comma-separated methods to show, as bench --methods (random always; default: every method "
                   "the run has).")
@guarded
def report(run_dir, html_path, md_path, grid_prompts, bootstrap, methods):
    """Report a bench run: every method against a random seed, with 95% bootstrap intervals over prompts.
    An existing output is replaced only if a report wrote it; the results store never."""
    from .methods import parse_methods
    from .report import write_report

    html, md = write_report(run_dir, html_path, md_path, grid_prompts=grid_prompts, n_boot=bootstrap,
                            methods=parse_methods(methods) if methods is not None else None)
    click.echo(f"wrote {html} and {md}")


@click.command()
@model_option
@click.option("--architecture", type=click.Choice(["sd15", "sdxl"]), default=None,
              help="Instead of --model: a full-size SD 1.5 or SDXL with random weights (same FLOPs; no download).")
@click.option("--size", type=click.IntRange(min=64), default=None,
              help="Image size of --architecture (default: 512 for sd15, 1024 for sdxl).")
@prompt_options
@click.option("--parts", default=None,
              help="Comma-separated parts to run; a rerun adds to OUT/perf.json [default: overhead,batching,memory,"
                   "proxies,bank; with --architecture: overhead,batching,memory].")
@click.option("--steps", type=click.IntRange(min=1), default=5, show_default=True,
              help="Steps of the full score (the bench's main setting on the shipped model).")
@guidance_option
@inversion_guidance_option
@batch_size_option
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--batching-k", type=click.IntRange(min=2), default=32, show_default=True,
              help="Seeds of the batched-vs-per-seed selection.")
@click.option("--proxy-prompts", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--proxy-k", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--bank-seeds", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--bank-keep", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--bank-prompts", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--judge", default="shapes-verifier", show_default=True, help="The reward that judges the bank's images.")
@click.option("--bench-db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A bench.sqlite with full per-prompt selection on the same prompts and settings, to compare with.")
@device_option
@dtype_option
@compile_option
@out_option
@guarded
def perf(model, architecture, size, prompt_list, prompts_spec, parts, steps, guidance, inversion_guidance, batch_size, repeats, batching_k, proxy_prompts,
         proxy_k, bank_seeds, bank_keep, bank_prompts, judge, bench_db, device, dtype, compile_model, out):
    """Measure what stability costs beyond the model calls and how much cheaper proxies, two-stage selection
    and a seed bank make it; prints a table and writes OUT/perf.json and OUT/perf.md."""
    from ..backends import load
    from ..batching import CPU_BATCH, auto_batch_size
    from ..rewards import load_reward
    from .perf import check_parts, run_perf
    from .perf_report import markdown

    import torch

    part_list = _names(parts or ("overhead,batching,memory" if architecture else
                                 "overhead,batching,memory,proxies,bank"))
    check_parts(part_list)  # before the model loads
    out = out_path(out, "perf")
    if out.exists() and not out.is_dir():
        raise StablenoiseError(f"--out {out} is a file, not a folder")
    if bench_db is not None and not bench_db.is_file():
        raise StablenoiseError(f"bench database not found: {bench_db}")
    # the proxy and bank parts use the first prompts (default: the shapes world's held-out captions)
    prompt_set = gather_prompts(prompt_list, prompts_spec or (None if prompt_list else "shapes-heldout"))
    if architecture:
        from ..backends import from_pipeline, parse_device, parse_dtype
        from .architectures import NATIVE_SIZE, random_pipeline

        if "proxies" in part_list or "bank" in part_list:
            raise StablenoiseError("random weights have no meaningful proxies or bank: use --parts overhead,batching,memory")
        dev = parse_device(device)
        size = size or NATIVE_SIZE[architecture]
        pipe = random_pipeline(architecture, dtype=parse_dtype(dtype) or torch.float32, device=dev)
        pipe.set_progress_bar_config(disable=True)
        backend = from_pipeline(pipe, name=f"random-{architecture}-{size}px", height=size, width=size)
        if compile_model:
            backend.compile()
    else:
        backend = load(model, device=device, dtype=dtype, compile=compile_model)
    reward = load_reward(judge, device=backend.device) if "bank" in part_list else None
    # automatic: the CPU batch for this latent, CPU_BATCH on a GPU (perf.json records the size it measured at)
    batch_size = batch_size or auto_batch_size(backend.device, lambda: None, CPU_BATCH, math.prod(backend.latent_shape))
    command = shlex.join(["stablenoise", *sys.argv[1:]]) if sys.argv and "perf" in sys.argv[1:2] else ""
    result = run_perf(backend, out, part_list, [p.text for p in prompt_set], steps, guidance, inversion_guidance,
                      batch_size, repeats, k_batching=batching_k, proxy_prompts=proxy_prompts, proxy_k=proxy_k, bank_seeds=bank_seeds,
                      bank_keep=bank_keep, bank_prompts=bank_prompts, judge=reward, bench_db=bench_db,
                      command=command)
    md = markdown(result)
    (out / "perf.md").write_text(md, encoding="utf-8")
    click.echo(md)
    click.echo(f"wrote {out / 'perf.json'} and {out / 'perf.md'}")
