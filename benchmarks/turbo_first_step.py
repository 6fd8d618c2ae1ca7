"""Is a student's gain (or its loss of detail) in its first step or in its later ones? On the screen's images
(turbo_screen.py: the captions of a teacher bench store, seeds it never drew), a few-step sampler whose first
call, at the timestep every schedule starts at, is one student's and whose later calls are another's: each
pairing against the first student alone, paired, with intervals over distinct captions, for the verifier and
the high-frequency share.

    python benchmarks/turbo_first_step.py shapes-turbo runs/candidate/model --steps 4 \
        --json docs/regimes/turbo-first-step.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import click
import torch
from turbo_quality import teacher_table
from turbo_screen import FIRST_SEED, judged_against_first

import stablenoise as sn
from stablenoise.cli_common import number_list
from stablenoise.errors import StablenoiseError
from stablenoise.records import versions, write_json_atomic


def first_step_of(backend, other, first: int):
    """``backend`` with its UNet's calls at timestep ``first`` made by its own weights and every other call by
    ``other``'s (the same architecture: both are shapes students)."""
    own, later = backend.pipe.unet.forward, other.pipe.unet.forward

    def forward(x, t, *args, **kwargs):
        return (own if int(torch.as_tensor(t).reshape(-1)[0]) == first else later)(x, t, *args, **kwargs)

    backend.pipe.unet.forward = forward  # an instance attribute: nn.Module.__call__ finds it first
    return backend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference", help="a shipped name or a pipeline folder")
    ap.add_argument("candidate", help="a shipped name or a pipeline folder")
    ap.add_argument("--teacher-run", type=Path, default=Path("docs/regimes/ddim50"), help="whose captions")
    ap.add_argument("--steps", default="4")
    ap.add_argument("--seeds-per-prompt", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_flush_denormal(True)  # ~18x faster small convolutions on CPU
    try:
        step_counts = number_list(int, 2)(None, None, args.steps)
    except click.BadParameter as e:
        raise SystemExit(f"error: {e.message} (a first step and later ones: at least 2 steps)") from None
    table = teacher_table(args.teacher_run)
    prompts = [p for p in table.texts for _ in range(args.seeds_per_prompt)]
    seeds = list(range(FIRST_SEED, FIRST_SEED + len(prompts)))
    try:  # a bad name fails before any image is made
        reference, candidate = sn.load(args.reference), sn.load(args.candidate)
    except StablenoiseError as e:
        raise SystemExit(f"error: {e}") from None
    first = int(reference.levels(1)[0].t)
    result = {"teacher_run": str(args.teacher_run), "captions": len(set(prompts)), "images": len(prompts),
              "seeds": [seeds[0], seeds[-1]], "reference": args.reference, "candidate": args.candidate,
              "first_timestep": first, "versions": versions()}
    # a mixed sampler patches its own fresh copy of the first-step model; the later steps' model is shared, unpatched
    samplers = {"reference": (reference, 1.0), "candidate": (candidate, 1.0),
                "reference's first step, candidate's later ones": (
                    first_step_of(sn.load(args.reference), candidate, first), 1.0),
                "candidate's first step, reference's later ones": (
                    first_step_of(sn.load(args.candidate), reference, first), 1.0)}
    result["by_steps"] = judged_against_first(samplers, prompts, seeds, step_counts, args.batch_size)
    if args.json:
        write_json_atomic(args.json, result)


if __name__ == "__main__":
    main()
