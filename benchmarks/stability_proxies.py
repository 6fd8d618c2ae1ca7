"""What does inversion stability rank seeds by? On a pixel-space model (the shapes models) the image is
z0 itself, so a bench run's stored seeds and images give, per seed: cos(noise, z0) (how much of the noise
survives into the image) and the image's high-frequency energy (the share of its spectrum above half the
Nyquist frequency). Prints the within-prompt Spearman of stability with each, per config, with 95%
bootstrap intervals over prompts, and writes JSON.

    python benchmarks/stability_proxies.py RUN [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from stablenoise.bench.results import load_results
from stablenoise.noise import noise_from_seed
from stablenoise.records import strict_json, write_json_atomic
from stablenoise.shapes.distill import high_band
from stablenoise.stats import within_prompt_spearman


def image_pixels(image: Image.Image) -> np.ndarray:
    """An 8-bit image as H x W x RGB floats in [-1, 1], the model's pixel scale."""
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 127.5 - 1.0


def high_frequency_share(pixels: np.ndarray) -> float:
    """Share of the (mean-removed) spectral energy above half the Nyquist frequency (distill.high_band, the band
    a student's loss can weight), over channels."""
    x = pixels - pixels.mean(axis=(0, 1), keepdims=True)
    power = np.abs(np.fft.fft2(x, axes=(0, 1))) ** 2
    high = high_band(*x.shape[:2]).numpy()[..., None]
    total = power.sum()
    return float((power * high).sum() / total) if total > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = load_results(args.run)
    out = []
    for t in results.tables:
        seeds = t.seeds
        cos_z0 = np.full(seeds.stability.shape, np.nan)
        hf = np.full(seeds.stability.shape, np.nan)
        for (p, k), path in np.ndenumerate(seeds.image):
            if path is None:
                continue
            pixels = image_pixels(Image.open(args.run / path))
            noise = noise_from_seed(int(seeds.seed[p, k]), (pixels.shape[2], *pixels.shape[:2])).double().numpy()
            z0 = pixels.transpose(2, 0, 1)
            if z0.shape != noise.shape:
                raise SystemExit("the images are not the latents: this analysis needs a pixel-space model")
            cos_z0[p, k] = float((noise * z0).sum() / (np.linalg.norm(noise) * np.linalg.norm(z0) + 1e-12))
            hf[p, k] = high_frequency_share(pixels)
        c = t.config
        row = {"config": c.id, "model": c.model, "steps": c.steps, "guidance": c.guidance, "k": c.k,
               "prompts": t.n_prompts,
               "spearman_stability_cos_noise_z0": within_prompt_spearman(seeds.stability, cos_z0, rng=0),
               "spearman_stability_high_frequency": within_prompt_spearman(seeds.stability, hf, rng=0),
               "mean_cos_noise_z0": float(np.nanmean(cos_z0)), "mean_high_frequency_share": float(np.nanmean(hf))}
        out.append(row)
        a, b = row["spearman_stability_cos_noise_z0"], row["spearman_stability_high_frequency"]
        print(f"config {c.id} ({c.model}, {c.steps} steps, guidance {c.guidance:g}, K={c.k}, {t.n_prompts} prompts): "
              f"rho(stability, cos(noise, z0)) = {a['mean']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}]; "
              f"rho(stability, high-frequency share) = {b['mean']:.3f} [{b['lo']:.3f}, {b['hi']:.3f}]")
    if args.json:
        write_json_atomic(args.json, {"run": str(args.run), "configs": out})


if __name__ == "__main__":
    main()
