"""Where does a few-step student's error come from? On the distillation's held-back teacher pairs, the student's
x0 estimate after each step of its own T-step sampling, against the teacher's image (mean squared error, image
units), started from the pair's noise and, for comparison, from the pair's own line at each later timestep (the
earlier steps made exact). If the error from the noise stays near the first step's while the error from a later
point of the line is small, the first step's error is the bulk and the later steps do not correct it.

    python benchmarks/turbo_error_by_step.py [--student shapes-turbo] [--pairs runs/shapes-turbo-c]
        [--steps 4] [--json docs/regimes/turbo-error-by-step.json]

The pairs folder is a `stablenoise distill-shapes --out` folder; its first three shards (the 128 validation
pairs and one training shard) are made if missing, about three minutes of teacher sampling.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from stablenoise import ddim
from stablenoise.backends import shipped_models
from stablenoise.records import write_json_atomic, versions
from stablenoise.shapes import distill as D
from stablenoise.shapes.pipeline import ShapesPipeline


def errors_from(pipe, lines: dict, grid: list[int], alphas_cumprod, start: int) -> list[float]:
    """The x0 error after each step of the student's sampling along ``grid``, started on the line at grid[start]."""
    x0, eps = lines["x0"], lines["eps"]
    x = D.line_point(x0, eps, float(alphas_cumprod[grid[start]]))
    _, estimates = D.own_sampling(D.student_eps(pipe, lines["captions"]), x, grid[start:], alphas_cumprod)
    return [float((e - x0).square().mean()) for e in estimates]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="shapes-turbo")
    ap.add_argument("--pairs", default="runs/shapes-turbo-c", help="a distill-shapes --out folder")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    cfg = D.DistillConfig(student_steps=(args.steps,), pairs=1)
    paths = D.ensure_pairs(Path(args.pairs), cfg)[:D.shard_count(cfg.val_pairs, cfg)]
    pipe = ShapesPipeline.from_pretrained(str(shipped_models().get(args.student, Path(args.student))))
    a_start, a_end, (grid,) = D.coupling_levels(ddim.settings(pipe.scheduler.config), cfg)
    lines = D._lines(paths, a_start, a_end)
    alphas_cumprod = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod.double()  # as distill.py
    grid = grid.tolist()
    rows = {str(grid[s]): errors_from(pipe, lines, grid, alphas_cumprod, s) for s in range(len(grid))}
    for start, errs in rows.items():
        print(f"from the line at t={start}: x0 error after each step " + ", ".join(f"{e:.4f}" for e in errs))
    if args.json:
        write_json_atomic(args.json, {"student": args.student, "steps": args.steps, "pairs": len(lines["x0"]),
                                      "timesteps": grid, "x0_mse_from": rows, "versions": versions()})


if __name__ == "__main__":
    main()
