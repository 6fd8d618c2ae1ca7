"""How grainy are a distillation's targets? For a `stablenoise distill-shapes --finish` run folder: the
high-frequency share (as the bench measures it, on 8-bit images) of the teacher's images from the pairs' noises,
and of the teacher's finishes from the starting student's own states, per state timestep, over the same pairs
(the finish pairs). A student regressed onto its targets is, at best, as grainy as they are.

    python benchmarks/finish_targets.py runs/shapes-turbo-k --json docs/regimes/finish-targets.json
    python benchmarks/finish_targets.py runs/shapes-turbo-k --first-shards 2   # the pairs of a 128-pair run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from stability_proxies import high_frequency_share, image_pixels

from stablenoise.records import versions, write_json_atomic
from stablenoise.shapes.pipeline import to_pil
from stablenoise.stats import mean_ci, paired_diff_ci


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)


def shares(images: torch.Tensor) -> np.ndarray:
    return np.array([high_frequency_share(image_pixels(im)) for im in to_pil(images)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a distill-shapes --out folder with pairs/ and finishes/")
    ap.add_argument("--first-shards", type=positive_int, default=None, help="only the first N finish shards (to compare "
                    "two runs on the same pairs: a shard's pairs depend on its index alone)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    finishes = sorted((args.run / "finishes").glob("shard-*.safetensors"))[:args.first_shards]
    if not finishes:
        raise SystemExit(f"{args.run / 'finishes'} holds no finish shards")
    missing = [p.name for p in finishes if not (args.run / "pairs" / p.name).exists()]
    if missing:
        raise SystemExit(f"{args.run / 'pairs'} lacks the pair shards of finishes {', '.join(missing)}")
    with safe_open(finishes[0], "pt") as f:
        settings = json.loads(f.metadata()["settings"])
    # a finish shard is named after the pair shard whose pairs it finishes
    noise_images = [load_file(args.run / "pairs" / p.name)["image"] for p in finishes]
    from_noise, first = torch.cat(noise_images), np.cumsum([0] + [len(x) for x in noise_images])
    parts = [load_file(p) for p in finishes]
    t = torch.cat([d["timestep"] for d in parts])
    images = torch.cat([d["image"] for d in parts])
    pair = torch.cat([d["row"] + int(first[i]) for i, d in enumerate(parts)])  # each finish's row in from_noise
    base = shares(from_noise)
    out = {"run": str(args.run), "finish_shards": [p.name for p in finishes], "settings": settings, "versions": versions(),
           "high_frequency_share": {"teacher from the noise": {**mean_ci(base, rng=0), "images": len(base)}}}
    print(f"teacher from the noise: {base.mean():.4f} ({len(base)} images)")
    for step in sorted(set(t.tolist()), reverse=True):
        here = t == step
        v = shares(images[here])
        diff = paired_diff_ci(v, base[pair[here].numpy()], rng=0)  # each finish against its own pair's image
        out["high_frequency_share"][f"finish from the student's state at t = {step}"] = {
            **mean_ci(v, rng=0), "images": len(v), "minus_teacher_from_the_noise": diff}
        print(f"finish from the student's state at t = {step}: {v.mean():.4f} ({len(v)} images), minus the "
              f"teacher's from the noise {diff['mean']:+.4f} [{diff['lo']:+.4f}, {diff['hi']:+.4f}]")
    if args.json:
        write_json_atomic(args.json, out)


if __name__ == "__main__":
    main()
