"""A seed bank: N seeds scored once per model under a prompt-independent setting (the empty prompt by
default), so that per prompt only the bank's most stable few need the full score.

On the shipped model the seed alone explains most of a seed's stability (benchmarks/seed_effect.py), which
is what makes this pay: ``select(backend, prompt, seeds=bank.seeds, proxy=bank.scores, keep=m)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .backends.base import Backend
from .errors import StablenoiseError
from .records import now, versions, write_json_atomic
from .selection import _scores
from .stability import resolve


@dataclass
class SeedBank:
    seeds: list[int]
    stability: list[float | None]  # None: non-finite
    prompt: str
    steps: int
    guidance: float
    inversion_guidance: float
    model: dict = field(default_factory=dict)
    created: str = ""
    versions: dict = field(default_factory=dict)

    @property
    def scores(self) -> dict[int, float | None]:
        return dict(zip(self.seeds, self.stability))

    def top(self, m: int) -> list[int]:
        """The m most stable seeds of the bank (finite scores only), most stable first."""
        ranked = sorted((i for i, v in enumerate(self.stability) if v is not None),
                        key=lambda i: (-self.stability[i], i))
        return [self.seeds[i] for i in ranked[:m]]

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "SeedBank":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            bank = cls(**data)
        except FileNotFoundError:
            raise StablenoiseError(f"seed bank not found: {path}") from None
        except (ValueError, TypeError, UnicodeDecodeError):
            raise StablenoiseError(f"{path} is not a seed bank") from None
        if len(bank.seeds) != len(bank.stability) or not bank.seeds:
            raise StablenoiseError(f"{path} is not a seed bank (seeds and scores differ in length, or are empty)")
        return bank


def build_bank(backend: Backend, n: int, first_seed: int = 0, prompt: str = "", steps: int | None = None,
               guidance: float | None = None, inversion_guidance: float | None = None, batch_size: int | None = None,
               progress: bool = True) -> SeedBank:
    """Score seeds ``first_seed .. first_seed + n - 1`` once, under ``prompt`` (default: the empty prompt)."""
    if n < 1:
        raise StablenoiseError(f"a bank needs n >= 1 seeds, got {n}")
    steps, guidance, inversion_guidance = resolve(backend, steps, guidance, inversion_guidance)
    seeds = list(range(first_seed, first_seed + n))
    scores = _scores(backend, prompt, seeds, batch_size, steps, guidance, inversion_guidance, progress, desc="bank")
    return SeedBank(seeds, [v if v is not None and math.isfinite(v) else None for v in scores], prompt, steps,
                    guidance, inversion_guidance, backend.describe(), now(), versions())
