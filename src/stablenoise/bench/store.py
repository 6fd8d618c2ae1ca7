"""The bench's SQLite results store (schema in ``schema.py``): resumable, crash-safe, one file per run.

Rows of one batch commit together, after their images are on disk, so a killed run leaves either a
whole batch or none of it; the UNIQUE key makes a rerun skip what is done and never duplicate it.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from pathlib import Path
from typing import Iterable

from ..errors import StablenoiseError
from ..records import now, strict_json, versions
from .schema import DDL, SCHEMA_VERSION

STORE_NAME = "bench.sqlite"


def _finite(x):
    return float(x) if x is not None and math.isfinite(float(x)) else None


def canonical(obj) -> str:
    return json.dumps(strict_json(obj), sort_keys=True, separators=(",", ":"))


class Store:
    def __init__(self, run_dir: str | Path, create: bool = True):
        self.root = Path(run_dir)
        self.path = self.root / STORE_NAME
        if not self.path.exists():
            if not create:
                raise StablenoiseError(f"no bench results in {self.root} (no {STORE_NAME})")
            if self.root.exists() and not self.root.is_dir():
                raise StablenoiseError(f"--out {self.root} is a file, not a folder")
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            version = self._schema_version()
        except sqlite3.DatabaseError as e:
            raise StablenoiseError(f"{self.path} is not a bench store ({e})") from None
        if version is None:
            if not create:
                raise StablenoiseError(f"{self.path} is not a bench store (no schema version)")
            with self.db:
                self.db.executescript(DDL)
                self.db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)",
                                    [("schema_version", str(SCHEMA_VERSION)), ("created", now()),
                                     ("stablenoise", versions()["stablenoise"])])
        elif version != str(SCHEMA_VERSION):
            raise StablenoiseError(f"{self.path} has schema version {version}; this stablenoise reads version "
                                   f"{SCHEMA_VERSION}: use another --out")

    def _schema_version(self) -> str | None:
        has_meta = self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return None
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.db.close()

    def config_id(self, config: dict, prompts: list[tuple[str, str]]) -> int:
        """The id of a run config (inserting it and its prompts the first time it is seen)."""
        text = canonical(config)
        digest = hashlib.sha256(text.encode()).hexdigest()
        row = self.db.execute("SELECT id FROM configs WHERE digest=?", (digest,)).fetchone()
        if row:
            return row[0]
        with self.db:
            cur = self.db.execute(
                "INSERT INTO configs (digest, prompt_set, model, steps, guidance, inversion_guidance, k, first_seed, "
                "json, versions, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (digest, config["prompt_set"], config["model"], config["steps"], config["guidance"],
                 config["inversion_guidance"], config["k"], config["first_seed"], text,
                 canonical(versions()), now()))
            cid = cur.lastrowid
            self.db.executemany("INSERT INTO prompts (config_id, idx, text, tag) VALUES (?,?,?,?)",
                                [(cid, i, text_, tag) for i, (text_, tag) in enumerate(prompts)])
        return cid

    def done(self, config_id: int, method: str) -> set[tuple[int, int]]:
        """(prompt index, seed) of the rows of ``method`` already stored."""
        rows = self.db.execute("SELECT prompt_idx, seed FROM samples WHERE config_id=? AND method=?",
                               (config_id, method))
        return {(p, s) for p, s in rows}

    def stability(self, config_id: int, prompt_idx: int, seed: int, method: str = "seed") -> float | None:
        row = self.db.execute("SELECT stability FROM samples WHERE config_id=? AND prompt_idx=? AND method=? "
                              "AND seed=?", (config_id, prompt_idx, method, seed)).fetchone()
        return row[0] if row else None

    def add(self, config_id: int, rows: Iterable[dict]) -> None:
        """Insert a batch of samples with their scores in one transaction. Each row: prompt_idx, method, seed,
        seed_rank, stability, image_path, noise_path, unet_calls, image_calls, reward_calls, seconds, extra,
        scores (name -> value)."""
        stamp = now()
        with self.db:
            for r in rows:
                cur = self.db.execute(
                    "INSERT INTO samples (config_id, prompt_idx, method, seed, seed_rank, stability, image_path, "
                    "noise_path, unet_calls, image_calls, reward_calls, seconds, extra, created) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (config_id, r["prompt_idx"], r["method"], int(r["seed"]), r["seed_rank"],
                     _finite(r["stability"]), r["image_path"], r.get("noise_path"), int(r["unet_calls"]),
                     int(r["image_calls"]), int(r.get("reward_calls", 0)), float(r["seconds"]),
                     canonical(r.get("extra", {})), stamp))
                self.db.executemany("INSERT INTO scores (sample_id, name, value) VALUES (?,?,?)",
                                    [(cur.lastrowid, name, _finite(v)) for name, v in r["scores"].items()])

    def rows(self, config_id: int | None = None) -> list[dict]:
        """Every sample with its scores (for tests and the report)."""
        self.db.row_factory = sqlite3.Row
        try:
            where, args = ("WHERE config_id=?", (config_id,)) if config_id is not None else ("", ())
            samples = [dict(r) for r in self.db.execute(f"SELECT * FROM samples {where} ORDER BY id", args)]
            scores = {}
            for r in self.db.execute(f"SELECT sample_id, name, value FROM scores WHERE sample_id IN "
                                     f"(SELECT id FROM samples {where})", args):
                scores.setdefault(r["sample_id"], {})[r["name"]] = r["value"]
        finally:
            self.db.row_factory = None
        for s in samples:
            s["scores"] = scores.get(s["id"], {})
        return samples

    def missing_scores(self, config_id: int, names: list[str], method: str | None = None
                       ) -> dict[str, list[tuple[int, int, str, int]]]:
        """For each score name, the samples of a config (of one method, if given) that lack it:
        (sample id, prompt index, image path, seed)."""
        out = {}
        only = " AND method=?" if method else ""
        for name in names:
            rows = self.db.execute(
                "SELECT id, prompt_idx, image_path, seed FROM samples WHERE config_id=?" + only + " AND id NOT IN "
                "(SELECT sample_id FROM scores WHERE name=?) ORDER BY id",
                (config_id, *([method] if method else []), name)).fetchall()
            if rows:
                out[name] = [tuple(r) for r in rows]
        return out

    def add_scores(self, scores: list[tuple[int, str, float]], extra: dict[int, dict] | None = None) -> None:
        """Add scores to stored samples (and merge ``extra`` into their details), in one transaction."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO scores (sample_id, name, value) VALUES (?,?,?)",
                                [(sid, name, _finite(v)) for sid, name, v in scores])
            for sid, more in (extra or {}).items():
                old = json.loads(self.db.execute("SELECT extra FROM samples WHERE id=?", (sid,)).fetchone()[0])
                self.db.execute("UPDATE samples SET extra=? WHERE id=?", (canonical({**old, **more}), sid))

    def note_command(self, command: str) -> None:
        """Keep every command that wrote to this store (the report shows them)."""
        row = self.db.execute("SELECT value FROM meta WHERE key='commands'").fetchone()
        commands = json.loads(row[0]) if row else []
        if command not in commands:
            commands.append(command)
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('commands', ?)", (json.dumps(commands),))
