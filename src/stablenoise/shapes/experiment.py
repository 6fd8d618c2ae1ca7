"""The paper's experiment on the shapes world, where image quality is checked exactly by the verifier.

For each held-out prompt, K seeded noises go through the DDIM round trip; the denoised half of the
round trip *is* the image the DDIM sampler would produce, so each seed's stability and its verifier
verdict come from one computation. Compared per tag, with 95% bootstrap intervals over prompts:
a random seed (the mean over all K seeds, i.e. the expected accuracy of a random draw), the most and
the least stable seed, the best of K by the verifier (an oracle upper bound), and noise optimization
from seed ``seeds[0]`` (compared with that same seed unoptimized).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from ..backends.base import Backend
from ..noise import noises_from_seeds
from ..optimization import optimize
from ..stability import conditioning, cosine, resolve, round_trip
from .verifier import verify


@dataclass
class ExperimentConfig:
    k: int = 100
    first_seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    inversion_guidance: float | None = None
    batch_size: int = 128  # samples (prompt x seed) per round trip
    optimize_prompts: int | None = None  # how many prompts (tag-balanced) get optimized; None: all
    iterations: int = 100
    lr: float = 100.0
    momentum: float = 0.5
    preserve_norm: bool = False  # keep each iterate on the Gaussian shell (not in the paper)
    optimize_batch_size: int = 32
    bootstrap: int = 1000
    bootstrap_seed: int = 0


@dataclass
class ExperimentData:
    prompts: list[str]
    tags: list[str]
    seeds: list[int]
    stability: np.ndarray  # [P, K]
    passed: np.ndarray  # [P, K] bool
    optimized_index: list[int] = field(default_factory=list)  # prompts that were optimized
    optimized_passed: list[bool] = field(default_factory=list)
    optimized_stability: list[float] = field(default_factory=list)
    optimized_start_stability: list[float] = field(default_factory=list)
    optimized_norm: list[float] = field(default_factory=list)  # |noise| / sqrt(d); Gaussian noise: ~1


class Progress:
    """Partial results of a long run, saved atomically to an .npz so that an interrupted run resumes
    where it stopped. ``key`` identifies the run; a file with another key is ignored."""

    def __init__(self, path: str | Path | None, key: str):
        self.path, self.key, self.arrays = (Path(path) if path else None), key, {}
        if self.path and self.path.exists():
            with np.load(self.path) as f:
                if str(f["key"]) == key:
                    self.arrays = {k: f[k] for k in f.files if k != "key"}

    def save(self, **arrays) -> None:
        self.arrays.update(arrays)
        if self.path:
            tmp = self.path.with_name(self.path.name + ".tmp.npz")
            np.savez(tmp, key=np.array(self.key), **self.arrays)
            os.replace(tmp, self.path)


def score_and_verify(backend: Backend, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance: float,
                     inversion_guidance: float, batch_size: int, progress: bool = True,
                     state: Progress | None = None):
    """Stability and verifier verdict of every (prompt, seed), batched across prompts."""
    state = state or Progress(None, "")
    pairs = [(p, s) for p in range(len(prompts)) for s in range(len(seeds))]
    stab = state.arrays.get("stability", np.zeros((len(prompts), len(seeds)), dtype=np.float64))
    passed = state.arrays.get("passed", np.zeros((len(prompts), len(seeds)), dtype=bool))
    start = int(state.arrays.get("scored", 0))
    for i in tqdm(range(start, len(pairs), batch_size), desc="score+verify", unit="batch", disable=not progress,
                  initial=start // batch_size, total=-(-len(pairs) // batch_size)):
        chunk = pairs[i:i + batch_size]
        noise = noises_from_seeds([seeds[s] for _, s in chunk], backend.latent_shape).to(backend.device)
        with torch.no_grad():
            cond = conditioning(backend, [prompts[p] for p, _ in chunk], len(chunk),
                                max(guidance, inversion_guidance))
            z0, inv = round_trip(backend, cond, noise, steps, guidance, inversion_guidance)
            s = cosine(noise, inv).cpu().numpy()
        for (p, k), value, image in zip(chunk, s, backend.decode(z0)):
            stab[p, k] = value
            passed[p, k] = verify(image, prompts[p]).passed
        state.save(stability=stab, passed=passed, scored=np.array(i + len(chunk)))
    return stab, passed


def balanced_subset(tags: Sequence[str], n: int | None) -> list[int]:
    """n prompt indices taken round-robin over tags, in prompt order (all of them when n is None)."""
    if n is None or n >= len(tags):
        return list(range(len(tags)))
    rank, count = [], {}
    for t in tags:  # how many earlier prompts share this prompt's tag
        rank.append(count.get(t, 0))
        count[t] = rank[-1] + 1
    return sorted(sorted(range(len(tags)), key=lambda i: (rank[i], i))[:n])


def run(backend: Backend, prompts: Sequence[str], tags: Sequence[str], cfg: ExperimentConfig,
        progress: bool = True, log: Callable[[str], None] = print, state_path: str | Path | None = None) -> ExperimentData:
    """Run the experiment; with ``state_path``, partial results are kept there and a rerun resumes."""
    steps, guidance, inv = resolve(backend, cfg.steps, cfg.guidance, cfg.inversion_guidance)
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.k))
    key = hashlib.sha256(json.dumps([list(prompts), seeds, steps, guidance, inv, asdict(cfg),
                                     backend.describe()], default=str).encode()).hexdigest()
    state = Progress(state_path, key)
    stab, passed = score_and_verify(backend, prompts, seeds, steps, guidance, inv, cfg.batch_size, progress, state)
    data = ExperimentData(list(prompts), list(tags), seeds, stab, passed)
    if cfg.iterations > 0 and cfg.optimize_prompts != 0:
        data.optimized_index = balanced_subset(tags, cfg.optimize_prompts)
        # rows: passed, best stability, start stability, norm of the optimized noise / sqrt(d)
        done = state.arrays.get("opt", np.zeros((0, 4)))
        log(f"optimizing seed {seeds[0]} for {len(data.optimized_index)} prompts ({len(done)} done before)")
        for i in range(len(done), len(data.optimized_index), cfg.optimize_batch_size):
            idx = data.optimized_index[i:i + cfg.optimize_batch_size]
            start = noises_from_seeds([seeds[0]] * len(idx), backend.latent_shape)
            r = optimize(backend, [prompts[j] for j in idx], start, iterations=cfg.iterations, lr=cfg.lr,
                         momentum=cfg.momentum, steps=steps, guidance=guidance, inversion_guidance=inv,
                         checkpoint=False, preserve_norm=cfg.preserve_norm, progress=progress)
            with torch.no_grad():
                cond = conditioning(backend, [prompts[j] for j in idx], len(idx), guidance)
                images = backend.decode(backend.denoise(r.noise.to(backend.device), cond, steps, guidance))
            norms = (r.noise.flatten(1).norm(dim=1) / r.noise[0].numel() ** 0.5).tolist()
            rows = [[verify(im, prompts[j]).passed, b, h, n] for im, j, b, h, n in
                    zip(images, idx, r.best_stability, r.history[0], norms)]
            done = np.concatenate([done, np.array(rows, dtype=float).reshape(-1, 4)])
            state.save(opt=done)
        data.optimized_passed = [bool(x) for x in done[:, 0]]
        data.optimized_stability = done[:, 1].tolist()
        data.optimized_start_stability = done[:, 2].tolist()
        data.optimized_norm = done[:, 3].tolist()
    return data


# ----------------------------------------------------------------------------- statistics

def _ci(values_fn, n: int, b: int, rng: np.random.Generator) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    stats = np.array([values_fn(rng.integers(0, n, n)) for _ in range(b)])
    return (float(np.nanpercentile(stats, 2.5)), float(np.nanpercentile(stats, 97.5)))


def within_prompt_rank(stab: np.ndarray) -> np.ndarray:
    """Each seed's stability rank within its prompt, scaled to [0, 1] (1 = most stable)."""
    ranks = stab.argsort(axis=1).argsort(axis=1)
    return ranks / max(1, stab.shape[1] - 1)


def summarize(data: ExperimentData, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Accuracy of every arm with 95% bootstrap CIs over prompts, per tag and overall."""
    rng = np.random.default_rng(seed)
    stab, passed = data.stability, data.passed
    rows = np.arange(len(data.prompts))
    best, worst = stab.argmax(1), stab.argmin(1)
    per_prompt = {
        "random seed": passed.mean(1),
        "most stable seed": passed[rows, best].astype(float),
        "least stable seed": passed[rows, worst].astype(float),
        "oracle best of K": passed.any(1).astype(float),
        "seed 0 (optimization start)": passed[:, 0].astype(float),
    }
    opt_mask = np.zeros(len(rows), dtype=bool)
    opt_pass = np.full(len(rows), np.nan)
    if data.optimized_index:
        opt_mask[data.optimized_index] = True
        opt_pass[data.optimized_index] = np.array(data.optimized_passed, dtype=float)
    rank = within_prompt_rank(stab)
    tags = sorted(set(data.tags), key=data.tags.index)
    out = {"arms": {}, "spearman": {}, "deciles": {}, "stability": {}, "n_prompts": {}}
    for tag in ["all"] + tags:
        sel = np.array([tag == "all" or t == tag for t in data.tags])
        idx = rows[sel]
        out["n_prompts"][tag] = int(sel.sum())
        arms = {}
        for name, v in per_prompt.items():
            vv = v[idx]
            arms[name] = {"mean": float(vv.mean()), "ci": _ci(lambda r: vv[r].mean(), len(vv), bootstrap, rng)}
        diff = per_prompt["most stable seed"][idx] - per_prompt["random seed"][idx]
        arms["most stable - random"] = {"mean": float(diff.mean()),
                                        "ci": _ci(lambda r: diff[r].mean(), len(diff), bootstrap, rng)}
        oidx = idx[opt_mask[idx]]
        if len(oidx):
            o = opt_pass[oidx]
            d = o - per_prompt["seed 0 (optimization start)"][oidx]
            arms["optimized (from seed 0)"] = {"mean": float(o.mean()), "n": int(len(oidx)),
                                               "ci": _ci(lambda r: o[r].mean(), len(o), bootstrap, rng)}
            arms["optimized - seed 0"] = {"mean": float(d.mean()), "n": int(len(oidx)),
                                          "ci": _ci(lambda r: d[r].mean(), len(d), bootstrap, rng)}
        out["arms"][tag] = arms
        s, p, rk = stab[idx], passed[idx].astype(float), rank[idx]

        def rho(r, a=s, b=p):
            x, y = a[r].ravel(), b[r].ravel()
            return spearmanr(x, y).statistic if y.std() > 0 and x.std() > 0 else math.nan

        out["spearman"][tag] = {
            "pooled": {"rho": float(rho(np.arange(len(idx)))), "ci": _ci(rho, len(idx), bootstrap, rng)},
            "within_prompt": {"rho": float(rho(np.arange(len(idx)), rk, p)),
                              "ci": _ci(lambda r: rho(r, rk, p), len(idx), bootstrap, rng)},
        }
        dec = np.minimum((rk * 10).astype(int), 9)
        out["deciles"][tag] = []
        for d in range(10):
            m = dec == d

            def acc(r, m=m):
                mm, pp = m[r], p[r]
                return pp[mm].mean() if mm.any() else math.nan

            out["deciles"][tag].append({"decile": d + 1, "accuracy": float(p[m].mean()) if m.any() else math.nan,
                                        "ci": _ci(acc, len(idx), bootstrap, rng)})
        out["stability"][tag] = {"mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
                                 "max": float(s.max())}
    if data.optimized_index:
        out["optimization_stability"] = {
            "start_mean": float(np.mean(data.optimized_start_stability)),
            "optimized_mean": float(np.mean(data.optimized_stability)),
            "norm_ratio_mean": float(np.mean(data.optimized_norm)) if data.optimized_norm else math.nan}
    return out


def markdown(summary: dict, header: str = "") -> str:
    def fmt(a):
        lo, hi = a["ci"]
        return f"{100 * a['mean']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"

    tags = list(summary["arms"])
    arms = list(dict.fromkeys(a for t in tags for a in summary["arms"][t]))
    lines = [header, "", "Verifier accuracy in % with 95% bootstrap CI over prompts "
             "(differences in percentage points).", "",
             "| arm | " + " | ".join(f"{t} (n={summary['n_prompts'][t]})" for t in tags) + " |",
             "|---|" + "---|" * len(tags)]
    for arm in arms:
        lines.append(f"| {arm} | " + " | ".join(fmt(summary["arms"][t][arm]) if arm in summary["arms"][t] else "–"
                                              for t in tags) + " |")
    lines += ["", "Spearman correlation between stability and passing (pooled over all prompt-seed pairs, and "
              "within prompt: stability rank among the prompt's K seeds).", "",
              "| | " + " | ".join(tags) + " |", "|---|" + "---|" * len(tags)]
    for kind in ("pooled", "within_prompt"):
        cells = []
        for t in tags:
            r = summary["spearman"][t][kind]
            cells.append(f"{r['rho']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "Accuracy (%) by within-prompt stability decile (1 = least stable tenth of each prompt's seeds).",
              "", "| decile | " + " | ".join(tags) + " |", "|---|" + "---|" * len(tags)]
    for d in range(10):
        cells = []
        for t in tags:
            r = summary["deciles"][t][d]
            cells.append(f"{100 * r['accuracy']:.1f} [{100 * r['ci'][0]:.1f}, {100 * r['ci'][1]:.1f}]")
        lines.append(f"| {d + 1} | " + " | ".join(cells) + " |")
    if "optimization_stability" in summary:
        o = summary["optimization_stability"]
        lines += ["", f"Mean stability of the optimized prompts: {o['start_mean']:.4f} at the start, "
                      f"{o['optimized_mean']:.4f} after optimization. Mean norm of the optimized noise: "
                      f"{o.get('norm_ratio_mean', math.nan):.2f} x sqrt(d) (Gaussian noise: 1.00)."]
    return "\n".join(lines) + "\n"


def plots(data: ExperimentData, summary: dict, folder) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    s, p = data.stability.ravel(), data.passed.ravel()
    bins = np.linspace(s.min(), s.max(), 41)
    ax.hist(s[p], bins=bins, alpha=0.6, label="passes verifier")
    ax.hist(s[~p], bins=bins, alpha=0.6, label="fails verifier")
    ax.set(xlabel="inversion stability", ylabel="prompt-seed pairs", title="stability histogram")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "stability_hist.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for tag, rows in summary["deciles"].items():
        ax.plot(range(1, 11), [100 * r["accuracy"] for r in rows], marker="o" if tag == "all" else ".",
                lw=2.5 if tag == "all" else 1, label=tag)
    ax.set(xlabel="within-prompt stability decile (10 = most stable)", ylabel="verifier accuracy (%)",
           title="accuracy vs stability decile")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(folder / "accuracy_by_decile.png", dpi=120)
    plt.close(fig)
    return ["stability_hist.png", "accuracy_by_decile.png"]


def data_dict(data: ExperimentData) -> dict:
    d = asdict(data)
    d["stability"] = data.stability.tolist()
    d["passed"] = data.passed.astype(int).tolist()
    return d
