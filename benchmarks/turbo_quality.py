"""Are a few-step student's images as good as its teacher's converged ones? On the captions and seeds of a
teacher bench store (default: docs/regimes/ddim50, the shipped DDIM model at 50 steps, the noise as drawn),
generate the student's image of every (caption, seed) at each step count and compare, with the teacher's stored
verifier verdicts: verifier accuracy, the paired difference student - teacher (95% intervals clustered over
distinct captions), the image's high-frequency share (benchmarks/stability_proxies.py's definition; the
teacher's images are regenerated for it, and their verdicts must agree with the store's), and what the verifier
found in the images (each shape's share of the objects, the commonest failures). Writes JSON.

    python benchmarks/turbo_quality.py [--student shapes-turbo] [--teacher-run docs/regimes/ddim50]
        [--steps 1,2,4] [--json docs/regimes/turbo-quality.json]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import click
import numpy as np
import torch
from stability_proxies import high_frequency_share, image_pixels

import stablenoise as sn
from stablenoise.batching import map_batches
from stablenoise.bench.results import load_results
from stablenoise.cli_common import number_list
from stablenoise.errors import StablenoiseError
from stablenoise.records import write_json_atomic
from stablenoise.shapes.verifier import verify
from stablenoise.stats import interval_text, mean_ci, paired_diff_ci


def judged_images(backend, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int
                  ) -> tuple[dict, list]:
    """Verifier verdicts and high-frequency shares of each (prompt, seed)'s image, in order, and the verdicts."""
    def run(items):
        noise = sn.noises_from_seeds([s for _, s in items], backend.latent_shape)
        return sn.generate(backend, [p for p, _ in items], noise, steps=steps, guidance=guidance)

    images = map_batches(run, list(zip(prompts, seeds)), batch)
    verdicts = [verify(im, p) for im, p in zip(images, prompts)]
    return {"passed": np.array([v.passed for v in verdicts], dtype=float),
            "high_frequency_share": np.array([high_frequency_share(image_pixels(im)) for im in images])}, verdicts


def what_it_drew(verdicts: list) -> dict:
    """What the verifier found: objects per image, each shape's share of them, and the commonest failures (the
    verifier's reason, by count). Where a student draws squares and triangles as circles, it shows here."""
    shapes = Counter(d.shape for v in verdicts for d in v.detections)
    n = sum(shapes.values())
    return {"objects_per_image": n / len(verdicts), "shape_share": {k: shapes[k] / n for k in sorted(shapes)},
            "failures": dict(Counter(v.reason for v in verdicts if not v.passed).most_common(10))}


def points(d: dict) -> str:
    """A difference of shares with its interval, in percentage points: "+1.2 [-0.3, +2.8]"."""
    return interval_text(d, 100, sign="+", bound_sign="+")


def shape_mix(drawn: dict) -> str:
    return "shapes drawn " + ", ".join(f"{k} {v:.2f}" for k, v in drawn["shape_share"].items())


def teacher_table(run: Path):
    """The bench table of the noise as drawn (the first config whose noise_norm is keep)."""
    tables = [t for t in load_results(run).tables if t.config.noise_norm == "keep"]
    if not tables:
        raise SystemExit(f"{run} has no config with the noise as drawn")
    return tables[0]


def summary(values: np.ndarray, clusters: list[str]) -> dict:
    """Mean with its 95% interval, resampling distinct captions."""
    return mean_ci(values, rng=0, clusters=clusters)


def compare(student: dict, teacher: dict, clusters: list[str]) -> dict:
    out = {k: summary(v, clusters) for k, v in student.items()}
    for k in student:
        out[f"{k}_minus_teacher"] = paired_diff_ci(student[k], teacher[k], rng=0, clusters=clusters)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="shapes-turbo")
    ap.add_argument("--teacher-run", type=Path, default=Path("docs/regimes/ddim50"))
    ap.add_argument("--steps", default="1,2,4")
    ap.add_argument("--guidance", default="1", help="the student's CFG (1: none; shapes-turbo's own default is 1.5)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="the first N prompts of the store only")
    ap.add_argument("--teacher-seeds", type=int, default=None,
                    help="regenerate the teacher's images of only the first N seeds of each prompt (its verdicts "
                         "come from the store for all; its high-frequency share from these)")
    ap.add_argument("--coupling-steps", type=int, default=None,
                    help="also judge the teacher at this many steps on the regenerated subset (the distillation's "
                         "coupling, when it is not the stored run's step count)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    try:  # the CLI's own list parser: finite numbers, at least 1 step and a scale >= 0
        step_counts = number_list(int, 1)(None, None, args.steps)
        scales = number_list(float, 0)(None, None, args.guidance)
    except click.BadParameter as e:
        raise SystemExit(f"error: {e.message}") from None
    if len(scales) != 1:
        raise SystemExit(f"error: --guidance takes one scale, not {args.guidance!r} (turbo_screen.py takes several)")
    args.guidance = scales[0]
    try:  # before the teacher's images: a bad name fails in a second
        student = sn.load(args.student)
    except StablenoiseError as e:
        raise SystemExit(f"error: {e}") from None
    table = teacher_table(args.teacher_run)
    c = table.config
    n, k = args.limit or len(table.texts), table.seeds.seed.shape[1]
    prompts = [p for p in table.texts[:n] for _ in range(k)]
    seeds = [int(s) for s in table.seeds.seed[:n].reshape(-1)]
    captions = prompts  # clusters: a distinct caption is one cluster, whichever prompts repeat it
    stored = table.seeds.scores["shapes-verifier"][:n].reshape(-1) > 0.5
    sub = np.arange(len(seeds)).reshape(-1, k)[:, :args.teacher_seeds or k].reshape(-1)
    regenerated, drawn = judged_images(sn.load(c.model), [prompts[i] for i in sub], [seeds[i] for i in sub], c.steps,
                                       c.guidance, args.batch_size)
    agree = int((regenerated["passed"].astype(bool) == stored[sub]).sum())
    teacher = {"passed": stored.astype(float)}
    hf = regenerated["high_frequency_share"]
    result = {"teacher": {"model": c.model, "steps": c.steps, "guidance": c.guidance, "run": str(args.teacher_run),
                          "images": len(seeds), "regenerated": len(sub), "verdicts_reproduced": agree,
                          "passed": summary(teacher["passed"], captions),
                          "high_frequency_share": summary(hf, [captions[i] for i in sub]),
                          "drawn": what_it_drew(drawn)},
              "student": {"model": args.student, "guidance": args.guidance, "by_steps": {}}}
    if args.coupling_steps:
        coupling, _ = judged_images(sn.load(c.model), [prompts[i] for i in sub], [seeds[i] for i in sub],
                                    args.coupling_steps, c.guidance, args.batch_size)
        sub_captions = [captions[i] for i in sub]
        result["coupling"] = {"steps": args.coupling_steps,
                              **compare(coupling, {"passed": stored[sub].astype(float), "high_frequency_share": hf},
                                        sub_captions)}
        print(f"teacher at {args.coupling_steps} steps on the regenerated images: verifier "
              f"{100 * coupling['passed'].mean():.1f}% ({c.steps} steps: {100 * stored[sub].mean():.1f}%), high-frequency "
              f"share {coupling['high_frequency_share'].mean():.4f}")
    for steps in step_counts:
        judged, drawn = judged_images(student, prompts, seeds, steps, args.guidance, args.batch_size)
        row = compare({"passed": judged["passed"]}, teacher, captions)
        row["high_frequency_share"] = summary(judged["high_frequency_share"], captions)
        row["high_frequency_share_minus_teacher"] = paired_diff_ci(judged["high_frequency_share"][sub], hf, rng=0,
                                                                   clusters=[captions[i] for i in sub])
        row["drawn"] = what_it_drew(drawn)
        result["student"]["by_steps"][str(steps)] = row
        d = row["passed_minus_teacher"]
        print(f"{args.student} at {steps} steps: verifier {100 * row['passed']['mean']:.1f}% "
              f"({points(d)} vs the teacher), "
              f"high-frequency share {row['high_frequency_share']['mean']:.4f}, {shape_mix(row['drawn'])}")
    print(f"teacher {c.model} at {c.steps} steps, guidance {c.guidance:g}: verifier "
          f"{100 * stored.mean():.1f}% over {len(seeds)} images ({len(set(captions))} captions), high-frequency share "
          f"{hf.mean():.4f} ({len(sub)} regenerated images, verdicts reproduced {agree}/{len(sub)}), "
          f"{shape_mix(result['teacher']['drawn'])}")
    if args.json:
        write_json_atomic(args.json, result)


if __name__ == "__main__":
    torch.set_flush_denormal(True)
    main()
