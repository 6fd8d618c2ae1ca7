"""The paper's experiment on the shapes world, where image quality is checked exactly by the verifier.

For each held-out prompt, K seeded noises go through the DDIM round trip; the denoised half of the
round trip *is* the image the DDIM sampler would produce, so each seed's stability and its verifier
verdict come from one computation. Compared per tag, with 95% bootstrap intervals over prompts:
a random seed (the mean over all K seeds, i.e. the expected accuracy of a random draw), the most and
the least stable seed, the best of K by the verifier (an oracle upper bound), and noise optimization
(one arm per optimizer setting) from each prompt's first seed, compared with that seed unoptimized.

Every prompt gets its own K seeds (prompt i: ``first_seed + i*K`` onwards). Tags with few held-out
combinations repeat a caption many times; with shared seeds those repeats would be exact duplicates,
not independent samples, and the bootstrap intervals would be fake.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from ..backends.base import Backend
from ..errors import StablenoiseError
from ..generation import generate
from ..noise import noises_from_seeds
from ..optimization import optimize
from ..records import atomic_write
from ..stability import conditioning, cosine, resolve, round_trip
from .verifier import verify


@dataclass(frozen=True)
class OptimizerArm:
    """One optimizer setting compared in the experiment (paper defaults: lr 100, momentum 0.5)."""

    lr: float = 100.0
    momentum: float = 0.5
    preserve_norm: bool = False  # rescale each iterate to the Gaussian shell (not in the paper)

    @property
    def label(self) -> str:
        return f"lr {self.lr:g}, momentum {self.momentum:g}" + (", norm preserved" if self.preserve_norm else "")

    @classmethod
    def parse(cls, spec: str) -> "OptimizerArm":
        """``"lr=18.75,momentum=0.5,preserve_norm=1"``; unnamed settings keep the paper's defaults."""
        names = [f.name for f in fields(cls)]
        flags = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
        values = {}
        for item in filter(None, (x.strip() for x in spec.split(","))):
            key, _, value = (x.strip() for x in item.partition("="))
            key = key.replace("-", "_")
            if key not in names or not value:
                raise StablenoiseError(f"bad optimizer setting {item!r} in {spec!r}: use "
                                       f"{', '.join(k + '=VALUE' for k in names)}")
            if key == "preserve_norm":
                if value.lower() not in flags:
                    raise StablenoiseError(f"bad optimizer setting {item!r}: use preserve_norm=1 or 0")
                values[key] = flags[value.lower()]
                continue
            try:
                values[key] = float(value)
            except ValueError:
                raise StablenoiseError(f"bad optimizer setting {item!r}: {value!r} is not a number") from None
        arm = cls(**values)
        if not (arm.lr > 0 and math.isfinite(arm.lr)) or not 0 <= arm.momentum < 1:
            raise StablenoiseError(f"optimizer {spec!r}: need lr > 0 and 0 <= momentum < 1")
        return arm


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
    optimizers: tuple[OptimizerArm, ...] = (OptimizerArm(),)
    optimize_batch_size: int = 32
    bootstrap: int = 1000
    bootstrap_seed: int = 0


@dataclass
class ArmResult:
    """Noise optimization of one arm, for the prompts in ``ExperimentData.optimized_index``."""

    passed: list[bool]
    stability: list[float]  # of the returned (most stable) iterate
    start_stability: list[float]
    norm: list[float]  # |noise| / sqrt(d) of the returned iterate; Gaussian noise: ~1
    noise: np.ndarray | None = None  # [n, *latent] the returned iterates (kept in the state file, not the JSON)


@dataclass
class ExperimentData:
    prompts: list[str]
    tags: list[str]
    seeds: np.ndarray  # [P, K] int: each prompt's own seeds
    stability: np.ndarray  # [P, K]
    passed: np.ndarray  # [P, K] bool
    optimized_index: list[int] = field(default_factory=list)  # prompts that were optimized
    optimized: dict[str, ArmResult] = field(default_factory=dict)  # by arm label


def prompt_seeds(n_prompts: int, k: int, first_seed: int = 0) -> np.ndarray:
    """[P, K] seeds, disjoint across prompts: prompt i uses first_seed + i*k ... first_seed + i*k + k-1."""
    return first_seed + np.arange(n_prompts * k, dtype=np.int64).reshape(n_prompts, k)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, default=str, sort_keys=True).encode()).hexdigest()


class Progress:
    """Partial results of a long run, saved atomically to an .npz, so that an interrupted run resumes
    where it stopped and a rerun with another optimizer arm reuses the scores. ``key`` identifies the
    scored prompts, seeds and round trip; a file with another key is ignored."""

    def __init__(self, path: str | Path | None, key: str):
        self.path, self.key, self.arrays = (Path(path) if path else None), key, {}
        if self.path and self.path.exists():
            with np.load(self.path) as f:
                if str(f["key"]) == key:
                    self.arrays = {k: f[k] for k in f.files if k != "key"}

    def save(self, **arrays) -> None:
        self.arrays.update(arrays)
        if self.path:
            atomic_write(self.path, lambda tmp: np.savez(tmp, key=np.array(self.key), **self.arrays))


def score_and_verify(backend: Backend, prompts: Sequence[str], seeds: np.ndarray, steps: int, guidance: float,
                     inversion_guidance: float, batch_size: int, progress: bool = True,
                     state: Progress | None = None):
    """Stability and verifier verdict of every (prompt, seed), batched across prompts; seeds is [P, K]."""
    state = state or Progress(None, "")
    pairs = [(p, s) for p in range(len(prompts)) for s in range(seeds.shape[1])]
    stab = state.arrays.get("stability", np.zeros(seeds.shape, dtype=np.float64))
    passed = state.arrays.get("passed", np.zeros(seeds.shape, dtype=bool))
    start = int(state.arrays.get("scored", 0))
    for i in tqdm(range(start, len(pairs), batch_size), desc="score+verify", unit="batch", disable=not progress,
                  initial=start // batch_size, total=-(-len(pairs) // batch_size)):
        chunk = pairs[i:i + batch_size]
        noise = noises_from_seeds([seeds[p, k] for p, k in chunk], backend.latent_shape).to(backend.device)
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


def optimize_arm(backend: Backend, prompts: Sequence[str], seeds: Sequence[int], arm: OptimizerArm,
                 cfg: ExperimentConfig, steps: int, guidance: float, inversion_guidance: float,
                 state: Progress, progress: bool = True) -> ArmResult:
    """Optimize each prompt's seed with one arm's settings and verify the image of the result."""
    name = "opt_" + _digest([asdict(arm), cfg.iterations, list(prompts), list(map(int, seeds))])[:16]
    done = state.arrays.get(name, np.zeros((0, 4)))  # rows: passed, best stability, start stability, norm
    noises = state.arrays.get(name + "_noise", np.zeros((0, *backend.latent_shape), dtype=np.float32))
    for i in range(len(done), len(prompts), cfg.optimize_batch_size):
        batch, batch_seeds = list(prompts[i:i + cfg.optimize_batch_size]), seeds[i:i + cfg.optimize_batch_size]
        r = optimize(backend, batch, noises_from_seeds(batch_seeds, backend.latent_shape),
                     iterations=cfg.iterations, lr=arm.lr, momentum=arm.momentum, steps=steps, guidance=guidance,
                     inversion_guidance=inversion_guidance, checkpoint=False, preserve_norm=arm.preserve_norm,
                     progress=progress)
        images = generate(backend, batch, r.noise, steps, guidance, sampler="ddim")
        norms = (r.noise.flatten(1).norm(dim=1) / r.noise[0].numel() ** 0.5).tolist()
        rows = [[verify(im, p).passed, b, h, n] for im, p, b, h, n in
                zip(images, batch, r.best_stability, r.initial_stability, norms)]
        done = np.concatenate([done, np.array(rows, dtype=float).reshape(-1, 4)])
        noises = np.concatenate([noises, r.noise.float().numpy()])
        state.save(**{name: done, name + "_noise": noises})
    return ArmResult([bool(x) for x in done[:, 0]], done[:, 1].tolist(), done[:, 2].tolist(), done[:, 3].tolist(),
                     noises if len(noises) == len(done) else None)


def run(backend: Backend, prompts: Sequence[str], tags: Sequence[str], cfg: ExperimentConfig,
        progress: bool = True, log: Callable[[str], None] = print, state_path: str | Path | None = None) -> ExperimentData:
    """Run the experiment; with ``state_path``, partial results are kept there and a rerun resumes."""
    steps, guidance, inv = resolve(backend, cfg.steps, cfg.guidance, cfg.inversion_guidance)
    seeds = prompt_seeds(len(prompts), cfg.k, cfg.first_seed)
    state = Progress(state_path, _digest([list(prompts), seeds.tolist(), steps, guidance, inv, backend.describe()]))
    stab, passed = score_and_verify(backend, prompts, seeds, steps, guidance, inv, cfg.batch_size, progress, state)
    data = ExperimentData(list(prompts), list(tags), seeds, stab, passed)
    if cfg.iterations > 0 and cfg.optimize_prompts != 0:
        data.optimized_index = balanced_subset(tags, cfg.optimize_prompts)
        chosen = [prompts[j] for j in data.optimized_index]
        for arm in cfg.optimizers:
            log(f"optimizing the first seed of {len(chosen)} prompts: {arm.label}, {cfg.iterations} iterations")
            data.optimized[arm.label] = optimize_arm(backend, chosen, seeds[data.optimized_index, 0], arm, cfg,
                                                     steps, guidance, inv, state, progress)
    return data


def chosen_noises(backend: Backend, data: ExperimentData) -> dict[str, tuple[list[int], torch.Tensor]]:
    """The noise each arm ends up with, as (prompt indices, noises): the seed choices for every prompt,
    the optimized noises for the optimized prompts."""
    rows = range(len(data.prompts))
    picks = {"least stable seed": data.stability.argmin(1), FIRST: np.zeros(len(rows), dtype=int),
             "most stable seed": data.stability.argmax(1)}
    out = {name: (list(rows), noises_from_seeds(data.seeds[list(rows), k], backend.latent_shape))
           for name, k in picks.items()}
    for label, res in data.optimized.items():
        if res.noise is not None:
            out[f"optimized ({label})"] = (list(data.optimized_index), torch.from_numpy(res.noise))
    return out


def _short(arm: str) -> str:
    """A figure label: 'most stable seed' -> 'most stable', 'optimized (lr 100, momentum 0.5,
    norm preserved)' -> 'opt lr100 +norm'."""
    if arm.startswith("optimized ("):
        lr = arm.split("lr ")[1].split(",")[0]
        return f"opt lr{lr}" + (" +norm" if "norm preserved" in arm else "")
    return arm.replace(" seed", "").replace(" (optimization start)", "")


def diagnose(backend: Backend, data: ExperimentData, steps: int, guidance: float, batch_size: int = 128,
             examples_per_tag: int = 2) -> tuple[dict, "Image.Image"]:
    """What the images of each arm contain (objects the verifier finds, blank images), and a figure of
    example prompts: one row per prompt, one column per arm."""
    from ..outputs import side_by_side

    stats, tiles = {}, {}
    shown = {j for t in dict.fromkeys(data.tags) for j in
             [i for i in data.optimized_index or range(len(data.prompts)) if data.tags[i] == t][:examples_per_tag]}
    for name, (idx, noise) in chosen_noises(backend, data).items():
        counts, passes = [], []
        for i in range(0, len(idx), batch_size):
            batch = [data.prompts[j] for j in idx[i:i + batch_size]]
            images = generate(backend, batch, noise[i:i + batch_size], steps, guidance, sampler="ddim")
            for j, image, prompt in zip(idx[i:i + batch_size], images, batch):
                v = verify(image, prompt)
                counts.append(len(v.detections))
                passes.append(v.passed)
                if j in shown:
                    tiles.setdefault(j, []).append((image, f"{_short(name)}: {'pass' if v.passed else 'fail'}"))
        counts = np.array(counts)
        stats[name] = {"n": int(len(counts)), "objects_mean": float(counts.mean()),
                       "blank": float((counts == 0).mean()), "passed": float(np.mean(passes))}
    rows = [side_by_side(*zip(*tiles[j])) for j in sorted(tiles)]
    width = max(r.width for r in rows)
    figure = Image.new("RGB", (width, sum(r.height + 14 for r in rows)), "white")
    draw, y = ImageDraw.Draw(figure), 0
    for j, row in zip(sorted(tiles), rows):
        draw.text((3, y + 1), f"{data.tags[j]}: {data.prompts[j]}", fill="black")
        figure.paste(row, (0, y + 14))
        y += row.height + 14
    return stats, figure


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


FIRST = "first seed (optimization start)"


def _mean_ci(v: np.ndarray, bootstrap: int, rng: np.random.Generator) -> dict:
    return {"mean": float(v.mean()), "n": int(len(v)), "ci": _ci(lambda r: v[r].mean(), len(v), bootstrap, rng)}


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
        FIRST: passed[:, 0].astype(float),
    }
    optimized = {}  # arm label -> per-prompt pass (NaN where not optimized)
    for label, res in data.optimized.items():
        optimized[label] = np.full(len(rows), np.nan)
        optimized[label][data.optimized_index] = np.array(res.passed, dtype=float)
    rank = within_prompt_rank(stab)
    tags = sorted(set(data.tags), key=data.tags.index)
    out = {"arms": {}, "spearman": {}, "deciles": {}, "stability": {}, "n_prompts": {}, "n_captions": {}}
    for tag in ["all"] + tags:
        sel = np.array([tag == "all" or t == tag for t in data.tags])
        idx = rows[sel]
        out["n_prompts"][tag] = int(sel.sum())
        out["n_captions"][tag] = len({data.prompts[i] for i in idx})
        arms = {}
        for name, v in per_prompt.items():
            arms[name] = _mean_ci(v[idx], bootstrap, rng)
        arms["most stable - random"] = _mean_ci(per_prompt["most stable seed"][idx] - per_prompt["random seed"][idx],
                                                bootstrap, rng)
        for label, o in optimized.items():
            oidx = idx[~np.isnan(o[idx])]
            if len(oidx):
                arms[f"optimized ({label})"] = _mean_ci(o[oidx], bootstrap, rng)
                arms[f"optimized ({label}) - first seed"] = _mean_ci(o[oidx] - per_prompt[FIRST][oidx], bootstrap, rng)
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
    out["optimization"] = {label: {"n": len(r.passed), "start_stability_mean": float(np.mean(r.start_stability)),
                                   "optimized_stability_mean": float(np.mean(r.stability)),
                                   "norm_ratio_mean": float(np.mean(r.norm))}
                           for label, r in data.optimized.items()}
    return out


def markdown(summary: dict, header: str = "") -> str:
    def fmt(a):
        lo, hi = a["ci"]
        return f"{100 * a['mean']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"

    tags = list(summary["arms"])
    arms = list(dict.fromkeys(a for t in tags for a in summary["arms"][t]))
    lines = [header, "", "Verifier accuracy in % with 95% bootstrap CI over prompts "
             "(differences in percentage points).", "",
             "| arm | " + " | ".join(f"{t} (n={summary['n_prompts'][t]}; {summary['n_captions'][t]} distinct)"
                                    for t in tags) + " |",
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
    if "objects" in summary:
        lines += ["", "What the images contain (all prompts; optimized arms: the optimized prompts): objects the "
                      "verifier finds per image, and the share of blank images.", "",
                  "| arm | images | objects per image | blank |", "|---|---|---|---|"]
        lines += [f"| {name} | {o['n']} | {o['objects_mean']:.2f} | {100 * o['blank']:.1f}% |"
                  for name, o in summary["objects"].items()]
    for label, o in summary.get("optimization", {}).items():
        lines += ["", f"Optimization ({label}, {o['n']} prompts): mean stability {o['start_stability_mean']:.4f} "
                      f"at the start, {o['optimized_stability_mean']:.4f} after; mean norm of the optimized "
                      f"noise {o['norm_ratio_mean']:.2f} x sqrt(d) (Gaussian noise: 1.00)."]
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
    for arm in d["optimized"].values():
        arm.pop("noise")
    d["seeds"] = data.seeds.tolist()
    d["stability"] = data.stability.tolist()
    d["passed"] = data.passed.astype(int).tolist()
    return d
