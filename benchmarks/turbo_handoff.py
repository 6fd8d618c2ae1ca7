"""Which of a few-step student's steps loses the accuracy? On captions and seeds of a teacher bench store, the
student takes k of its T steps from the noise (no CFG), then the teacher finishes from the state reached with the
distillation's coupling sampler (guided DDIM from that timestep down through the coupling's timesteps below it,
`distill.finish_levels`): verifier accuracy for k = 0 (the teacher alone) to T (the student alone), with 95%
intervals clustered over distinct captions and each k's paired difference from the student alone. If the
student's states after T - 1 steps, finished by the teacher, pass about as often as the teacher's own images, its
states are sound and its last step is what fails.

    python benchmarks/turbo_handoff.py [--student shapes-turbo] [--limit 50] [--seeds 4] [--steps 4]
        [--json docs/regimes/turbo-handoff.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from turbo_quality import points, teacher_table

import stablenoise as sn
from stablenoise import ddim
from stablenoise.backends import shipped_models
from stablenoise.records import versions, write_json_atomic
from stablenoise.shapes import distill as D
from stablenoise.shapes.pipeline import ShapesPipeline, to_pil
from stablenoise.shapes.verifier import verify
from stablenoise.stats import mean_ci, paired_diff_ci


@torch.no_grad()
def handed_over(student: ShapesPipeline, teacher, captions: list[str], noise: torch.Tensor, grid: list[int],
                k: int, cfg: D.DistillConfig, alphas_cumprod: torch.Tensor, a_end: float) -> torch.Tensor:
    """The images after k student steps along ``grid`` and the teacher's finish from there (k = T: the student's
    own last step, to the level where every sampler of the schedule lands)."""
    model = D.student_eps(student, captions)
    x, _ = D.own_sampling(model, noise, grid, alphas_cumprod, torch.full((len(noise),), min(k, len(grid) - 1)))
    t = grid[min(k, len(grid) - 1)]
    if k == len(grid):
        return ddim.step(model(x, torch.full((len(x),), t), torch.arange(len(x))), x, float(alphas_cumprod[t]), a_end)
    levels = D.finish_levels(teacher.levels(cfg.teacher_steps), t, float(alphas_cumprod[t]))
    return ddim.to_data(teacher.denoiser(teacher.encode(captions, cfg.guidance), cfg.guidance), x, levels).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="shapes-turbo")
    ap.add_argument("--teacher-run", type=Path, default=Path("docs/regimes/ddim50"))
    ap.add_argument("--limit", type=int, default=50, help="the first N prompts of the store")
    ap.add_argument("--seeds", type=int, default=4, help="the first N seeds of each prompt")
    ap.add_argument("--steps", type=int, default=4, help="the student's T")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    table = teacher_table(args.teacher_run)
    cfg = D.DistillConfig(teacher=table.config.model, guidance=table.config.guidance)
    teacher = sn.load(cfg.teacher)
    student = ShapesPipeline.from_pretrained(str(shipped_models().get(args.student, Path(args.student))))
    alphas_cumprod = DDPMScheduler.from_config(student.scheduler.config).alphas_cumprod.double()
    _, a_end, grids = D.coupling_levels(teacher.ddim_config, D.DistillConfig(student_steps=(args.steps,)))
    grid = grids[0].tolist()
    n, k_seeds = args.limit, args.seeds
    prompts = [p for p in table.texts[:n] for _ in range(k_seeds)]
    noise = sn.noises_from_seeds([int(s) for s in table.seeds.seed[:n, :k_seeds].reshape(-1)], teacher.latent_shape)
    passed = {}
    for k in range(len(grid) + 1):
        images = []
        for b in range(0, len(prompts), args.batch_size):
            rows = slice(b, b + args.batch_size)
            x = handed_over(student, teacher, prompts[rows], noise[rows], grid, k, cfg, alphas_cumprod, a_end)
            images += to_pil(x)
        passed[k] = np.array([verify(im, p).passed for im, p in zip(images, prompts)], dtype=float)
    alone = passed[len(grid)]
    result = {"student": args.student, "teacher": cfg.teacher, "guidance": cfg.guidance,
              "teacher_steps": cfg.teacher_steps, "grid": grid, "prompts": n, "seeds_per_prompt": k_seeds,
              "run": str(args.teacher_run), "versions": versions(), "by_student_steps": {}}
    for k, v in passed.items():
        row = {"passed": mean_ci(v, rng=0, clusters=prompts),
               "minus_student_alone": paired_diff_ci(v, alone, rng=0, clusters=prompts)}
        result["by_student_steps"][str(k)] = row
        d = row["minus_student_alone"]
        who = "the student alone" if k == len(grid) else f"then the teacher from t={grid[k]}"
        print(f"{k} student steps, {who}: verifier {100 * v.mean():.1f}% "
              f"({points(d)} vs the student alone)")
    if args.json:
        write_json_atomic(args.json, result)


if __name__ == "__main__":
    torch.set_flush_denormal(True)
    main()
