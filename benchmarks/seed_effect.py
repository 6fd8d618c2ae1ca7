"""Is inversion stability a property of the noise, or of the (prompt, noise) pair?

Scores the same K seeds under P distinct held-out captions of the shipped shapes model and reports
how much the seeds' stability ranking agrees across prompts.

    python benchmarks/seed_effect.py --prompts 12 --seeds 40 --steps 5
"""

import argparse

import numpy as np
import torch
from scipy.stats import spearmanr

from stablenoise import load, noises_from_seeds, stability
from stablenoise.shapes import world


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    backend = load("shapes")
    captions = list(dict.fromkeys(c for c, _ in world.prompts(20 * args.prompts, seed=5, split="heldout")))
    captions = captions[:args.prompts]
    noise = noises_from_seeds(range(args.seeds), backend.latent_shape)
    scores = np.stack([stability(backend, c, noise, steps=args.steps).numpy() for c in captions])  # [P, K]
    rho = [spearmanr(scores[i], scores[j]).statistic
           for i in range(len(captions)) for j in range(i + 1, len(captions))]
    print(f"{len(captions)} distinct held-out captions x seeds 0..{args.seeds - 1}, {args.steps} DDIM steps")
    print(f"Spearman between two captions' stability rankings of the same seeds: mean {np.mean(rho):.3f} "
          f"(min {np.min(rho):.3f}, max {np.max(rho):.3f})")
    print(f"share of stability variance explained by the seed alone: {scores.mean(0).var() / scores.var():.3f}")
    best = scores.argmax(1)
    print(f"most stable seed per caption: {best.tolist()} ({len(set(best.tolist()))} distinct)")


if __name__ == "__main__":
    main()
