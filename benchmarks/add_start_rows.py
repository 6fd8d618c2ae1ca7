"""Add start rows to a bench store made before they existed, in place, without optimizing again.

    python benchmarks/add_start_rows.py RUN [--grid-tiles OLD_REPORT_FILES]

A rerun of the bench command adds them by itself when the config still matches; this is for stores whose
config no longer does because ``backend.describe()`` gained fields since (``attention``, ``compiled``).
The model must be the one the store names with the same description otherwise: the script refuses if any
field the store recorded differs. Each optimizing method runs for zero iterations (its start noise, scored
by the same code as a new bench: ``run.method_rows``).

``--grid-tiles``: a previous report's ``_files`` folder. Its grid tiles are the run's images enlarged by an
integer factor with nearest neighbours, so they give back the exact images of the prompts they show; they
are written to the run folder where the store's image paths point, when the images are not there (a store
kept without its images), so that a new report can show the same grid.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
from pathlib import Path

import numpy as np
from PIL import Image

import stablenoise as sn
from stablenoise.bench.methods import derive_methods, grid_methods, parse_methods
from stablenoise.bench.results import load_results
from stablenoise.bench.run import ConfigPlan, Context, _method_units, method_rows, prompt_seeds
from stablenoise.bench.schema import SEED_METHOD, STABILITY_PREFIX, START_SUFFIX
from stablenoise.bench.store import Store
from stablenoise.prompts import load_prompts
from stablenoise.rewards import load_reward


def restore_tiles(run: Path, tiles: Path) -> int:
    """Write the images behind a report's grid tiles (config-C-grid-P-J.png) where the store expects them."""
    restored = 0
    for table in load_results(run).tables:
        methods = derive_methods(table)
        columns = grid_methods(methods)  # the report's grid columns
        position = {idx: i for i, idx in enumerate(table.prompt_idx)}
        for tile in tiles.glob(f"config-{table.config.id}-grid-*-*.png"):
            p, j = map(int, re.fullmatch(r"config-\d+-grid-(\d+)-(\d+)\.png", tile.name).groups())
            rel = methods[columns[j]].image[position[p]]
            target = run / rel
            if rel is None or target.exists():
                continue
            big = np.asarray(Image.open(tile).convert("RGB"))
            factor = big.shape[0] // 32  # the shapes world's 32x32 images
            small = big[::factor, ::factor]
            assert small.shape == (32, 32, 3) and np.array_equal(small.repeat(factor, 0).repeat(factor, 1), big)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(small).save(target)
            restored += 1
    return restored


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--grid-tiles", type=Path, default=None)
    ap.add_argument("--batch-size", type=int, default=10)
    args = ap.parse_args()
    if args.grid_tiles:
        print(f"restored {restore_tiles(args.run, args.grid_tiles)} images from the grid tiles")
    store = Store(args.run, create=False)
    db = sqlite3.connect(f"file:{(args.run / 'bench.sqlite').resolve()}?mode=ro", uri=True)
    for cid, text in db.execute("SELECT id, json FROM configs ORDER BY id").fetchall():
        config = json.loads(text)
        labels = [m for (m,) in db.execute("SELECT DISTINCT method FROM samples WHERE config_id=?", (cid,))
                  if m != SEED_METHOD and not m.endswith(START_SUFFIX)]
        if not labels:
            continue
        backend = sn.load(config["model"])
        now = backend.describe()
        changed = {k for k in config["backend"] if config["backend"][k] != now.get(k)}
        if changed:
            raise SystemExit(f"config {cid}: the model's description differs in {sorted(changed)}")
        prompt_set = load_prompts(config["prompt_set"])
        if prompt_set.digest() != config["prompt_set_digest"]:
            raise SystemExit(f"config {cid}: prompt set {config['prompt_set']} changed since the run")
        names = [n for (n,) in db.execute("SELECT DISTINCT name FROM scores") if not n.startswith(STABILITY_PREFIX)]
        rewards = {n: load_reward(n) for n in names}
        prompts = list(prompt_set.prompts)
        seeds = prompt_seeds(len(prompts), config["k"], config["first_seed"])
        for method in parse_methods(labels):
            assert method.label in labels, (method.label, labels)
            n_prompts = db.execute("SELECT MAX(prompt_idx) + 1 FROM samples WHERE config_id=? AND method=?",
                                   (cid, method.label)).fetchone()[0]
            optimizing = {name: rewards.get(name) or load_reward(name)
                          for name in method.entry.looks_at(method)}
            ctx = Context(backend, prompts, seeds, rewards, (method,), optimizing, args.run, False)
            plan = ConfigPlan(cid, "", config["steps"], config["guidance"], config["inversion_guidance"],
                              config.get("noise_norm", "keep"), None, args.batch_size)
            for unit in _method_units(store, ctx, 0, plan, 0, n_prompts, args.batch_size, print):
                store.add(cid, method_rows(ctx, plan, method, *unit.work[3:]))
    store.close()


if __name__ == "__main__":
    main()
