"""The methods a bench compares, parsed from ``--methods``.

Selection methods (random, most/least stable, best of K by a reward, the inversion-guidance ablation) are
read off the K scored seeds of every prompt by the report; they cost nothing beyond the scoring. Optimizing
methods (``optimize``, ``reno``) add one optimized noise per prompt, started from the prompt's first seed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import StablenoiseError
from ..settings import OptimizerSettings

SELECTION = ("random", "most-stable", "least-stable", "best", "inversion-ablation")
OPTIMIZING = {"optimize": OptimizerSettings.paper, "reno": OptimizerSettings.reno}
DEFAULT_METHODS = "random,most-stable,least-stable,best,optimize,reno"


@dataclass(frozen=True)
class Method:
    kind: str  # one of SELECTION or OPTIMIZING
    reward: str | None = None  # "best:REWARD"
    settings: OptimizerSettings | None = None  # optimizing methods

    @property
    def label(self) -> str:
        """The method's name in the store: the kind, plus the settings that differ from its defaults."""
        if self.settings is not None:
            changes = self.settings.changes(OPTIMIZING[self.kind]())
            return f"{self.kind}:{changes}" if changes else self.kind
        return f"{self.kind}:{self.reward}" if self.reward else self.kind

    @property
    def optimizing(self) -> bool:
        return self.kind in OPTIMIZING


def parse_methods(spec: str | list[str]) -> list[Method]:
    """``"random,most-stable,best:shapes-clip,optimize:lr=18.75;preserve_norm=1,reno:shapes-clip=1"``.

    Methods are separated by commas; an optimizing method's settings follow a colon and are separated by
    semicolons (or given in a separate list item, where commas may separate them)."""
    items = spec if isinstance(spec, list) else _split(spec)
    methods = []
    for item in items:
        kind, _, arg = (x.strip() for x in item.partition(":"))
        if kind in OPTIMIZING:
            methods.append(Method(kind, settings=OptimizerSettings.parse(arg.replace(";", ","), OPTIMIZING[kind]())))
        elif kind in SELECTION:
            if arg and kind != "best":
                raise StablenoiseError(f"method {kind!r} takes no argument (got {item!r})")
            methods.append(Method(kind, reward=arg or None))
        else:
            raise StablenoiseError(f"unknown method {kind!r}; use {', '.join((*SELECTION, *OPTIMIZING))}")
    if not methods:
        raise StablenoiseError("no method given")
    return list(dict.fromkeys(methods))


def _split(spec: str) -> list[str]:
    """Split at commas that start a new method (a comma followed by a known method name)."""
    names = (*SELECTION, *OPTIMIZING)
    parts: list[str] = []
    for piece in spec.split(","):
        piece = piece.strip()
        if not piece:
            continue
        if parts and piece.partition(":")[0].strip() not in names and ":" in parts[-1]:
            parts[-1] += ";" + piece  # a setting of the previous optimizing method
        else:
            parts.append(piece)
    return parts
