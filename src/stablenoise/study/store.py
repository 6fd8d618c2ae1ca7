"""A study's own SQLite file (never the bench store): its pairs, each with both sides' method, image and
scores and the side shown on the left, and its votes, each with its rater, time and the order shown.

The file lives in the run folder (RUN/study.sqlite, RUN/study-NAME.sqlite), whose images it names by their
paths relative to the folder. The server opens one connection per request in WAL mode, so raters voting at
once wait on SQLite's lock rather than lose a vote; a vote for a pair the rater already judged is refused by
the UNIQUE constraint.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import StablenoiseError

STUDY_VERSION = 1
CHOICES = ("left", "right", "tie", "bad")  # "bad": both bad
NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")
RATER = re.compile(r"[A-Za-z0-9_.-]{1,64}")

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE pairs (
    id INTEGER PRIMARY KEY,
    comparison TEXT NOT NULL,      -- "A vs B", the --pair it came from
    config_id INTEGER NOT NULL,
    prompt_idx INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    a_method TEXT NOT NULL, b_method TEXT NOT NULL,
    a_image TEXT NOT NULL, b_image TEXT NOT NULL,   -- relative to the run folder
    a_scores TEXT NOT NULL, b_scores TEXT NOT NULL, -- JSON {stability, reward: value} of the shown image
    left_is_a INTEGER NOT NULL CHECK (left_is_a IN (0, 1))
);
CREATE TABLE votes (
    id INTEGER PRIMARY KEY,
    pair_id INTEGER NOT NULL REFERENCES pairs(id),
    rater TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie', 'bad')),
    left_method TEXT NOT NULL, right_method TEXT NOT NULL,
    time TEXT NOT NULL,
    UNIQUE (pair_id, rater)
);
"""


@dataclass(frozen=True)
class Pair:
    id: int
    comparison: str
    config_id: int
    prompt_idx: int
    prompt: str
    a_method: str
    b_method: str
    a_image: str
    b_image: str
    a_scores: dict
    b_scores: dict
    left_is_a: bool

    def side(self, side: str) -> tuple[str, str]:
        """(method, image) shown on ``side`` ("left" or "right")."""
        a = (side == "left") == self.left_is_a
        return (self.a_method, self.a_image) if a else (self.b_method, self.b_image)


class VoteRefused(Exception):
    """A vote the store will not take: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_rater(rater) -> str:
    """A rater id is shown back and stored: a short plain token."""
    if not isinstance(rater, str) or not RATER.fullmatch(rater):
        raise VoteRefused(400, "rater: 1 to 64 letters, digits, '.', '_' or '-'")
    return rater


def study_path(target: Path) -> Path:
    """A study file given as itself or as its run folder (RUN/study.sqlite)."""
    target = Path(target)
    return target / "study.sqlite" if target.is_dir() else target


def studies(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    return sorted(p for p in [run_dir / "study.sqlite", *run_dir.glob("study-*.sqlite")] if p.is_file())


def create(path: Path, meta: dict, pairs: list[dict]) -> None:
    """Write a new study file at ``path`` (through a temporary file: a failed create leaves nothing)."""
    from ..records import atomic_write

    if path.exists() or path.is_symlink():
        raise StablenoiseError(f"{path} already exists: give another --name, or delete it to start over")

    def write(tmp: Path) -> None:
        tmp.unlink(missing_ok=True)
        db = sqlite3.connect(tmp)
        try:
            db.executescript(SCHEMA)
            db.executemany("INSERT INTO meta VALUES (?, ?)",
                           [(k, json.dumps(v)) for k, v in {"study_version": STUDY_VERSION, **meta}.items()])
            db.executemany("INSERT INTO pairs (comparison, config_id, prompt_idx, prompt, a_method, b_method, "
                           "a_image, b_image, a_scores, b_scores, left_is_a) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                           [(p["comparison"], p["config_id"], p["prompt_idx"], p["prompt"], p["a_method"],
                             p["b_method"], p["a_image"], p["b_image"], json.dumps(p["a_scores"]),
                             json.dumps(p["b_scores"]), int(p["left_is_a"])) for p in pairs])
            db.commit()
        finally:
            db.close()

    try:
        atomic_write(path, write)
    except OSError as e:
        raise StablenoiseError(f"cannot write {path}: {e.strerror or e}") from None


class Study:
    """An open study file. ``connect()`` gives a fresh connection (one per request or thread)."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.run_dir = self.path.parent
        self.readonly = readonly
        if not self.path.is_file():
            raise StablenoiseError(f"{self.path}: no such study (make one with: stablenoise study create RUN)")
        try:
            with self.connect() as db:
                self.meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
                self.pairs = {r[0]: Pair(*r[:9], json.loads(r[9]), json.loads(r[10]), bool(r[11]))
                              for r in db.execute("SELECT * FROM pairs ORDER BY id")}
        except (sqlite3.DatabaseError, ValueError) as e:
            raise StablenoiseError(f"{self.path}: not a readable study ({' '.join(str(e).split())})") from None
        if self.meta.get("study_version") != STUDY_VERSION:
            raise StablenoiseError(f"{self.path}: study version {self.meta.get('study_version')}, this stablenoise "
                                   f"reads version {STUDY_VERSION}")

    def connect(self) -> sqlite3.Connection:
        if self.readonly:
            return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA busy_timeout = 30000")
        return db

    def set_wal(self, on: bool) -> None:
        """WAL while serving (readers never block the writer); back to one self-contained file after."""
        db = self.connect()
        try:
            db.execute(f"PRAGMA journal_mode = {'WAL' if on else 'DELETE'}")
        except sqlite3.DatabaseError as e:
            raise StablenoiseError(f"{self.path}: cannot take votes ({' '.join(str(e).split())})") from None
        finally:
            db.close()

    def votes(self) -> list[tuple]:
        """(pair_id, rater, choice, left_method, right_method, time) of every vote, oldest first."""
        db = self.connect()
        try:
            return db.execute("SELECT pair_id, rater, choice, left_method, right_method, time FROM votes "
                              "ORDER BY id").fetchall()
        finally:
            db.close()

    def order(self, rater: str) -> list[int]:
        """The order in which ``rater`` sees the pairs: shuffled per rater (seeded by the study and the rater's
        id, so a reload resumes the same sequence) and interleaving prompts and comparisons."""
        import hashlib

        import numpy as np

        digest = hashlib.sha256(f"{self.meta.get('seed', 0)}\0{rater}".encode()).digest()
        ids = np.array(sorted(self.pairs))
        return [int(i) for i in np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(ids)]

    def progress(self, rater: str) -> tuple[int | None, int, int]:
        """(the next pair for ``rater``, or None when done; pairs judged; pairs in all)."""
        db = self.connect()
        try:
            done = {r[0] for r in db.execute("SELECT pair_id FROM votes WHERE rater = ?", (rater,))}
        finally:
            db.close()
        nxt = next((i for i in self.order(rater) if i not in done), None)
        return nxt, len(done), len(self.pairs)

    def vote(self, pair_id: int, rater: str, choice: str) -> Pair:
        """Record one vote; refuse an unknown pair or choice (404/400) and a second vote on a pair (409)."""
        if choice not in CHOICES:
            raise VoteRefused(400, f"choice must be one of {', '.join(CHOICES)}")
        check_rater(rater)
        pair = self.pairs.get(pair_id) if isinstance(pair_id, int) and not isinstance(pair_id, bool) else None
        if pair is None:
            raise VoteRefused(404, "no such pair")
        time = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        db = self.connect()
        try:
            with db:
                db.execute("INSERT INTO votes (pair_id, rater, choice, left_method, right_method, time) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           (pair.id, rater, choice, pair.side("left")[0], pair.side("right")[0], time))
        except sqlite3.IntegrityError:
            raise VoteRefused(409, "this rater has already judged this pair") from None
        finally:
            db.close()
        return pair
