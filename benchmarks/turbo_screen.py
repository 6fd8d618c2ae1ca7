"""Choose between few-step students without touching the images the bar is measured on: every student draws the
same (caption, seed) images, on the captions of a stored teacher run but with seeds that run never drew, and each
is compared with the first student, paired, with intervals that resample distinct captions.

turbo_quality.py judges a student on the stored run's own seeds against the teacher's verdicts there; picking
the best of several candidates on those same images would select on the noise of the measurement (the winner's
curse), so candidates are screened here first and only the chosen one is measured there.

    python benchmarks/turbo_screen.py shapes-turbo runs/candidate-a/model runs/candidate-b/model \
        --steps 4,2,1 --seeds-per-prompt 4 --json docs/regimes/turbo-screen.json

``--guidance 1,1.5`` screens each student at each CFG scale as well (the student's own unconditional branch;
the first student at the first scale is the reference).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import click
import numpy as np
import torch

import stablenoise as sn
from stablenoise.cli_common import number_list
from stablenoise.errors import StablenoiseError
from stablenoise.records import versions, write_json_atomic
from stablenoise.stats import interval_text, mean_ci, paired_diff_ci
from turbo_quality import judged_images, points, shape_mix, teacher_table, what_it_drew

FIRST_SEED = 7_000_000  # far above any seed a bench store draws (they count up from 0)


def judged_against_first(samplers: dict, prompts: list[str], seeds: list[int], step_counts, batch_size: int
                         ) -> dict:
    """For each step count, each sampler's (name: (backend, CFG scale)) images of the (prompt, seed)s judged, and
    each after the first paired with the first's, with intervals that resample distinct captions; a line each on
    the terminal. Returns {step count: {name: row}}."""
    return {str(steps): _judged_at(samplers, prompts, seeds, steps, batch_size) for steps in step_counts}


def _judged_at(samplers: dict, prompts: list[str], seeds: list[int], steps: int, batch_size: int) -> dict:
    rows, first = {}, None
    for name, (backend, guidance) in samplers.items():
        judged, drawn = judged_images(backend, prompts, seeds, steps, guidance, batch_size)
        row = {k: mean_ci(v, rng=0, clusters=prompts) for k, v in judged.items()}
        row["drawn"] = what_it_drew(drawn)
        line = (f"{steps} steps {name}: verifier {100 * judged['passed'].mean():.1f}%, high-frequency share "
                f"{judged['high_frequency_share'].mean():.4f}, {shape_mix(row['drawn'])}")
        if first is None:
            first = judged
        else:
            d = row["passed_minus_first"] = paired_diff_ci(judged["passed"], first["passed"], rng=0,
                                                           clusters=prompts)
            h = row["high_frequency_share_minus_first"] = paired_diff_ci(
                judged["high_frequency_share"], first["high_frequency_share"], rng=0, clusters=prompts)
            line += (f"; − {next(iter(rows))}: {points(d)}, high-frequency share "
                     f"{interval_text(h, digits=4, sign='+', bound_sign='+')}")
        rows[name] = row
        print(line, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("students", nargs="+", help="shipped names or pipeline folders; the first is the reference")
    ap.add_argument("--teacher-run", type=Path, default=Path("docs/regimes/ddim50"), help="whose captions")
    ap.add_argument("--steps", default="4")
    ap.add_argument("--guidance", default="1", help="the students' CFG scales, comma-separated (1: none)")
    ap.add_argument("--seeds-per-prompt", type=int, default=4)
    ap.add_argument("--first-seed", type=int, default=FIRST_SEED)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    table = teacher_table(args.teacher_run)
    stored = {int(s) for s in table.seeds.seed.reshape(-1)}
    prompts = [p for p in table.texts for _ in range(args.seeds_per_prompt)]
    seeds = list(range(args.first_seed, args.first_seed + len(prompts)))
    if stored & set(seeds):
        raise SystemExit(f"--first-seed {args.first_seed}: the screen would reuse seeds of {args.teacher_run}")
    try:  # the CLI's own list parser: finite numbers, at least 1 step and a scale >= 0
        step_counts = number_list(int, 1)(None, None, args.steps)
        scales = list(number_list(float, 0)(None, None, args.guidance))
    except click.BadParameter as e:
        raise SystemExit(f"error: {e.message}") from None
    result = {"teacher_run": str(args.teacher_run), "captions": len(set(prompts)), "images": len(prompts),
              "seeds": [seeds[0], seeds[-1]], "students": args.students, "guidance": scales, "versions": versions()}
    try:  # every student loads before any is judged: a bad name fails in a second, not after the first model
        backends = {s: sn.load(s) for s in args.students}
    except StablenoiseError as e:
        raise SystemExit(f"error: {e}") from None
    samplers = {f"{name} at guidance {g:g}" if len(scales) > 1 else name: (backend, g)
                for name, backend in backends.items() for g in scales}
    result["by_steps"] = judged_against_first(samplers, prompts, seeds, step_counts, args.batch_size)
    if args.json:
        write_json_atomic(args.json, result)


if __name__ == "__main__":
    torch.set_flush_denormal(True)
    main()
