"""Does the learned shapes reward (shapes-clip) agree with the exact verifier on GENERATED images?

Generates K seeds for P held-out captions with the shipped model and reports, per caption, whether
the reward ranks the images that pass the verifier above those that fail (AUC), and how often the
reward's best seed passes vs a random seed.

    python benchmarks/shapes_reward.py --prompts 30 --seeds 16
"""

import argparse

import numpy as np
import torch

from stablenoise import generate, load, load_reward, noises_from_seeds
from stablenoise.shapes import world
from stablenoise.shapes.verifier import verify


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float(((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=16)
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    backend, reward = load("shapes"), load_reward("shapes-clip", device="cpu")
    captions = list(dict.fromkeys(c for c, _ in world.prompts(20 * args.prompts, seed=7, split="heldout")))
    captions = captions[:args.prompts]
    noise = noises_from_seeds(range(args.seeds), backend.latent_shape)
    aucs, best_pass, mean_pass = [], [], []
    for caption in captions:
        images = generate(backend, caption, noise)
        passed = np.array([verify(im, caption).passed for im in images])
        scores = reward(images, caption).numpy()
        if 0 < passed.sum() < len(passed):
            aucs.append(auc(scores[passed], scores[~passed]))
        best_pass.append(passed[scores.argmax()])
        mean_pass.append(passed.mean())
    print(f"{len(captions)} held-out captions x {args.seeds} seeds, the model's default sampler")
    print(f"within-caption AUC of shapes-clip for verifier pass: {np.mean(aucs):.3f} over {len(aucs)} captions "
          f"with both outcomes")
    print(f"verifier pass rate: random seed {np.mean(mean_pass):.3f}, "
          f"best seed by shapes-clip {np.mean(best_pass):.3f}")


if __name__ == "__main__":
    main()
