"""How far the pipeline's own sampler is from the scored DDIM image, from the same noise.

    python benchmarks/sampler_gap.py [--seeds 8]

Two models: the shipped shapes model (its pipeline samples with DDIM, same config) and a tiny random SDXL
whose pipeline ships EulerAncestral with trailing spacing (as SDXL-turbo does). For each: mean absolute
pixel difference (0-255) between `generate(sampler="pipeline")` and the default `generate()` (the scored
image), the share of pixels that differ by more than 8 levels, and whether the pipeline sampler reproduces
its own image from the same noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import stablenoise as sn


def gap(backend, prompt, seeds, steps):
    noise = sn.noises_from_seeds(seeds, backend.latent_shape)
    ddim = np.stack([np.asarray(im, dtype=float) for im in sn.generate(backend, prompt, noise, steps=steps)])
    pipe = [np.stack([np.asarray(im, dtype=float) for im in sn.generate(backend, prompt, noise, steps=steps,
                                                                        sampler="pipeline")]) for _ in range(2)]
    diff = np.abs(pipe[0] - ddim)
    return {"mean_abs_pixel_difference": float(diff.mean()), "share_pixels_over_8": float((diff > 8).mean()),
            "pipeline_reproducible": bool(np.array_equal(pipe[0], pipe[1])), "steps": steps, "seeds": len(seeds)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=8)
    args = p.parse_args()
    torch.set_flush_denormal(True)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from diffusers import EulerAncestralDiscreteScheduler
    from tiny import tiny_sdxl

    seeds = list(range(args.seeds))
    out = {"shapes (DDIMScheduler pipeline)": gap(sn.load("shapes", device="cpu"), "a red circle left of a blue square",
                                                  seeds, 10)}
    pipe = tiny_sdxl(seed=3)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    out["tiny random SDXL (EulerAncestral, trailing)"] = gap(sn.from_pipeline(pipe, name="tiny/sdxl-turbo"),
                                                             "a cat", seeds, 4)
    out["versions"] = {"torch": torch.__version__, "stablenoise": sn.__version__}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
