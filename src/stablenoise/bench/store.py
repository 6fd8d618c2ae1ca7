"""The bench's SQLite results store (schema in ``schema.py``): resumable, crash-safe, one file per run.

Rows of one batch commit together, after their images are on disk, so a killed run leaves either a
whole batch or none of it; the UNIQUE key makes a rerun skip what is done and never duplicate it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
from pathlib import Path
from typing import Iterable

from ..distributed import hold
from ..errors import StablenoiseError
from ..loading import first_line
from ..records import now, strict_json, versions
from .schema import DDL, SCHEMA_VERSION

STORE_NAME = "bench.sqlite"
# Held (a POSIX lock) by the one process writing to a run folder; the kernel frees it when that process dies.
LOCK_NAME = ".bench.lock"
TABLES = ("meta", "configs", "prompts", "samples", "scores")
NUMERIC = {"configs": ("steps", "guidance", "inversion_guidance", "k", "first_seed"), "prompts": ("idx",),
           "samples": ("config_id", "prompt_idx", "seed", "seed_rank", "stability", "unet_calls", "image_calls",
                       "reward_calls", "seconds"),
           "scores": ("sample_id", "value")}


def _finite(x):
    return float(x) if x is not None and math.isfinite(float(x)) else None


def canonical(obj) -> str:
    return json.dumps(strict_json(obj), sort_keys=True, separators=(",", ":"))


def config_digest(config: dict) -> str:
    """sha256 of a config's canonical JSON: how a store (and a shard) names a config."""
    return hashlib.sha256(canonical(config).encode()).hexdigest()


def inside(root: Path, rel: str) -> Path:
    """``root/rel``, refused when it resolves outside ``root`` (a symlink or ``..`` on the way): a run writes
    and reads only its own folder."""
    path = root / rel
    if not path.resolve().is_relative_to(root.resolve()):
        raise StablenoiseError(f"{path} leads outside {root} (a symlink?): remove it or use another --out")
    return path


def check_run_folder(root: Path, held: bool = False) -> None:
    """Refuse, before anything is written, a folder a bench must not write to: one another bench holds, one
    holding a store that does not check out, a non-empty folder that holds no bench run (the user's files), or
    a place we cannot write. ``held``: this process holds the folder already (do not probe its lock: closing a
    second handle would release it)."""
    store = inside(root, STORE_NAME)
    if root.exists() and not root.is_dir():
        raise StablenoiseError(f"--out {root} is a file, not a folder")
    if not held and (root / LOCK_NAME).is_file():
        _hold(root).close()  # first: a running bench's store may be half-made; it refuses the next bench now
    if store.exists():
        check_store(store)
        for folder, dirs, files in os.walk(root):  # refused before the store gains a row, not at the first image
            for name in dirs + files:
                if os.path.islink(os.path.join(folder, name)):
                    inside(root, os.path.relpath(os.path.join(folder, name), root))
    elif root.is_dir() and any(p.name != LOCK_NAME for p in root.iterdir()):
        raise StablenoiseError(f"--out {root} is not empty and holds no bench run: use another --out")
    parent = root
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise StablenoiseError(f"cannot write to {root}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StablenoiseError(f"cannot write to {root}: permission denied")


def _hold(root: Path):
    """Hold the run folder for this process (two benches into one store would collide on its rows)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        path = inside(root, LOCK_NAME)
    except OSError as e:
        raise StablenoiseError(f"cannot write to {root}: {e.strerror or e}") from None
    return hold(path, f"another bench is writing to {root}: wait for it to finish")


def check_store(path: Path) -> None:
    """Check a store file without writing to it (see :func:`check_db`)."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            check_db(db, path)
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise StablenoiseError(f"{path}: not a readable bench store ({first_line(e)})") from None


def check_db(db: sqlite3.Connection, path: Path) -> bool:
    """Refuse a store that is damaged, of another schema version, missing a table, or holding a non-number
    where numbers belong; False for a database with no tables yet (a store being created)."""
    problems = [r[0] for r in db.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise StablenoiseError(f"{path}: the store is damaged ({first_line(problems[0])})")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return False
    if "meta" not in tables:
        raise StablenoiseError(f"{path}: not a bench store (no meta table)")
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    version = row[0] if row else None
    if version != str(SCHEMA_VERSION):
        raise StablenoiseError(f"{path}: schema version {version}, but this stablenoise reads version "
                               f"{SCHEMA_VERSION}: use another --out")
    missing = [t for t in TABLES if t not in tables]
    if missing:
        raise StablenoiseError(f"{path}: not a whole bench store (no {', '.join(missing)} table)")
    for table, columns in NUMERIC.items():
        where = " OR ".join(f"typeof({c}) NOT IN ('integer', 'real', 'null')" for c in columns)
        bad = db.execute(f"SELECT rowid, {', '.join(columns)} FROM {table} WHERE {where} LIMIT 1").fetchone()
        if bad:
            column = next(c for c, v in zip(columns, bad[1:]) if not isinstance(v, (int, float, type(None))))
            raise StablenoiseError(f"{path}: {table}.{column} holds {bad[1 + columns.index(column)]!r:.40} "
                                   f"(row {bad[0]}), not a number")
    return True


class Store:
    """A run folder's store. ``create=True`` opens it for writing: the folder is checked first
    (:func:`check_run_folder`) and held by one writer at a time; ``create=False`` opens an existing store."""

    def __init__(self, run_dir: str | Path, create: bool = True):
        self.root = Path(run_dir)
        self.path = inside(self.root, STORE_NAME)
        self._lock = None
        if create:
            if self.root.exists() and not self.root.is_dir():
                raise StablenoiseError(f"--out {self.root} is a file, not a folder")
            self._lock = _hold(self.root)  # held before the store is looked at: another bench may be making it
            try:
                check_run_folder(self.root, held=True)
            except StablenoiseError:
                self._lock.close()
                raise
        elif not self.path.exists():
            raise StablenoiseError(f"no bench results in {self.root} (no {STORE_NAME})")
        else:
            check_store(self.path)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            version = self._schema_version()
            if version is None and not create:
                raise StablenoiseError(f"{self.path} is not a bench store (no schema version)")
            if version is None:
                with self.db:
                    self.db.executescript(DDL)
                    self.db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)",
                                        [("schema_version", str(SCHEMA_VERSION)), ("created", now()),
                                         ("stablenoise", versions()["stablenoise"])])
        except StablenoiseError:
            self.close()
            raise
        except sqlite3.DatabaseError as e:
            self.close()
            raise StablenoiseError(f"{self.path} is not a bench store ({first_line(e)})") from None
        except OSError as e:
            self.close()
            raise StablenoiseError(f"cannot write to {self.root}: {e.strerror or e}") from None

    def _schema_version(self) -> str | None:
        has_meta = self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return None
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return row[0] if row else None

    def close(self) -> None:
        if getattr(self, "db", None) is not None:
            self.db.close()
        if self._lock is not None:
            self._lock.close()  # releases the folder
            self._lock = None

    def file(self, rel: str) -> Path:
        """Where a file of this run goes (see :func:`inside`)."""
        return inside(self.root, rel)

    def config_id(self, config: dict, prompts: list[tuple[str, str]]) -> int:
        """The id of a run config (inserting it and its prompts the first time it is seen)."""
        text, digest = canonical(config), config_digest(config)
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
                self._insert(config_id, r, stamp)

    def merge(self, shards: Iterable[tuple[dict, Path]]) -> int:
        """Insert the rows of finished units' shards (``{"config": digest, "rows": [...]}``, with the file each
        came from) in one transaction, skipping rows already stored (a shard merged before, or a unit two
        processes both finished: the same rows). Returns the rows added."""
        stamp, added = now(), 0
        digests = dict(self.db.execute("SELECT digest, id FROM configs"))
        with self.db:
            for payload, path in shards:
                rows = payload.get("rows") if isinstance(payload, dict) else None
                cid = digests.get(payload.get("config")) if isinstance(payload, dict) else None
                if cid is None or not isinstance(rows, list):
                    raise StablenoiseError(f"{path} is not a shard of this run (no config of the store, or no "
                                           f"rows): move it away")
                try:
                    added += sum(self._insert(cid, r, stamp, skip_stored=True) for r in rows)
                except (KeyError, TypeError, ValueError, AttributeError):
                    raise StablenoiseError(f"{path} is not a shard of this run (a malformed row): move it "
                                           "away") from None
        return added

    def _insert(self, config_id: int, r: dict, stamp: str, skip_stored: bool = False) -> bool:
        cur = self.db.execute(
            f"INSERT {'OR IGNORE ' if skip_stored else ''}INTO samples (config_id, prompt_idx, method, seed, "
            "seed_rank, stability, image_path, noise_path, unet_calls, image_calls, reward_calls, seconds, extra, "
            "created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (config_id, int(r["prompt_idx"]), str(r["method"]), int(r["seed"]), int(r["seed_rank"]),
             _finite(r["stability"]), str(r["image_path"]), r.get("noise_path"), int(r["unet_calls"]),
             int(r["image_calls"]), int(r.get("reward_calls", 0)), float(r["seconds"]),
             canonical(r.get("extra", {})), stamp))
        if cur.rowcount == 0:
            return False  # stored already (skip_stored)
        self.db.executemany("INSERT INTO scores (sample_id, name, value) VALUES (?,?,?)",
                            [(cur.lastrowid, str(name), _finite(v)) for name, v in r["scores"].items()])
        return True

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

    # --- a finished run read as a reference (perf compares its seed bank with a bench run's selection) -------------
    @classmethod
    def reference(cls, path: str | Path) -> "Store":
        """A store file opened read-only by its own path (any name), checked first (:func:`check_store`)."""
        path = Path(path)
        if not path.is_file():
            raise StablenoiseError(f"bench database not found: {path}")
        check_store(path)
        store = cls.__new__(cls)
        store.root, store.path, store._lock = path.parent, path, None
        store.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        return store

    def snapshot(self) -> dict:
        """Every table a report reads, as plain rows (``results.load_results`` shapes them into arrays).

        Returns:
            ``meta`` (key -> value), ``samples`` (rows by id: id, config_id, prompt_idx, method, seed, seed_rank,
            stability, image_path, unet_calls, image_calls, reward_calls, seconds, extra), ``scores``
            ((sample_id, name, value) rows), ``prompts`` ((config_id, idx, text, tag) rows) and ``configs`` (rows
            by id: id, prompt_set, model, steps, guidance, inversion_guidance, k, first_seed, json, versions).

        Raises:
            StablenoiseError: the database has no tables yet (not a bench store).
        """
        if not check_db(self.db, self.path):
            raise StablenoiseError(f"{self.path}: not a bench store (no tables)")
        q = self.db.execute
        return {"meta": dict(q("SELECT key, value FROM meta")),
                "samples": q("SELECT id, config_id, prompt_idx, method, seed, seed_rank, stability, image_path, "
                             "unet_calls, image_calls, reward_calls, seconds, extra FROM samples ORDER BY id").fetchall(),
                "scores": q("SELECT sample_id, name, value FROM scores").fetchall(),
                "prompts": q("SELECT config_id, idx, text, tag FROM prompts").fetchall(),
                "configs": q("SELECT id, prompt_set, model, steps, guidance, inversion_guidance, k, first_seed, json, "
                             "versions FROM configs ORDER BY id").fetchall()}

    def config_with(self, steps: int, guidance: float, inversion_guidance: float) -> tuple[int, int] | None:
        """(id, K) of the first config run with these round-trip settings, or None."""
        return self.db.execute("SELECT id, k FROM configs WHERE steps=? AND guidance=? AND inversion_guidance=? "
                               "ORDER BY id", (steps, guidance, inversion_guidance)).fetchone()

    def prompt_texts(self, config_id: int) -> dict[int, str]:
        """Each prompt index of a config and its text."""
        return dict(self.db.execute("SELECT idx, text FROM prompts WHERE config_id=?", (config_id,)).fetchall())

    def seed_scores(self, config_id: int, prompt_idx: int, name: str, method: str = "seed"
                    ) -> list[tuple[float | None, float | None]]:
        """(stability, score ``name``) of each row of ``method`` (the seed rows) of a prompt that has that score."""
        return self.db.execute("SELECT s.stability, c.value FROM samples s JOIN scores c ON c.sample_id=s.id "
                               "WHERE s.config_id=? AND s.prompt_idx=? AND s.method=? AND c.name=? ORDER BY s.id",
                               (config_id, prompt_idx, method, name)).fetchall()
