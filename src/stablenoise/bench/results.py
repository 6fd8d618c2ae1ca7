"""Reading a bench results store into arrays.

Each run config becomes a ``ConfigTable``: its seed rows as (prompt, seed rank) arrays and its optimizing
methods' rows as per-prompt arrays, NaN wherever a row or score is missing (a run still in progress, a
NULL stability). The compared methods are derived from these arrays by ``methods.derive_methods``.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StablenoiseError
from ..loading import first_line
from .schema import SEED_METHOD, STABILITY_PREFIX, START_SUFFIX
from .store import STORE_NAME, Store



@dataclass(frozen=True)
class Config:
    id: int
    prompt_set: str
    model: str
    steps: int
    guidance: float
    inversion_guidance: float
    k: int
    first_seed: int
    settings: dict  # configs.json: the full config
    versions: dict

    @property
    def noise_norm(self) -> str:
        """"keep", or "shell": every seed's noise was rescaled to norm sqrt(d) (absent from earlier stores)."""
        return self.settings.get("noise_norm", "keep")

    @property
    def latent_shape(self) -> tuple[int, ...] | None:
        shape = self.settings.get("backend", {}).get("latent_shape")
        return tuple(shape) if shape else None

    def label(self) -> str:
        return (f"{self.prompt_set} · {self.model} · {self.steps} steps · guidance {self.guidance:g} · "
                f"inversion guidance {self.inversion_guidance:g} · K={self.k}"
                + (" · noise on the shell" if self.noise_norm == "shell" else ""))


@dataclass
class Rows:
    """Samples as arrays: shape (prompts, seeds) for the seed rows, (prompts,) for an optimizing method."""
    seed: np.ndarray
    stability: np.ndarray
    scores: dict[str, np.ndarray]  # rewards and stability variants
    unet_calls: np.ndarray
    image_calls: np.ndarray
    reward_calls: np.ndarray
    seconds: np.ndarray
    variant_calls: np.ndarray  # extra["variant_calls"]: what the stability variants' inversions cost
    image: np.ndarray  # object: path relative to the run folder, or None


@dataclass
class ConfigTable:
    config: Config
    prompt_idx: list[int]
    texts: list[str]
    tags: list[str]
    seeds: Rows  # (P, K); column = seed_rank
    optimized: dict[str, Rows]  # method label -> (P,) rows
    starts: dict[str, Rows]  # method label -> (P,) rows of the noise it started from (stores since start rows)
    rewards: list[str]
    variants: list[str]  # score names starting with STABILITY_PREFIX

    @property
    def n_prompts(self) -> int:
        return len(self.prompt_idx)


@dataclass
class Results:
    run_dir: Path
    meta: dict
    tables: list[ConfigTable]


def _json(text) -> dict:
    try:
        value = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _float(x) -> float:
    return np.nan if x is None else float(x)


def load_results(run_dir) -> Results:
    """Every config of a run folder's store, as ``ConfigTable`` arrays. Read-only: safe while a run writes."""
    run = Path(run_dir)
    path = run / STORE_NAME
    if not path.is_file():
        raise StablenoiseError(f"{run}: no bench results store ({STORE_NAME})")
    try:
        store = Store.reference(path)  # checked first: damage, schema version, non-numbers
        try:
            data = store.snapshot()
        finally:
            store.close()
    except sqlite3.DatabaseError as e:
        raise StablenoiseError(f"{path}: not a readable bench store ({first_line(e)})") from None
    return _tables(data, run, path)


def _tables(data: dict, run: Path, path: Path) -> Results:
    samples = data["samples"]
    if not samples:
        raise StablenoiseError(f"{path}: the store has no samples yet")
    scores: dict[int, dict[str, float]] = {}
    for sample_id, name, value in data["scores"]:
        scores.setdefault(sample_id, {})[name] = _float(value)
    prompts: dict[int, dict[int, tuple[str, str]]] = {}
    for cid, idx, text, tag in data["prompts"]:
        prompts.setdefault(cid, {})[idx] = (text, tag or "")
    by_config: dict[int, list] = {}
    for row in samples:
        by_config.setdefault(row[1], []).append(row)
    tables = []
    for r in data["configs"]:
        if r[0] in by_config:  # a config whose first batch has not committed yet has nothing to show
            config = Config(*r[:8], settings=_json(r[8]), versions=_json(r[9]))
            tables.append(_table(config, prompts.get(config.id, {}), by_config[config.id], scores))
    return Results(run, data["meta"], tables)


def _empty_rows(shape) -> Rows:
    nan = np.full(shape, np.nan)
    return Rows(seed=np.full(shape, -1, dtype=np.int64), stability=nan.copy(), scores={},
                unet_calls=nan.copy(), image_calls=nan.copy(), reward_calls=nan.copy(), seconds=nan.copy(),
                variant_calls=nan.copy(), image=np.full(shape, None, dtype=object))


def _put(rows: Rows, at, sample, scores: dict[str, float]) -> None:
    _, _, _, _, seed, _, stability, image, unet, image_calls, reward_calls, seconds, extra = sample
    rows.seed[at], rows.stability[at], rows.image[at] = seed, _float(stability), image
    rows.unet_calls[at], rows.image_calls[at], rows.reward_calls[at] = unet, image_calls, reward_calls
    rows.seconds[at] = seconds
    rows.variant_calls[at] = float(_json(extra).get("variant_calls", 0) or 0)
    for name, value in scores.items():
        rows.scores.setdefault(name, np.full(rows.stability.shape, np.nan))[at] = value


def _table(config: Config, prompts: dict, samples: list, scores: dict) -> ConfigTable:
    prompt_idx = sorted(set(prompts) | {s[2] for s in samples})
    position = {idx: i for i, idx in enumerate(prompt_idx)}
    seed_rows = [s for s in samples if s[3] == SEED_METHOD]
    k = max([config.k] + [s[5] + 1 for s in seed_rows])
    seeds = _empty_rows((len(prompt_idx), k))
    optimized: dict[str, Rows] = {}
    starts: dict[str, Rows] = {}
    for s in samples:
        if s[3] == SEED_METHOD:
            _put(seeds, (position[s[2]], s[5]), s, scores.get(s[0], {}))
        else:
            kind, label = (starts, s[3][:-len(START_SUFFIX)]) if s[3].endswith(START_SUFFIX) else (optimized, s[3])
            rows = kind.setdefault(label, _empty_rows(len(prompt_idx)))
            _put(rows, position[s[2]], s, scores.get(s[0], {}))
    every = [seeds, *optimized.values(), *starts.values()]
    names = dict.fromkeys(n for rows in every for n in rows.scores)
    for rows in every:  # every reward everywhere, NaN where not scored
        for name in names:
            rows.scores.setdefault(name, np.full(rows.stability.shape, np.nan))
    return ConfigTable(
        config=config, prompt_idx=prompt_idx,
        texts=[prompts.get(i, ("", ""))[0] for i in prompt_idx], tags=[prompts.get(i, ("", ""))[1] for i in prompt_idx],
        seeds=seeds, optimized=optimized, starts=starts,
        rewards=sorted(n for n in names if not n.startswith(STABILITY_PREFIX)),
        variants=sorted(n for n in names if n.startswith(STABILITY_PREFIX)))


def seed_norms(table: ConfigTable) -> np.ndarray | None:
    """|eps| of every seed row's noise, (prompts, K), as the run drew it (on the shell for noise_norm="shell");
    NaN where a row is missing; None when the store does not record the latent shape."""
    from ..noise import noises_from_seeds

    shape = table.config.latent_shape
    if shape is None:
        return None
    norms = np.full(table.seeds.seed.shape, np.nan)
    for (p, r), seed in np.ndenumerate(table.seeds.seed):
        if seed >= 0:
            norms[p, r] = float(noises_from_seeds([int(seed)], shape, table.config.noise_norm).double().norm())
    return norms
