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
    aucs, best_pass, mean_pass, all_scores, all_passed = [], [], [], [], []
    for caption in captions:
        images = generate(backend, caption, noise)
        passed = np.array([verify(im, caption).passed for im in images])
        scores = reward(images, caption).numpy()
        if 0 < passed.sum() < len(passed):
            aucs.append(auc(scores[passed], scores[~passed]))
        best_pass.append(passed[scores.argmax()])
        all_scores.append(scores)
        all_passed.append(passed)
        mean_pass.append(passed.mean())
    print(f"{len(captions)} held-out captions x {args.seeds} seeds, the model's default sampler")
    print(f"within-caption AUC of shapes-clip for verifier pass: {np.mean(aucs):.3f} over {len(aucs)} captions "
          f"with both outcomes")
    print(f"verifier pass rate: random seed {np.mean(mean_pass):.3f}, "
          f"best seed by shapes-clip {np.mean(best_pass):.3f}")
    # Pooled over every generated image: the reward as a pass/fail classifier with one threshold.
    scores, passed = np.concatenate(all_scores), np.concatenate(all_passed)
    thresholds = np.unique(scores)
    accuracy = [((scores >= t) == passed).mean() for t in thresholds]
    best = int(np.argmax(accuracy))
    print(f"pooled AUC {auc(scores[passed], scores[~passed]):.3f} over {len(scores)} images "
          f"({passed.mean():.3f} pass); accuracy at the best threshold ({thresholds[best]:.3f}): "
          f"{accuracy[best]:.3f} (always-fail baseline {1 - passed.mean():.3f}); "
          f"fooled (reward above that threshold, verifier fails): {((scores >= thresholds[best]) & ~passed).mean():.3f}")


if __name__ == "__main__":
    main()
